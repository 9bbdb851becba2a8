"""Verified, crash-safe moves of a folder to another place behind a symlink.

Two operations, mirror images of each other:

* :func:`link_out`: the folder at ``public`` moves to ``dest`` and ``public`` becomes a
  symlink to it (``sessions/`` -> ``/mnt/ssd/.../sessions``);
* :func:`link_back`: ``public`` is such a symlink; the data moves back into a real
  folder at ``public`` and the copy at ``dest`` goes.

Across filesystems the data is copied to a hidden staging folder next to its new place
(keeping modes, owners, times, xattrs, symlinks as symlinks and hardlinks as hardlinks),
the target filesystem is flushed (``syncfs``), every file is read back from the disk and
compared byte for byte with the source, then the names are swapped with
``renameat2(RENAME_EXCHANGE)``: one atomic step in which ``public`` turns from the
folder into the link (or back). Only when the old tree is proven unchanged since the
copy (every entry's inode, size, mtime and ctime) is it removed. On one filesystem the
folder is renamed, no copy: a self-referencing link is created at ``dest`` and swapped
with ``public`` in one ``RENAME_EXCHANGE``.

A journal file, rewritten atomically before each step, names every temporary name, so
that after ``kill -9`` or a power cut :func:`recover` either rolls the move back (before
the swap: the staging copy is removed) or completes it (after the swap). At every
instant ``public`` resolves to the complete data, through the folder or the link.
Only where a filesystem lacks ``RENAME_EXCHANGE`` (ZFS before 2.2, some FUSE and
network filesystems) does the swap take two renames, and for the microseconds between
them ``public`` does not exist (ENOENT for a reader); the journal covers that gap.

The source trees are user-writable and this runs as root: every walk works on
directory file descriptors with ``O_NOFOLLOW``, so a symlink swapped in mid-move is a
refusal, never a way out of the tree; staging folders stay root-only 0700 until verified.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import posixpath
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mnic_ops.core import beneathfs, safefs
from mnic_ops.core.errors import OpsError

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
_CHUNK = 1 << 20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)

# progress(stage, bytes, files): increments, stage "copy" or "verify"
Progress = Callable[[str, int, int], None]


class MoveError(OpsError):
    """A move that could not be done; the message says what state was left."""


class _Changed(Exception):
    """The source changed under the copy (a writer is active)."""

    def __init__(self, rel: str, why: str) -> None:
        super().__init__(rel, why)
        self.rel, self.why = rel, why


class _NoExchange(Exception):
    """The filesystem has no RENAME_EXCHANGE."""


# --- test hook: die at a named step ----------------------------------------------------

def _crashpoint(name: str) -> None:
    """``MNIC_OPS_TEST_CRASH_AT=name`` kills the process with SIGKILL at that step, so
    tests can reach every journal state deterministically (random kills reach the rest).
    """
    if os.environ.get("MNIC_OPS_TEST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# --- places ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """A path as a ``base`` folder (followed as given) and a ``rel`` path below it that
    is walked without following any symlink. With ``ident`` (device, inode, owner: an
    install root as the data map found it) the opened ``base`` must still be that folder:
    its path may lead elsewhere by now (a user renamed a folder above it)."""

    base: str
    rel: str
    ident: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        parts = self.rel.split("/")
        if not self.rel or self.rel.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"bad relative path {self.rel!r}")
        if self.ident is not None:  # a list when read back from a journal
            v = tuple(self.ident)
            if len(v) != 3 or not all(type(x) is int for x in v):
                raise ValueError(f"bad folder identity {self.ident!r}")
            object.__setattr__(self, "ident", v)

    @property
    def path(self) -> Path:
        return Path(self.base) / self.rel

    @property
    def name(self) -> str:
        return posixpath.basename(self.rel)

    def open_parent(self) -> int:
        """A descriptor of the parent folder, reached without following symlinks from
        the base (checked against ``ident``: :class:`~mnic_ops.core.beneathfs.BaseReplaced`)."""
        return beneathfs.open_beneath(self.base, posixpath.dirname(self.rel),
                                   os.O_RDONLY | os.O_DIRECTORY, base_ident=self.ident)

    def state(self) -> tuple[str, str | None, int | None]:
        """(``absent`` | ``dir`` | ``link`` | ``other``, link text, owner uid) of the
        place as it is now, reached like :meth:`open_parent` (a missing parent folder:
        absent)."""
        try:
            pdir = self.open_parent()
        except FileNotFoundError:
            return "absent", None, None
        try:
            try:
                st = os.stat(self.name, dir_fd=pdir, follow_symlinks=False)
            except FileNotFoundError:
                return "absent", None, None
            kind, text = _what(pdir, self.name)
            return kind, text, st.st_uid
        finally:
            os.close(pdir)


def _what(dfd: int, name: str) -> tuple[str, str | None]:
    """("absent" | "dir" | "link" | "other", link text)."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "absent", None
    if stat.S_ISLNK(st.st_mode):
        return "link", os.readlink(name, dir_fd=dfd)
    if stat.S_ISDIR(st.st_mode):
        return "dir", None
    return "other", None


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _O_DIR | _NOATIME, dir_fd=dir_fd)
    except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
        return os.open(name, _O_DIR, dir_fd=dir_fd)


def _open_read(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _O_READ | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, _O_READ, dir_fd=dir_fd)


# --- snapshots ----------------------------------------------------------------------

def _key(st: os.stat_result, top: bool) -> tuple[int, ...]:
    """What must not change for a tree to count as unchanged. A folder's ctime moves
    when it is renamed, so the top folder's is left out; a directory's size is left out
    (its mtime covers its entries)."""
    isdir = stat.S_ISDIR(st.st_mode)
    return (st.st_mode, st.st_uid, st.st_gid, 0 if isdir else st.st_size,
            st.st_mtime_ns, 0 if top else st.st_ctime_ns, st.st_ino)


def _digest(items: Iterator[tuple[str, os.stat_result]]) -> str:
    h = hashlib.sha256()
    for rel, st in sorted(items, key=lambda x: x[0]):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0"
                 + repr(_key(st, rel == "")).encode() + b"\n")
    return h.hexdigest()


