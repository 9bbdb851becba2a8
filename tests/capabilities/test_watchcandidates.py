"""The watcher's candidates: the rescans that find files no event announced."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.capabilities.test_watch import BASE, payload
from tests.cleanhelp import DAY, make_project, write_config


def _app(root: Path) -> Any:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

    return AppContext(root=HostRoot.open(root), config_path=None)


def test_rescan_after_lost_events_takes_only_files_written_since_start(
        fake_root: Path) -> None:
    from mnic_ops.capabilities import watchroots
    from mnic_ops.capabilities.watchdaemon import Daemon

    old = make_project(fake_root, files=10)
    write_config(fake_root)
    time.sleep(0.1)
    d = Daemon(_app(fake_root), (), poll=False, once_settled=False, service=False)
    d.roots = d._setup_roots(d.projects)
    for r in d.roots:
        if r.state == watchroots.READY:
            r.state = watchroots.WATCHING
    d._index()
    base = fake_root / BASE
    (base / "project_archive/sessions/lost.json").write_bytes(payload(1))
    (base / "project_archive/sessions/lost.json.gz").write_bytes(b"ours")
    (base / "project_archive/sessions/.x.json.gz.mnic-ops-tmp.1.ab").write_bytes(b"")
    (base / "project_archive/sessions/index.json").write_bytes(b"{}")
    (base / ".claude/thinking-logs/core/new").mkdir()
    (base / ".claude/thinking-logs/core/new/lost2.json").write_bytes(payload(2))
    # an old file moved in from elsewhere counts: rename updates its ctime
    aged = time.time() - 30 * DAY
    src = fake_root / "lost3.json"
    src.write_bytes(payload(3))
    os.utime(src, (aged, aged))
    os.rename(src, base / "project_archive/sessions/lost3.json")
    d.full_rescan("since_start")
    names = sorted(k[2] for k in d.pending)
    assert names == ["lost.json", "lost2.json", "lost3.json"], names
    assert not any(os.path.basename(h) in names for h in old)
