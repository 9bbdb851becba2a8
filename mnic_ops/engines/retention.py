"""The retention the framework declares and never enforces, made real and consistent
with the framework's own indexes.

Per data class of one install (run by ``clean``, usable by ``status``):

- **checkpoint store**: per level ``retention_days`` counted from the checkpoint's own
  recorded timestamp (index, and the metadata file when it says later), at most
  ``retention_count`` per level (newest kept), ``storage.max_total_storage_gb`` oldest
  first (the newest checkpoint always stays). An expired checkpoint goes with its
  metadata file, its ``.dat.gz`` and every mention in ``checkpoint_index.json``
  (``checkpoints``, ``categories``, ``tags``, ``timeline``; mentions of ids the framework
  itself deleted go too). The index is rewritten atomically, keeping its owner and mode,
  in the framework's own format, *before* any file goes; the ids are journalled in
  mnic-ops's root-owned state first, so that after a ``kill -9`` the next run deletes
  exactly the files of ids the index no longer lists.
- **thinking logs** (``logging.retention_days``), by the time in their name
  (``YYYY-MM-DD-HHMMSS-decision.json``, else the file's mtime), with ``index.json``'s
  references to them removed first.
- **cost records** (``costTracking.retentionDays``): ``daily/<date>.json`` by its date.
- **background-task results** (``storage.retention_days``), by their recorded
  ``end_time`` (else ``start_time``), with their entries in ``state.json`` removed first.

A framework process working in the install (its working directory, an open file or a
mapping there) makes the classes with an index skip, with the reason: there must be no
second writer of a file the framework rewrites with a plain ``open('w')``. An index or
history that does not parse is never rewritten and nothing of that class is deleted. A
declared value out of bounds leaves the class untouched (:func:`mnic_ops.facts.policy.declared`).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from mnic_ops.core import beneathfs, framework_map, safefs, userjson
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import compress, restore
from mnic_ops.facts.policy import CHECKPOINT_LEVELS, DAY, Declared

JOURNAL_DIR = "/var/lib/mnic-ops/retention"
INDEX = "checkpoint_index.json"
THINKING_INDEX = "index.json"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")  # one safe path component
_LOG_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})-(\d{2})(\d{2})(\d{2})")
_DAILY_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.json(?:\.gz|\.[1-9]\d{0,5}\.gz)?$")


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


@dataclass
class Report:
    """What retention did (or would do) to one class of one install."""

    kind: str
    status: str = "off"  # off | done | skipped | failed
    reason: str = ""
    rules: dict[str, Any] = field(default_factory=dict)
    items: list[Gone] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    recovered: int = 0  # files of an interrupted pass deleted
    # files the framework reads by name that an earlier pass had gzipped, made again
    restored: list[str] = field(default_factory=list)
    # an older NAME.gz beside a current NAME (a collision), kept once as NAME.N.gz
    kept: list[dict[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.items)

    def to_json(self, check: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status}
        if self.reason:
            d["reason"] = self.reason
        d["rules"] = self.rules
        key = "would_expire" if check else "expired"
        d[key] = self.count
        d[key + "_bytes"] = self.bytes
        d["items"] = [g.to_json() for g in self.items]
        if self.index:
            d["index"] = self.index
        if self.recovered:
            d["recovered"] = self.recovered
        if self.restored:
            d["would_restore" if check else "restored"] = self.restored
        if self.kept:
            d["would_keep_archives" if check else "kept_archives"] = self.kept
        d["errors"] = self.errors
        return d


# --- shared pieces ----------------------------------------------------------------------

def _parse_time(value: Any) -> float | None:
    """A recorded ISO timestamp as Unix time (naive ones are local time, as the framework
    writes them with datetime.now().isoformat())."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return t.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _age(now: float, t: float) -> float:
    return (now - t) / DAY


# The keys as the framework's configs spell them, for reports.
_KEY_NAMES = {("thinking_logs", "retention_days"): "logging.retention_days",
              ("cost_records", "retention_days"): "costTracking.retentionDays",
              ("task_results", "retention_days"): "storage.retention_days",
              ("checkpoint_store", "max_total_storage_gb"): "storage.max_total_storage_gb"}