def _walk_stats(dfd: int, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    if rel == "":
        yield "", os.fstat(dfd)
    for name in os.listdir(dfd):
        crel = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        yield crel, st
        if stat.S_ISDIR(st.st_mode):
            cfd = _open_dir(name, dfd)
            try:
                yield from _walk_stats(cfd, crel)
            finally:
                os.close(cfd)


def tree_digest(dir_fd: int) -> str:
    """A digest of every entry's identity and metadata below an open folder."""
    return _digest(_walk_stats(dir_fd))


def _digest_at(parent_fd: int, name: str) -> str | None:
    try:
        fd = _open_dir(name, parent_fd)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    try:
        return tree_digest(fd)
    finally:
        os.close(fd)


# --- sizes and open files ---------------------------------------------------------

@dataclass
class TreeSize:
    files: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, fifos, devices
    bytes: int = 0
    hardlinked: int = 0  # extra names of multiply-linked files (no extra space)
    blocks: int = 0  # bytes the tree needs on a filesystem with ``block`` sized blocks
    unsupported: list[str] = field(default_factory=list)

    @property
    def inodes(self) -> int:
        return self.files + self.dirs + self.others


def measure_tree(path: str | os.PathLike[str], block: int = 4096) -> TreeSize:
    """Count a tree without following symlinks; a hardlinked file is counted once."""
    size = TreeSize()
    seen: set[tuple[int, int]] = set()
    fd = _open_dir(os.fspath(path), None)
    try:
        for rel, st in _walk_stats(fd):
            m = st.st_mode
            if stat.S_ISDIR(m):
                size.dirs += 1
                size.blocks += block
            elif stat.S_ISREG(m):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        size.hardlinked += 1
                        continue
                    seen.add((st.st_dev, st.st_ino))
                size.files += 1
                size.bytes += st.st_size
                size.blocks += -(-st.st_size // block) * block
            elif stat.S_ISSOCK(m):
                size.unsupported.append(rel)
            else:
                size.others += 1
    finally:
        os.close(fd)
    return size


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


# --- copying -------------------------------------------------------------------------

def _copy_xattrs(src: int, dst: int, rel: str) -> None:
    try:
        names = os.listxattr(src)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for n in names:
        try:
            os.setxattr(dst, n, os.getxattr(src, n))
        except OSError as exc:
            raise MoveError(f"{rel}: cannot copy extended attribute {n} to the target "
                            f"({exc.strerror}); the target filesystem would lose it") from exc


_WORKERS = 4  # file jobs in flight: small files are latency-bound, not bandwidth-bound
_BATCH = 32  # files of one folder per job
# Flush and start comparing what was copied so far after this much: the read-back of
# the copy runs while the rest is still being copied.
_SYNC_BYTES = 64 << 20
_SYNC_FILES = 4000


class _Pool:
    """Runs per-folder batches of file jobs on a few threads while the walk stays
    serial, so that the disk sees several requests at once. Each job owns duplicates
    of its two folder descriptors. The first error cancels the rest."""

    def __init__(self, workers: int | None = None) -> None:
        workers = workers or _WORKERS
        from concurrent.futures import ThreadPoolExecutor

        self.ex = ThreadPoolExecutor(workers, thread_name_prefix="treemove")
        self.slots = threading.BoundedSemaphore(workers * 4)
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.cancelled = False

    def submit(self, fn: Callable[[int, int, list[Any]], None], sfd: int, dfd: int,
               batch: list[Any]) -> None:
        self.slots.acquire()
        if self.error is not None:
            self.slots.release()
            self.raise_error()
        a = os.dup(sfd)
        try:
            b = os.dup(dfd)
        except BaseException:
            os.close(a)
            self.slots.release()
            raise

        def run() -> None:
            try:
                if not self.cancelled:
                    fn(a, b, batch)
            except BaseException as exc:
                with self.lock:
                    if self.error is None:
                        self.error = exc
                self.cancelled = True
            finally:
                os.close(a)
                os.close(b)
                self.slots.release()

        self.ex.submit(run)

    def raise_error(self) -> None:
        assert self.error is not None
        raise self.error

    def wait(self) -> None:
        """All jobs done; re-raise the first error."""
        self.ex.shutdown(wait=True)
        if self.error is not None:
            self.raise_error()

    def cancel(self) -> None:
        """Stop: queued jobs only close their descriptors; wait for running ones (the
        caller removes the staging tree next, nothing may still write into it)."""
        self.cancelled = True
        self.ex.shutdown(wait=True)


class _Copier:
    """Copies a tree between two open folders, then verifies and finalises it."""

    def __init__(self, progress: Progress | None, from_disk: bool) -> None:
        self.progress = progress
        self.from_disk = from_disk
        self.stats: dict[str, os.stat_result] = {}
        self.copy_stats: dict[str, os.stat_result] = {}  # the copy, once finished
        self.first: dict[tuple[int, int], str] = {}  # hardlinked source inode -> rel
        self.links: list[tuple[str, str]] = []  # (first copy, extra name), made last
        self.size = TreeSize()
        self._sendfile = True
        self._lock = threading.Lock()
        self.checker = _Pool()  # compares copied batches once they are on the disk
        self._waiting: list[tuple[int, int, list[tuple[str, str, os.stat_result]]]] = []
        self._unsynced = [0, 0]  # bytes, files copied since the last flush
        self._flusher: threading.Thread | None = None

    def _count(self, stage: str, nbytes: int, nfiles: int) -> None:
        with self._lock:
            if stage == "copy":
                self.size.files += nfiles
                self.size.bytes += nbytes
            if self.progress:
                self.progress(stage, nbytes, nfiles)

    # copy ---------------------------------------------------------------------------
    def copy(self, sfd: int, dfd: int) -> None:
        st = os.fstat(sfd)
        self.stats[""] = st
        _copy_xattrs(sfd, dfd, ".")
        self._start_flusher(dfd)
        pool = _Pool()
        try:
            self._copy_dir(pool, sfd, dfd, "")
            pool.wait()
        except BaseException:
            pool.cancel()
            self.close()
            raise
        # Every folder of the staging tree is still root-only 0700 (owners and modes
        # come after verification): the paths below the staging root are ours.
        for first, extra in self.links:
            os.link(first, extra, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)

    def _copy_dir(self, pool: _Pool, sfd: int, dfd: int, rel: str) -> None:
        batch: list[tuple[str, str, os.stat_result]] = []
        for name in sorted(os.listdir(sfd)):
            crel = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                raise _Changed(crel, "disappeared") from None
            self.stats[crel] = st
            m = st.st_mode
            if stat.S_ISREG(m):
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    first = self.first.get(key)
                    if first is not None:
                        self.links.append((first, crel))
                        self.size.hardlinked += 1
                        continue
                    self.first[key] = crel
                batch.append((name, crel, st))
                if len(batch) >= _BATCH:
                    pool.submit(self._copy_files, sfd, dfd, batch)
                    batch = []
            elif stat.S_ISDIR(m):
                os.mkdir(name, 0o700, dir_fd=dfd)
                try:
                    csfd = _open_dir(name, sfd)
                except OSError:
                    raise _Changed(crel, "replaced while copying") from None
                try:
                    if os.fstat(csfd).st_ino != st.st_ino:
                        raise _Changed(crel, "replaced while copying")
                    cdfd = _open_dir(name, dfd)
                    try:
                        _copy_xattrs(csfd, cdfd, crel)
                        self.size.dirs += 1
                        self._copy_dir(pool, csfd, cdfd, crel)
                    finally:
                        os.close(cdfd)
                finally:
                    os.close(csfd)
            elif stat.S_ISLNK(m):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd,
                         follow_symlinks=False)
                self.size.others += 1
            elif stat.S_ISFIFO(m) or stat.S_ISCHR(m) or stat.S_ISBLK(m):
                os.mknod(name, stat.S_IFMT(m) | 0o600, st.st_rdev, dir_fd=dfd)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(m), dir_fd=dfd)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd,
                         follow_symlinks=False)
                self.size.others += 1
            else:
                raise MoveError(f"{crel}: a socket; cannot be copied (is a program "
                                "listening on it?)")
        if batch:
            pool.submit(self._copy_files, sfd, dfd, batch)

    def _copy_files(self, sfd: int, dfd: int, batch: list[tuple[str, str, os.stat_result]]
                    ) -> None:
        for name, rel, st in batch:
            try:
                fi = _open_read(name, sfd)
            except OSError:
                raise _Changed(rel, "replaced while copying") from None
            try:
                if os.fstat(fi).st_ino != st.st_ino:
                    raise _Changed(rel, "replaced while copying")
                fo = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    done = self._data(fi, fo, st.st_size, rel)
                    os.fchown(fo, st.st_uid, st.st_gid)
                    os.fchmod(fo, stat.S_IMODE(st.st_mode))
                    _copy_xattrs(fi, fo, rel)
                    os.utime(fo, ns=(st.st_atime_ns, st.st_mtime_ns))
                    if done:
                        # Start writing this file to the disk now (asynchronously), so
                        # that the syncfs after the copy has little left to wait for.
                        os.posix_fadvise(fo, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fo)
            finally:
                os.close(fi)
            self._count("copy", done, 1)
        self._copied(sfd, dfd, batch)

    def _copied(self, sfd: int, dfd: int, batch: list[tuple[str, str, os.stat_result]]
                ) -> None:
        """Queue a copied batch for comparison; every so often flush the target and
        hand everything copied before the flush to the checker threads."""
        with self._lock:
            if self.checker.error is not None:
                self.checker.raise_error()  # a mismatch stops the copy early
            self._waiting.append((os.dup(sfd), os.dup(dfd), batch))
            self._unsynced[0] += sum(st.st_size for _, _, st in batch)
            self._unsynced[1] += len(batch)
            if self._unsynced[0] >= _SYNC_BYTES or self._unsynced[1] >= _SYNC_FILES:
                self._unsynced = [0, 0]
                self._flush_due = True
                self._flush_cond.notify()

    def _start_flusher(self, dfd: int) -> None:
        """A thread that flushes the target and hands what was copied before the flush
        to the checker, so that neither the copy nor the compare waits for the disk."""
        self._flush_cond = threading.Condition(self._lock)
        self._flush_due = self._flush_stop = False
        fd = os.dup(dfd)

        def run() -> None:
            try:
                while True:
                    with self._flush_cond:
                        while not self._flush_due and not self._flush_stop:
                            self._flush_cond.wait()
                        if not self._flush_due:
                            return
                        todo, self._waiting = self._waiting, []
                        self._flush_due = False
                    safefs.syncfs(fd)
                    self._check(todo)
            except BaseException as exc:
                with self.checker.lock:
                    if self.checker.error is None:
                        self.checker.error = exc
                self.checker.cancelled = True
            finally:
                os.close(fd)

        self._flusher = threading.Thread(target=run, name="treemove-flush", daemon=True)
        self._flusher.start()

    def _stop_flusher(self) -> None:
        flusher = self._flusher
        if flusher is None:
            return
        with self._flush_cond:
            self._flush_stop = True
            self._flush_cond.notify()
        flusher.join()
        self._flusher = None

    def _check(self, todo: list[tuple[int, int, list[tuple[str, str, os.stat_result]]]]
               ) -> None:
        try:
            for i, (a, b, batch) in enumerate(todo):
                self.checker.submit(self._compare_files, a, b, batch)
                os.close(a)
                os.close(b)
                todo[i] = (-1, -1, batch)
        finally:
            for a, b, _ in todo:
                if a >= 0:
                    os.close(a)
                    os.close(b)

    def close(self) -> None:
        """Stop the checker threads and release queued descriptors (after a failure)."""
        self._stop_flusher()
        self.checker.cancel()
        with self._lock:
            todo, self._waiting = self._waiting, []
        for a, b, _ in todo:
            os.close(a)
            os.close(b)

    def _data(self, fi: int, fo: int, size: int, rel: str) -> int:
        done = 0
        while done < size:
            n = 0
            if self._sendfile:
                try:
                    n = os.sendfile(fo, fi, None, min(size - done, 1 << 30))
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    self._sendfile = False
                    os.lseek(fi, done, os.SEEK_SET)
                    os.lseek(fo, done, os.SEEK_SET)
                    continue
            else:
                buf = os.read(fi, min(_CHUNK, size - done))
                n = len(buf)
                view = memoryview(buf)
                while view:
                    view = view[os.write(fo, view):]
            if n == 0:
                raise _Changed(rel, "shrank while copying")
            done += n
        return done

    # verify --------------------------------------------------------------------------
    def verify(self, sfd: int, dfd: int) -> None:
        """Compare the copy with the source, entry by entry and byte by byte, and check
        that the source still matches what was copied; then give every copied folder
        its owner, mode and times (children first)."""
        self._ino_map: dict[int, int] = {}
        self._ino_rev: dict[int, int] = {}
        try:
            # The caller flushed the target: the rest of the copy is on the disk too.
            self._stop_flusher()
            with self._lock:
                todo, self._waiting = self._waiting, []
            self._check(todo)
            self.checker.wait()
            # Names, types, owners, modes, times, link texts and hardlinks, and that
            # the source still is what was copied.
            self._verify_dir(sfd, dfd, "")
        except BaseException:
            self.close()
            raise
        self._check_meta("", os.fstat(sfd), self.stats[""], top=True)
        self._finish_tree(dfd, "")
        self._finish_dir(dfd, self.stats[""])
        self.copy_stats[""] = os.fstat(dfd)

    def _check_meta(self, rel: str, now: os.stat_result, then: os.stat_result,
                    top: bool = False) -> None:
        if _key(now, top) != _key(then, top):
            raise _Changed(rel or ".", "modified while copying")

    def _verify_dir(self, sfd: int, dfd: int, rel: str) -> None:
        snames = sorted(os.listdir(sfd))
        dnames = sorted(os.listdir(dfd))
        if snames != dnames:
            def full(n: str) -> str:
                return f"{rel}/{n}" if rel else n

            for n in snames:
                if full(n) not in self.stats:
                    raise _Changed(full(n), "created while copying")
            for n in dnames:
                if n not in snames:
                    raise _Changed(full(n), "removed while copying")
            raise MoveError(f"verification failed: {rel or '.'}: the copy lacks entries")
        for name in snames:
            crel = f"{rel}/{name}" if rel else name
            then = self.stats.get(crel)
            try:
                now = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                raise _Changed(crel, "disappeared") from None
            if then is None:
                raise _Changed(crel, "created while copying")
            self._check_meta(crel, now, then)
            cst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            m = now.st_mode
            if stat.S_IFMT(cst.st_mode) != stat.S_IFMT(m):
                raise MoveError(f"verification failed: {crel}: type differs in the copy")
            if not stat.S_ISDIR(m):
                self.copy_stats[crel] = cst
            if stat.S_ISDIR(m):
                csfd = _open_dir(name, sfd)
                try:
                    cdfd = _open_dir(name, dfd)
                    try:
                        self._verify_dir(csfd, cdfd, crel)
                    finally:
                        os.close(cdfd)
                finally:
                    os.close(csfd)
                continue
            if (cst.st_uid, cst.st_gid, cst.st_mtime_ns) != (now.st_uid, now.st_gid,
                                                              now.st_mtime_ns):
                raise MoveError(f"verification failed: {crel}: owner or mtime differs in "
                                "the copy")
            if stat.S_ISLNK(m):
                if os.readlink(name, dir_fd=sfd) != os.readlink(name, dir_fd=dfd):
                    raise MoveError(f"verification failed: {crel}: link text differs")
            elif stat.S_ISREG(m):
                if cst.st_mode != m or cst.st_size != now.st_size:
                    raise MoveError(f"verification failed: {crel}: mode or size differs")
                if now.st_nlink > 1:
                    known = self._ino_map.get(now.st_ino)
                    if known is not None:
                        if known != cst.st_ino:
                            raise MoveError(f"verification failed: {crel}: hardlink not "
                                            "kept")
                        continue  # same inode as an already verified name
                    if self._ino_rev.get(cst.st_ino, now.st_ino) != now.st_ino:
                        raise MoveError(f"verification failed: {crel}: hardlinked to the "
                                        "wrong file")
                    self._ino_map[now.st_ino] = cst.st_ino
                    self._ino_rev[cst.st_ino] = now.st_ino
            elif cst.st_mode != m or cst.st_rdev != now.st_rdev:
                raise MoveError(f"verification failed: {crel}: special file differs")

    def _compare_files(self, sfd: int, dfd: int,
                       batch: list[tuple[str, str, os.stat_result]]) -> None:
        for name, rel, then in batch:
            a = _open_read(name, sfd)
            try:
                b = _open_read(name, dfd)
                try:
                    if self.from_disk:
                        os.posix_fadvise(b, 0, 0, os.POSIX_FADV_DONTNEED)
                    left = then.st_size
                    while left:
                        want = min(_CHUNK, left)
                        x = _read_exact(a, want)
                        y = _read_exact(b, want)
                        if x != y:
                            if len(x) != want:
                                raise _Changed(rel, "shrank while copying")
                            raise MoveError(f"verification failed: {rel}: content of the "
                                            "copy differs from the source")
                        left -= want
                    self._check_meta(rel, os.fstat(a), then)
                finally:
                    os.close(b)
            finally:
                os.close(a)
            self._count("verify", then.st_size, 1)

    def _finish_tree(self, dfd: int, rel: str) -> None:
        """Owners, modes and times of the copied folders, children first (a parent's
        mtime would move if set before its children are done)."""
        for name in sorted(os.listdir(dfd)):
            crel = f"{rel}/{name}" if rel else name
            st = self.stats[crel]
            if stat.S_ISDIR(st.st_mode):
                cfd = _open_dir(name, dfd)
                try:
                    self._finish_tree(cfd, crel)
                    self._finish_dir(cfd, st)
                    self.copy_stats[crel] = os.fstat(cfd)
                finally:
                    os.close(cfd)

    def _finish_dir(self, dfd: int, st: os.stat_result) -> None:
        os.fchown(dfd, st.st_uid, st.st_gid)
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _read_exact(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.read(fd, n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# --- the journal ------------------------------------------------------------------

def journal_path(journal_dir: str | os.PathLike[str], public: Place) -> Path:
    """One journal per public path, so two moves of one folder can never interleave."""
    h = hashlib.sha256(str(public.path).encode("utf-8", "surrogateescape")).hexdigest()
    return Path(journal_dir) / f"move-{h[:20]}.json"


class _Journal:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        self.data["updated"] = time.time()
        safefs.atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True),
                            mode=0o600)

    def remove(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.path)
        safefs.fsync_dir(self.path.parent)

    @property
    def public(self) -> Place:
        return Place(**self.data["public"])

    @property
    def dest(self) -> Place:
        return Place(**self.data["dest"])


