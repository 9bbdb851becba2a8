"""Retention of the classes expired by age (:mod:`mnic_ops.engines.retention` runs them):
thinking logs (``logging.retention_days``, by the time in their name, else the mtime;
``index.json``'s references removed first), cost records (``costTracking.retentionDays``,
``daily/<date>.json`` by its date) and background-task results
(``storage.retention_days``, by their recorded ``end_time`` else ``start_time``; their
entries in ``state.json`` removed first).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from typing import TYPE_CHECKING, Any

from mnic_ops.core import beneathfs, framework_map, safefs, userjson
from mnic_ops.engines import dirlock, inplace, tempfiles
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
from mnic_ops.facts.policy import DAY

if TYPE_CHECKING:
    from mnic_ops.engines.retention import Report, Retention, Store

THINKING_INDEX = "index.json"
_LOG_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})-(\d{2})(\d{2})(\d{2})")
_DAILY_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.json(?:\.gz|\.[1-9]\d{0,5}\.gz)?$")


def _declared_days(ret: Retention, rep: Report, kind: str, config: str, key: str
                   ) -> tuple[float, str] | None:
    """The retention in days the framework declares for ``kind`` and how to name that
    rule in reports; None (and the report says why) when it declares none."""
    days = ret.decl.values.get(kind, {}).get("retention_days")
    if days is None:
        rep.reason = f"no retention declared ({config} absent or without {key})"
        return None
    rep.rules = {"retention_days": days}
    return days, rule_text(ret.decl, kind, "retention_days", days)


# --- thinking logs -------------------------------------------------------------------

def expire_thinking_logs(ret: Retention, store: Store, rep: Report) -> None:
    declared = _declared_days(ret, rep, "thinking_logs", framework_map.THINKING_CONFIG,
                              "logging.retention_days")
    if declared is None:
        return
    days, rule = declared
    has_index = lstat(store.fd, THINKING_INDEX) is not None
    if has_index and ret.skip_if_busy(store, rep, THINKING_INDEX):
        return
    rep.status = "done"
    gone: list[tuple[str, Gone]] = []
    for fd, name, rel, st in walk_files(store.fd, store.dev):
        if tempfiles.is_ours(name) or safefs.is_tmp_name(name):
            if not ret.check and tempfiles.parse_stale(name) is not None:
                o = tempfiles.recover_stale(fd, name, inplace.Options(dev=store.dev))
                rep.recovered += o.state in (inplace.RECOVERED, inplace.FINISHED)
            continue
        if name == THINKING_INDEX or not (name.endswith(".json") or name.endswith(".gz")):
            continue
        base = name[:-3] if name.endswith(".gz") else name
        if not (base.endswith(".json") or re.search(r"\.json\.[1-9]\d*$", base)):
            continue
        t = _log_time(name, st)
        if age_in_days(ret.now, t) > days:
            gone.append((rel, Gone(rel, rule, age_in_days(ret.now, t), bytes=st.st_size)))
    rep.items = [g for _r, g in gone]
    if has_index:
        src = f"{store.host}/{THINKING_INDEX}"
        idx_st = lstat(store.fd, THINKING_INDEX)
        index = userjson.read_at(store.fd, THINKING_INDEX, src)
        refs = set()
        for rel, _g in gone:
            refs.add(rel)
            refs.add(re.sub(r"(\.[1-9]\d*)?\.gz$", "", rel))
        new, removed = prune_refs(index, refs)
        rep.index = {"file": src, "references_removed": removed, "rewritten": False}
        if removed and not ret.check:
            safefs.atomic_write_at(store.fd, THINKING_INDEX, dump(new), expect=idx_st)
            rep.index["rewritten"] = True
    if not ret.check:
        _delete_rels(store, [r for r, _g in gone])

def _delete_rels(store: Store, rels: list[str]) -> None:
    for rel in rels:
        parts = rel.split("/")
        try:
            fd = dirlock.open_dir_nofollow(store.fd, parts[:-1])
        except OSError:
            continue
        try:
            delete_file(fd, parts[-1], store.dev)
        finally:
            os.close(fd)



# --- cost records ---------------------------------------------------------------------

def expire_cost_records(ret: Retention, store: Store, rep: Report) -> None:
    declared = _declared_days(ret, rep, "cost_records", framework_map.COST_CONFIG,
                              "costTracking.retentionDays")
    if declared is None:
        return
    days, rule = declared
    rep.status = "done"
    fd = open_sub(store.fd, "daily")
    if fd is None:
        return
    try:
        if not ret.check:
            rep.recovered += recover_folder(fd, store.dev)
        names = sorted(os.listdir(fd))
        for name in names:
            m = _DAILY_RE.match(name)
            st = lstat(fd, name)
            if m is None or st is None or not stat.S_ISREG(st.st_mode):
                continue
            try:
                day_end = dt.datetime(int(m[1]), int(m[2]), int(m[3])).timestamp() + DAY
            except (ValueError, OverflowError):
                continue
            age = age_in_days(ret.now, day_end)
            if age > days:
                rep.items.append(Gone(f"daily/{name}", rule, age, bytes=st.st_size))
                if not ret.check:
                    delete_file(fd, name, store.dev)
            elif name.endswith(".json.gz"):
                ret.restorer.restore(fd, name[:-3], f"daily/{name[:-3]}", store.dev,
                                      rep)
    finally:
        os.close(fd)



# --- background-task results --------------------------------------------------------

def expire_task_results(ret: Retention, store: Store, rep: Report) -> None:
    vals = ret.decl.values.get("task_results", {})
    declared = _declared_days(ret, rep, "task_results", framework_map.BACKGROUND_CONFIG,
                              "storage.retention_days")
    if declared is None:
        return
    days, rule = declared
    state_rel = os.path.normpath(vals.get("state_file") or framework_map.TASK_STATE[1])
    if state_rel.startswith("../") or state_rel.startswith("/") or state_rel == "..":
        state_rel = framework_map.TASK_STATE[1]
    state_dir, _, state_name = state_rel.rpartition("/")
    try:
        sfd: int | None = beneathfs.open_beneath(ret.project.path, state_dir or ".",
                                              os.O_RDONLY | os.O_DIRECTORY,
                                              base_ident=ret.project.ident)
    except FileNotFoundError:
        sfd = None
    try:
        state_st = lstat(sfd, state_name) if sfd is not None else None
        if state_st is not None and ret.skip_if_busy(store, rep, state_rel):
            return
        rep.status = "done"
        if not ret.check:
            rep.recovered += recover_folder(store.fd, store.dev)
            if sfd is not None:
                rep.recovered += recover_folder(sfd, os.fstat(sfd).st_dev)
                state_st = lstat(sfd, state_name)
        # results/<id>.json is read by name for the ids state.json lists (and only
        # those): an archive of one of them is made again, any other .gz is not ours
        for tid in _listed_tasks(ret, sfd, state_name, state_st, state_rel):
            if ID_RE.fullmatch(tid):
                ret.restorer.restore(store.fd, f"{tid}.json", f"{tid}.json",
                                      store.dev, rep)
        expired: dict[str, Gone] = {}
        for name in sorted(os.listdir(store.fd)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            st = lstat(store.fd, name)
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
            if age_in_days(ret.now, t) > days:
                expired[name[:-5]] = Gone(name, rule, age_in_days(ret.now, t), bytes=st.st_size)
        state: Any = None
        removed = 0
        if state_st is not None and sfd is not None:
            src = f"{ret.project.host_path}/{state_rel}"
            state = userjson.read_at(sfd, state_name, src)
            results = state.get("task_results") if isinstance(state, dict) else None
            if isinstance(results, dict):
                for tid, r in list(results.items()):
                    t = _result_time(r)
                    if tid in expired or (t is not None and age_in_days(ret.now, t) > days):
                        del results[tid]
                        removed += 1
            rep.index = {"file": src, "entries_removed": removed, "rewritten": False}
        rep.items = sorted(expired.values(), key=lambda g: g.what)
        if ret.check:
            return
        if removed and sfd is not None:
            safefs.atomic_write_at(sfd, state_name, dump(state), expect=state_st)
            rep.index["rewritten"] = True
        for g in rep.items:
            delete_file(store.fd, g.what, store.dev)
    finally:
        if sfd is not None:
            os.close(sfd)



def _listed_tasks(ret: Retention, sfd: int | None, state_name: str,
                  state_st: os.stat_result | None, state_rel: str) -> list[str]:
    """The task ids ``state.json`` lists (none when it is absent or unreadable: its
    refusal is reported where it is read for retention)."""
    if sfd is None or state_st is None:
        return []
    try:
        state = userjson.read_at(sfd, state_name,
                                 f"{ret.project.host_path}/{state_rel}")
    except (userjson.UserDataError, OSError):
        return []
    results = state.get("task_results") if isinstance(state, dict) else None
    return sorted(results) if isinstance(results, dict) else []




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
    return parse_time(res.get("end_time")) or parse_time(res.get("start_time"))