def _rule(decl: Declared, kind: str, key: str, value: Any) -> str:
    where = decl.where.get(kind, {}).get(key, "")
    name = _KEY_NAMES.get((kind, key)) or (f"checkpointLevels.{key}"
                                           if kind == "checkpoint_store" else key)
    return f"{name} {value:g} ({where})" if isinstance(value, float | int) else name


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _open_sub(dirfd: int, name: str) -> int | None:
    try:
        return compress.open_dir_nofollow(dirfd, (name,))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _files(dirfd: int, dev: int, rel: str = "") -> Iterator[tuple[int, str, str,
                                                                  os.stat_result]]:
    """(folder fd, name, path below the top, lstat) of every regular file below ``dirfd``
    on its filesystem, following no symlink (the fd is valid during the step only)."""
    try:
        names = sorted(os.listdir(dirfd))
    except OSError:
        return
    subdirs = []
    for name in names:
        st = _lstat(dirfd, name)
        if st is None or st.st_dev != dev:
            continue
        r = f"{rel}/{name}" if rel else name
        if stat.S_ISDIR(st.st_mode):
            subdirs.append((name, r))
        elif stat.S_ISREG(st.st_mode):
            yield dirfd, name, r, st
    for name, r in subdirs:
        sub = _open_sub(dirfd, name)
        if sub is None:
            continue
        try:
            yield from _files(sub, dev, r)
        finally:
            os.close(sub)


def _recover_stale(dirfd: int, dev: int) -> int:
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
        if compress.parse_stale(name) is not None:
            o = compress.recover_stale(dirfd, name, compress.Options(dev=dev))
            n += o.state in (compress.RECOVERED, compress.FINISHED)
    return n


def _recover_stale_in(dirfd: int, sub: str, dev: int) -> int:
    fd = _open_sub(dirfd, sub) if sub else os.dup(dirfd)
    if fd is None:
        return 0
    try:
        return _recover_stale(fd, dev)
    finally:
        os.close(fd)


def _delete(dirfd: int, name: str, dev: int) -> int:
    """Remove one regular single-link file (moved aside first, so that a name swapped
    meanwhile is never the one deleted); its size, 0 when it was not there."""
    o = compress.expire_at(dirfd, name, compress.Options(dev=dev))
    if o.state == compress.EXPIRED:
        return o.before
    if o.reason == "vanished":
        return 0
    raise OSError(errno.EIO,
                  f"{name}: {compress.REASONS.get(o.reason, o.reason)} {o.detail}".strip())


_NUMBERED_RE = re.compile(r"^(?P<base>.+)\.[1-9]\d{0,5}\.gz$", re.S)


def _numbered(dirfd: int) -> dict[str, list[str]]:
    """``NAME.N.gz`` archives in the folder (older archives a collision kept), by
    ``NAME``: they go with their checkpoint. One listing for the whole pass."""
    out: dict[str, list[str]] = {}
    try:
        names = os.listdir(dirfd)
    except OSError:
        return out
    for n in sorted(names):
        m = _NUMBERED_RE.match(n)
        if m:
            out.setdefault(m["base"], []).append(n)
    return out


def _dump(doc: Any) -> bytes:
    """The framework's own format: json.dump(..., indent=2), no trailing newline."""
    return json.dumps(doc, indent=2).encode()


# --- who is working in the install ----------------------------------------------------

def framework_holders(paths: list[str], owner: int | None = None) -> list[str]:
    """Processes working in these folders (cwd, open file, mapping), except mnic-ops's
    own: "pid N (name): path" each. With ``owner``, only processes of that uid (real or
    effective) or root's (real uid 0) count: the framework runs as the install's owner
    (or root), and another user's shell sitting in the folder must not stop the owner's
    retention (a user's setuid-root program keeps her real uid: it does not count)."""
    from mnic_ops.engines import treemove

    me = os.getpid()
    mine = _own_session()
    out: list[str] = []
    for h in treemove.holders(paths):
        if h.pid == me or h.pid in mine or _ours(h.pid, me):
            continue
        if owner is not None and h.uids != (-1, -1) and owner not in h.uids \
                and h.uids[0] != 0:
            continue
        out.append(f"pid {h.pid} ({h.name}): {h.path}")
    return out


