"""Safe file primitives: atomic write, no-follow open, verified copy, backups, locks.

Everything that writes a file a host depends on goes through here, so that a crash or
``kill -9`` at any instant leaves either the old file or the new one, never a torn one,
and a root process is never steered through a symlink a user planted. Reaching files
below a folder a user controls (no link followed at any level) is
:mod:`mnic_ops.core.beneathfs`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mnic_ops.core.errors import OpsError

TMP_MARK = ".mnic-ops-tmp"
_CHUNK = 1 << 20


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(name: str) -> str:
    """Name of a temporary sibling for ``name``; recognisable so stale ones can be removed."""
    return f".{name}{TMP_MARK}.{os.getpid()}.{secrets.token_hex(4)}"


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    follow: bool = False,
    before_rename: Callable[[Path], None] | None = None,
) -> Path:
    """Replace ``path`` with ``data`` atomically and durably.

    The data goes to a temporary file in the same folder (``O_EXCL|O_NOFOLLOW``), is
    fsynced, given the owner, group and mode of the file it replaces (or the ones given;
    0644 root for a new file) and renamed over ``path``; then the folder is fsynced.
    A symlink at ``path`` is refused unless ``follow`` is set, in which case the real
    file it points to is replaced (as for a symlinked ``/etc/fstab``).
    ``before_rename`` is called with the finished temporary file (content, owner and mode
    final, fsynced) just before the rename: it can check the very bytes that will land
    (``findmnt --verify --tab-file``) or take a backup; if it raises, the temporary file
    is removed and ``path`` is left untouched.
    Returns the path actually written.
    """
    target = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        if not follow:
            raise OpsError(f"{target}: is a symlink; refusing to write through it")
        target = Path(os.path.realpath(target))
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OpsError(f"{target}: not a regular file; refusing to replace it")
    folder = target.parent
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_at(dfd, target.name, data, st, mode=mode, uid=uid, gid=gid,
                    before_rename=None if before_rename is None
                    else (lambda tmp: before_rename(folder / tmp)))
    finally:
        os.close(dfd)
    return target


def replace_at(dfd: int, name: str, data: bytes, st: os.stat_result | None, *,
                mode: int | None, uid: int | None, gid: int | None,
                times_ns: tuple[int, int] | None = None,
                before_rename: Callable[[str], None] | None = None) -> None:
    """The one write-temporary-then-rename core of :func:`atomic_write`,
    :func:`atomic_write_at` and :func:`mnic_ops.core.beneathfs.atomic_write_beneath`, all
    relative to the folder descriptor ``dfd``: the temporary is created
    ``O_EXCL|O_NOFOLLOW``, gets the owner, group and mode of the file it replaces (``st``)
    unless given, is fsynced, renamed over ``name``, and the folder is fsynced. Any
    failure removes the temporary and leaves ``name`` as it was."""
    if mode is None:
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
    if uid is None:
        uid = st.st_uid if st is not None else -1
    if gid is None:
        gid = st.st_gid if st is not None else -1
    tmp = tmp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            if times_ns is not None:
                os.utime(fd, ns=times_ns)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename(tmp)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    os.fsync(dfd)


def atomic_write_at(dirfd: int, name: str, data: bytes | str, *,
                    expect: os.stat_result | None = None) -> None:
    """:func:`atomic_write` for ``name`` in the open folder ``dirfd`` (nothing below it
    is followed): the replaced file keeps its owner, group and mode. With ``expect``
    (the stat of the file as it was read), a file that changed since (another writer)
    is left alone and OpsError is raised."""
    if isinstance(data, str):
        data = data.encode()
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OpsError(f"{name}: not a regular file; refusing to replace it")
    if expect is not None and (st is None or (st.st_dev, st.st_ino, st.st_size,
                                              st.st_mtime_ns) != (
            expect.st_dev, expect.st_ino, expect.st_size, expect.st_mtime_ns)):
        raise OpsError(f"{name}: changed since it was read; left as it is")
    replace_at(dirfd, name, data, st, mode=None, uid=None, gid=None)

def open_nofollow(path: str | os.PathLike[str], flags: int = os.O_RDONLY) -> int:
    """Open ``path`` without following a symlink in its last component."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpsError(f"{path}: is a symlink; refusing to follow it") from exc
        raise