@contextmanager
def _locked_journal(path: Path) -> Iterator[None]:
    """Hold the journal's lock file: a second mnic-ops never touches a move in flight."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with safefs.locked(path.with_suffix(".lock"), blocking=False) as got:
        if not got:
            raise MoveError(f"another mnic-ops process is moving this folder right now "
                            f"(lock {path.with_suffix('.lock')})")
        yield


def _load_journal(path: Path) -> _Journal | None:
    try:
        raw = safefs.read_bytes_nofollow(path)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if data.get("version") != JOURNAL_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        Place(**data["public"])
        Place(**data["dest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MoveError(f"{path}: unreadable move journal ({exc}); inspect it and the "
                        "folders it names, then delete it") from None
    return _Journal(path, data)


@dataclass
class PendingMove:
    """One journal of an interrupted move, as found on disk: ``data`` is None (and
    ``error`` says why) when the journal cannot be read."""

    id: str  # the journal's file name without .json ("move-<hash>")
    path: Path
    data: dict[str, Any] | None
    error: str = ""

    @property
    def public(self) -> Place:
        assert self.data is not None
        return Place(**self.data["public"])

    @property
    def dest(self) -> Place:
        assert self.data is not None
        return Place(**self.data["dest"])

    def status(self) -> str:
        """``recoverable`` when the folders that hold both ends still exist, else
        ``install_missing`` / ``target_missing`` (nothing can be finished), or
        ``unreadable``."""
        if self.data is None:
            return "unreadable"
        if not self.public.path.parent.is_dir():
            return "install_missing"
        if not self.dest.path.parent.is_dir():
            return "target_missing"
        return "recoverable"

    def leftovers(self) -> list[str]:
        """What of this move is still on disk and would be lost to a rerun without the
        journal: the temporary names it chose (a partial or verified copy, the old tree
        set aside, the new link not yet in place), and the far end of the move while
        the public path is not the link to it (a copy nobody points at)."""
        if self.data is None:
            return []
        d = self.data
        pub, dst = self.public, self.dest
        ppar, dpar = pub.path.parent, dst.path.parent
        names = [(ppar, d.get("linktmp")), (ppar, d.get("aside")),
                 (ppar, (d.get("aside") or "") + "b" if d.get("aside") else None),
                 (ppar, d.get("old")),
                 (ppar if d.get("op") == "back" else dpar, d.get("staging"))]
        out = [str(folder / n) for folder, n in names
               if isinstance(n, str) and n and os.path.lexists(folder / n)]
        try:
            st = os.lstat(pub.path)
            is_link = stat.S_ISLNK(st.st_mode) and \
                os.readlink(pub.path) == d.get("link_text")
        except OSError:
            is_link = False
        if os.path.lexists(dst.path) and not is_link:
            out.append(str(dst.path))
        return sorted(set(out))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "journal": str(self.path),
                               "status": self.status()}
        if self.data is None:
            out["error"] = self.error
            return out
        d = self.data
        meta = d.get("meta") or {}
        out.update(op=d.get("op"), phase=d.get("phase"), method=d.get("method"),
                   public=str(self.public.path), dest=str(self.dest.path),
                   link_text=d.get("link_text"), project=meta.get("project"),
                   public_host=meta.get("public"), pid=d.get("pid"),
                   started=d.get("started"), updated=d.get("updated"),
                   leftovers=self.leftovers())
        return out


def journal_id(path: str | os.PathLike[str]) -> str:
    return Path(path).name.removesuffix(".json")


def pending_moves(journal_dir: str | os.PathLike[str]) -> list[PendingMove]:
    """Every journal of an interrupted move in ``journal_dir`` (read-only); one that
    cannot be read is listed with the reason, never raised."""
    d = Path(journal_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("move-")
                       and n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            j = _load_journal(d / n)
        except (MoveError, OpsError, OSError) as exc:
            msg = exc.message if isinstance(exc, OpsError) else (exc.strerror or str(exc))
            out.append(PendingMove(journal_id(n), d / n, None, msg))
            continue
        if j is not None:
            out.append(PendingMove(journal_id(n), d / n, j.data))
    return out


def forget(journal_dir: str | os.PathLike[str], move_id: str) -> dict[str, Any]:
    """Discard the journal ``move_id`` once nothing of its move is left on disk (see
    :meth:`PendingMove.leftovers`); returns its content (for an undo). MoveError with
    the paths still there, or when a process is working on that move right now."""
    path = Path(journal_dir) / f"{move_id}.json"
    if not move_id.startswith("move-") or "/" in move_id:
        raise MoveError(f"{move_id}: not a move journal id (expected move-<hash>; see "
                        "relocate --list-pending)")
    with _locked_journal(path):
        try:
            raw = safefs.read_bytes_nofollow(path)
        except FileNotFoundError:
            raise MoveError(f"{move_id}: no such interrupted move (see relocate "
                            "--list-pending)") from None
        try:
            j = _load_journal(path)
        except MoveError:
            j = None
        if j is not None:
            left = PendingMove(move_id, path, j.data).leftovers()
            if left:
                raise MoveError(f"{move_id}: not forgotten: still on disk: "
                                + ", ".join(left) + "; finish the move (mnic-ops "
                                "relocate PROJECT) or move these away first")
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            data = {"unreadable": raw.decode("utf-8", "replace")}
        os.unlink(path)
        safefs.fsync_dir(path.parent)
    return data


def restore_journal(journal_dir: str | os.PathLike[str], move_id: str,
                    data: dict[str, Any]) -> None:
    """Put a forgotten journal back (the undo of :func:`forget`); refused when another
    journal has taken its place meanwhile."""
    path = Path(journal_dir) / f"{move_id}.json"
    with _locked_journal(path):
        if os.path.lexists(path):
            raise MoveError(f"{path}: a journal is there again; not overwritten")
        body = data["unreadable"] if set(data) == {"unreadable"} else \
            json.dumps(data, indent=1, sort_keys=True)
        safefs.atomic_write(path, body, mode=0o600)


# --- results ------------------------------------------------------------------------

@dataclass
class MoveResult:
    method: str  # "rename" | "copy" | "none"
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    others: int = 0
    hardlinked: int = 0
    seconds: float = 0.0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- swapping names -----------------------------------------------------------------

def _no_exchange() -> bool:
    return bool(os.environ.get("MNIC_OPS_TEST_NO_EXCHANGE"))


def _exchange(fd1: int, n1: str, fd2: int, n2: str) -> None:
    if _no_exchange():
        raise _NoExchange
    try:
        safefs.renameat2(fd1, n1, fd2, n2, safefs.RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise _NoExchange from None
        raise


def _swap_in(pdir: int, public: str, new: str, aside: str) -> str:
    """Put the entry named ``new`` at ``public`` (same folder); return the name the old
    entry of ``public`` now has. One atomic exchange where the filesystem can; else
    ``public`` -> ``aside``, then ``new`` -> ``public`` (``public`` briefly absent)."""
    try:
        _exchange(pdir, public, pdir, new)
        os.fsync(pdir)
        return new
    except _NoExchange:
        pass
    os.rename(public, aside, src_dir_fd=pdir, dst_dir_fd=pdir)
    _crashpoint("swap-gap")
    os.rename(new, public, src_dir_fd=pdir, dst_dir_fd=pdir)
    os.fsync(pdir)
    return aside


def _finish_gap(pdir: int, public: str, new: str) -> bool:
    """After a crash inside :func:`_swap_in`'s two-rename fallback: complete it."""
    if _what(pdir, public)[0] == "absent" and _what(pdir, new)[0] != "absent":
        os.rename(new, public, src_dir_fd=pdir, dst_dir_fd=pdir)
        os.fsync(pdir)
        return True
    return False


