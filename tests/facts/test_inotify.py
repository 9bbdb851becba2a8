"""One inotify sizing rule and one folder count: render's sysctl value, watch's fallback
check and fix, and doctor's check agree, so that each one's fix clears the others'
finding; and the folders each counts are the ones the watcher watches."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from mnic_ops.capabilities import doctorhost, doctorinstall, tiers, watchroots
from mnic_ops.core.app import AppContext
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import datatree
from mnic_ops.facts import inotify, watchlimits
from mnic_ops.facts.projects import DATA_KINDS, find_projects
from tests.cleanhelp import make_project, write_config
from tests.conftest import write_tree

FOLDERS = [0, 1, 10, 64, 100, 1000, 40_000, 300_000, 470_000, 1_000_000, 5_000_000]
GIB = 1024**3


def doctor_status(root: Path, limit: int, folders: int) -> str:
    write_tree(root, {"proc/sys/fs/inotify/max_user_watches": f"{limit}\n"})
    return doctorhost.inotify_check(HostRoot.open(root), folders).status


def watch_fix_value(need: int, used: int = 0) -> int:
    text = watchlimits.Limits(max_watches=1, max_instances=None, used_watches=used).fix(need)
    m = re.search(r"max_user_watches = (\d+)", text)
    assert m, text
    return int(m.group(1))


@pytest.mark.parametrize("folders", FOLDERS)
def test_each_fix_satisfies_every_check(fake_root: Path, folders: int) -> None:
    table = tiers.load_table([tiers.shipped_templates()])
    for name, values in table.tiers.items():
        # render's value (not capped by memory on a big machine)
        d, _ = tiers.derive(values, cpus=8, memory_bytes=4096 * GIB, watch_dirs=folders)
        rendered = d["inotify_watches"]
        assert doctor_status(fake_root, rendered, folders) == "ok", name
        assert watchlimits.Limits(rendered, None).problem(folders) is None, name
    # watch's fix
    fixed = watch_fix_value(folders)
    assert doctor_status(fake_root, fixed, folders) == "ok"
    assert watchlimits.Limits(fixed, None).problem(folders) is None
    # doctor's fix
    write_tree(fake_root, {"proc/sys/fs/inotify/max_user_watches": "1\n"})
    chk = doctorhost.inotify_check(HostRoot.open(fake_root), folders)
    if chk.status == "fail":
        want = chk.details["suggested"]
        assert doctor_status(fake_root, want, folders) == "ok"
        assert watchlimits.Limits(want, None).problem(folders) is None
        assert want == fixed  # the same value is named by both
    # with watches in use by other processes of the user, watch's fix still fits
    assert watchlimits.Limits(watch_fix_value(folders, 9000), None, 9000).problem(folders) is None


@pytest.mark.parametrize("folders", [0, 5, 100, 10_000, 470_000])
def test_doctor_and_watch_draw_the_line_at_the_same_limit(fake_root: Path,
                                                          folders: int) -> None:
    line = inotify.needed(folders)
    for limit in (line - 1, line, line + 1):
        if limit < 1:
            continue
        ok = doctor_status(fake_root, limit, folders) == "ok"
        assert ok == (watchlimits.Limits(limit, None).problem(folders) is None), limit
        assert ok == (limit >= line)


def test_render_doctor_and_watch_count_the_same_folders(fake_root: Path) -> None:
    render = pytest.importorskip("mnic_ops.capabilities.render")
    make_project(fake_root, files=10)
    write_config(fake_root)
    base = fake_root / "home/alice/proj"
    for i in range(6):
        (base / f"project_archive/sessions/y{i}/m{i}/d").mkdir(parents=True)
    (base / ".claude/thinking-logs/core/arch/sub").mkdir()
    # a link to a folder inside a data folder is not followed (nor watched)
    (base / "project_archive/sessions/link").symlink_to(base / ".claude/agents")
    app = AppContext(root=HostRoot.open(fake_root), config_path=None)
    found = find_projects(app.root, app.config)
    assert len(found) == 1
    p = found[0]
    now = time.time()
    scans = {k: doctorinstall.scan_data(app.root, p, k, pol=None, now=now, big_bytes=1 << 30)
             for k in DATA_KINDS}
    dirs = {k: s.dirs for k, s in scans.items() if s is not None}
    assert dirs["sessions"] == 1 + 6 * 3
    roots = watchroots.build_roots(app, found, None)
    checked = 0
    for r in roots:
        watchroots.prepare_root(app, r, [], False)
        if r.state == watchroots.READY:
            assert watchroots.count_dirs(app, r) == dirs[r.kind], r.kind
            checked += 1
    assert checked >= 3
    assert render.count_watch_dirs(app.root, found) == sum(dirs.values())
    # and the one count itself, on the sessions folder
    fd = os.open(base / "project_archive/sessions", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert datatree.count_folders(fd) == dirs["sessions"]
    finally:
        os.close(fd)
