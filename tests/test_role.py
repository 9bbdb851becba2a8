"""The Ansible role, playbook and Vagrantfile are real: they lint, parse and validate."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

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
    p = subprocess.run([lint, "--profile", "production", "--offline", "roles/",
                        "playbooks/", "requirements.yml"], cwd=REPO, capture_output=True,
                       text=True, env=_env(tmp_path), timeout=600)
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


ROLE = REPO / "roles" / "mnic_ops"


def test_argument_specs_cover_every_default_with_the_same_value() -> None:
    """Every variable in defaults/main.yml is documented and validated in
    meta/argument_specs.yml with the same default, and nothing more; every mnic_ops_*
    variable the role uses is one of them or an internal one of vars/main.yml."""
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    internal = yaml.safe_load((ROLE / "vars/main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults)
    for name, opt in options.items():
        assert opt.get("default") == defaults[name], name
        assert opt.get("description"), name
    used: set[str] = set()
    for f in [*(ROLE / "tasks").glob("*.yml"), *(ROLE / "handlers").glob("*.yml"),
              *(ROLE / "templates").iterdir()]:
        used |= set(re.findall(r"\bmnic_ops_[a-z_]+\b", f.read_text()))
    registered = {"mnic_ops_installed", "mnic_ops_wheel_dir", "mnic_ops_wheel",
                  "mnic_ops_pip", "mnic_ops_docs", "mnic_ops_unit"}
    assert used - registered <= set(defaults) | set(internal), used - set(defaults)


def test_meta_platforms_can_run_the_package() -> None:
    """The platforms meta/main.yml lists ship a Python that requires-python accepts."""
    python_of = {("Debian", "bookworm"): (3, 11), ("Debian", "trixie"): (3, 13),
                 ("Ubuntu", "jammy"): (3, 10), ("Ubuntu", "noble"): (3, 12)}
    req = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=(\d+)\.(\d+)", req)
    assert m, req
    minimum = (int(m.group(1)), int(m.group(2)))
    meta = yaml.safe_load((ROLE / "meta/main.yml").read_text())
    listed = [(p["name"], v) for p in meta["galaxy_info"]["platforms"] for v in p["versions"]]
    assert listed
    for platform in listed:
        assert platform in python_of, f"{platform}: which Python does it ship?"
        assert python_of[platform] >= minimum, f"{platform} cannot run {req}"


def test_requirements_pin_every_collection_used_at_the_tested_version() -> None:
    """requirements.yml names every collection the playbook and role use (by FQCN),
    pinned to exactly the version CI runs with."""
    used = set()
    for f in [*REPO.glob("playbooks/**/*.yml"), *ROLE.glob("**/*.yml")]:
        for ns, coll in re.findall(r"^\s*-?\s*([a-z_]+)\.([a-z_]+)\.[a-z_]+:\s*$",
                                   f.read_text(), re.M):
            if ns != "ansible" or coll != "builtin":
                used.add(f"{ns}.{coll}")
    req = yaml.safe_load((REPO / "requirements.yml").read_text())
    pins = {c["name"]: c["version"] for c in req["collections"]}
    assert used and used == set(pins), (used, pins)
    collections = Path(yaml.__file__).parent.parent / "ansible_collections"
    if not collections.is_dir():
        pytest.skip("the ansible package (test extra) is not installed")
    for name, version in pins.items():
        manifest = collections / name.replace(".", "/") / "MANIFEST.json"
        tested = json.loads(manifest.read_text())["collection_info"]["version"]
        assert version == tested, f"{name}: pinned {version}, CI runs {tested}"


def test_vagrant_and_qemu_harness_share_playbook_and_variables() -> None:
    """The Vagrantfile passes tests/vm/site-vars.yml, which names the SSD as the
    harness attaches it, and installs Ansible in a way bookworm accepts."""
    from tests.vm.conftest import SITE_PLAYBOOK, site_vars
    from tests.vm.machine import SSD_BY_ID

    vagrantfile = (REPO / "Vagrantfile").read_text()
    code = "\n".join(ln.split("#")[0] for ln in vagrantfile.splitlines())
    assert 'File.join(__dir__, "tests", "vm", "site-vars.yml")' in code
    assert "ansible.extra_vars = SITE_VARS" in code
    assert f'ansible.playbook = "{SITE_PLAYBOOK.relative_to(REPO)}"' in code
    assert re.search(r'install_mode\s*=\s*"default"', code)
    assert "pip install" not in code and "pip_install_cmd" not in code
    assert 'serial: "mnic-ssd"' in code and SSD_BY_ID.endswith("_mnic-ssd")
    assert site_vars()["mnic_ops_ssd_device"] == SSD_BY_ID


def _unit_tasks(tasks: list[dict]) -> list[dict]:
    return [t for t in tasks
            if (t.get("ansible.builtin.systemd_service") or {}).get("name")
            == "mnic-ops-watch.service"]


def test_watcher_unit_is_started_only_when_provision_wrote_it() -> None:
    """Provision writes no watcher unit on a host with no framework install yet; the role
    must then neither start nor restart it (systemd would fail the play: "Could not find
    the requested service"). Both the task and the handler are gated on a stat of the
    unit taken after provision ran."""
    role = REPO / "roles" / "mnic_ops"
    tasks = yaml.safe_load((role / "tasks" / "main.yml").read_text())
    handlers = yaml.safe_load((role / "handlers" / "main.yml").read_text())
    names = [t.get("name", "") for t in tasks]
    stat_at = next(i for i, t in enumerate(tasks)
                   if (t.get("ansible.builtin.stat") or {}).get("path")
                   == "/etc/systemd/system/mnic-ops-watch.service")
    assert tasks[stat_at].get("register") == "mnic_ops_unit"
    assert stat_at > names.index("Provision the host with mnic-ops")
    users = _unit_tasks(tasks) + _unit_tasks(handlers)
    assert len(users) == 2, users
    for t in users:
        assert any("mnic_ops_unit.stat.exists" in str(w) for w in t.get("when", [])), t
    assert all(tasks.index(t) > stat_at for t in _unit_tasks(tasks))
