"""Paths below a base folder a user may control, reached without following their links.

A root process that reads or writes inside a user's tree opens every folder relative to
the previous one's descriptor with ``O_NOFOLLOW``, so a symlink swapped in at any level
cannot lead it outside (:func:`open_beneath`, :func:`read_beneath`,
:func:`atomic_write_beneath`, :func:`unlink_beneath`); :func:`resolve_beneath` resolves
links as if the base were ``/``; an :data:`Ident` checks that the base folder is still
the one found earlier (:func:`check_base`). The writes themselves are
:mod:`mnic_ops.core.safefs`'s.
"""

from __future__ import annotations

import errno
import os
import stat

from mnic_ops.core.errors import OpsError
from mnic_ops.core.safefs import replace_at

# What :func:`read_beneath` reads of a file below a user's tree unless told otherwise: the
# framework's JSON files are kilobytes; a sparse 3 GB file must not become 3 GB of RAM.
MAX_READ = 16 << 20


class TooLarge(OpsError):
    """A file larger than its reader's bound: refused, not read."""



def resolve_beneath(base: str | os.PathLike[str], path: str, *, max_links: int = 40) -> str:
    """Resolve the symlinks in ``path`` as if ``base`` were ``/`` (like a chroot): an
    absolute link target starts again at ``base`` and ``..`` stops at it, so a link can
    never lead outside ``base``. Returns the resolved path relative to ``base`` in
    absolute form (a host path under ``--root``). Components that do not exist are kept
    as they are; a link loop or more than ``max_links`` links is an error.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute: {path!r}")
    basep = os.fspath(base)
    todo = [p for p in path.split("/") if p][::-1]  # a stack: next component last
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        real = os.path.join(basep, *done, part)
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            done.append(part)
            continue
        links += 1
        if links > max_links:
            raise OpsError(f"{path}: too many levels of symbolic links")
        target = os.readlink(real)
        if target.startswith("/"):
            done = []
        todo.extend([p for p in target.split("/") if p][::-1])
    return "/" + "/".join(done)

# A folder's identity as found: (st_dev, st_ino, st_uid). A walk that starts again from
# the folder's path later checks the descriptor it opened against it: a path can lead
# elsewhere by then (a user renamed a folder above it and put a link there).
Ident = tuple[int, int, int]


def ident_of(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino, st.st_uid


class BaseReplaced(OSError):
    """The folder a walk starts from is no longer the one found earlier (ESTALE): nothing
    below it is opened."""

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        super().__init__(errno.ESTALE, why, os.fspath(path))


def check_base(fd: int, ident: Ident | None, path: str | os.PathLike[str],
               what: str = "the folder") -> None:
    """Raise :class:`BaseReplaced` when the folder open at ``fd`` is not the one whose
    identity is ``ident`` (device, inode, owner); nothing to check for None."""
    if ident is None:
        return
    now = ident_of(os.fstat(fd))
    want = tuple(ident)
    if now != want:
        raise BaseReplaced(path, f"{what} was replaced since mnic-ops found it (then "
                           f"device {want[0]} inode {want[1]} uid {want[2]}, now device "
                           f"{now[0]} inode {now[1]} uid {now[2]}): not entered")


def open_beneath(base: str | os.PathLike[str], relpath: str, flags: int = os.O_RDONLY, *,
                 base_ident: Ident | None = None) -> int:
    """Open ``base/relpath`` following no symlink in any component below ``base``.

    Each folder is opened relative to the previous one's descriptor with
    ``O_NOFOLLOW``, so a link swapped in by a user cannot lead outside ``base``; with
    ``base_ident`` the opened ``base`` must still be that folder (:func:`check_base`).
    """
    parts = [p for p in relpath.split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise OpsError(f"{relpath}: '..' is not allowed")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_base(fd, base_ident, base)
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
        if not parts:
            return os.dup(fd)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except BaseReplaced:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OpsError(f"{base}/{relpath}: a symlink is in the way; refusing to follow it") \
                from exc
        raise
    finally:
        os.close(fd)


def _open_dir_beneath(base: str | os.PathLike[str], reldir: str,
                      base_ident: Ident | None = None) -> int:
    """A descriptor of folder ``base/reldir``, reached without following any symlink,
    ``base`` itself included (a user may own the folder that holds it); with
    ``base_ident``, ``base`` must still be the folder found earlier."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(base, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OpsError(f"{base}: is a symlink or not a folder; refusing to follow it") \
                from exc
        raise
    try:
        check_base(fd, base_ident, base)
        for part in [p for p in reldir.split("/") if p and p != "."]:
            if part == "..":
                raise OpsError(f"{reldir}: '..' is not allowed")
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OpsError(f"{base}/{reldir}: a symlink is in the way; refusing to "
                                   "follow it") from exc
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split_rel(relpath: str) -> tuple[str, str]:
    parts = [p for p in relpath.split("/") if p and p != "."]
    if not parts or any(p == ".." for p in parts):
        raise OpsError(f"{relpath}: not a plain relative file path")
    return "/".join(parts[:-1]), parts[-1]