def _rmtree(parent: int, name: str) -> None:
    kind = _what(parent, name)[0]
    if kind == "dir":
        shutil.rmtree(name, dir_fd=parent)
    elif kind != "absent":
        os.unlink(name, dir_fd=parent)


def _unlink_link(parent: int, name: str, text: str) -> None:
    kind, t = _what(parent, name)
    if kind == "link" and t == text:
        os.unlink(name, dir_fd=parent)


# --- the operations -------------------------------------------------------------

def _new_journal(path: Path, op: str, public: Place, dest: Place, link_text: str,
                 owner: tuple[int, int] | None, meta: dict[str, Any] | None) -> _Journal:
    """Every temporary name is chosen here, before anything exists on disk, so that a
    recovery knows what to look for."""
    return _Journal(path, {
        "version": JOURNAL_VERSION, "op": op, "public": asdict(public),
        "dest": asdict(dest), "link_text": link_text,
        "owner": list(owner) if owner else None, "meta": meta or {},
        "staging": safefs.tmp_name(public.name if op == "back" else dest.name),
        "linktmp": safefs.tmp_name(public.name), "aside": safefs.tmp_name(public.name),
        "pid": os.getpid(), "started": time.time(), "phase": "start", "method": "rename",
    })


def link_out(public: Place, dest: Place, link_text: str, journal_dir: str | os.PathLike[str],
             *, owner: tuple[int, int] | None = None, progress: Progress | None = None,
             verify_from_disk: bool = True, meta: dict[str, Any] | None = None,
             source_owner: int | None = None) -> MoveResult:
    """Move the folder ``public`` to ``dest`` (whose parent must exist; ``dest`` must
    not) and leave at ``public`` a symlink whose text is ``link_text``, owned by
    ``owner``. With ``source_owner`` the folder must belong to that uid, checked on its
    own descriptor (and it must still be that folder when it moves). Resumable with
    :func:`recover` after a crash; ``meta`` is kept in the journal for the caller (what
    to record once a recovery completes the move)."""
    jpath = journal_path(journal_dir, public)
    with _locked_journal(jpath):
        if _load_journal(jpath) is not None:
            raise MoveError(f"{public.path}: an interrupted move is recorded in {jpath}; "
                            "run again to finish it first")
        pdir = public.open_parent()
        try:
            ddir = dest.open_parent()
        except BaseException:
            os.close(pdir)
            raise
        try:
            kind, _ = _what(pdir, public.name)
            if kind != "dir":
                raise MoveError(f"{public.path}: not a folder ({kind})")
            source = _source_ident(pdir, public, source_owner)
            if _what(ddir, dest.name)[0] != "absent":
                raise MoveError(f"{dest.path}: already exists; refusing to overwrite it")
            j = _new_journal(jpath, "out", public, dest, link_text, owner, meta)
            j.data["source"] = list(source)
            same = os.fstat(pdir).st_dev == os.fstat(ddir).st_dev
            t0 = time.monotonic()
            if same:
                j.save(phase="swap", method="rename")
                try:
                    res = _out_rename(j, pdir, ddir)
                    res.seconds = time.monotonic() - t0
                    return res
                except _CrossDevice:
                    log.info("%s and %s are on different mounts of one filesystem; copying",
                             public.path, dest.path)
            j.save(phase="copy", method="copy")
            res = _out_copy(j, pdir, ddir, progress, verify_from_disk)
            res.seconds = time.monotonic() - t0
            return res
        finally:
            os.close(pdir)
            os.close(ddir)


