"""One archive at a time: keeping an older ``NAME.gz`` under the next numbered name
(:func:`keep_numbered`), deleting an expired archive (:func:`expire_at`) and making a
file again from its archive (:func:`gunzip_at`), each as careful as the compression
itself (:mod:`mnic_ops.engines.compress`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zlib
from contextlib import suppress

from mnic_ops.engines.gzipformat import CHUNK, gunzip_matches, read_small_or_hash, write_all
from mnic_ops.engines.inplace import (
    EXPIRED,
    FAILED,
    SKIPPED,
    Options,
    Outcome,
    Skip,
    check_regular,
    link_noreplace,
    lstat,
    os_reason,
)
from mnic_ops.engines.tempfiles import TMP_MARK, take_aside, tmp_name

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
        raise Skip(os_reason(exc), exc.strerror or "") from None
    for n in range(top + 1, top + 100):
        cand = f"{base}.{n}.gz"
        if len(os.fsencode(cand)) > 255:
            raise Skip("name_too_long")
        now = lstat(dirfd, final)
        if now is None or (now.st_dev, now.st_ino) != (expect.st_dev, expect.st_ino):
            raise Skip("changed")
        try:
            link_noreplace(dirfd, final, cand)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                continue
            raise Skip(os_reason(exc), exc.strerror or "") from None
        return cand
    raise Skip("archive_exists")


# --- expiry and restore --------------------------------------------------------

def expire_at(dirfd: int, name: str, opts: Options) -> Outcome:
    """Delete an old archive: a single-link regular file on our filesystem, older than
    ``opts.max_mtime``; moved aside first so that a swapped name is never deleted."""
    try:
        lst = lstat(dirfd, name)
        if lst is None:
            raise Skip("vanished")
        check_regular(lst, opts)
        aside = take_aside(dirfd, name, lst)
        if aside is None:
            raise Skip("changed")
        os.unlink(aside, dir_fd=dirfd)
        return Outcome(name, EXPIRED, before=lst.st_size)
    except Skip as s:
        return Outcome(name, SKIPPED, s.reason, s.detail)
    except OSError as exc:
        return Outcome(name, FAILED, os_reason(exc), exc.strerror or "")


RESTORED = "restored"  # NAME made again from NAME.gz (a file the framework reads by name)
RESTORE_LIMIT = 64 << 20  # the framework's JSON files are kilobytes; a bomb is refused


def gunzip_at(dirfd: int, final: str, opts: Options, limit: int = RESTORE_LIMIT) -> Outcome:
    """Make ``final`` again from ``final.gz`` (an archive an earlier pass made of a file
    the framework reads back by exact name), then remove the archive: the reverse of
    :func:`mnic_ops.engines.compress.compress_batch`, as careful. The content goes to a
    temporary sibling (``O_EXCL|O_NOFOLLOW``) with the archive's owner, mode and times,
    is made durable and read back, and gets its name only if nothing has it
    (RENAME_NOREPLACE); the archive is moved aside and unlinked last. A kill -9 leaves
    the archive, or the file and the archive (the next pass removes the archive after
    comparing)."""
    gz = final + ".gz"
    try:
        lst = lstat(dirfd, gz)
        if lst is None:
            raise Skip("vanished")
        check_regular(lst, Options(dev=opts.dev))
        src = os.open(gz, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                      dir_fd=dirfd)
        try:
            st = os.fstat(src)
            if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
                raise Skip("changed")
            existing = lstat(dirfd, final)
            if existing is not None:
                # an interrupted restore, or the framework made the file again: the
                # archive is removed only when it holds exactly that content
                if not stat.S_ISREG(existing.st_mode) or existing.st_nlink != 1:
                    raise Skip("archive_exists")
                fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    same = gunzip_matches(src, read_small_or_hash(fd, existing))
                finally:
                    os.close(fd)
                if not same:
                    raise Skip("archive_exists", f"{final} exists with other content")
            else:
                data = _gunzip_bounded(src, limit)
                tmp = tmp_name(final, TMP_MARK)
                tfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
                try:
                    write_all(tfd, data)
                    os.fchown(tfd, st.st_uid, st.st_gid)
                    os.fchmod(tfd, stat.S_IMODE(st.st_mode))
                    os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    os.fsync(tfd)
                    os.lseek(tfd, 0, os.SEEK_SET)
                    back = b"".join(iter(lambda: os.read(tfd, CHUNK), b""))
                    if back != data:
                        raise Skip("io_error", "restored file did not read back equal")
                    link_noreplace(dirfd, tmp, final)
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
        return Outcome(final, FAILED, os_reason(exc), exc.strerror or "")


def _gunzip_bounded(fd: int, limit: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    d = zlib.decompressobj(31)
    out: list[bytes] = []
    total = 0
    try:
        while c := os.read(fd, CHUNK):
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
