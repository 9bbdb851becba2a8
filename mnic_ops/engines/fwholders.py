"""Who is working in an install: the framework processes (working directory, an open
file or a mapping there) that make retention skip the classes the framework rewrites
itself, leaving out mnic-ops's own pass, its session and its watchers.
"""

from __future__ import annotations

import os
from contextlib import suppress

# --- who is working in the install ----------------------------------------------------

def framework_holders(paths: list[str], owner: int | None = None) -> list[str]:
    """Processes working in these folders (cwd, open file, mapping), except mnic-ops's
    own: "pid N (name): path" each. With ``owner``, only processes of that uid (real or
    effective) or root's (real uid 0) count: the framework runs as the install's owner
    (or root), and another user's shell sitting in the folder must not stop the owner's
    retention (a user's setuid-root program keeps her real uid: it does not count)."""
    from mnic_ops.facts import holders

    me = os.getpid()
    mine = _own_session()
    out: list[str] = []
    for h in holders.holders(paths):
        if h.pid == me or h.pid in mine or _ours(h.pid, me):
            continue
        if owner is not None and h.uids != (-1, -1) and owner not in h.uids \
                and h.uids[0] != 0:
            continue
        out.append(f"pid {h.pid} ({h.name}): {h.path}")
    return out


def _stat_fields(pid: int | str) -> list[bytes]:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, ...]."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    return raw[raw.rfind(b")") + 2:].split()


def _own_session() -> set[int]:
    """This pass's ancestors and its process group: the shell that ran ``mnic-ops clean
    .`` from inside the install (and sudo, and a ``| less`` beside it in the pipeline)
    sits there but is not the framework; without this, such a run never expires. A
    framework started from another terminal, or in the background, has a group of its
    own and still counts."""
    out: set[int] = set()
    pid = os.getppid()
    for _ in range(64):  # bounded: a parent chain is short
        if pid <= 1 or pid in out:
            break
        out.add(pid)
        try:
            pid = int(_stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            break
    group = os.getpgid(0)
    with suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with suppress(OSError, ValueError, IndexError):
                    if int(_stat_fields(name)[2]) == group:
                        out.add(int(name))
    return out


def _ours(pid: int, me: int) -> bool:
    """A child of this pass, or another mnic-ops process (a watcher)."""
    try:
        ppid = int(_stat_fields(pid)[1])
        if ppid == me:
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    return any(os.path.basename(a) == b"mnic-ops" for a in argv) or any(
        a == b"mnic_ops" and i > 0 and argv[i - 1] == b"-m" for i, a in enumerate(argv))