class _CrossDevice(Exception):
    pass


def _source_ident(pdir: int, public: Place, owner: int | None) -> tuple[int, int]:
    """(device, inode) of the folder about to move, checked on its own descriptor to
    belong to ``owner``: a folder of someone else is never moved into a place the
    install's owner controls, whatever its path led to when the move was planned."""
    sfd = _open_dir(public.name, pdir)
    try:
        st = os.fstat(sfd)
    finally:
        os.close(sfd)
    if owner is not None and st.st_uid != owner:
        raise MoveError(f"{public.path}: owned by uid {st.st_uid}, not by the install's "
                        f"owner (uid {owner}); not moved")
    return st.st_dev, st.st_ino


def _check_moved(j: _Journal, dfd: int, name: str) -> bool:
    """Is the folder now at ``name`` the one checked before the move (or was none
    recorded)?"""
    want = j.data.get("source")
    if not want:
        return True
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return [st.st_dev, st.st_ino] == list(want)


def _make_link(dfd: int, name: str, text: str, owner: list[int] | None) -> None:
    """Create (or keep) the symlink ``name`` -> ``text``, owned by ``owner``."""
    kind, t = _what(dfd, name)
    if kind == "absent":
        os.symlink(text, name, dir_fd=dfd)
    elif kind != "link" or t != text:
        raise MoveError(f"{name}: unexpected {kind} in the way of the link")
    if owner:
        os.chown(name, owner[0], owner[1], dir_fd=dfd, follow_symlinks=False)


