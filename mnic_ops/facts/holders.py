"""Which processes hold a folder: a file open, the working or root directory, or a
mapping under it, read from ``/proc/<pid>/{fd,cwd,root,maps}``. ``relocate`` refuses to
move a folder that is in use; retention skips an install the framework is working in.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass


@dataclass
class Holder:
    pid: int
    name: str
    path: str
    uids: tuple[int, int] = (-1, -1)  # real and effective uid (-1: unknown)


def _uids(base: str) -> tuple[int, int]:
    """(real, effective) uid of a process from its ``status`` (-1 each when unknown)."""
    try:
        with open(f"{base}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    f = line.split()
                    return int(f[1]), int(f[2])
    except (OSError, ValueError, IndexError):
        pass
    return -1, -1


def holders(paths: list[str], proc: str = "/proc") -> list[Holder]:
    """Processes with a file, a working directory or a mapping under any of ``paths``
    (real paths), from ``/proc/<pid>/{fd,cwd,root,maps}``; our own process excluded."""
    prefixes = [os.path.realpath(p).rstrip("/") for p in paths]

    def under(target: str) -> bool:
        return any(target == p or target.startswith(p + "/") for p in prefixes)

    out: list[Holder] = []
    me = os.getpid()
    try:
        pids = [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return out
    for pid in sorted(pids):
        if pid == me:
            continue
        base = f"{proc}/{pid}"
        found: list[str] = []
        targets: list[str] = []
        for link in ("cwd", "root"):
            with suppress(OSError):
                targets.append(os.readlink(f"{base}/{link}"))
        with suppress(OSError):
            for fd in os.listdir(f"{base}/fd"):
                with suppress(OSError):
                    targets.append(os.readlink(f"{base}/fd/{fd}"))
        with suppress(OSError), open(f"{base}/maps", "rb") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith(b"/"):
                    targets.append(os.fsdecode(parts[5].rstrip(b"\n")))
        for t in targets:
            t = t.removesuffix(" (deleted)")
            if under(t) and t not in found:
                found.append(t)
        if found:
            try:
                with open(f"{base}/comm") as comm:
                    name = comm.read().strip()
            except OSError:
                name = "?"
            uids = _uids(base)
            out.extend(Holder(pid, name, t, uids) for t in found)
    return out
