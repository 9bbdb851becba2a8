"""Retention of the checkpoint store (:mod:`mnic_ops.engines.retention` runs it): per
level ``retention_days`` from the recorded timestamp (the index's, or the metadata
file's when later), ``retention_count`` newest kept, ``storage.max_total_storage_gb``
oldest first (the newest checkpoint always stays). An expired checkpoint goes with its
metadata file, its ``.dat.gz``, its numbered archives and every mention in
``checkpoint_index.json``, which is rewritten first; the ids are journalled in
mnic-ops's root-owned state before that, so that after a ``kill -9`` the next run
deletes exactly the files of ids the index no longer lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from typing import TYPE_CHECKING, Any

from mnic_ops.core import safefs, userjson
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines.expiry import (
    ID_RE,
    Gone,
    age_in_days,
    delete_file,
    dump,
    lstat,
    open_sub,
    parse_time,
    recover_folder,
    rule_text,
    walk_files,
)
from mnic_ops.facts.policy import CHECKPOINT_LEVELS

if TYPE_CHECKING:
    from mnic_ops.engines.retention import Report, Retention, Store

JOURNAL_DIR = "/var/lib/mnic-ops/retention"
INDEX = "checkpoint_index.json"


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
        recover_folder(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)


def _drop_journal(path: str) -> None:
    try:
        os.unlink(path)
        safefs.fsync_dir(os.path.dirname(path))
    except FileNotFoundError:
        pass



# --- the checkpoint store ---------------------------------------------------------

def _recover_stale_in(dirfd: int, sub: str, dev: int) -> int:
    fd = open_sub(dirfd, sub) if sub else os.dup(dirfd)
    if fd is None:
        return 0
    try:
        return recover_folder(fd, dev)
    finally:
        os.close(fd)




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




def expire_checkpoints(ret: Retention, store: Store, rep: Report) -> None:
    vals = ret.decl.values.get("checkpoint_store", {})
    rep.rules = {k: v for k, v in vals.items()}
    jpath = journal_path(ret.root, store.host)
    if ret.skip_if_busy(store, rep, INDEX):
        return
    if not ret.check:
        for sub in ("", "metadata", "checkpoints"):
            rep.recovered += _recover_stale_in(store.fd, sub, store.dev)
        _clean_journal_dir(os.path.dirname(jpath))
    rep.status = "done"
    src = f"{store.host}/{INDEX}"
    index_st = lstat(store.fd, INDEX)
    if os.path.exists(jpath) and not ret.check:
        rep.recovered += _recover(store, jpath, src)
        index_st = lstat(store.fd, INDEX)
    for name in ("quality_gate_history.json", "trigger_history.json",
                 "agent_coordination.json"):
        ret.restorer.restore(store.fd, name, name, store.dev, rep)
    if index_st is None:
        rep.reason = "no checkpoint index"
        return
    index = userjson.read_at(store.fd, INDEX, src)
    cps = index.get("checkpoints") if isinstance(index, dict) else None
    if not isinstance(cps, dict):
        raise userjson.UserDataError(src, "no \"checkpoints\" object")
    expire = _choose(ret, store, cps, vals, rep)
    meta = open_sub(store.fd, "metadata")
    if meta is not None:
        try:
            for cid in cps:
                if cid not in expire and ID_RE.fullmatch(cid):
                    ret.restorer.restore(meta, f"{cid}.json", f"metadata/{cid}.json",
                                          store.dev, rep)
        finally:
            os.close(meta)
    new, dangling = _prune_index(index, set(expire))
    rep.index = {"file": src, "dangling_removed": dangling, "rewritten": False}
    unlisted = _unlisted(store, cps)
    if unlisted:
        rep.index["unlisted_metadata"] = unlisted
    if ret.check or (not expire and not dangling):
        return
    ids = sorted(expire)
    _write_journal(jpath, {"store": store.host, "ident": [store.dev, os.fstat(
        store.fd).st_ino], "ids": ids, "started": ret.now})
    if ret.skip_if_busy(store, rep, INDEX):
        _drop_journal(jpath)
        return
    safefs.atomic_write_at(store.fd, INDEX, dump(new), expect=index_st)
    rep.index["rewritten"] = True
    _delete_ids(store, ids)
    _drop_journal(jpath)

def _choose(ret: Retention, store: Store, cps: dict[str, Any], vals: dict[str, Any],
            rep: Report) -> dict[str, Gone]:
    """The checkpoints to expire, each with the rule that expires it."""
    rows: list[tuple[float, str, str, str]] = []  # (time, id, level, recorded)
    for cid, entry in cps.items():
        if not isinstance(entry, dict) or not ID_RE.fullmatch(cid):
            rep.errors.append(f"{store.host}/{INDEX}: entry {cid[:60]!r} left alone "
                              "(not a checkpoint id the framework writes)")
            continue
        t = parse_time(entry.get("timestamp"))
        level = entry.get("level")
        if t is None or level not in CHECKPOINT_LEVELS:
            rep.errors.append(f"{store.host}/{INDEX}: {cid}: no recorded timestamp "
                              "or unknown level; left alone")
            continue
        rows.append((t, cid, str(level), str(entry.get("timestamp"))))
    out: dict[str, Gone] = {}

    def gone(t: float, cid: str, level: str, rec: str, rule: str) -> None:
        out[cid] = Gone(cid, rule, age_in_days(ret.now, t), level=level, recorded=rec)

    for level in CHECKPOINT_LEVELS:
        mine = sorted((r for r in rows if r[2] == level), reverse=True)  # newest first
        days = vals.get(f"{level}.retention_days")
        if days is not None:
            for t, cid, lv, rec in mine:
                if age_in_days(ret.now, t) > days and \
                        age_in_days(ret.now, _recorded(store, cid, t)) > days:
                    gone(t, cid, lv, rec, rule_text(ret.decl, "checkpoint_store",
                                                f"{level}.retention_days", days))
        n = vals.get(f"{level}.retention_count")
        if n is not None:
            for t, cid, lv, rec in mine[n:]:
                if cid not in out:
                    gone(t, cid, lv, rec, rule_text(ret.decl, "checkpoint_store",
                                                f"{level}.retention_count", n))
    for g in out.values():
        g.files, g.bytes = _files_of(ret, store, g.what)
    limit = vals.get("max_total_storage_gb")
    if limit is not None:
        total = sum(st.st_size for _fd, _n, _r, st in walk_files(store.fd, store.dev))
        total -= sum(g.bytes for g in out.values())
        left = sorted(r for r in rows if r[1] not in out)  # oldest first
        for t, cid, lv, rec in left[:-1]:  # the newest one always stays
            if total <= limit * 1e9:
                break
            gone(t, cid, lv, rec, rule_text(ret.decl, "checkpoint_store",
                                        "max_total_storage_gb", limit))
            g = out[cid]
            g.files, g.bytes = _files_of(ret, store, cid)
            total -= g.bytes
    rep.items = sorted(out.values(), key=lambda g: (-(g.age_days or 0), g.what))
    return out

def _recorded(store: Store, cid: str, t_index: float) -> float:
    """The later of the index's and the metadata file's recorded times."""
    sub = open_sub(store.fd, "metadata")
    if sub is None:
        return t_index
    try:
        md = userjson.read_at(sub, f"{cid}.json", f"{store.host}/metadata/{cid}.json")
    except (userjson.UserDataError, OSError):
        return t_index
    finally:
        os.close(sub)
    t = parse_time(md.get("timestamp")) if isinstance(md, dict) else None
    return t_index if t is None else max(t, t_index)

def _files_of(ret: Retention, store: Store, cid: str) -> tuple[list[str], int]:
    files: list[str] = []
    size = 0
    for sub, names in (("metadata", (f"{cid}.json", f"{cid}.json.gz")),
                       ("checkpoints", (f"{cid}.dat.gz",))):
        fd = open_sub(store.fd, sub)
        if fd is None:
            continue
        try:
            if sub == "metadata":
                if ret.kept is None:
                    ret.kept = _numbered(fd)
                names = (*names, *ret.kept.get(f"{cid}.json", ()))
            for n in names:
                st = lstat(fd, n)
                if st is not None and stat.S_ISREG(st.st_mode):
                    files.append(f"{sub}/{n}")
                    size += st.st_size
        finally:
            os.close(fd)
    return files, size

def _unlisted(store: Store, cps: dict[str, Any]) -> int:
    sub = open_sub(store.fd, "metadata")
    if sub is None:
        return 0
    try:
        return sum(1 for n in os.listdir(sub) if n.endswith(".json")
                   and n[:-5] not in cps)
    finally:
        os.close(sub)

def _delete_ids(store: Store, ids: list[str]) -> int:
    done = 0
    for sub, suffixes in (("metadata", (".json", ".json.gz")),
                          ("checkpoints", (".dat.gz",))):
        fd = open_sub(store.fd, sub)
        if fd is None:
            continue
        try:
            kept = _numbered(fd) if sub == "metadata" else {}
            for cid in ids:
                for n in [cid + suf for suf in suffixes] + kept.get(f"{cid}.json", []):
                    if lstat(fd, n) is not None:
                        delete_file(fd, n, store.dev)
                        done += 1
            os.fsync(fd)
        finally:
            os.close(fd)
    return done

def _recover(store: Store, jpath: str, src: str) -> int:
    """Finish a pass that was killed after its journal: delete the files of the
    journalled ids that the index no longer lists."""
    try:
        with open(jpath, "rb") as fh:
            j = json.loads(fh.read(userjson.MAX_BYTES))
        ident = tuple(j["ident"])
        ids = [i for i in j["ids"] if isinstance(i, str) and ID_RE.fullmatch(i)]
    except (OSError, ValueError, KeyError, TypeError):
        _drop_journal(jpath)
        return 0
    if ident != (store.dev, os.fstat(store.fd).st_ino):
        _drop_journal(jpath)  # the store was replaced: its files went with it
        return 0
    listed: set[str] = set()
    if lstat(store.fd, INDEX) is not None:
        index = userjson.read_at(store.fd, INDEX, src)
        cps = index.get("checkpoints") if isinstance(index, dict) else None
        if not isinstance(cps, dict):
            raise userjson.UserDataError(src, "no \"checkpoints\" object")
        listed = set(cps)
    n = _delete_ids(store, [i for i in ids if i not in listed])
    _drop_journal(jpath)
    return n



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