def _out_rename(j: _Journal, pdir: int, ddir: int) -> MoveResult:
    """Same filesystem: a link at ``dest`` pointing to itself, then one exchange with
    ``public`` (``dest`` becomes the folder, ``public`` the link)."""
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    pk, pt = _what(pdir, pub.name)
    dk, _ = _what(ddir, dst.name)
    if pk == "dir" and dk in ("absent", "link"):
        _make_link(ddir, dst.name, text, j.data["owner"])
        os.fsync(ddir)
        _crashpoint("out-rename-linked")
        try:
            _exchange(pdir, pub.name, ddir, dst.name)
            if not _check_moved(j, ddir, dst.name):  # swapped for another folder meanwhile
                _exchange(pdir, pub.name, ddir, dst.name)
                _unlink_link(ddir, dst.name, text)
                j.remove()
                raise MoveError(f"{pub.path}: replaced by another folder while it was being "
                                "moved; put back, nothing moved")
        except _NoExchange:
            _unlink_link(ddir, dst.name, text)
            os.rename(pub.name, dst.name, src_dir_fd=pdir, dst_dir_fd=ddir)
            _crashpoint("swap-gap")
            if not _check_moved(j, ddir, dst.name):
                os.rename(dst.name, pub.name, src_dir_fd=ddir, dst_dir_fd=pdir)
                j.remove()
                raise MoveError(f"{pub.path}: replaced by another folder while it was being "
                                "moved; put back, nothing moved") from None
            _make_link(pdir, pub.name, text, j.data["owner"])
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _unlink_link(ddir, dst.name, text)
            raise _CrossDevice from None
        os.fsync(pdir)
        os.fsync(ddir)
    elif pk == "absent" and dk == "dir":
        _make_link(pdir, pub.name, text, j.data["owner"])  # crashed in the fallback gap
        os.fsync(pdir)
    elif not (pk == "link" and pt == text and dk == "dir"):
        raise MoveError(f"{pub.path}: unexpected state ({pk}, {dst.path}: {dk}); "
                        f"journal {j.path} kept for inspection")
    j.remove()
    return MoveResult("rename", message=f"renamed to {dst.path}")


