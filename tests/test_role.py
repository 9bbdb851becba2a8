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


def _render_config(tmp_path: Path, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """Run the role's config template with real Ansible (template module, local)."""
    ap = _tool("ansible-playbook")
    dest = tmp_path / "config.toml"
    play = tmp_path / "render.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  vars_files:\n"
        f"    - {REPO}/roles/mnic_ops/defaults/main.yml\n  tasks:\n"
        "    - name: Render\n      ansible.builtin.template:\n"
        f"        src: {REPO}/roles/mnic_ops/templates/config.toml.j2\n"
        f"        dest: {dest}\n        mode: '0644'\n")
    extra = {"ansible_python_interpreter": sys.executable, **extra}
    return subprocess.run([ap, "-i", "localhost,", "-c", "local", "-e", json.dumps(extra),
                           str(play)], cwd=REPO, capture_output=True, text=True,
                          env=_env(tmp_path), timeout=300)


def test_config_template_renders_settings_that_mnic_ops_reads(tmp_path: Path) -> None:
    """mnic_ops_settings reaches /etc/mnic-ops/config.toml as valid TOML: nested
    sections, lists, quotes and non-ASCII survive, None is left out, and the role's own
    variables win over the same keys in the dict."""
    settings = {
        "cron": {"compress_schedule": "* * * * *", "log": '/var/log/"odd" dir/é.log'},
        "watch": {"settle_seconds": {"checkpoints": 2.5}, "poll": True},
        "clean": {"sessions": {"patterns": ["*.md", "a\\b*"], "compress_after_days": 3},
                  "level": None},
        "provision": {"cron": True, "relocate": True},
        "search_depth": 5,
    }
    p = _render_config(tmp_path, {"mnic_ops_settings": settings, "mnic_ops_cron": False,
                                  "mnic_ops_ssd_path": "", "mnic_ops_projects": ["/srv/p"],
                                  "mnic_ops_host_class": "server"})
    assert p.returncode == 0, p.stdout + p.stderr
    conf = tmp_path / "config.toml"
    q = subprocess.run([str(BIN / "mnic-ops"), "--json", "--config", str(conf), "config"],
                       capture_output=True, text=True, timeout=60)
    assert q.returncode == 0, conf.read_text() + q.stderr
    v = json.loads(q.stdout)["values"]
    assert v["cron"]["compress_schedule"] == "* * * * *"
    assert v["cron"]["log"] == '/var/log/"odd" dir/é.log'
    assert v["watch"]["settle_seconds"]["checkpoints"] == 2.5
    assert v["watch"]["poll"] is True
    assert v["clean"]["sessions"]["patterns"] == ["*.md", "a\\b*"]
    assert v["clean"]["sessions"]["compress_after_days"] == 3
    assert v["clean"]["level"] == 5  # None: left out, the default stays
    assert v["search_depth"] == 5
    assert v["host_class"] == "server" and v["projects"] == ["/srv/p"]
    # the role's variables win: mnic_ops_cron false, ssd_path empty -> no relocation
    assert v["provision"]["cron"] is False and v["provision"]["relocate"] is False


def test_config_template_with_defaults_only(tmp_path: Path) -> None:
    p = _render_config(tmp_path, {})
    assert p.returncode == 0, p.stdout + p.stderr
    q = subprocess.run([str(BIN / "mnic-ops"), "--json", "--config",
                        str(tmp_path / "config.toml"), "config"],
                       capture_output=True, text=True, timeout=60)
    assert q.returncode == 0, q.stderr
    v = json.loads(q.stdout)["values"]
    assert v["provision"] == {"relocate": True, "apply_fstab": False, "cron": True,
                              "watcher": True, "logrotate": True, "missing_cron": "fail",
                              "missing_systemd": "fail"}
    assert v["ssd_path"] == "/mnt/ssd/my-name-is-claude" and v["host_class"] is None
