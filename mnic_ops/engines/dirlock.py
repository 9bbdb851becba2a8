"""Where a pass works: folders opened from a trusted place down without following any
symlink (:func:`open_dir_nofollow`, :func:`open_host_dir`), and the per-project lock
that ``clean`` and ``watch`` share (:func:`project_lock`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mnic_ops.core import safefs
from mnic_ops.core.hostroot import HostRoot

# --- safe directory opening ----------------------------------------------------------------

def open_dir_nofollow(base_fd: int, parts: Sequence[str]) -> int:
    """Open ``parts`` below ``base_fd`` one component at a time, never following a
    symlink (``O_NOFOLLOW|O_DIRECTORY``). Raises OSError (ELOOP/ENOTDIR on a link)."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise OSError(errno.EINVAL, "bad path component", part)
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_host_dir(root: HostRoot, host_path: str) -> int:
    """Open a host directory from the root down without following any symlink."""
    rfd = os.open(root.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_dir_nofollow(rfd, [p for p in host_path.split("/") if p])
    finally:
        os.close(rfd)


# --- the per-project lock ----------------------------------------------------------------

LOCK_DIR = "/var/lib/mnic-ops/locks"


def lock_path(root: HostRoot, project_host_path: str) -> str:
    digest = hashlib.sha256(project_host_path.encode("utf-8", "surrogateescape")).hexdigest()
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(project_host_path))[:40] or "root"
    return str(root.path(LOCK_DIR) / f"{base}-{digest[:12]}.lock")


@contextmanager
def project_lock(root: HostRoot, project_host_path: str, wait: float = 0.0, *,
                 probe: bool = False) -> Iterator[bool]:
    """The lock that ``clean`` and ``watch`` share for one project: yields False when
    another pass holds it, at once or after trying for ``wait`` seconds (``clean
    --wait``, what the cron jobs use). Hold it per pass (watch: per batch), not for
    life.

    ``probe`` (``clean --check``) writes nothing: no lock file or folder is created, and
    the lock is not kept (a check must not make a real pass skip); it only tells
    whether another pass holds it now."""
    path = lock_path(root, project_host_path)
    if probe:
        yield not safefs.lock_held(path)
        return
    with safefs.locked(path, blocking=False, wait=wait) as got:
        yield got
