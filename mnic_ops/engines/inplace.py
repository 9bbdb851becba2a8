"""What every in-place file operation of the engines shares: the outcome of one name
(:class:`Outcome`, its states and :data:`REASONS`), the :class:`Options` of a pass, the
checks a file must pass before it is touched (:func:`open_checked`: no link followed, a
single-link regular file on the expected filesystem, old enough), and the renames that
never replace a name (:func:`link_noreplace`) or lose data (:func:`syncfs`).

Used by :mod:`mnic_ops.engines.compress` (the batch), :mod:`mnic_ops.engines.archives`
and :mod:`mnic_ops.engines.tempfiles`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from typing import Any

# Outcome states
COMPRESSED = "compressed"
FINISHED = "finished"  # an interrupted compression completed (archive was already there)
EXPIRED = "expired"
RECOVERED = "recovered"  # a stale temporary removed or put back
SKIPPED = "skipped"
FAILED = "failed"

# Skip / failure reasons: code -> text for the report.
REASONS: dict[str, str] = {
    "symlink": "is a symlink (never followed)",
    "not_regular": "not a regular file (fifo, socket, device)",
    "hard_links": "has more than one hard link",
    "open_for_writing": "open for writing by a process",
    "other_filesystem": "on another filesystem",
    "archive_exists": "NAME.gz exists and is not a plain single-link file",
    "changed": "changed or replaced during the pass",
    "vanished": "disappeared during the pass",
    "too_young": "became newer than the cut-off during the pass",
    "permission": "permission denied",
    "name_too_long": "name too long for a .gz sibling",
    "no_space": "no space left on the filesystem",
    "read_only": "read-only filesystem",
    "io_error": "I/O error",
    "unreadable_dir": "folder cannot be read",
    "protected": "read back by name by the framework (never touched)",
    "tmp_in_use": "temporary of a running process",
    "stale_kept": "stale temporary kept (original name taken)",
}


# --- outcomes ---------------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to one name."""

    name: str
    state: str
    reason: str = ""  # a REASONS code for skipped/failed
    detail: str = ""
    before: int = 0
    after: int = 0
    kept_as: str = ""  # a collision resolved: the old NAME.gz's new name (NAME.N.gz)


@dataclass
class Options:
    """How a batch is compressed (picklable: sent to worker processes)."""

    level: int = 5
    compressor: str = "auto"
    dev: int | None = None  # filesystem the tree is on
    max_mtime: float | None = None  # only files last modified before this
    sync: str = "auto"  # auto | syncfs | fsync | none (tests only)


class Skip(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def os_reason(exc: OSError) -> str:
    return {
        errno.ENOSPC: "no_space", errno.EDQUOT: "no_space", errno.EROFS: "read_only",
        errno.EACCES: "permission", errno.EPERM: "permission", errno.ENOENT: "vanished",
        errno.ELOOP: "symlink", errno.ENAMETOOLONG: "name_too_long", errno.EIO: "io_error",
        errno.ENOTDIR: "symlink", errno.EXDEV: "other_filesystem",
    }.get(exc.errno or 0, "io_error")


_libc: Any = None


def syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd`` (all our batch's files in one call)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_regular(st: os.stat_result, opts: Options) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Skip("symlink")
    if not stat.S_ISREG(st.st_mode):
        raise Skip("not_regular")
    if opts.dev is not None and st.st_dev != opts.dev:
        raise Skip("other_filesystem")
    if st.st_nlink != 1:
        raise Skip("hard_links")
    if opts.max_mtime is not None and st.st_mtime >= opts.max_mtime:
        raise Skip("too_young")


def open_checked(dirfd: int, name: str, opts: Options) -> tuple[int, os.stat_result]:
    """Open a candidate read-only without following links or blocking on a fifo, and
    return it with its fstat when it is a single-link regular file we may compress."""
    lst = lstat(dirfd, name)
    if lst is None:
        raise Skip("vanished")
    check_regular(lst, opts)  # never open a device node or fifo, even non-blocking
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise Skip(os_reason(exc), exc.strerror or "") from None
    try:
        st = os.fstat(fd)
        check_regular(st, opts)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
            raise Skip("changed")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


_RENAME_NOREPLACE = 1


_renameat2: Any = None


def _renameat2_noreplace(dirfd: int, src: str, dst: str) -> bool:
    """renameat2(RENAME_NOREPLACE); False where the kernel, libc or filesystem lacks it."""
    global _libc, _renameat2
    if _renameat2 is None:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(_libc, "renameat2", False)
    if _renameat2 is False:
        return False
    if _renameat2(dirfd, os.fsencode(src), dirfd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        _renameat2 = False
        return False
    raise OSError(e, os.strerror(e), dst)


def link_noreplace(dirfd: int, src: str, dst: str) -> None:
    """Give ``src`` the name ``dst`` unless ``dst`` exists: one atomic rename with
    RENAME_NOREPLACE, else link + unlink (both fail with EEXIST when it exists)."""
    if _renameat2_noreplace(dirfd, src, dst):
        return
    try:
        os.link(src, dst, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # a filesystem without hard links: check-then-rename (our folder, under the lock)
        if lstat(dirfd, dst) is not None:
            raise FileExistsError(errno.EEXIST, "exists", dst) from None
        os.rename(src, dst, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        return
    os.unlink(src, dir_fd=dirfd)
