"""Crash-safe in-place gzip, shared by ``clean`` and the ``watch`` daemon.

The unit of work is a *batch*: some names in one directory, given as a directory file
descriptor (never a path, so a symlink swapped into the tree cannot redirect us).
For each name:

1. ``lstat`` then open with ``O_NOFOLLOW|O_NONBLOCK``; ``fstat`` must show the same
   regular file with one link, on the expected filesystem, old enough.
2. Take a read *lease* (``F_SETLEASE``): the kernel refuses it while any process has the
   file open for writing, and breaks it if one opens it later, so the check also covers
   the time we work.  Where leases are unavailable, ``/proc/*/fd`` is scanned instead.
3. Write standard gzip to a temporary sibling created with ``O_EXCL|O_NOFOLLOW``, with the
   original's owner, mode and times; read it back from the file with the standard zlib
   (header, CRC and length checked) and compare the bytes with the original.
4. One ``syncfs`` makes the whole batch durable (``fsync`` per file for tiny batches).
5. Commit: rename the temporary to ``NAME.gz`` with RENAME_NOREPLACE (fails if that
   name appeared; link+unlink where unsupported), move the
   original aside to a temporary name (atomic; the identity and the lease are checked
   again there), then unlink it.  Any surprise puts the original back.

A ``kill -9`` anywhere leaves the original, or a verified archive, or both; temporaries
left behind are recognised by name (:func:`mnic_ops.engines.tempfiles.recover_stale`)
and finished or removed by the next pass.  Only one pass per project works at a time
(:func:`mnic_ops.engines.dirlock.project_lock`).

The pieces live beside it: :mod:`~mnic_ops.engines.inplace` (outcomes, options, the
per-file checks, no-replace renames), :mod:`~mnic_ops.engines.gzipformat` (writing and
verifying gzip), :mod:`~mnic_ops.engines.tempfiles` (temporaries and their recovery),
:mod:`~mnic_ops.engines.archives` (numbered kept copies, expiry, restore) and
:mod:`~mnic_ops.engines.dirlock` (no-follow folders, the per-project lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mnic_ops.engines.archives import keep_numbered
from mnic_ops.engines.gzipformat import codec, compress_into, gunzip_matches, read_small_or_hash
from mnic_ops.engines.inplace import (
    COMPRESSED,
    FAILED,
    FINISHED,
    SKIPPED,
    Options,
    Outcome,
    Skip,
    link_noreplace,
    lstat,
    open_checked,
    os_reason,
    syncfs,
)
from mnic_ops.engines.tempfiles import TMP_MARK, put_back, take_aside, tmp_name

# Longest original name (bytes) we handle: leaves room for ".gz" and the temp suffixes.
MAX_NAME = 200


@dataclass
class _Pending:
    name: str
    fd: int
    st: os.stat_result
    tmp: str
    tmp_fd: int
    final: str
    after: int
    leased: bool
    finish_only: bool = False  # NAME.gz already holds exactly this content
    kept_as: str = ""  # the older NAME.gz (other content) now has this numbered name
    extra: dict[str, Any] = field(default_factory=dict)


# --- process-wide setup -----------------------------------------------------------------

def prepare_process() -> None:
    """Ignore SIGIO: a lease break must not kill us (it is detected with F_GETLEASE)."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)


# --- open-for-writing checks ---------------------------------------------------------------

def _take_lease(fd: int) -> bool:
    """True with a read lease held; False when leases are not available here.
    Raises Skip when the file is open for writing."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            raise Skip("open_for_writing") from None
        return False  # EACCES (not owner, no CAP_LEASE), EINVAL (fs without leases)


def _lease_intact(p: _Pending) -> bool:
    if not p.leased:
        return True
    try:
        return fcntl.fcntl(p.fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
    except OSError:
        return False


def open_for_writing(ids: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which of these (dev, ino) some process has open for writing, from /proc.
    The fallback where leases are unavailable (a snapshot, so used right before commit)."""
    found: set[tuple[int, int]] = set()
    if not ids:
        return found
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for n in fds:
            try:
                st = os.stat(f"{fd_dir}/{n}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in ids:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{n}") as fh:
                    flags = next((int(line.split()[1], 8) for line in fh
                                  if line.startswith("flags:")), 0)
            except (OSError, ValueError):
                flags = os.O_RDWR  # cannot tell: assume the worst
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.add((st.st_dev, st.st_ino))
    return found


