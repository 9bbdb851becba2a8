"""The watcher's systemd unit (`mnic-ops watch --install-unit`/`--remove-unit`): its
text, checked by systemd-analyze where installed, the plan's purity, undo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnic_ops.capabilities import watchunit
from tests.cleanhelp import make_project, write_config
from tests.conftest import REPO, run_mnic
from tests.linkhelp import relocate_by_hand


def _verify(unit: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ours = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
    assert not ours, ours


def test_unit_install_verify_check_remove_undo(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    unit = fake_root / "etc/systemd/system/mnic-ops-watch.service"
    link = fake_root / "etc/systemd/system/multi-user.target.wants/mnic-ops-watch.service"
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit", "--check")
    assert r.code == 3, r.err
    assert "+ReadWritePaths=-/home/alice/proj/project_archive/sessions" in r.out
    assert not unit.exists()
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit")
    assert r.code == 0, r.out + r.err
    text = unit.read_text()
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert os.readlink(link) == "/etc/systemd/system/mnic-ops-watch.service"
    lines = text.splitlines()
    # PrivateTmp= is left out, with a comment, when mnic-ops itself runs from /tmp (a
    # checkout or venv there, as in some CI layouts): the unit would hide its own code.
    tmp_exe = sys.prefix.startswith(("/tmp/", "/var/tmp/"))
    for want in ("Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 *(() if tmp_exe else ("PrivateTmp=yes",)), "StateDirectory=mnic-ops",
                 "ReadWritePaths=-/home/alice/proj/.claude/thinking-logs",
                 "RestrictAddressFamilies=AF_UNIX", "WantedBy=multi-user.target"):
        assert want in lines, want
    assert not any(line.startswith("ProtectHome=") for line in lines)  # data under /home
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[0].startswith("/")
    assert exec_start.endswith("watch --service")
    _verify(unit)
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit", "--check")
    assert r.code == 0, r.out  # nothing left to do
    r = run_mnic("--root", str(fake_root), "watch", "--remove-unit")
    assert r.code == 0, r.out + r.err
    assert not unit.exists() and not os.path.lexists(link)
    for _ in range(2):  # undo the removal: link, then file
        r = run_mnic("--root", str(fake_root), "undo", "--last")
        assert r.code == 0, r.out + r.err
    assert unit.read_text() == text
    assert os.readlink(link) == "/etc/systemd/system/mnic-ops-watch.service"


def test_unit_for_installs_outside_home_with_odd_names(fake_root: Path) -> None:
    proj = "/srv/odd name%1"
    make_project(fake_root, files=0, host_path=proj)
    sess = fake_root / proj.lstrip("/") / "project_archive/sessions"
    shutil.rmtree(sess)
    relocate_by_hand(fake_root, proj, "project_archive/sessions",
                     "/mnt/ssd/my-name-is-claude/odd/sessions", "sessions")
    write_config(fake_root, host_path=proj)
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit")
    assert r.code == 0, r.out + r.err
    unit = fake_root / "etc/systemd/system/mnic-ops-watch.service"
    lines = unit.read_text().splitlines()
    assert "ProtectHome=yes" in lines
    assert "ReadWritePaths=-/mnt/ssd/my-name-is-claude/odd/sessions" in lines
    assert 'ReadWritePaths="-/srv/odd name%%1/.claude/checkpoints"' in lines
    _verify(unit)


def test_plan_unit_is_pure_and_watchdog_is_imported_only_by_the_watcher(
        fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    code = f"""
import sys
from mnic_ops import cli
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.core.app import AppContext
from mnic_ops.facts.projects import find_projects
from mnic_ops.capabilities import watchunit
app = AppContext(root=HostRoot.open({str(fake_root)!r}), config_path=None)
items = watchunit.plan_unit(app, find_projects(app.root, app.config))
assert [i.state for i in items] == ["pending", "pending"], [i.to_json() for i in items]
assert not (app.root.path(watchunit.unit_path)).exists()
assert watchunit.plan_remove_unit(app)[-1].state == "ok"
for args in (["--root", {str(fake_root)!r}, "watch", "--check"],
             ["--root", {str(fake_root)!r}, "clean", "--check"]):
    try:
        cli.main(args)
    except SystemExit:
        pass
assert "watchdog" not in sys.modules, "watchdog imported"
print("ok")
"""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    e["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize(("raw", "word"), [
    ("/srv/p/sessions", "/srv/p/sessions"),
    ("/srv/a b/x", '"/srv/a b/x"'),
    ("/srv/100%/x", "/srv/100%%/x"),
    ('/srv/q"uote', '"/srv/q\\"uote"'),
    ("/srv/new\nline", None),
    ("/srv/\udcff", None),
])
def test_unit_words(raw: str, word: str | None) -> None:
    assert watchunit.unit_word(raw) == word
