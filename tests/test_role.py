"""The Ansible role, playbook and Vagrantfile are real: they lint, parse and validate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} is not installed (test extra / .ci/run installs it)")
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    lint = _tool("ansible-lint")
    p = subprocess.run([lint, "--profile", "production", "--offline", "roles/mnic_ops",
                        "playbooks/site.yml"], cwd=REPO, capture_output=True, text=True,
                       env=_env(tmp_path), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_playbook_syntax(tmp_path: Path) -> None:
    ap = _tool("ansible-playbook")
    p = subprocess.run([ap, "--syntax-check", "-i", "localhost,", "playbooks/site.yml"],
                       cwd=REPO, capture_output=True, text=True, env=_env(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr


def test_argument_specs_reject_bad_class(tmp_path: Path) -> None:
    """The role's argument spec is enforced: a wrong class fails before any task."""
    ap = _tool("ansible-playbook")
    play = tmp_path / "play.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n"
                    "    - role: mnic_ops\n      mnic_ops_host_class: mainframe\n")
    p = subprocess.run([ap, "-i", "localhost,", "-c", "local", "--check", str(play)],
                       cwd=REPO, capture_output=True, text=True, env=_env(tmp_path))
    assert p.returncode != 0
    assert "mnic_ops_host_class" in p.stdout + p.stderr


def test_vagrantfile_validates_and_uses_the_shared_classes(tmp_path: Path) -> None:
    vagrant = _tool("vagrant")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant-home")}
    p = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    classes = json.loads((REPO / "tests/vm/classes.json").read_text())
    for name in (k for k in classes if not k.startswith("_")):
        assert f"==> {name}:" in p.stdout
