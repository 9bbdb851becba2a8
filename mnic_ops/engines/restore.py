"""Files an earlier mnic-ops gzipped that the framework reads back by name, made again,
within bounds: the repair :mod:`mnic_ops.engines.retention` does for each install.

Earlier versions gzipped ``metadata/<id>.json``, the checkpoint store's histories,
``daily/<date>.json`` and ``results/<id>.json``; the framework could no longer read
them. Making ``NAME`` again from ``NAME.gz`` writes as root into a user's folder, so a
user must not be able to turn it into a way to fill the disk (a 1.2 MB gzip bomb per
file, restored as gigabytes that bypass her quota). An archive is restored only when
all of these hold:

- ``NAME`` is one the framework reads back by exact name in that class (the caller's
  rule: the histories, the metadata of ids the index lists, ``daily/<date>.json``, the
  results ``state.json`` lists) and is absent;
- the archive is shaped exactly as mnic-ops's engine writes one: its gzip header names
  ``NAME`` with the archive's own mtime (:func:`mnic_ops.engines.gzipformat.is_engine_archive`);
- it was created (``ctime``, which no user can set back) before the first pass of a
  mnic-ops that no longer compresses such files on this host (``restore-since.json``
  in mnic-ops's root-owned state): an archive made later is not one of ours;
- it fits: at most 64 MiB each, at most ``clean.restore_max_mib`` per install and run,
  and the filesystem keeps :data:`RESERVE` free for unprivileged writers after it.
  ``ENOSPC``/``EDQUOT`` stop the restores of that install for the run, cleanly.

(Writing as the owner through ``setfsuid`` would not make her quota apply: root keeps
``CAP_SYS_RESOURCE``, which lets it past quota limits and reserved blocks whatever its
fsuid; hence the bounds above.)

``NAME`` and an older ``NAME.gz`` with other content (the framework wrote the file
again after an earlier pass archived it) are a collision: the archive is kept once as
``NAME.N.gz`` (:func:`mnic_ops.engines.archives.keep_numbered`) and reported, so the same line
does not come back every run.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import TYPE_CHECKING

from mnic_ops.core import safefs
from mnic_ops.engines import archives, gzipformat, inplace

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot
    from mnic_ops.engines.retention import Report

SINCE_FILE = "/var/lib/mnic-ops/restore-since.json"
DEFAULT_MAX_MIB = 256
RESERVE = 64 << 20  # left free on the filesystem for its unprivileged writers


def _since(root: HostRoot, check: bool, now: float) -> float:
    """When this host's first pass of a mnic-ops that restores ran (recorded then, root's
    0600); ``now`` when nothing is recorded (nothing is written with ``--check``) or the
    record cannot be trusted."""
    path = root.path(SINCE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except OSError:
        return now
    if fd >= 0:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) \
                    or st.st_mode & 0o022:
                return now
            try:
                v = json.loads(fh.read(4096)).get("since")
            except (ValueError, AttributeError):
                return now
        return float(v) if isinstance(v, int | float) and 0 < v <= now else now
    if not check:
        os.makedirs(path.parent, mode=0o700, exist_ok=True)
        safefs.atomic_write(path, json.dumps({"since": now}) + "\n", mode=0o600,
                            uid=os.geteuid(), gid=os.getegid())
    return now


class Restorer:
    """The restores of one install in one run (shared by its data classes)."""

    def __init__(self, root: HostRoot, *, check: bool, max_bytes: int,
                 now: float | None = None) -> None:
        self.check = check
        self.max_bytes = max_bytes
        self.used = 0
        self.stopped = ""  # why no more is restored in this run
        self.since = _since(root, check, time.time() if now is None else now)

    def restore(self, dirfd: int, name: str, rel: str, dev: int, rep: Report) -> None:
        """``name`` (``rel`` below the data folder, for reports) is read back by name:
        make it again from ``name.gz`` when that is one of ours and fits; resolve a
        collision; report every refusal."""
        gz = name + ".gz"
        lst = _lstat(dirfd, gz)
        if lst is None:
            return
        if _lstat(dirfd, name) is not None:
            self._collision(dirfd, name, rel, dev, lst, rep)
            return
        if self.stopped:
            return
        why, size = self._refusal(dirfd, gz, name, lst)
        if why:
            rep.errors.append(f"{rel}.gz not restored: {why}")
            return
        if self.used + size > self.max_bytes:
            self.stopped = (f"the restores of this run reached clean.restore_max_mib "
                            f"({self.max_bytes >> 20} MiB); the next run goes on")
            rep.errors.append(f"{rel}.gz not restored: {self.stopped}")
            return
        vfs = os.statvfs(dirfd)
        if vfs.f_bavail * vfs.f_frsize < size + RESERVE:
            self.stopped = (f"{size} bytes would leave less than {RESERVE >> 20} MiB free "
                            "on its filesystem")
            rep.errors.append(f"{rel}.gz not restored: {self.stopped}")
            return
        self.used += size
        if self.check:
            rep.restored.append(rel)
            return
        o = archives.gunzip_at(dirfd, name, inplace.Options(dev=dev),
                         limit=min(archives.RESTORE_LIMIT, size))
        if o.state == archives.RESTORED:
            rep.restored.append(rel)
            return
        self.used -= size
        if o.reason == "no_space":
            self.stopped = f"no space left ({o.detail or 'ENOSPC/EDQUOT'})"
        rep.errors.append(f"{rel}.gz not restored: {inplace.REASONS.get(o.reason, o.reason)}"
                          + (f" ({o.detail})" if o.detail else "")
                          + ("; no more restores in this run" if self.stopped else ""))

    def _refusal(self, dirfd: int, gz: str, name: str, lst: os.stat_result
                 ) -> tuple[str, int]:
        """(why it is not restored, "" when it may be; its decompressed size)."""
        if not stat.S_ISREG(lst.st_mode) or lst.st_nlink != 1:
            return "not a plain single-link file", 0
        if lst.st_ctime >= self.since:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.since))
            return ("made after mnic-ops stopped compressing files the framework reads by "
                    f"name on this host ({when}): not one of its archives; left as it "
                    "is"), 0
        try:
            fd = os.open(gz, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dirfd)
        except OSError as exc:
            return exc.strerror or str(exc), 0
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
                return "changed during the pass", 0
            if not gzipformat.is_engine_archive(fd, name, st):
                return ("its gzip header is not the one mnic-ops writes for this name: not "
                        "one of its archives; left as it is"), 0
            size = gzipformat.gzip_size(fd, st)
        finally:
            os.close(fd)
        if size > archives.RESTORE_LIMIT:
            return f"would make {size} bytes (at most {archives.RESTORE_LIMIT} are restored)", 0
        return "", size

    def _collision(self, dirfd: int, name: str, rel: str, dev: int, lst: os.stat_result,
                   rep: Report) -> None:
        """``name`` and ``name.gz`` both: the archive of an interrupted restore (same
        content) goes; an older archive with other content is kept once as NAME.N.gz."""
        if self.check:
            rep.kept.append({"file": f"{rel}.gz", "kept_as": f"{rel}.N.gz"})
            return
        o = archives.gunzip_at(dirfd, name, inplace.Options(dev=dev))  # same content: archive goes
        if o.state == archives.RESTORED or o.reason == "vanished":
            return
        if o.reason != "archive_exists" or "other content" not in o.detail:
            rep.errors.append(f"{rel}.gz beside {rel}: {inplace.REASONS.get(o.reason, o.reason)}"
                              + (f" ({o.detail})" if o.detail else ""))
            return
        try:
            kept = archives.keep_numbered(dirfd, name + ".gz", lst)
        except inplace.Skip as s:
            rep.errors.append(f"{rel}.gz beside {rel}: not renamed: "
                              f"{inplace.REASONS.get(s.reason, s.reason)}")
            return
        parent = rel[: len(rel) - len(name)]
        rep.kept.append({"file": f"{rel}.gz", "kept_as": parent + kept})


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None