def _same_file(a: os.stat_result, b: os.stat_result, *, ctime: bool = True) -> bool:
    """Same inode, untouched (ctime also catches chmod/chown; a rename changes it too)."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns) and (
        not ctime or a.st_ctime_ns == b.st_ctime_ns)


def _prepare(dirfd: int, name: str, opts: Options, mod: ModuleType) -> _Pending:
    if len(os.fsencode(name)) > MAX_NAME:
        raise Skip("name_too_long")
    final = name + ".gz"
    fd, st = open_checked(dirfd, name, opts)
    tmp_fd = -1
    tmp = ""
    kept_as = ""
    try:
        leased = _take_lease(fd)
        existing = lstat(dirfd, final)
        if existing is not None:
            # Left by an interrupted pass? Then it holds exactly this content.
            if not stat.S_ISREG(existing.st_mode) or existing.st_nlink != 1:
                raise Skip("archive_exists")
            gz = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dirfd)
            try:
                want = read_small_or_hash(fd, st)
                same = gunzip_matches(gz, want)
            finally:
                os.close(gz)
            if same:
                return _Pending(name, fd, st, "", -1, final, existing.st_size, leased,
                                finish_only=True)
            # A collision: NAME was written again after NAME.gz was made (the framework
            # re-created a history file, say). The older archive keeps its content under
            # the next numbered name and NAME is compressed as usual.
            kept_as = keep_numbered(dirfd, final, existing)
            os.lseek(fd, 0, os.SEEK_SET)  # the comparison read the original to its end
        tmp = tmp_name(final, TMP_MARK)
        tmp_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        size, want = compress_into(fd, tmp_fd, name, st, mod, opts.level)
        os.fchown(tmp_fd, st.st_uid, st.st_gid)
        os.fchmod(tmp_fd, stat.S_IMODE(st.st_mode))
        os.utime(tmp_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        if not _same_file(os.fstat(fd), st):
            raise Skip("changed")
        # Read the archive back from the file and compare with the original.
        if not gunzip_matches(tmp_fd, want):
            raise Skip("io_error", "archive did not read back equal to the original")
        return _Pending(name, fd, st, tmp, tmp_fd, final, size, leased, kept_as=kept_as)
    except BaseException as exc:
        if tmp_fd >= 0:
            os.close(tmp_fd)
            with suppress(OSError):
                os.unlink(tmp, dir_fd=dirfd)
        os.close(fd)
        if isinstance(exc, OSError):
            raise Skip(os_reason(exc), exc.strerror or "") from None
        raise


def _release(p: _Pending) -> None:
    if p.tmp_fd >= 0:
        os.close(p.tmp_fd)
        p.tmp_fd = -1
    if p.fd >= 0:
        os.close(p.fd)  # closing drops the lease
        p.fd = -1


def _commit(dirfd: int, p: _Pending, writers: set[tuple[int, int]]) -> Outcome:
    """Put the verified, durable archive in place and remove the original."""
    # (the lease is checked once, after the original is moved aside: a writer that
    # came earlier is caught there too)
    if (p.st.st_dev, p.st.st_ino) in writers:
        raise Skip("open_for_writing")
    if not _same_file(os.fstat(p.fd), p.st):
        raise Skip("changed")
    linked = False
    if not p.finish_only:
        try:
            link_noreplace(dirfd, p.tmp, p.final)
            p.tmp = ""  # it has its final name now
        except FileExistsError:
            raise Skip("archive_exists") from None
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise Skip("archive_exists") from None
            raise
        linked = True
    try:
        aside = take_aside(dirfd, p.name, p.st)
    except OSError:
        if linked:
            os.unlink(p.final, dir_fd=dirfd)
        raise
    if aside is None:
        if linked:
            os.unlink(p.final, dir_fd=dirfd)
        raise Skip("changed")
    if not _lease_intact(p) or not _same_file(os.fstat(p.fd), p.st, ctime=False):
        # a writer opened it just now: its data must stay under the original name
        put_back(dirfd, aside, p.name)
        if linked:
            os.unlink(p.final, dir_fd=dirfd)
        raise Skip("open_for_writing")
    os.unlink(aside, dir_fd=dirfd)
    return Outcome(p.name, FINISHED if p.finish_only else COMPRESSED,
                   before=p.st.st_size, after=p.after, kept_as=p.kept_as)


def compress_batch(dirfd: int, names: Sequence[str], opts: Options,
                   on_prepared: Callable[[], None] | None = None) -> list[Outcome]:
    """Compress ``names`` in the directory ``dirfd``. Returns one outcome per name.

    All archives are written and verified first, made durable together, then committed.
    ``on_prepared`` is a test hook (kill -9 between the phases).
    """
    _, mod = codec(opts.compressor)
    if (signal.getsignal(signal.SIGIO) is signal.SIG_DFL
            and threading.current_thread() is threading.main_thread()):
        prepare_process()
    out: list[Outcome] = []
    pending: list[_Pending] = []
    try:
        for name in names:
            try:
                pending.append(_prepare(dirfd, name, opts, mod))
            except Skip as s:
                state = FAILED if s.reason in ("io_error", "no_space", "read_only") \
                    else SKIPPED
                out.append(Outcome(name, state, s.reason, s.detail))
        if not pending:
            return out
        _make_durable(dirfd, pending, opts)
        if on_prepared is not None:
            on_prepared()
        writers: set[tuple[int, int]] = set()
        unleased = {(p.st.st_dev, p.st.st_ino) for p in pending if not p.leased}
        if unleased:
            writers = open_for_writing(unleased)
        for p in pending:
            try:
                out.append(_commit(dirfd, p, writers))
            except Skip as s:
                out.append(Outcome(p.name, SKIPPED, s.reason, s.detail))
            except OSError as exc:
                out.append(Outcome(p.name, FAILED, os_reason(exc), exc.strerror or ""))
            finally:
                if p.tmp:
                    with suppress(FileNotFoundError):
                        os.unlink(p.tmp, dir_fd=dirfd)
                _release(p)
        if opts.sync != "none":
            os.fsync(dirfd)  # the renames and unlinks themselves
    finally:
        for p in pending:  # only on an unexpected exception
            if p.fd >= 0:
                if p.tmp:
                    with suppress(OSError):
                        os.unlink(p.tmp, dir_fd=dirfd)
                _release(p)
    return out


WOULD_COMPRESS = "would_compress"


def check_batch(dirfd: int, names: Sequence[str], opts: Options) -> list[Outcome]:
    """What :func:`compress_batch` would do with ``names``, without writing anything:
    the same per-file checks in the same order (open without following links, a
    single-link regular file on the filesystem, old enough, a name with room for
    ``.gz``, no writer: a read lease taken and at once given back, or the ``/proc`` scan
    where leases are unavailable; ``NAME.gz`` a plain file if it exists). Each name is
    ``would_compress`` (with its size) or skipped with the reason the run would give,
    so that ``clean --check`` says what the run will do on an unchanged tree."""
    if (signal.getsignal(signal.SIGIO) is signal.SIG_DFL
            and threading.current_thread() is threading.main_thread()):
        prepare_process()
    out: list[Outcome] = []
    unleased: dict[tuple[int, int], int] = {}  # (dev, ino) -> index in out
    for name in names:
        try:
            if len(os.fsencode(name)) > MAX_NAME:
                raise Skip("name_too_long")
            fd, st = open_checked(dirfd, name, opts)
            try:
                leased = _take_lease(fd)
                if leased:
                    with suppress(OSError):
                        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            finally:
                os.close(fd)
            existing = lstat(dirfd, name + ".gz")
            if existing is not None and (not stat.S_ISREG(existing.st_mode)
                                         or existing.st_nlink != 1):
                raise Skip("archive_exists")
            if not leased:
                unleased[(st.st_dev, st.st_ino)] = len(out)
            out.append(Outcome(name, WOULD_COMPRESS, before=st.st_size))
        except Skip as s:
            state = FAILED if s.reason in ("io_error", "no_space", "read_only") else SKIPPED
            out.append(Outcome(name, state, s.reason, s.detail))
        except OSError as exc:
            out.append(Outcome(name, SKIPPED, os_reason(exc), exc.strerror or ""))
    for ident in open_for_writing(set(unleased)):
        i = unleased[ident]
        out[i] = Outcome(out[i].name, SKIPPED, "open_for_writing")
    return out


def _make_durable(dirfd: int, pending: list[_Pending], opts: Options) -> None:
    mode = opts.sync
    if mode == "none":
        return
    writes = [p for p in pending if p.tmp_fd >= 0]
    if mode == "auto":
        mode = "syncfs" if len(writes) > 2 else "fsync"
    if mode == "syncfs":
        try:
            syncfs(dirfd)
            return
        except (OSError, AttributeError):
            pass
    for p in writes:
        os.fsync(p.tmp_fd)
    os.fsync(dirfd)


def compress_at(dirfd: int, name: str, opts: Options | None = None) -> Outcome:
    """Compress one file (the watch daemon's unit of work)."""
    return compress_batch(dirfd, [name], opts or Options())[0]
