"""The temporaries of the in-place engines: their names (``.NAME.gz.mnic-ops-tmp.PID.X``
for an archive being written, ``.NAME.mnic-ops-aside.PID.X`` for an original moved
aside), recognising them (:func:`parse_stale`, :func:`is_ours`), moving a file aside and
back (:func:`take_aside`, :func:`put_back`), and finishing or undoing what a killed pass
left (:func:`recover_stale`).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import stat

from mnic_ops.core import safefs
from mnic_ops.engines.gzipformat import gunzip_matches, read_small_or_hash
from mnic_ops.engines.inplace import (
    FAILED,
    FINISHED,
    RECOVERED,
    SKIPPED,
    Options,
    Outcome,
    Skip,
    lstat,
    open_checked,
    os_reason,
)

TMP_MARK = safefs.TMP_MARK  # archive temporaries: .NAME.gz.mnic-ops-tmp.PID.HEX
ASIDE_MARK = ".mnic-ops-aside"  # originals moved aside: .NAME.mnic-ops-aside.PID.HEX
_STALE_RE = re.compile(r"^\.(?P<name>.+)(?P<mark>\.mnic-ops-tmp|\.mnic-ops-aside)"
                       r"\.(?P<pid>\d+)\.[0-9a-f]+$", re.S)

# --- names ------------------------------------------------------------------------------

_tmp_seq = itertools.count()
_tmp_tag: tuple[int, str] = (0, "")


def tmp_name(name: str, mark: str) -> str:
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


def take_aside(dirfd: int, name: str, expect: os.stat_result) -> str | None:
    """Atomically move ``name`` to a temporary name and check it is still the file we
    examined; put it back and return None if not. This makes the later unlink hit
    exactly that inode even if a user swaps names around meanwhile."""
    aside = tmp_name(name, ASIDE_MARK)
    os.rename(name, aside, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    now = lstat(dirfd, aside)
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
        if lstat(dirfd, name) is not None:
            return False
        os.rename(aside, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        return True
    os.unlink(aside, dir_fd=dirfd)
    return True


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
        lst = lstat(dirfd, name)
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
        fd, st = open_checked(dirfd, name, Options(dev=opts.dev))
        try:
            gz_st = lstat(dirfd, orig + ".gz")
            ok = False
            if gz_st is not None and stat.S_ISREG(gz_st.st_mode):
                gz = os.open(orig + ".gz", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    ok = gunzip_matches(gz, read_small_or_hash(fd, st))
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
        return Outcome(name, FAILED, os_reason(exc), exc.strerror or "")
