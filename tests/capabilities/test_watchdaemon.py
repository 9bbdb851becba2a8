"""The watcher daemon in-process: "since start" counts from the process's exec."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.capabilities.test_watch import BASE, payload
from tests.cleanhelp import make_project, write_config


def _app(root: Path) -> Any:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

    return AppContext(root=HostRoot.open(root), config_path=None)


def test_process_start_time_is_the_exec_not_the_first_line() -> None:
    """The service's "since start" begins at exec: a child that spends 1.5 s before
    asking still reports when it was started (to within a clock tick)."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "import time; time.sleep(1.5); "
         "from mnic_ops.capabilities.watchdaemon import process_start_time as p; "
         "print(p(), time.time())"],
        capture_output=True, text=True, check=True, timeout=60).stdout.split()
    started, asked = float(out[0]), float(out[1])
    assert t0 - 0.05 <= started <= t0 + 0.5, (t0, started)
    assert asked - started >= 1.4


def test_files_closed_between_exec_and_watching_are_picked_up(fake_root: Path) -> None:
    """A file closed after the process started but before its watches were set (no
    event, and older than the Daemon object) is taken by the start-up rescan."""
    from mnic_ops.capabilities import watchroots
    from mnic_ops.capabilities.watchdaemon import Daemon

    make_project(fake_root, files=3)
    write_config(fake_root)
    exec_time = time.time()
    time.sleep(0.1)
    early = fake_root / BASE / "project_archive/sessions/early.json"
    early.write_bytes(payload(4))
    time.sleep(0.1)
    late = Daemon(_app(fake_root), (), poll=False, once_settled=False, service=False)
    ours = Daemon(_app(fake_root), (), poll=False, once_settled=False, service=False,
                        started=exec_time)
    for d in (late, ours):
        d.roots = d._setup_roots(d.projects)
        for r in d.roots:
            if r.state == watchroots.READY:
                r.state = watchroots.WATCHING
        d._index()
        d.full_rescan("since_start")
    assert "early.json" not in {k[2] for k in late.pending}
    assert "early.json" in {k[2] for k in ours.pending}