def _stat_fields(pid: int | str) -> list[bytes]:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, ...]."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    return raw[raw.rfind(b")") + 2:].split()


def _own_session() -> set[int]:
    """This pass's ancestors and its process group: the shell that ran ``mnic-ops clean
    .`` from inside the install (and sudo, and a ``| less`` beside it in the pipeline)
    sits there but is not the framework; without this, such a run never expires. A
    framework started from another terminal, or in the background, has a group of its
    own and still counts."""
    out: set[int] = set()
    pid = os.getppid()
    for _ in range(64):  # bounded: a parent chain is short
        if pid <= 1 or pid in out:
            break
        out.add(pid)
        try:
            pid = int(_stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            break
    group = os.getpgid(0)
    with suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with suppress(OSError, ValueError, IndexError):
                    if int(_stat_fields(name)[2]) == group:
                        out.add(int(name))
    return out


def _ours(pid: int, me: int) -> bool:
    """A child of this pass, or another mnic-ops process (a watcher)."""
    try:
        ppid = int(_stat_fields(pid)[1])
        if ppid == me:
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    return any(os.path.basename(a) == b"mnic-ops" for a in argv) or any(
        a == b"mnic_ops" and i > 0 and argv[i - 1] == b"-m" for i, a in enumerate(argv))


# --- the journal -------------------------------------------------------------------

def journal_path(root: HostRoot, store_host: str) -> str:
    digest = hashlib.sha256(store_host.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return str(root.path(f"{JOURNAL_DIR}/checkpoints-{digest}.json"))


def _write_journal(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    safefs.atomic_write(path, json.dumps(data, indent=1), mode=0o600, uid=0, gid=0)


def _clean_journal_dir(path: str) -> None:
    """A journal's own temporary, left by a pass killed while writing it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _recover_stale(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)


def _drop_journal(path: str) -> None:
    try:
        os.unlink(path)
        safefs.fsync_dir(os.path.dirname(path))
    except FileNotFoundError:
        pass


# --- context ---------------------------------------------------------------------------

@dataclass
class Store:
    """The data folder of one class, opened from its trusted place down."""

    kind: str
    fd: int  # the folder (no symlink followed on the way)
    host: str  # its host path (a relocated folder: the link's target)
    real: str  # its path on this machine
    dev: int


class Retention:
    """Retention for one install: ``run(kind, store)`` per class."""

    def __init__(self, root: HostRoot, project: Any, decl: Declared, *, check: bool,
                 now: float | None = None,
                 restore_max_bytes: int = restore.DEFAULT_MAX_MIB << 20) -> None:
        self.root, self.project, self.decl, self.check = root, project, decl, check
        self.now = time.time() if now is None else now
        self._holders: list[str] | None = None
        self._kept: dict[str, list[str]] | None = None  # metadata NAME.N.gz, by NAME
        # what an earlier pass gzipped and the framework reads by name, made again
        # within bounds (mnic_ops.engines.restore), shared by this install's classes
        self.restorer = restore.Restorer(root, check=check, max_bytes=restore_max_bytes,
                                         now=self.now)

    def busy(self, store: Store) -> list[str]:
        """Framework processes working in the install or in the (relocated) folder."""
        owner = self.project.uid
        if self._holders is None:
            self._holders = framework_holders([str(self.project.path)], owner)
        extra = [] if store.real.startswith(str(self.project.path).rstrip("/") + "/") \
            else framework_holders([store.real], owner)
        return self._holders + extra

    def run(self, kind: str, store: Store | None) -> Report:
        rep = Report(kind)
        if kind in self.decl.errors:
            rep.status, rep.reason = "failed", ("left untouched: " + self.decl.errors[kind])
            rep.errors.append(self.decl.errors[kind])
            return rep
        handler = {"checkpoint_store": self._checkpoints, "thinking_logs": self._thinking,
                   "cost_records": self._costs, "task_results": self._results}.get(kind)
        if handler is None:
            return rep
        if store is None:
            rep.reason = "absent"
            return rep
        try:
            handler(store, rep)
        except userjson.UserDataError as exc:
            rep.status, rep.reason = "failed", f"{exc.message}; not rewritten, nothing " \
                                               "of it expired"
            rep.errors.append(exc.message)
        except (OSError, OpsError) as exc:
            msg = exc.message if isinstance(exc, OpsError) else (exc.strerror or str(exc))
            rep.status, rep.reason = "failed", str(msg)
            rep.errors.append(str(msg))
        return rep

    def _skip_if_busy(self, store: Store, rep: Report, what: str) -> bool:
        busy = self.busy(store)
        if not busy:
            return False
        more = f"; and {len(busy) - 5} more" if len(busy) > 5 else ""
        rep.status = "skipped"
        rep.reason = (f"a framework process works in the install (it rewrites {what} "
                      f"itself): {'; '.join(busy[:5])}{more}; run again when it has stopped")
        return True

    # -- checkpoint store ----------------------------------------------------------------

    def _checkpoints(self, store: Store, rep: Report) -> None:
        vals = self.decl.values.get("checkpoint_store", {})
        rep.rules = {k: v for k, v in vals.items()}
        jpath = journal_path(self.root, store.host)
        if self._skip_if_busy(store, rep, INDEX):
            return
        if not self.check:
            for sub in ("", "metadata", "checkpoints"):
                rep.recovered += _recover_stale_in(store.fd, sub, store.dev)
            _clean_journal_dir(os.path.dirname(jpath))
        rep.status = "done"
        src = f"{store.host}/{INDEX}"
        index_st = _lstat(store.fd, INDEX)
        if os.path.exists(jpath) and not self.check:
            rep.recovered += self._recover(store, jpath, src)
            index_st = _lstat(store.fd, INDEX)
        for name in ("quality_gate_history.json", "trigger_history.json",
                     "agent_coordination.json"):
            self.restorer.restore(store.fd, name, name, store.dev, rep)
        if index_st is None:
            rep.reason = "no checkpoint index"
            return
        index = userjson.read_at(store.fd, INDEX, src)
        cps = index.get("checkpoints") if isinstance(index, dict) else None
        if not isinstance(cps, dict):
            raise userjson.UserDataError(src, "no \"checkpoints\" object")
        expire = self._choose(store, cps, vals, rep)
        meta = _open_sub(store.fd, "metadata")
        if meta is not None:
            try:
                for cid in cps:
                    if cid not in expire and _ID_RE.fullmatch(cid):
                        self.restorer.restore(meta, f"{cid}.json", f"metadata/{cid}.json",
                                              store.dev, rep)
            finally:
                os.close(meta)
        new, dangling = _prune_index(index, set(expire))
        rep.index = {"file": src, "dangling_removed": dangling, "rewritten": False}
        unlisted = self._unlisted(store, cps)
        if unlisted:
            rep.index["unlisted_metadata"] = unlisted
        if self.check or (not expire and not dangling):
            return
        ids = sorted(expire)
        _write_journal(jpath, {"store": store.host, "ident": [store.dev, os.fstat(
            store.fd).st_ino], "ids": ids, "started": self.now})
        if self._skip_if_busy(store, rep, INDEX):
            _drop_journal(jpath)
            return
        safefs.atomic_write_at(store.fd, INDEX, _dump(new), expect=index_st)
        rep.index["rewritten"] = True
        self._delete_ids(store, ids)
        _drop_journal(jpath)

    def _choose(self, store: Store, cps: dict[str, Any], vals: dict[str, Any],
                rep: Report) -> dict[str, Gone]:
        """The checkpoints to expire, each with the rule that expires it."""
        rows: list[tuple[float, str, str, str]] = []  # (time, id, level, recorded)
        for cid, entry in cps.items():
            if not isinstance(entry, dict) or not _ID_RE.fullmatch(cid):
                rep.errors.append(f"{store.host}/{INDEX}: entry {cid[:60]!r} left alone "
                                  "(not a checkpoint id the framework writes)")
                continue
            t = _parse_time(entry.get("timestamp"))
            level = entry.get("level")
            if t is None or level not in CHECKPOINT_LEVELS:
                rep.errors.append(f"{store.host}/{INDEX}: {cid}: no recorded timestamp "
                                  "or unknown level; left alone")
                continue
            rows.append((t, cid, str(level), str(entry.get("timestamp"))))
        out: dict[str, Gone] = {}

        def gone(t: float, cid: str, level: str, rec: str, rule: str) -> None:
            out[cid] = Gone(cid, rule, _age(self.now, t), level=level, recorded=rec)

        for level in CHECKPOINT_LEVELS:
            mine = sorted((r for r in rows if r[2] == level), reverse=True)  # newest first
            days = vals.get(f"{level}.retention_days")
            if days is not None:
                for t, cid, lv, rec in mine:
                    if _age(self.now, t) > days and \
                            _age(self.now, self._recorded(store, cid, t)) > days:
                        gone(t, cid, lv, rec, _rule(self.decl, "checkpoint_store",
                                                    f"{level}.retention_days", days))
            n = vals.get(f"{level}.retention_count")
            if n is not None:
                for t, cid, lv, rec in mine[n:]:
                    if cid not in out:
                        gone(t, cid, lv, rec, _rule(self.decl, "checkpoint_store",
                                                    f"{level}.retention_count", n))
        for g in out.values():
            g.files, g.bytes = self._files_of(store, g.what)
        limit = vals.get("max_total_storage_gb")
        if limit is not None:
            total = sum(st.st_size for _fd, _n, _r, st in _files(store.fd, store.dev))
            total -= sum(g.bytes for g in out.values())
            left = sorted(r for r in rows if r[1] not in out)  # oldest first
            for t, cid, lv, rec in left[:-1]:  # the newest one always stays
                if total <= limit * 1e9:
                    break
                gone(t, cid, lv, rec, _rule(self.decl, "checkpoint_store",
                                            "max_total_storage_gb", limit))
                g = out[cid]
                g.files, g.bytes = self._files_of(store, cid)
                total -= g.bytes
        rep.items = sorted(out.values(), key=lambda g: (-(g.age_days or 0), g.what))
        return out

    def _recorded(self, store: Store, cid: str, t_index: float) -> float:
        """The later of the index's and the metadata file's recorded times."""
        sub = _open_sub(store.fd, "metadata")
        if sub is None:
            return t_index
        try:
            md = userjson.read_at(sub, f"{cid}.json", f"{store.host}/metadata/{cid}.json")
        except (userjson.UserDataError, OSError):
            return t_index
        finally:
            os.close(sub)
        t = _parse_time(md.get("timestamp")) if isinstance(md, dict) else None
        return t_index if t is None else max(t, t_index)

    def _files_of(self, store: Store, cid: str) -> tuple[list[str], int]:
        files: list[str] = []
        size = 0
        for sub, names in (("metadata", (f"{cid}.json", f"{cid}.json.gz")),
                           ("checkpoints", (f"{cid}.dat.gz",))):
            fd = _open_sub(store.fd, sub)
            if fd is None:
                continue
            try:
                if sub == "metadata":
                    if self._kept is None:
                        self._kept = _numbered(fd)
                    names = (*names, *self._kept.get(f"{cid}.json", ()))
                for n in names:
                    st = _lstat(fd, n)
                    if st is not None and stat.S_ISREG(st.st_mode):
                        files.append(f"{sub}/{n}")
                        size += st.st_size
            finally:
                os.close(fd)
        return files, size

    def _unlisted(self, store: Store, cps: dict[str, Any]) -> int:
        sub = _open_sub(store.fd, "metadata")
        if sub is None:
            return 0
        try:
            return sum(1 for n in os.listdir(sub) if n.endswith(".json")
                       and n[:-5] not in cps)
        finally:
            os.close(sub)

    def _delete_ids(self, store: Store, ids: list[str]) -> int:
        done = 0
        for sub, suffixes in (("metadata", (".json", ".json.gz")),
                              ("checkpoints", (".dat.gz",))):
            fd = _open_sub(store.fd, sub)
            if fd is None:
                continue
            try:
                kept = _numbered(fd) if sub == "metadata" else {}
                for cid in ids:
                    for n in [cid + suf for suf in suffixes] + kept.get(f"{cid}.json", []):
                        if _lstat(fd, n) is not None:
                            _delete(fd, n, store.dev)
                            done += 1
                os.fsync(fd)
            finally:
                os.close(fd)
        return done

    def _recover(self, store: Store, jpath: str, src: str) -> int:
        """Finish a pass that was killed after its journal: delete the files of the
        journalled ids that the index no longer lists."""
        try:
            with open(jpath, "rb") as fh:
                j = json.loads(fh.read(userjson.MAX_BYTES))
            ident = tuple(j["ident"])
            ids = [i for i in j["ids"] if isinstance(i, str) and _ID_RE.fullmatch(i)]
        except (OSError, ValueError, KeyError, TypeError):
            _drop_journal(jpath)
            return 0
        if ident != (store.dev, os.fstat(store.fd).st_ino):
            _drop_journal(jpath)  # the store was replaced: its files went with it
            return 0
        listed: set[str] = set()
        if _lstat(store.fd, INDEX) is not None:
            index = userjson.read_at(store.fd, INDEX, src)
            cps = index.get("checkpoints") if isinstance(index, dict) else None
            if not isinstance(cps, dict):
                raise userjson.UserDataError(src, "no \"checkpoints\" object")
            listed = set(cps)
        n = self._delete_ids(store, [i for i in ids if i not in listed])
        _drop_journal(jpath)
        return n

    def _listed_tasks(self, sfd: int | None, state_name: str,
                      state_st: os.stat_result | None, state_rel: str) -> list[str]:
        """The task ids ``state.json`` lists (none when it is absent or unreadable: its
        refusal is reported where it is read for retention)."""
        if sfd is None or state_st is None:
            return []
        try:
            state = userjson.read_at(sfd, state_name,
                                     f"{self.project.host_path}/{state_rel}")
        except (userjson.UserDataError, OSError):
            return []
        results = state.get("task_results") if isinstance(state, dict) else None
        return sorted(results) if isinstance(results, dict) else []

    # -- thinking logs -------------------------------------------------------------------

    def _thinking(self, store: Store, rep: Report) -> None:
        days = self.decl.values.get("thinking_logs", {}).get("retention_days")
        if days is None:
            rep.reason = (f"no retention declared ({framework_map.THINKING_CONFIG} absent or "
                          "without logging.retention_days)")
            return
        rep.rules = {"retention_days": days}
        rule = _rule(self.decl, "thinking_logs", "retention_days", days)
        has_index = _lstat(store.fd, THINKING_INDEX) is not None
        if has_index and self._skip_if_busy(store, rep, THINKING_INDEX):
            return
        rep.status = "done"
        gone: list[tuple[str, Gone]] = []
        for fd, name, rel, st in _files(store.fd, store.dev):
            if compress.is_ours(name) or safefs.is_tmp_name(name):
                if not self.check and compress.parse_stale(name) is not None:
                    o = compress.recover_stale(fd, name, compress.Options(dev=store.dev))
                    rep.recovered += o.state in (compress.RECOVERED, compress.FINISHED)
                continue
            if name == THINKING_INDEX or not (name.endswith(".json") or name.endswith(".gz")):
                continue
            base = name[:-3] if name.endswith(".gz") else name
            if not (base.endswith(".json") or re.search(r"\.json\.[1-9]\d*$", base)):
                continue
            t = _log_time(name, st)
            if _age(self.now, t) > days:
                gone.append((rel, Gone(rel, rule, _age(self.now, t), bytes=st.st_size)))
        rep.items = [g for _r, g in gone]
        if has_index:
            src = f"{store.host}/{THINKING_INDEX}"
            idx_st = _lstat(store.fd, THINKING_INDEX)
            index = userjson.read_at(store.fd, THINKING_INDEX, src)
            refs = set()
            for rel, _g in gone:
                refs.add(rel)
                refs.add(re.sub(r"(\.[1-9]\d*)?\.gz$", "", rel))
            new, removed = prune_refs(index, refs)
            rep.index = {"file": src, "references_removed": removed, "rewritten": False}
            if removed and not self.check:
                safefs.atomic_write_at(store.fd, THINKING_INDEX, _dump(new), expect=idx_st)
                rep.index["rewritten"] = True
        if not self.check:
            self._delete_rels(store, [r for r, _g in gone])

    def _delete_rels(self, store: Store, rels: list[str]) -> None:
        for rel in rels:
            parts = rel.split("/")
            try:
                fd = compress.open_dir_nofollow(store.fd, parts[:-1])
            except OSError:
                continue
            try:
                _delete(fd, parts[-1], store.dev)
            finally:
                os.close(fd)

    # -- cost records ---------------------------------------------------------------------

    def _costs(self, store: Store, rep: Report) -> None:
        days = self.decl.values.get("cost_records", {}).get("retention_days")
        if days is None:
            rep.reason = (f"no retention declared ({framework_map.COST_CONFIG} absent or without "
                          "costTracking.retentionDays)")
            return
        rep.rules = {"retention_days": days}
        rule = _rule(self.decl, "cost_records", "retention_days", days)
        rep.status = "done"
        fd = _open_sub(store.fd, "daily")
        if fd is None:
            return
        try:
            if not self.check:
                rep.recovered += _recover_stale(fd, store.dev)
            names = sorted(os.listdir(fd))
            for name in names:
                m = _DAILY_RE.match(name)
                st = _lstat(fd, name)
                if m is None or st is None or not stat.S_ISREG(st.st_mode):
                    continue
                try:
                    day_end = dt.datetime(int(m[1]), int(m[2]), int(m[3])).timestamp() + DAY
                except (ValueError, OverflowError):
                    continue
                age = _age(self.now, day_end)
                if age > days:
                    rep.items.append(Gone(f"daily/{name}", rule, age, bytes=st.st_size))
                    if not self.check:
                        _delete(fd, name, store.dev)
                elif name.endswith(".json.gz"):
                    self.restorer.restore(fd, name[:-3], f"daily/{name[:-3]}", store.dev,
                                          rep)
        finally:
            os.close(fd)

    # -- background-task results --------------------------------------------------------

    def _results(self, store: Store, rep: Report) -> None:
        vals = self.decl.values.get("task_results", {})
        days = vals.get("retention_days")
        if days is None:
            rep.reason = (f"no retention declared ({framework_map.BACKGROUND_CONFIG} absent or "
                          "without storage.retention_days)")
            return
        rep.rules = {"retention_days": days}
        rule = _rule(self.decl, "task_results", "retention_days", days)
        state_rel = os.path.normpath(vals.get("state_file") or framework_map.TASK_STATE[1])
        if state_rel.startswith("../") or state_rel.startswith("/") or state_rel == "..":
            state_rel = framework_map.TASK_STATE[1]
        state_dir, _, state_name = state_rel.rpartition("/")
        try:
            sfd: int | None = beneathfs.open_beneath(self.project.path, state_dir or ".",
                                                  os.O_RDONLY | os.O_DIRECTORY,
                                                  base_ident=self.project.ident)
        except FileNotFoundError:
            sfd = None
        try:
            state_st = _lstat(sfd, state_name) if sfd is not None else None
            if state_st is not None and self._skip_if_busy(store, rep, state_rel):
                return
            rep.status = "done"
            if not self.check:
                rep.recovered += _recover_stale(store.fd, store.dev)
                if sfd is not None:
                    rep.recovered += _recover_stale(sfd, os.fstat(sfd).st_dev)
                    state_st = _lstat(sfd, state_name)
            # results/<id>.json is read by name for the ids state.json lists (and only
            # those): an archive of one of them is made again, any other .gz is not ours
            for tid in self._listed_tasks(sfd, state_name, state_st, state_rel):
                if _ID_RE.fullmatch(tid):
                    self.restorer.restore(store.fd, f"{tid}.json", f"{tid}.json",
                                          store.dev, rep)
            expired: dict[str, Gone] = {}
            for name in sorted(os.listdir(store.fd)):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                st = _lstat(store.fd, name)
                if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    continue
                src = f"{store.host}/{name}"
                try:
                    res = userjson.read_at(store.fd, name, src)
                except userjson.UserDataError as exc:
                    rep.errors.append(f"{exc.message}; kept")
                    continue
                t = _result_time(res)
                if t is None:
                    rep.errors.append(f"{src}: no recorded end_time or start_time; kept")
                    continue
                if _age(self.now, t) > days:
                    expired[name[:-5]] = Gone(name, rule, _age(self.now, t), bytes=st.st_size)
            state: Any = None
            removed = 0
            if state_st is not None and sfd is not None:
                src = f"{self.project.host_path}/{state_rel}"
                state = userjson.read_at(sfd, state_name, src)
                results = state.get("task_results") if isinstance(state, dict) else None
                if isinstance(results, dict):
                    for tid, r in list(results.items()):
                        t = _result_time(r)
                        if tid in expired or (t is not None and _age(self.now, t) > days):
                            del results[tid]
                            removed += 1
                rep.index = {"file": src, "entries_removed": removed, "rewritten": False}
            rep.items = sorted(expired.values(), key=lambda g: g.what)
            if self.check:
                return
            if removed and sfd is not None:
                safefs.atomic_write_at(sfd, state_name, _dump(state), expect=state_st)
                rep.index["rewritten"] = True
            for g in rep.items:
                _delete(store.fd, g.what, store.dev)
        finally:
            if sfd is not None:
                os.close(sfd)


# --- index surgery (pure) ---------------------------------------------------------------

def _prune_index(index: dict[str, Any], expire: set[str]) -> tuple[dict[str, Any], int]:
    """The checkpoint index without the ``expire`` ids anywhere, and without mentions of
    ids that are no longer in ``checkpoints`` (the framework's own deletions leave those
    in categories and timeline). Returns (new index, dangling mentions removed)."""
    new = json.loads(json.dumps(index))
    cps = new["checkpoints"]
    for cid in expire:
        cps.pop(cid, None)
    live = set(cps)
    dangling = 0

    def keep(cid: Any) -> bool:
        nonlocal dangling
        if isinstance(cid, str) and cid not in live:
            if cid not in expire:
                dangling += 1
            return False
        return True

    for key in ("categories", "tags"):
        table = new.get(key)
        if isinstance(table, dict):
            for name in list(table):
                ids = table[name]
                if isinstance(ids, list):
                    table[name] = [c for c in ids if keep(c)]
                    if not table[name] and ids:
                        del table[name]
    tl = new.get("timeline")
    if isinstance(tl, list):
        new["timeline"] = [e for e in tl if not isinstance(e, dict)
                           or keep(e.get("checkpoint_id"))]
    return new, dangling


def prune_refs(doc: Any, refs: set[str]) -> tuple[Any, int]:
    """``doc`` without what refers to one of ``refs`` (paths below the thinking-logs
    folder; a reference may carry a prefix such as ``.claude/thinking-logs/``): list
    items that are such a path or an object naming one, object keys that are such a
    path, object members whose value is an object naming one. The index's format is the
    assistant's (undocumented), so this is all it assumes. Returns (new doc, removed)."""
    removed = 0

    def refers(s: Any) -> bool:
        # s is one of refs, or ends with "/" + one of them: a set lookup per "/" in s
        # (an index of 200,000 strings against 2,000 expired logs was 41 s when every
        # string was compared with every ref)
        if not isinstance(s, str):
            return False
        if s in refs:
            return True
        i = s.find("/")
        while i >= 0:
            if s[i + 1:] in refs:
                return True
            i = s.find("/", i + 1)
        return False

    def names_one(x: Any) -> bool:
        return refers(x) or (isinstance(x, dict) and any(refers(v) for v in x.values()))

    def walk(x: Any) -> Any:
        nonlocal removed
        if isinstance(x, list):
            out = []
            for i in x:
                if names_one(i):
                    removed += 1
                else:
                    out.append(walk(i))
            return out
        if isinstance(x, dict):
            out_d = {}
            for k, v in x.items():
                if refers(k) or (isinstance(v, dict) and names_one(v)):
                    removed += 1
                else:
                    out_d[k] = walk(v)
            return out_d
        return x

    return walk(doc), removed


def _log_time(name: str, st: os.stat_result) -> float:
    m = _LOG_TIME_RE.match(name)
    if m:
        try:
            y, mo, d, h, mi, se = (int(g) for g in m.groups())
            return dt.datetime(y, mo, d, h, mi, se).timestamp()
        except (ValueError, OverflowError):
            pass
    return st.st_mtime


def _result_time(res: Any) -> float | None:
    if not isinstance(res, dict):
        return None
    return _parse_time(res.get("end_time")) or _parse_time(res.get("start_time"))
