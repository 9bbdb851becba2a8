"""mnic_ops.facts.watchstate: the watcher service's liveness record, read back and judged."""

from __future__ import annotations

import os
from pathlib import Path

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import watchstate


def record(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"pid": os.getpid(), "state": "running", "heartbeat": 1000.0,
                               "heartbeat_seconds": 30.0,
                               "observers": {"inotify": "running", "polling": None}}
    base.update(kw)
    return base


def test_assess_running_stalled_stopped_absent() -> None:
    assert watchstate.assess(record(), now=1010)[0] == "running"
    status, why = watchstate.assess(record(), now=1000 + 91)
    assert status == "stalled" and "no heartbeat for 91s" in why
    status, why = watchstate.assess(record(observers={"inotify": "dead", "polling": None}),
                                    now=1001)
    assert status == "stalled" and "inotify dead" in why
    assert watchstate.assess(record(state="stopped"), now=1001)[0] == "stopped"
    gone = 2**22 + 12345  # above pid_max on most hosts: no such process
    assert watchstate.assess(record(pid=gone), now=1001)[0] == "stopped"
    assert watchstate.assess(record(pid=gone), now=1001, live=False)[0] == "running"
    assert watchstate.assess(record(heartbeat="x"), now=1001)[0] == "stalled"
    assert watchstate.assess(None)[0] == "absent"


def test_write_read_root_owned_atomic_and_bounded(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    watchstate.write(root, record())
    p = fake_root / watchstate.STATE_FILE.lstrip("/")
    st = os.stat(p)
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (os.geteuid(), "0o644")
    assert oct(os.stat(p.parent).st_mode & 0o777) == "0o755"
    assert watchstate.read(root) == record()
    assert [n for n in os.listdir(p.parent)] == ["watch-state.json"]  # no temporary left
    p.write_bytes(b"[1]")
    assert watchstate.read(root) is None
    p.write_bytes(b"{" * (watchstate.MAX_BYTES + 1))
    assert watchstate.read(root) is None
    p.unlink()
    p.symlink_to("/etc/passwd")
    assert watchstate.read(root) is None  # not followed
