"""Copying a tree between two open folders and verifying the copy, for a move across
filesystems (:mod:`mnic_ops.engines.treemove`).

Modes, owners, times, xattrs, symlinks (as symlinks), special files and hardlinks (as
hardlinks) are kept; files are copied by a few threads, folder by folder. Every so often
the target is flushed (``syncfs``) and what was copied before the flush is read back and
compared byte for byte with the source while the copy goes on. Then every entry's
metadata is checked against the source, which must not have changed (:class:`Changed`:
a writer is active), and only then do the copied folders get their owners and modes
(until then they are root-only 0700).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from mnic_ops.core import safefs
from mnic_ops.engines.moveplace import MoveError, Progress, open_dir, open_read
from mnic_ops.engines.treestat import TreeSize, stat_key

_CHUNK = 1 << 20


class Changed(Exception):
    """The source changed under the copy (a writer is active)."""

    def __init__(self, rel: str, why: str) -> None:
        super().__init__(rel, why)
        self.rel, self.why = rel, why


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


class Copier:
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
                raise Changed(crel, "disappeared") from None
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
                    csfd = open_dir(name, sfd)
                except OSError:
                    raise Changed(crel, "replaced while copying") from None
                try:
                    if os.fstat(csfd).st_ino != st.st_ino:
                        raise Changed(crel, "replaced while copying")
                    cdfd = open_dir(name, dfd)
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
                fi = open_read(name, sfd)
            except OSError:
                raise Changed(rel, "replaced while copying") from None
            try:
                if os.fstat(fi).st_ino != st.st_ino:
                    raise Changed(rel, "replaced while copying")
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
                raise Changed(rel, "shrank while copying")
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
        if stat_key(now, top) != stat_key(then, top):
            raise Changed(rel or ".", "modified while copying")

    def _verify_dir(self, sfd: int, dfd: int, rel: str) -> None:
        snames = sorted(os.listdir(sfd))
        dnames = sorted(os.listdir(dfd))
        if snames != dnames:
            def full(n: str) -> str:
                return f"{rel}/{n}" if rel else n

            for n in snames:
                if full(n) not in self.stats:
                    raise Changed(full(n), "created while copying")
            for n in dnames:
                if n not in snames:
                    raise Changed(full(n), "removed while copying")
            raise MoveError(f"verification failed: {rel or '.'}: the copy lacks entries")
        for name in snames:
            crel = f"{rel}/{name}" if rel else name
            then = self.stats.get(crel)
            try:
                now = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                raise Changed(crel, "disappeared") from None
            if then is None:
                raise Changed(crel, "created while copying")
            self._check_meta(crel, now, then)
            cst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            m = now.st_mode
            if stat.S_IFMT(cst.st_mode) != stat.S_IFMT(m):
                raise MoveError(f"verification failed: {crel}: type differs in the copy")
            if not stat.S_ISDIR(m):
                self.copy_stats[crel] = cst
            if stat.S_ISDIR(m):
                csfd = open_dir(name, sfd)
                try:
                    cdfd = open_dir(name, dfd)
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
            a = open_read(name, sfd)
            try:
                b = open_read(name, dfd)
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
                                raise Changed(rel, "shrank while copying")
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
                cfd = open_dir(name, dfd)
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