def read_beneath(base: str | os.PathLike[str], relpath: str, *, max_bytes: int = MAX_READ,
                 source: str | None = None, base_ident: Ident | None = None
                 ) -> tuple[bytes, os.stat_result] | None:
    """Content and stat of the regular file ``base/relpath`` (None when absent), following
    no symlink below ``base``: a user cannot swap a folder for a link to redirect a root
    reader. Anything but a regular file is refused, and so is a file of more than
    ``max_bytes`` (:class:`TooLarge`, by its size before reading and by reading at most
    one byte more): the user who owns the tree decides its size. ``source`` names the
    file in messages (default: the path); ``base_ident`` as for :func:`open_beneath`."""
    shown = source or f"{base}/{relpath}"
    reldir, name = _split_rel(relpath)
    try:
        dfd = _open_dir_beneath(base, reldir, base_ident)
    except FileNotFoundError:
        return None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OpsError(f"{base}/{relpath}: is a symlink; refusing to follow it") \
                    from exc
            raise
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OpsError(f"{shown}: not a regular file")
            data = b"" if st.st_size > max_bytes else fh.read(max_bytes + 1)
            if st.st_size > max_bytes or len(data) > max_bytes:
                raise TooLarge(f"{shown}: {max(st.st_size, len(data))} bytes, more than the "
                               f"{max_bytes} mnic-ops reads of a file there; not read")
            return data, st
    finally:
        os.close(dfd)


def atomic_write_beneath(
    base: str | os.PathLike[str],
    relpath: str,
    data: bytes | str,
    *,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    times_ns: tuple[int, int] | None = None,
    base_ident: Ident | None = None,
) -> None:
    """:func:`atomic_write` for ``base/relpath`` through folder descriptors: no symlink
    below ``base`` is followed, so a user-owned tree cannot steer where root writes.
    Keeps the replaced file's owner, group and mode unless given (new: 0644);
    ``times_ns`` (atime, mtime) restores a file's times, as an undo must; with
    ``base_ident`` the opened ``base`` must still be the folder found earlier."""
    if isinstance(data, str):
        data = data.encode()
    reldir, name = _split_rel(relpath)
    dfd = _open_dir_beneath(base, reldir, base_ident)
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OpsError(f"{base}/{relpath}: not a regular file; refusing to replace it")
        replace_at(dfd, name, data, st, mode=mode, uid=uid, gid=gid, times_ns=times_ns)
    finally:
        os.close(dfd)

def unlink_beneath(base: str | os.PathLike[str], relpath: str, *,
                   base_ident: Ident | None = None) -> bool:
    """Remove the file ``base/relpath`` without following symlinks below ``base``;
    False when it was already gone."""
    reldir, name = _split_rel(relpath)
    dfd = _open_dir_beneath(base, reldir, base_ident)
    try:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        os.fsync(dfd)
        return True
    finally:
        os.close(dfd)

def open_beneath_at(dirfd: int, relpath: str, flags: int = os.O_RDONLY) -> int:
    """Like :func:`open_beneath`, but starting from an open directory descriptor (an
    ``O_PATH`` one works): every component below it is opened with ``O_NOFOLLOW``.

    Useful after dropping privileges: the descriptor was opened with the caller's
    rights, everything below it is checked with the current ones.
    """
    parts = [p for p in relpath.split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise OpsError(f"{relpath}: '..' is not allowed")
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=dirfd)
    fd = dirfd
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            if fd != dirfd:
                os.close(fd)
            fd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OpsError(f"{relpath}: a symlink is in the way; refusing to follow it") \
                from exc
        raise
    finally:
        if fd != dirfd:
            os.close(fd)
