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
left behind are recognised by name (:func:`recover_stale`) and finished or removed by
the next pass.  Only one pass per project works at a time (:func:`project_lock`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import itertools
import os
import re
import secrets
import signal
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mnic_ops.core import safefs
from mnic_ops.core.hostroot import HostRoot

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

TMP_MARK = safefs.TMP_MARK  # archive temporaries: .NAME.gz.mnic-ops-tmp.PID.HEX
ASIDE_MARK = ".mnic-ops-aside"  # originals moved aside: .NAME.mnic-ops-aside.PID.HEX
_STALE_RE = re.compile(r"^\.(?P<name>.+)(?P<mark>\.mnic-ops-tmp|\.mnic-ops-aside)"
                       r"\.(?P<pid>\d+)\.[0-9a-f]+$", re.S)
# Longest original name (bytes) we handle: leaves room for ".gz" and the temp suffixes.
MAX_NAME = 200
SMALL = 1 << 20  # files up to this size are compared in memory, larger ones by hash
_CHUNK = 1 << 20
GZIP_FNAME = 0x08


# --- codecs ---------------------------------------------------------------------------

def _load_codec(name: str) -> ModuleType | None:
    try:
        if name == "zlib-ng":
            from zlib_ng import zlib_ng  # type: ignore[import-not-found,unused-ignore]
            return zlib_ng  # type: ignore[no-any-return,unused-ignore]
        if name == "isal":
            from isal import isal_zlib  # type: ignore[import-not-found,unused-ignore]
            return isal_zlib  # type: ignore[no-any-return,unused-ignore]
    except ImportError:
        return None
    return zlib if name == "zlib" else None


def codec(name: str = "auto") -> tuple[str, ModuleType]:
    """The deflate implementation to use: zlib-ng (same format as zlib, about twice as
    fast), isal, or the standard zlib. All write raw deflate that gzip reads."""
    order = ["zlib-ng", "zlib"] if name == "auto" else [name]
    for n in order:
        mod = _load_codec(n)
        if mod is not None:
            return n, mod
    from mnic_ops.core.errors import InputError

    raise InputError(f"compressor {name!r} is not installed (pip install {name})")


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


class Skip(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _os_reason(exc: OSError) -> str:
    return {
        errno.ENOSPC: "no_space", errno.EDQUOT: "no_space", errno.EROFS: "read_only",
        errno.EACCES: "permission", errno.EPERM: "permission", errno.ENOENT: "vanished",
        errno.ELOOP: "symlink", errno.ENAMETOOLONG: "name_too_long", errno.EIO: "io_error",
        errno.ENOTDIR: "symlink", errno.EXDEV: "other_filesystem",
    }.get(exc.errno or 0, "io_error")


def _fsname(name: str) -> bytes:
    return os.fsencode(name)


# --- process-wide setup -----------------------------------------------------------------

def prepare_process() -> None:
    """Ignore SIGIO: a lease break must not kill us (it is detected with F_GETLEASE)."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)


_libc: Any = None


def syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd`` (all our batch's files in one call)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


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


# --- gzip writing and verification -------------------------------------------------------

def _gzip_header(name: str, mtime: float) -> bytes:
    mt = int(mtime) if 0 <= mtime < 2**32 else 0
    return (b"\x1f\x8b\x08" + bytes([GZIP_FNAME]) + struct.pack("<I", mt) + b"\x00\x03"
            + _fsname(name).replace(b"\x00", b"") + b"\x00")


def is_engine_archive(fd: int, name: str, st: os.stat_result) -> bool:
    """Does the gzip file open at ``fd`` (stat ``st``) start exactly as this engine
    starts its archive of ``name``: that name in the header, and the archive's own mtime
    (the original's, which the engine gives both)? What every mnic-ops archive carries;
    a file that does not is not one of ours."""
    want = _gzip_header(name, st.st_mtime)
    return os.pread(fd, len(want), 0) == want


def gzip_size(fd: int, st: os.stat_result) -> int:
    """The size the gzip file claims it decompresses to (its ISIZE trailer, modulo 2**32:
    a claim that decompressing checks)."""
    if st.st_size < 18:
        return 0
    return int(struct.unpack("<I", os.pread(fd, 4, st.st_size - 4))[0])


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _compress_into(src: int, dst: int, name: str, st: os.stat_result, mod: ModuleType,
                   level: int) -> tuple[int, bytes | str]:
    """Stream ``src`` into ``dst`` as gzip. Returns (archive size, original bytes when
    small else their SHA-256 hex)."""
    header = _gzip_header(name, st.st_mtime)
    if st.st_size <= SMALL:
        chunks = []
        while c := os.read(src, _CHUNK):  # to EOF: it may have grown since fstat
            chunks.append(c)
        data = b"".join(chunks)
        out = (header + mod.compress(data, level, wbits=-15)
               + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))
        _write_all(dst, out)
        return len(out), data if len(data) <= SMALL else hashlib.sha256(data).hexdigest()
    comp = mod.compressobj(level, zlib.DEFLATED, -15)
    h = hashlib.sha256()
    crc, length = 0, 0
    _write_all(dst, header)
    size = len(header)
    while c := os.read(src, _CHUNK):
        h.update(c)
        crc = zlib.crc32(c, crc)
        length += len(c)
        piece = comp.compress(c)
        _write_all(dst, piece)
        size += len(piece)
    piece = comp.flush() + struct.pack("<II", crc, length & 0xFFFFFFFF)
    _write_all(dst, piece)
    return size + len(piece), h.hexdigest()


_INFLATE: ModuleType | None = None


def _inflater() -> ModuleType:
    """zlib-ng's inflate where installed (faster), else the standard zlib: both check
    the gzip header, CRC-32 and length."""
    global _INFLATE
    if _INFLATE is None:
        _INFLATE = _load_codec("zlib-ng") or zlib
    return _INFLATE


def gunzip_matches(fd: int, want: bytes | str) -> bool:
    """Does the gzip file at ``fd`` (read from its start) decompress, with a valid CRC and
    length trailer and nothing after it, to ``want`` (bytes, or their SHA-256 hex)?"""
    os.lseek(fd, 0, os.SEEK_SET)
    d = _inflater().decompressobj(31)
    small = isinstance(want, bytes)
    got: list[bytes] = []
    h = hashlib.sha256()
    total = 0
    limit = len(want) if isinstance(want, bytes) else None
    try:
        while c := os.read(fd, _CHUNK):
            if d.eof:
                return False  # trailing data after the member
            out = d.decompress(c)
            total += len(out)
            if limit is not None and total > limit:
                return False
            if small:
                got.append(out)
            else:
                h.update(out)
        out = d.flush()
        if small:
            got.append(out)
        else:
            h.update(out)
    except (zlib.error, _inflater().error):
        return False
    if not d.eof or d.unused_data:
        return False
    return b"".join(got) == want if isinstance(want, bytes) else h.hexdigest() == want


# --- names ------------------------------------------------------------------------------

_tmp_seq = itertools.count()
_tmp_tag: tuple[int, str] = (0, "")


def _tmp(name: str, mark: str) -> str:
    """A fresh temporary name (pid for stale detection; a per-process random tag and a
    counter instead of a getrandom call per file)."""
    global _tmp_tag
    pid = os.getpid()
    if _tmp_tag[0] != pid:  # new process (fork): new tag
        _tmp_tag = (pid, secrets.token_hex(3))
    return f".{name}{mark}.{pid}.{_tmp_tag[1]}{next(_tmp_seq):x}"


def parse_stale(name: str) -> tuple[str, str, int] | None:
    """(original-or-archive name, kind 'tmp'|'aside', pid) for our temporary names."""
    m = _STALE_RE.match(name)
    if not m:
        return None
    return m["name"], ("aside" if m["mark"] == ASIDE_MARK else "tmp"), int(m["pid"])


def is_ours(name: str) -> bool:
    return parse_stale(name) is not None


def _pid_alive(pid: int, since: float | None = None) -> bool:
    """Is ``pid`` a running process (not a zombie) that started no later than ``since``
    (the temporary's creation: a later start means the PID was reused)?"""
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return False
    fields = raw[raw.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    if since is not None and len(fields) > 19:
        try:
            hz = os.sysconf("SC_CLK_TCK")
            with open("/proc/stat", "rb") as fh:
                btime = next(int(line.split()[1]) for line in fh if line.startswith(b"btime"))
            started = btime + int(fields[19]) / hz
            if started > since + 2:  # clock-tick rounding
                return False
        except (OSError, ValueError, StopIteration):
            pass
    return True


# --- the batch -------------------------------------------------------------------------

def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _check_regular(st: os.stat_result, opts: Options) -> None:
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


def _open_checked(dirfd: int, name: str, opts: Options) -> tuple[int, os.stat_result]:
    """Open a candidate read-only without following links or blocking on a fifo, and
    return it with its fstat when it is a single-link regular file we may compress."""
    lst = _lstat(dirfd, name)
    if lst is None:
        raise Skip("vanished")
    _check_regular(lst, opts)  # never open a device node or fifo, even non-blocking
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise Skip(_os_reason(exc), exc.strerror or "") from None
    try:
        st = os.fstat(fd)
        _check_regular(st, opts)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
            raise Skip("changed")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _same_file(a: os.stat_result, b: os.stat_result, *, ctime: bool = True) -> bool:
    """Same inode, untouched (ctime also catches chmod/chown; a rename changes it too)."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns) and (
        not ctime or a.st_ctime_ns == b.st_ctime_ns)


def _prepare(dirfd: int, name: str, opts: Options, mod: ModuleType) -> _Pending:
    if len(_fsname(name)) > MAX_NAME:
        raise Skip("name_too_long")
    final = name + ".gz"
    fd, st = _open_checked(dirfd, name, opts)
    tmp_fd = -1
    tmp = ""
    kept_as = ""
    try:
        leased = _take_lease(fd)
        existing = _lstat(dirfd, final)
        if existing is not None:
            # Left by an interrupted pass? Then it holds exactly this content.
            if not stat.S_ISREG(existing.st_mode) or existing.st_nlink != 1:
                raise Skip("archive_exists")
            gz = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dirfd)
            try:
                want = _read_small_or_hash(fd, st)
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
        tmp = _tmp(final, TMP_MARK)
        tmp_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        size, want = _compress_into(fd, tmp_fd, name, st, mod, opts.level)
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
            raise Skip(_os_reason(exc), exc.strerror or "") from None
        raise


_NUMBERED_RE = re.compile(r"\.(?P<n>[1-9][0-9]{0,5})\.gz$")


def keep_numbered(dirfd: int, final: str, expect: os.stat_result) -> str:
    """Give the archive ``NAME.gz`` the next free numbered name ``NAME.N.gz`` (N counts
    up: a higher N is a later archive) without replacing anything; the new name.
    Raises Skip when that cannot be done (then nothing changed)."""
    base = final[:-3]
    top = 0
    try:
        for entry in os.listdir(dirfd):
            if entry.startswith(base + ".") and (m := _NUMBERED_RE.search(entry)) \
                    and entry[: m.start()] == base:
                top = max(top, int(m["n"]))
    except OSError as exc:
        raise Skip(_os_reason(exc), exc.strerror or "") from None
    for n in range(top + 1, top + 100):
        cand = f"{base}.{n}.gz"
        if len(_fsname(cand)) > 255:
            raise Skip("name_too_long")
        now = _lstat(dirfd, final)
        if now is None or (now.st_dev, now.st_ino) != (expect.st_dev, expect.st_ino):
            raise Skip("changed")
        try:
            _link_noreplace(dirfd, final, cand)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                continue
            raise Skip(_os_reason(exc), exc.strerror or "") from None
        return cand
    raise Skip("archive_exists")


def _read_small_or_hash(fd: int, st: os.stat_result) -> bytes | str:
    os.lseek(fd, 0, os.SEEK_SET)
    if st.st_size <= SMALL:
        chunks = []
        while c := os.read(fd, _CHUNK):
            chunks.append(c)
        return b"".join(chunks)
    h = hashlib.sha256()
    while c := os.read(fd, _CHUNK):
        h.update(c)
    return h.hexdigest()


def _release(p: _Pending) -> None:
    if p.tmp_fd >= 0:
        os.close(p.tmp_fd)
        p.tmp_fd = -1
    if p.fd >= 0:
        os.close(p.fd)  # closing drops the lease
        p.fd = -1


def take_aside(dirfd: int, name: str, expect: os.stat_result) -> str | None:
    """Atomically move ``name`` to a temporary name and check it is still the file we
    examined; put it back and return None if not. This makes the later unlink hit
    exactly that inode even if a user swaps names around meanwhile."""
    aside = _tmp(name, ASIDE_MARK)
    os.rename(name, aside, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    now = _lstat(dirfd, aside)
    if now is None or (now.st_dev, now.st_ino) != (expect.st_dev, expect.st_ino):
        put_back(dirfd, aside, name)
        return None
    return aside


def put_back(dirfd: int, aside: str, name: str) -> bool:
    """Rename ``aside`` back to ``name`` unless something took that name meanwhile."""
    try:
        os.link(aside, name, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        if _lstat(dirfd, name) is not None:
            return False
        os.rename(aside, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        return True
    os.unlink(aside, dir_fd=dirfd)
    return True


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


def _link_noreplace(dirfd: int, src: str, dst: str) -> None:
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
        if _lstat(dirfd, dst) is not None:
            raise FileExistsError(errno.EEXIST, "exists", dst) from None
        os.rename(src, dst, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        return
    os.unlink(src, dir_fd=dirfd)


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
            _link_noreplace(dirfd, p.tmp, p.final)
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
                out.append(Outcome(p.name, FAILED, _os_reason(exc), exc.strerror or ""))
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
            if len(_fsname(name)) > MAX_NAME:
                raise Skip("name_too_long")
            fd, st = _open_checked(dirfd, name, opts)
            try:
                leased = _take_lease(fd)
                if leased:
                    with suppress(OSError):
                        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            finally:
                os.close(fd)
            existing = _lstat(dirfd, name + ".gz")
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
            out.append(Outcome(name, SKIPPED, _os_reason(exc), exc.strerror or ""))
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


# --- expiry and stale temporaries --------------------------------------------------------

def expire_at(dirfd: int, name: str, opts: Options) -> Outcome:
    """Delete an old archive: a single-link regular file on our filesystem, older than
    ``opts.max_mtime``; moved aside first so that a swapped name is never deleted."""
    try:
        lst = _lstat(dirfd, name)
        if lst is None:
            raise Skip("vanished")
        _check_regular(lst, opts)
        aside = take_aside(dirfd, name, lst)
        if aside is None:
            raise Skip("changed")
        os.unlink(aside, dir_fd=dirfd)
        return Outcome(name, EXPIRED, before=lst.st_size)
    except Skip as s:
        return Outcome(name, SKIPPED, s.reason, s.detail)
    except OSError as exc:
        return Outcome(name, FAILED, _os_reason(exc), exc.strerror or "")


RESTORED = "restored"  # NAME made again from NAME.gz (a file the framework reads by name)
RESTORE_LIMIT = 64 << 20  # the framework's JSON files are kilobytes; a bomb is refused


def gunzip_at(dirfd: int, final: str, opts: Options, limit: int = RESTORE_LIMIT) -> Outcome:
    """Make ``final`` again from ``final.gz`` (an archive an earlier pass made of a file
    the framework reads back by exact name), then remove the archive: the reverse of
    :func:`compress_batch`, as careful. The content goes to a temporary sibling
    (``O_EXCL|O_NOFOLLOW``) with the archive's owner, mode and times, is made durable
    and read back, and gets its name only if nothing has it (RENAME_NOREPLACE); the
    archive is moved aside and unlinked last. A kill -9 leaves the archive, or the file
    and the archive (the next pass removes the archive after comparing)."""
    gz = final + ".gz"
    try:
        lst = _lstat(dirfd, gz)
        if lst is None:
            raise Skip("vanished")
        _check_regular(lst, Options(dev=opts.dev))
        src = os.open(gz, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                      dir_fd=dirfd)
        try:
            st = os.fstat(src)
            if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
                raise Skip("changed")
            existing = _lstat(dirfd, final)
            if existing is not None:
                # an interrupted restore, or the framework made the file again: the
                # archive is removed only when it holds exactly that content
                if not stat.S_ISREG(existing.st_mode) or existing.st_nlink != 1:
                    raise Skip("archive_exists")
                fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    same = gunzip_matches(src, _read_small_or_hash(fd, existing))
                finally:
                    os.close(fd)
                if not same:
                    raise Skip("archive_exists", f"{final} exists with other content")
            else:
                data = _gunzip_bounded(src, limit)
                tmp = _tmp(final, TMP_MARK)
                tfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
                try:
                    _write_all(tfd, data)
                    os.fchown(tfd, st.st_uid, st.st_gid)
                    os.fchmod(tfd, stat.S_IMODE(st.st_mode))
                    os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    os.fsync(tfd)
                    os.lseek(tfd, 0, os.SEEK_SET)
                    back = b"".join(iter(lambda: os.read(tfd, _CHUNK), b""))
                    if back != data:
                        raise Skip("io_error", "restored file did not read back equal")
                    _link_noreplace(dirfd, tmp, final)
                    tmp = ""
                except FileExistsError:
                    raise Skip("archive_exists", f"{final} appeared meanwhile") from None
                finally:
                    os.close(tfd)
                    if tmp:
                        with suppress(OSError):
                            os.unlink(tmp, dir_fd=dirfd)
                os.fsync(dirfd)
        finally:
            os.close(src)
        aside = take_aside(dirfd, gz, lst)
        if aside is None:
            raise Skip("changed")
        os.unlink(aside, dir_fd=dirfd)
        os.fsync(dirfd)
        return Outcome(final, RESTORED, before=lst.st_size)
    except Skip as s:
        return Outcome(final, SKIPPED, s.reason, s.detail)
    except OSError as exc:
        return Outcome(final, FAILED, _os_reason(exc), exc.strerror or "")


def _gunzip_bounded(fd: int, limit: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    d = zlib.decompressobj(31)
    out: list[bytes] = []
    total = 0
    try:
        while c := os.read(fd, _CHUNK):
            piece = d.decompress(c, limit + 1 - total)
            total += len(piece)
            out.append(piece)
            if total > limit or d.unconsumed_tail:
                raise Skip("io_error", f"decompresses to more than {limit} bytes")
            if d.eof and (d.unused_data or os.read(fd, 1)):
                raise Skip("io_error", "data after the gzip member")
    except zlib.error:
        raise Skip("io_error", "not a valid gzip file") from None
    if not d.eof:
        raise Skip("io_error", "truncated gzip file")
    return b"".join(out)


def recover_stale(dirfd: int, name: str, opts: Options) -> Outcome:
    """Deal with a temporary left by a killed pass (``name`` matched :func:`parse_stale`).

    An archive temporary is simply removed (its original is still in place, or the
    archive was already linked to its final name). An original moved aside is removed
    only when ``NAME.gz`` holds exactly its content; otherwise it is put back.
    Temporaries of a live process are left alone.
    """
    parsed = parse_stale(name)
    if parsed is None:
        return Outcome(name, SKIPPED, "changed")
    orig, kind, pid = parsed
    try:
        lst = _lstat(dirfd, name)
        if lst is None:
            raise Skip("vanished")
        if _pid_alive(pid, lst.st_ctime):
            raise Skip("tmp_in_use")
        if stat.S_ISLNK(lst.st_mode) or not stat.S_ISREG(lst.st_mode):
            raise Skip("symlink" if stat.S_ISLNK(lst.st_mode) else "not_regular")
        if kind == "tmp":
            os.unlink(name, dir_fd=dirfd)
            return Outcome(name, RECOVERED, detail="removed a stale temporary",
                           before=lst.st_size)
        fd, st = _open_checked(dirfd, name, Options(dev=opts.dev))
        try:
            gz_st = _lstat(dirfd, orig + ".gz")
            ok = False
            if gz_st is not None and stat.S_ISREG(gz_st.st_mode):
                gz = os.open(orig + ".gz", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    ok = gunzip_matches(gz, _read_small_or_hash(fd, st))
                finally:
                    os.close(gz)
        finally:
            os.close(fd)
        if ok:
            os.unlink(name, dir_fd=dirfd)
            return Outcome(orig, FINISHED, detail="archive verified; moved-aside original "
                           "removed", before=st.st_size, after=gz_st.st_size if gz_st else 0)
        if put_back(dirfd, name, orig):
            return Outcome(orig, RECOVERED, detail="original put back")
        raise Skip("stale_kept", f"{orig} exists; kept the moved-aside original")
    except Skip as s:
        return Outcome(name, SKIPPED, s.reason, s.detail)
    except OSError as exc:
        return Outcome(name, FAILED, _os_reason(exc), exc.strerror or "")


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