class _Timer:
    """Phase durations at debug level (-vv), to see where a slow move spends its time."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.cpu = time.process_time()

    def lap(self, what: str) -> None:
        now, cpu = time.monotonic(), time.process_time()
        log.debug("%s: %.3fs (cpu %.3fs)", what, now - self.t, cpu - self.cpu)
        self.t, self.cpu = now, cpu


def _copy_to_staging(j: _Journal, src_dir: int, src_name: str, stg_dir: int,
                     progress: Progress | None, from_disk: bool) -> _Copier:
    """Copy, flush, verify; the staging folder is removed again on any failure."""
    stg = j.data["staging"]
    cp = _Copier(progress, from_disk)
    try:
        sfd = _open_dir(src_name, src_dir)
        try:
            want = j.data.get("source")
            sst = os.fstat(sfd)
            if want and [sst.st_dev, sst.st_ino] != list(want):
                raise _Changed(".", "replaced by another folder since it was checked")
            os.mkdir(stg, 0o700, dir_fd=stg_dir)
            dfd = _open_dir(stg, stg_dir)
            try:
                _crashpoint("copy-started")
                t = _Timer()
                cp.copy(sfd, dfd)
                t.lap("copy")
                _crashpoint("copy-copied")
                safefs.syncfs(dfd)
                t.lap("syncfs")
                cp.verify(sfd, dfd)
                t.lap("verify")
                os.fsync(dfd)
                safefs.syncfs(dfd)
                copy_digest = _digest(iter(cp.copy_stats.items()))
                t.lap("finish")
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except BaseException as exc:
        cp.close()
        with suppress(OSError):
            _rmtree(stg_dir, stg)
            os.fsync(stg_dir)
        j.remove()
        if isinstance(exc, _Changed):
            raise MoveError(f"{exc.rel}: {exc.why} (is the framework writing there? stop "
                            "it or retry); the partial copy was removed, nothing was "
                            "moved") from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MoveError(f"no space left on the target while copying ({exc.strerror}); "
                            "the partial copy was removed, the source is untouched") from None
        if isinstance(exc, OSError):
            raise MoveError(f"copy failed: {exc.filename or ''}: {exc.strerror or exc}; the "
                            "partial copy was removed, the source is untouched") from None
        raise
    j.save(phase="swap", src_digest=_digest(iter(cp.stats.items())),
           copy_digest=copy_digest, size=asdict(cp.size))
    _crashpoint("copy-verified")
    return cp


def _out_copy(j: _Journal, pdir: int, ddir: int, progress: Progress | None,
              from_disk: bool) -> MoveResult:
    cp = _copy_to_staging(j, pdir, j.public.name, ddir, progress, from_disk)
    res = _out_finish(j, pdir, ddir)
    res.files, res.bytes, res.dirs = cp.size.files, cp.size.bytes, cp.size.dirs
    res.others, res.hardlinked = cp.size.others, cp.size.hardlinked
    return res


def _out_finish(j: _Journal, pdir: int, ddir: int) -> MoveResult:
    """From phase swap on: idempotent, used by the first run and by recovery."""
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    stg, ltmp, aside = j.data["staging"], j.data["linktmp"], j.data["aside"]
    if j.data["phase"] == "swap":
        pk, pt = _what(pdir, pub.name)
        if pk == "absent":
            _finish_gap(pdir, pub.name, ltmp)
            pk, pt = _what(pdir, pub.name)
        if pk == "dir":
            dk = _what(ddir, dst.name)[0]
            if dk == "absent":
                safefs.renameat2(ddir, stg, ddir, dst.name, safefs.RENAME_NOREPLACE)
                os.fsync(ddir)
                _crashpoint("out-staged")
            elif dk != "dir":
                raise MoveError(f"{dst.path}: unexpected {dk}; journal {j.path} kept")
            _make_link(pdir, ltmp, text, j.data["owner"])
            os.fsync(pdir)
            _crashpoint("out-linked")
            _swap_in(pdir, pub.name, ltmp, aside)
            _crashpoint("out-swapped")
            pk, pt = _what(pdir, pub.name)
        if not (pk == "link" and pt == text):
            raise MoveError(f"{pub.path}: unexpected state {pk}; journal {j.path} kept")
        old = ltmp if _what(pdir, ltmp)[0] == "dir" else aside
        if _digest_at(pdir, old) != j.data["src_digest"]:
            return _out_swap_back(j, pdir, ddir, old)
        j.save(phase="remove", old=old)
        _crashpoint("out-checked")
    if j.data["phase"] == "remove":
        t = _Timer()
        _rmtree(pdir, j.data["old"])
        t.lap("remove old tree")
        _crashpoint("out-removing")
        os.fsync(pdir)
        _unlink_link(pdir, ltmp, text)
    j.remove()
    return MoveResult("copy", message=f"copied to {dst.path}, verified, linked")


def _out_swap_back(j: _Journal, pdir: int, ddir: int, old: str) -> NoReturn:
    """The source changed between copy and swap: put the folder back, drop the copy if
    nobody wrote to it, and say so. Nothing is deleted that was not proven a copy."""
    j.save(phase="swapback", old=old)
    _swap_back_finish(j, pdir, ddir)


def _swap_back_finish(j: _Journal, pdir: int, ddir: int) -> NoReturn:
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    old = j.data["old"]
    pk, pt = _what(pdir, pub.name)
    if pk == "absent":
        _finish_gap(pdir, pub.name, old)
        pk, pt = _what(pdir, pub.name)
    if pk == "link" and pt == text:
        back = _swap_in(pdir, pub.name, old, j.data["aside"] + "b")
        _unlink_link(pdir, back, text)
    _unlink_link(pdir, j.data["linktmp"], text)
    _unlink_link(pdir, j.data["aside"], text)
    kept = ""
    if _digest_at(ddir, dst.name) == j.data["copy_digest"]:
        _rmtree(ddir, dst.name)
        os.fsync(ddir)
    elif _what(ddir, dst.name)[0] != "absent":
        kept = f"; the copy at {dst.path} was written to meanwhile and is kept for you"
    j.remove()
    raise MoveError(f"{pub.path}: changed while it was being moved (is the framework "
                    f"writing there? stop it or retry); it is back in place as a folder"
                    f"{kept}")


def link_back(public: Place, dest: Place, link_text: str,
              journal_dir: str | os.PathLike[str], *, progress: Progress | None = None,
              verify_from_disk: bool = True, meta: dict[str, Any] | None = None
              ) -> MoveResult:
    """``public`` is a symlink (text ``link_text``) to the folder ``dest``: bring the
    data back into a folder at ``public`` and remove ``dest``."""
    jpath = journal_path(journal_dir, public)
    with _locked_journal(jpath):
        if _load_journal(jpath) is not None:
            raise MoveError(f"{public.path}: an interrupted move is recorded in {jpath}; "
                            "run again to finish it first")
        pdir = public.open_parent()
        try:
            ddir = dest.open_parent()
        except BaseException:
            os.close(pdir)
            raise
        try:
            kind, text = _what(pdir, public.name)
            if kind != "link" or text != link_text:
                raise MoveError(f"{public.path}: not the link to {link_text} any more")
            if _what(ddir, dest.name)[0] != "dir":
                raise MoveError(f"{dest.path}: not a folder; cannot bring it back")
            j = _new_journal(jpath, "back", public, dest, link_text, None, meta)
            t0 = time.monotonic()
            if os.fstat(pdir).st_dev == os.fstat(ddir).st_dev:
                j.save(phase="swap", method="rename")
                try:
                    res = _back_rename(j, pdir, ddir)
                    res.seconds = time.monotonic() - t0
                    return res
                except _CrossDevice:
                    pass
            j.save(phase="copy", method="copy")
            cp = _copy_to_staging(j, ddir, dest.name, pdir, progress, verify_from_disk)
            res = _back_finish(j, pdir, ddir)
            res.files, res.bytes, res.dirs = cp.size.files, cp.size.bytes, cp.size.dirs
            res.others, res.hardlinked = cp.size.others, cp.size.hardlinked
            res.seconds = time.monotonic() - t0
            return res
        finally:
            os.close(pdir)
            os.close(ddir)


def _back_rename(j: _Journal, pdir: int, ddir: int) -> MoveResult:
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    pk, pt = _what(pdir, pub.name)
    dk, _ = _what(ddir, dst.name)
    if pk == "link" and pt == text and dk == "dir":
        try:
            _exchange(pdir, pub.name, ddir, dst.name)
        except _NoExchange:
            os.unlink(pub.name, dir_fd=pdir)
            _crashpoint("swap-gap")
            os.rename(dst.name, pub.name, src_dir_fd=ddir, dst_dir_fd=pdir)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            raise _CrossDevice from None
        os.fsync(pdir)
        _crashpoint("back-rename-swapped")
        _unlink_link(ddir, dst.name, text)
        os.fsync(ddir)
    elif pk == "absent" and dk == "dir":
        os.rename(dst.name, pub.name, src_dir_fd=ddir, dst_dir_fd=pdir)
        os.fsync(pdir)
        os.fsync(ddir)
    elif pk == "dir" and dk in ("link", "absent"):
        _unlink_link(ddir, dst.name, text)
        os.fsync(ddir)
    else:
        raise MoveError(f"{pub.path}: unexpected state ({pk}, {dst.path}: {dk}); "
                        f"journal {j.path} kept for inspection")
    j.remove()
    return MoveResult("rename", message=f"renamed back from {dst.path}")


def _back_finish(j: _Journal, pdir: int, ddir: int) -> MoveResult:
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    stg, aside = j.data["staging"], j.data["aside"]
    if j.data["phase"] == "swap":
        pk, pt = _what(pdir, pub.name)
        if pk == "absent":
            _finish_gap(pdir, pub.name, stg)
            pk, pt = _what(pdir, pub.name)
        if pk == "link" and pt == text:
            if _what(pdir, stg)[0] != "dir":
                raise MoveError(f"{pub.path}: the verified copy vanished; journal {j.path} "
                                "kept")
            _swap_in(pdir, pub.name, stg, aside)
            _crashpoint("back-swapped")
            pk, pt = _what(pdir, pub.name)
        if pk != "dir":
            raise MoveError(f"{pub.path}: unexpected state {pk}; journal {j.path} kept")
        if _digest_at(ddir, dst.name) != j.data["src_digest"]:
            # Written to through the link before the swap: undo the swap.
            j.save(phase="backswapback")
        else:
            _unlink_link(pdir, stg, text)
            _unlink_link(pdir, aside, text)
            os.fsync(pdir)
            j.save(phase="remove")
            _crashpoint("back-checked")
    if j.data["phase"] == "backswapback":
        pk, pt = _what(pdir, pub.name)
        link_at = stg if _what(pdir, stg)[0] == "link" else aside
        if pk == "absent":
            _finish_gap(pdir, pub.name, link_at)
        elif pk == "dir" and _what(pdir, link_at)[0] == "link":
            _swap_in(pdir, pub.name, link_at, aside + "b")
        # public is the link again; the copy sits at stg (exchange) or aside+"b"
        copy_at = stg if _what(pdir, stg)[0] == "dir" else aside + "b"
        kept = ""
        if _digest_at(pdir, copy_at) == j.data["copy_digest"]:
            _rmtree(pdir, copy_at)
        elif _what(pdir, copy_at)[0] != "absent":
            kept = f"; a copy written to meanwhile is kept at {pub.path.parent / copy_at}"
        os.fsync(pdir)
        j.remove()
        raise MoveError(f"{dst.path}: changed while it was being moved back (is the "
                        f"framework writing there? stop it or retry); {pub.path} is the "
                        f"link again{kept}")
    if j.data["phase"] == "remove":
        _crashpoint("back-removing")
        _rmtree(ddir, dst.name)
        os.fsync(ddir)
    j.remove()
    return MoveResult("copy", message=f"copied back from {dst.path}, verified")


# --- recovery -------------------------------------------------------------------

@dataclass
class Recovered:
    outcome: str  # "completed" | "rolled_back" (before the swap) | "reverted" | "nothing"
    message: str
    op: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def recover(jpath: str | os.PathLike[str]) -> Recovered:
    """Finish or roll back the move a journal describes. Before the swap the staging
    copy is removed (rolled back: the data never left); from the swap on the move is
    completed (or, when the old tree changed meanwhile, swapped back)."""
    path = Path(jpath)
    with _locked_journal(path):
        j = _load_journal(path)
        if j is None:
            return Recovered("nothing", "nothing to recover")
        op, phase, method = j.data["op"], j.data["phase"], j.data["method"]
        meta = j.data.get("meta") or {}
        pub, dst = j.public, j.dest
        pdir = pub.open_parent()
        try:
            ddir = dst.open_parent()
        except BaseException:
            os.close(pdir)
            raise
        try:
            if phase in ("start", "copy"):
                stg_dir = pdir if op == "back" else ddir
                _rmtree(stg_dir, j.data["staging"])
                os.fsync(stg_dir)
                j.remove()
                return Recovered("rolled_back", f"{pub.path}: interrupted copy rolled back "
                                 "(the data never left)", op, meta)
            if method == "rename":
                res = _out_rename(j, pdir, ddir) if op == "out" else _back_rename(j, pdir,
                                                                                  ddir)
            elif op == "out":
                if phase == "swapback":
                    _swap_back_finish(j, pdir, ddir)
                res = _out_finish(j, pdir, ddir)
            else:
                res = _back_finish(j, pdir, ddir)
            return Recovered("completed", f"{pub.path}: interrupted move completed "
                             f"({res.message})", op, meta)
        except MoveError as exc:
            return Recovered("reverted", f"{pub.path}: interrupted move reverted: "
                             f"{exc.message}", op, meta)
        except _CrossDevice:  # a rename between two mounts of one filesystem
            j.remove()
            return Recovered("rolled_back", f"{pub.path}: interrupted rename rolled back "
                             "(the data never left)", op, meta)
        finally:
            os.close(pdir)
            os.close(ddir)


def recover_all(journal_dir: str | os.PathLike[str]) -> list[Recovered]:
    """Recover every interrupted move recorded in ``journal_dir``."""
    d = Path(journal_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("move-")
                       and n.endswith(".json"))
    except FileNotFoundError:
        return []
    for n in os.listdir(d):  # journal temp files from a crash inside atomic_write
        if safefs.is_tmp_name(n) and not _pid_alive(n.rsplit(".", 2)[-2]):
            with suppress(OSError):
                os.unlink(d / n)
    return [recover(d / n) for n in names]


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
