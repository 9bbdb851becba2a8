"""The processes of this host, for doctor: their command line, working directory and
resident memory (psutil), and which of them is an ``mnic-ops watch`` for a host tree."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot


@dataclass
class Proc:
    pid: int
    cmdline: list[str]
    cwd: str | None
    rss: int
    environ_root: str | None = None


def processes() -> list[Proc]:
    """Every process we may inspect (as root: all), except this one."""
    import psutil

    me = os.getpid()
    out: list[Proc] = []
    for pr in psutil.process_iter(["pid", "cmdline", "cwd", "memory_info"]):
        info = pr.info
        if info["pid"] == me or info.get("memory_info") is None:
            continue
        out.append(Proc(info["pid"], list(info.get("cmdline") or []), info.get("cwd"),
                        int(info["memory_info"].rss)))
    return out


def inside(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == pre or path.startswith(pre.rstrip("/") + "/") for pre in prefixes)


def watch_root(cmdline: Sequence[str]) -> str | None:
    """The ``--root`` of an ``mnic-ops ... watch`` command line ("/" when none is
    given); None when the command line is not the watcher."""
    start = None
    for i, a in enumerate(cmdline):
        if os.path.basename(a) == "mnic-ops" or (
                a == "mnic_ops" and i > 0 and cmdline[i - 1] == "-m"):
            start = i + 1
            break
    if start is None:
        return None
    root = "/"
    rest = list(cmdline[start:])
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--root" and i + 1 < len(rest):
            root = rest[i + 1]
            i += 2
            continue
        if a.startswith("--root="):
            root = a.partition("=")[2]
        elif a == "watch":
            return os.path.normpath(root)
        elif a in ("--config",):
            i += 2
            continue
        elif not a.startswith("-"):
            return None  # another subcommand
        i += 1
    return None


def watchers(root: HostRoot, procs: list[Proc]) -> list[Proc]:
    out = []
    for pr in procs:
        wr = watch_root(pr.cmdline)
        if wr is None:
            continue
        try:
            same = os.path.samefile(wr, root.root)
        except OSError:
            same = os.path.normpath(wr) == str(root.root)
        if same:
            out.append(pr)
    return out