def folder_times(dfd: int) -> tuple[int, int]:
    """(atime, mtime) in ns of the folder open at ``dfd``: what a change that adds,
    replaces or removes a name in it is about to move, so that undo can put it back."""
    st = os.fstat(dfd)
    return st.st_atime_ns, st.st_mtime_ns


def backup_data(data: bytes, st: os.stat_result, dest: str | os.PathLike[str]) -> Path:
    """Keep ``data`` (read with stat ``st``) as a verified backup at ``dest``, with the
    original's mode, owner and times, so that a restore puts back exactly that."""
    d = Path(dest)
    d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = atomic_write(d, data, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                           gid=st.st_gid)
    os.utime(written, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    if sha256_file(written) != hashlib.sha256(data).hexdigest():
        raise OpsError(f"{dest}: backup does not read back as written")
    return written


def read_bytes_nofollow(path: str | os.PathLike[str]) -> bytes:
    """Read a whole regular file, refusing a symlink or anything that is not a file."""
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OpsError(f"{path}: not a regular file")
        return fh.read()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content (not following a final symlink)."""
    h = hashlib.sha256()
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_verified(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, keep_owner: bool = True
) -> None:
    """Copy a regular file to ``dst`` atomically, keeping mode, owner and times, and check
    that the copy reads back with the same content before returning.
    """
    fd = open_nofollow(src)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OpsError(f"{src}: not a regular file")
        data = fh.read()
    want = hashlib.sha256(data).hexdigest()
    written = atomic_write(
        dst, data, mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid if keep_owner else None, gid=st.st_gid if keep_owner else None,
    )
    os.utime(written, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    if sha256_file(written) != want:
        raise OpsError(f"{dst}: copy does not match {src} after writing")


def backup(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Keep a verified copy of ``path`` at ``dest`` (folders created 0700)."""
    d = Path(dest)
    d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    copy_verified(path, d)
    return d


@contextmanager
def locked(path: str | os.PathLike[str], *, blocking: bool = True,
           wait: float = 0.0) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600); yield False when
    ``blocking`` is off and somebody else holds it (after trying for ``wait`` seconds)."""
    import fcntl
    import time

    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    yield False
                    return
                time.sleep(min(0.25, left))
        yield True
    finally:
        os.close(fd)


def lock_held(path: str | os.PathLike[str]) -> bool:
    """Does someone hold the ``flock`` on ``path`` right now? Creates nothing (a missing
    file is a lock nobody holds) and keeps nothing."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# --- renames and flushes the os module does not offer --------------------------------

_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc: object | None = None


def _libc_fn(name: str) -> object:
    """A libc function through ctypes (renameat2 and syncfs have no os wrapper)."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return getattr(_libc, name)


def renameat2(old_dir_fd: int | None, old: str, new_dir_fd: int | None, new: str,
              flags: int = 0) -> None:
    """``renameat2(2)``: with ``RENAME_EXCHANGE`` two names swap atomically (a folder
    and a symlink included), with ``RENAME_NOREPLACE`` an existing ``new`` is an error.
    Raises OSError; EINVAL/ENOSYS/EOPNOTSUPP mean the filesystem lacks the flag."""
    import ctypes

    fn = _libc_fn("renameat2")
    rc = fn(  # type: ignore[operator]
        ctypes.c_int(_AT_FDCWD if old_dir_fd is None else old_dir_fd), os.fsencode(old),
        ctypes.c_int(_AT_FDCWD if new_dir_fd is None else new_dir_fd), os.fsencode(new),
        ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd``: one call instead of an fsync per file
    after writing thousands of them (falls back to ``sync()``)."""
    import ctypes

    try:
        fn = _libc_fn("syncfs")
    except AttributeError:
        os.sync()
        return
    if fn(ctypes.c_int(fd)) != 0:  # type: ignore[operator]
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
