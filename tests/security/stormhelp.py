"""Shared by the watcher's attack tests: a real plain user, a folder that user can
reach, and a renameat2(RENAME_EXCHANGE) storm run as that user."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Swaps each folder d<i> with the symlink l<i> until SIGTERM (or the deadline), then
# puts every pair back (folder at d<i>) and prints how many swaps it made.
STORM = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
base, pairs, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
names = [(os.path.join(base, f"d{i}").encode(), os.path.join(base, f"l{i}").encode())
         for i in range(pairs)]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
done = failed = 0
end = time.monotonic() + seconds
while not stop and time.monotonic() < end:
    for a, b in names:
        for _ in range(64):
            if libc.renameat2(-100, a, -100, b, 2) == 0:
                done += 1
            else:
                failed += 1
for a, b in names:
    if os.path.islink(a):
        libc.renameat2(-100, a, -100, b, 2)
print(done, failed, flush=True)
"""


@contextmanager
def plain_user(prefix: str = "watchfs") -> Iterator[tuple[str, int, int]]:
    """A real unprivileged user (``<prefix>-alice-<random>``), removed afterwards.
    Yields (name, uid, gid)."""
    name = f"{prefix}-alice-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        out = subprocess.run(["id", "-u", name], check=True, capture_output=True, text=True)
        uid = int(out.stdout)
        gid = int(subprocess.run(["id", "-g", name], check=True, capture_output=True,
                                 text=True).stdout)
        yield name, uid, gid
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextmanager
def reachable_tmp() -> Iterator[Path]:
    """A temporary folder every user can traverse (pytest's own is 0700 root)."""
    top = Path(tempfile.mkdtemp(prefix="mnic-watchfs-"))
    try:
        os.chmod(top, 0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give a tree (the folder itself included) to a user, links as links."""
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def user_python(uid: int, gid: int) -> str:
    """A Python interpreter the user can run (this one may live in root's home)."""
    for exe in (sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3",
                "/usr/local/bin/python3", shutil.which("python3") or ""):
        if not exe:
            continue
        try:
            r = subprocess.run([exe, "-c", "import ctypes"], user=uid, group=gid,
                               extra_groups=[], capture_output=True, check=False)
        except OSError:  # not even executable for the user
            continue
        if r.returncode == 0:
            return exe
    raise RuntimeError("no Python interpreter the plain user can run")


def start_storm(python: str, uid: int, gid: int, folder: Path, pairs: int,
                seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-c", STORM, str(folder), str(pairs), str(seconds)],
                            user=uid, group=gid, extra_groups=[], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_storm(p: subprocess.Popen[str]) -> tuple[int, int]:
    """Stop the storm we started (by its PID); (swaps made, swaps that failed)."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    if p.returncode != 0 or not out.split():
        raise RuntimeError(f"storm failed ({p.returncode}): {err}")
    done, failed = out.split()[:2]
    return int(done), int(failed)


def inotify_watches(pid: int) -> int:
    """How many inotify watches the process holds now."""
    n = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                n += sum(1 for line in fh if line.startswith("inotify wd:"))
        except OSError:
            continue
    return n
