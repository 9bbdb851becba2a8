"""The watcher service's liveness record, ``/run/mnic-ops/watch-state.json``.

A watcher whose observer has died, or whose loop is stuck, still looks healthy to
systemd (the process is there). The service rewrites this small file on every
heartbeat (and when something notable happens: an overflow, an observer restart, a
folder moved to polling), so that ``doctor`` (or a ``status`` command) can tell
"running", "running but stalled" and "stopped" apart without asking the process.

The file is root's (0644, in a root-owned 0755 folder on /run, so it is gone after a
reboot), replaced atomically, and holds counters only: no file or folder names.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from mnic_ops.core import safefs
from mnic_ops.core.errors import OpsError

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot

STATE_FILE = "/run/mnic-ops/watch-state.json"
MAX_BYTES = 64 * 1024  # a larger file is not ours
STALE_BEATS = 3  # a heartbeat older than this many intervals: stalled


def write(root: HostRoot, data: dict[str, Any]) -> None:
    """Replace the record (root's, 0644). Best effort: the caller logs a failure."""
    path = root.path(STATE_FILE)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    safefs.atomic_write(path, json.dumps(data, sort_keys=True) + "\n", mode=0o644,
                        uid=0 if os.geteuid() == 0 else None,
                        gid=0 if os.geteuid() == 0 else None)


def read(root: HostRoot) -> dict[str, Any] | None:
    """The record, or None when there is none (or it is not a record we wrote)."""
    try:
        raw = safefs.read_bytes_nofollow(root.path(STATE_FILE))
    except (OSError, OpsError):
        return None
    if len(raw) > MAX_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def assess(data: dict[str, Any] | None, *, now: float | None = None,
           live: bool = True) -> tuple[str, str]:
    """(status, why) from a record: ``running``, ``stalled`` (the process is there but
    its heartbeat is late or an observer is down), ``stopped`` or ``absent``. With
    ``live`` false (a ``--root`` image) the process is not looked for."""
    if data is None:
        return "absent", "no watcher state recorded (the service is not running)"
    now = time.time() if now is None else now
    if data.get("state") == "stopped":
        return "stopped", f"stopped at {_when(data.get('heartbeat'))}"
    if live and not _pid_alive(data.get("pid")):
        return "stopped", f"process {data.get('pid')} is gone (last heartbeat " \
                          f"{_when(data.get('heartbeat'))})"
    beat, every = data.get("heartbeat"), data.get("heartbeat_seconds")
    if not isinstance(beat, int | float) or not isinstance(every, int | float):
        return "stalled", "the record has no heartbeat"
    late = now - beat
    if late > STALE_BEATS * max(every, 1.0):
        return "stalled", f"no heartbeat for {late:.0f}s (expected every {every:g}s)"
    down = [k for k, v in (data.get("observers") or {}).items() if v not in (None, "running")]
    if down:
        return "stalled", "observer " + ", ".join(
            f"{k} {data['observers'][k]}" for k in down)
    return "running", f"heartbeat {late:.0f}s ago"


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
