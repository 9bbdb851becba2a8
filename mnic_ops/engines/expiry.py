"""What the retention classes (:mod:`mnic_ops.engines.retention`) share: one thing that
expired (:class:`Gone`), recorded times and ages, the rule text a report names, and the
careful file steps: a folder opened without following links (:func:`open_sub`), the
regular files below one (:func:`walk_files`), a killed pass's temporaries dealt with
(:func:`recover_folder`), one file deleted after it is moved aside (:func:`delete_file`),
and the framework's own JSON format (:func:`dump`).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mnic_ops.engines import archives, dirlock, inplace, tempfiles
from mnic_ops.facts.policy import DAY, Declared

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")  # one safe path component


# --- reports -----------------------------------------------------------------------------

@dataclass
class Gone:
    """One thing that expired (or would)."""

    what: str  # checkpoint id, or the path below the data folder
    rule: str  # the rule and where it was declared
    age_days: float | None
    level: str | None = None
    recorded: str | None = None
    bytes: int = 0
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id" if self.level is not None else "path": self.what,
                             "rule": self.rule, "age_days": None if self.age_days is None
                             else round(self.age_days, 2), "bytes": self.bytes}
        if self.level is not None:
            d["level"] = self.level
            d["recorded"] = self.recorded
        return d



# --- shared pieces ----------------------------------------------------------------------

def parse_time(value: Any) -> float | None:
    """A recorded ISO timestamp as Unix time (naive ones are local time, as the framework
    writes them with datetime.now().isoformat())."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return t.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def age_in_days(now: float, t: float) -> float:
    return (now - t) / DAY


# The keys as the framework's configs spell them, for reports.
_KEY_NAMES = {("thinking_logs", "retention_days"): "logging.retention_days",
              ("cost_records", "retention_days"): "costTracking.retentionDays",
              ("task_results", "retention_days"): "storage.retention_days",
              ("checkpoint_store", "max_total_storage_gb"): "storage.max_total_storage_gb"}


def rule_text(decl: Declared, kind: str, key: str, value: Any) -> str:
    where = decl.where.get(kind, {}).get(key, "")
    name = _KEY_NAMES.get((kind, key)) or (f"checkpointLevels.{key}"
                                           if kind == "checkpoint_store" else key)
    return f"{name} {value:g} ({where})" if isinstance(value, float | int) else name


def lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def open_sub(dirfd: int, name: str) -> int | None:
    try:
        return dirlock.open_dir_nofollow(dirfd, (name,))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def walk_files(dirfd: int, dev: int, rel: str = ""
               ) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """(folder fd, name, path below the top, lstat) of every regular file below ``dirfd``
    on its filesystem, following no symlink (the fd is valid during the step only)."""
    try:
        names = sorted(os.listdir(dirfd))
    except OSError:
        return
    subdirs = []
    for name in names:
        st = lstat(dirfd, name)
        if st is None or st.st_dev != dev:
            continue
        r = f"{rel}/{name}" if rel else name
        if stat.S_ISDIR(st.st_mode):
            subdirs.append((name, r))
        elif stat.S_ISREG(st.st_mode):
            yield dirfd, name, r, st
    for name, r in subdirs:
        sub = open_sub(dirfd, name)
        if sub is None:
            continue
        try:
            yield from walk_files(sub, dev, r)
        finally:
            os.close(sub)


def recover_folder(dirfd: int, dev: int) -> int:
    """Temporaries a killed pass left in this folder (an index rewrite's
    ``.NAME.mnic-ops-tmp.PID.X``, a deletion's ``.NAME.mnic-ops-aside.PID.X``): removed,
    or an original put back (a journalled deletion then finishes it). Those of a live
    process are left alone. Returns how many were dealt with."""
    try:
        listing = os.listdir(dirfd)
    except OSError:
        return 0
    n = 0
    for name in listing:
        if tempfiles.parse_stale(name) is not None:
            o = tempfiles.recover_stale(dirfd, name, inplace.Options(dev=dev))
            n += o.state in (inplace.RECOVERED, inplace.FINISHED)
    return n




def delete_file(dirfd: int, name: str, dev: int) -> int:
    """Remove one regular single-link file (moved aside first, so that a name swapped
    meanwhile is never the one deleted); its size, 0 when it was not there."""
    o = archives.expire_at(dirfd, name, inplace.Options(dev=dev))
    if o.state == inplace.EXPIRED:
        return o.before
    if o.reason == "vanished":
        return 0
    raise OSError(errno.EIO,
                  f"{name}: {inplace.REASONS.get(o.reason, o.reason)} {o.detail}".strip())




def dump(doc: Any) -> bytes:
    """The framework's own format: json.dump(..., indent=2), no trailing newline."""
    return json.dumps(doc, indent=2).encode()
