"""The plans of ``mnic-ops relocate``: each data folder of an install out to the target
(``plan_out``), back from it (``plan_back``, ``--undo``), and the moves a crash
interrupted finished first (``plan_recovery``). Nothing moves while planning: the
sizes, space, owners, links and holders are checked, and each item's action runs the
move through :mod:`mnic_ops.engines.relocation`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnic_ops.capabilities.relocatetarget import (
    Target,
    existing_ancestor,
    free_space,
    project_dirname,
)
from mnic_ops.changes.model import OK, SKIPPED, ApplyContext, Item, Plan, Undo
from mnic_ops.core import beneathfs, progress
from mnic_ops.core.app import AppContext
from mnic_ops.core.errors import InputError, OpsError
from mnic_ops.engines import movejournal, moveplace, pendingmoves, relocation, treemove, treestat
from mnic_ops.facts import holders, hostfacts, linkrecords
from mnic_ops.facts.projects import DATA_KINDS, DataDir, Project, human

log = logging.getLogger(__name__)


# --- the data kinds it moves -----------------------------------------------------------

def relocate_kinds(app: AppContext) -> list[str]:
    """The config's ``relocate.kinds``, checked (an unknown kind names the config line)."""
    kinds = app.config.get("relocate.kinds") or []
    bad = [k for k in kinds if k not in DATA_KINDS]
    if bad:
        where = "config"
        if app.config.loaded and app.config.path is not None:
            from mnic_ops.core.configvalidate import line_of

            try:
                line = line_of(app.config.path.read_text(), ["relocate", "kinds"])
            except OSError:
                line = None
            where = f"{app.config.path}:{line}" if line else str(app.config.path)
        raise InputError(f"{where}: relocate.kinds: unknown kind {bad[0]!r}; expected "
                         f"one of {', '.join(DATA_KINDS)}")
    return list(dict.fromkeys(kinds))


# --- progress -----------------------------------------------------------------------

@contextmanager
def _progress(app: AppContext, label: str, size: treestat.TreeSize
              ) -> Iterator[moveplace.Progress | None]:
    """A bytes-and-files bar on a terminal (copy, then verify; see mnic_ops.core.progress)."""
    if size.bytes + size.files == 0:
        yield None
        return
    counts = {"copy": 0, "verify": 0}
    total = size.files

    def text() -> str:
        return f"files: {counts['copy']}/{total} copied, {counts['verify']} verified"

    with progress.bar(app, label, max(1, 2 * size.bytes), text) as bar:
        if bar is None:
            yield None
            return

        def update(stage: str, nbytes: int, nfiles: int) -> None:
            counts[stage] = counts.get(stage, 0) + nfiles
            bar.advance(nbytes)
        yield update


# --- planning ------------------------------------------------------------------------

@dataclass
class _Move:
    """Everything one planned move needs (kept JSON-able for the undo record)."""

    project: Project
    data: DataDir
    rel: str  # data folder relative to the install root
    dest_base: str  # host path of the target base
    dest_rel: str  # "<install>-<hash>/<kind>"
    size: treestat.TreeSize = field(default_factory=treestat.TreeSize)

    @property
    def dest_host(self) -> str:
        return f"{self.dest_base.rstrip('/')}/{self.dest_rel}"

    def record(self, direction: str) -> dict[str, Any]:
        return {"direction": direction, "kind": self.data.kind,
                "project": self.project.host_path, "public": self.data.host_path,
                "public_rel": self.rel, "dest_base": self.dest_base,
                "dest_rel": self.dest_rel, "link_text": self.dest_host,
                "owner": [self.project.uid, self.project.gid],
                # the install root as found: every open of it checks it (a user may
                # rename a folder above it and put a link to someone else's there)
                "root_ident": list(self.project.ident) if self.project.ident else None}


def _rel_in_project(p: Project, d: DataDir) -> str:
    rel = os.path.relpath(d.host_path, p.host_path)
    if rel == "." or rel.startswith("../") or rel == "..":
        raise InputError(f"{d.host_path}: outside the install {p.host_path}; refusing to "
                         "move it")
    parent = os.path.dirname(rel)
    if parent:
        try:
            os.close(beneathfs.open_beneath(p.path, parent, os.O_RDONLY | os.O_DIRECTORY))
        except FileNotFoundError:
            pass
        except OpsError as exc:
            raise InputError(f"{d.host_path}: {exc.message}") from None
    return rel


def _holders_error(app: AppContext, paths: list[Path], what: str) -> str | None:
    if not app.root.live:
        return None
    hs = holders.holders([str(p) for p in paths])
    if not hs:
        return None
    pids = sorted({h.pid for h in hs})
    listing = "; ".join(f"pid {h.pid} ({h.name}): {app.root.host(h.path)}" for h in hs[:8])
    more = f"; and {len(hs) - 8} more" if len(hs) > 8 else ""
    return (f"{what}: in use by running processes (PIDs {', '.join(map(str, pids))}): "
            f"{listing}{more}; stop them (the framework?) and run again")


class _Space:
    """Space accounting per target filesystem across all planned moves."""

    def __init__(self, margin_percent: float, min_free: int) -> None:
        self.margin, self.min_free = margin_percent, min_free
        self.need: dict[int, tuple[int, int]] = {}

    def check(self, real: Path, host: str, size: treestat.TreeSize, what: str) -> None:
        anc = existing_ancestor(real)
        dev = os.stat(anc).st_dev
        free, inodes = free_space(anc)
        prev_b, prev_i = self.need.get(dev, (0, 0))
        need_b = prev_b + int(size.blocks * (1 + self.margin / 100))
        need_i = prev_i + size.inodes + 1
        self.need[dev] = (need_b, need_i)
        if need_b + self.min_free > free:
            raise OpsError(f"{what}: not enough space on {host}: needs {human(need_b)} plus "
                           f"{human(self.min_free)} to keep free (relocate.margin_percent "
                           f"{self.margin:g}%, relocate.min_free_mib), {human(free)} free")
        if need_i > inodes:
            raise OpsError(f"{what}: not enough inodes on {host}: needs {need_i}, "
                           f"{inodes} free")


def _dev(p: Path) -> int:
    return os.stat(existing_ancestor(p)).st_dev


def plan_out(app: AppContext, projects: list[Project], target: Target, force: bool,
             jdir: Path, mounts: list[hostfacts.Mount], busy: dict[str, str]) -> Plan:
    root, cfg = app.root, app.config
    plan = Plan()
    kinds = relocate_kinds(app)
    space = _Space(float(cfg.get("relocate.margin_percent", 10.0)),
                   int(cfg.get("relocate.min_free_mib", 256)) << 20)
    problems: list[str] = []
    for p in projects:
        slug = project_dirname(p)
        for kind in kinds:
            d = p.data[kind]
            iid = f"relocate:{d.host_path}"
            rel = _rel_in_project(p, d)
            mv = _Move(p, d, rel, target.host_path, f"{slug}/{kind}")
            desc = f"move {d.host_path} to {mv.dest_host}"
            if d.host_path in busy:
                plan.add(Item(iid, desc, SKIPPED, busy[d.host_path]))
                continue
            if not d.exists:
                plan.add(Item(iid, desc, SKIPPED, "not present"))
                continue
            same = [k for k in kinds[:kinds.index(kind)] if p.data[k].host_path == d.host_path]
            outer = [k for k in kinds if k != kind and p.data[k].host_path != d.host_path
                     and hostfacts.path_is_within(d.host_path, p.data[k].host_path)]
            if same or outer:
                why = (f"the same folder as {same[0]}" if same
                       else f"inside the {outer[0]} folder; moves with it")
                plan.add(Item(iid, desc, SKIPPED, why))
                continue
            if hostfacts.path_is_within(target.host_path, d.host_path):
                raise InputError(f"target {target.host_path} is inside the source "
                                 f"{d.host_path}")
            if hostfacts.path_is_within(d.host_path, target.host_path) and not d.is_link:
                raise InputError(f"{d.host_path}: already inside the target "
                                 f"{target.host_path}")
            if d.is_link:
                rec = _our_link(app, p, kind, d)
                if isinstance(rec, str):  # not ours: never moved, whatever the flags
                    plan.add(Item(iid, desc, SKIPPED, rec))
                    continue
                if rec.link_text == mv.dest_host:
                    plan.add(Item(iid, desc, OK, f"already on the SSD at {mv.dest_host}"))
                    continue
                if not force:
                    plan.add(Item(iid, desc, SKIPPED, f"relocated by mnic-ops to "
                                  f"{rec.link_text}; left there (--force moves it to "
                                  f"{mv.dest_host})"))
                    continue
                mv.size = treestat.measure_tree(root.path(rec.target))
                plan.add(_move_item(app, mv, jdir, space, problems, relink_from=rec))
                continue
            st = os.lstat(d.path)
            if not stat.S_ISDIR(st.st_mode):
                raise InputError(f"{d.host_path}: is a file, not a folder; refusing to "
                                 "move it")
            if st.st_dev != os.lstat(d.path.parent).st_dev:
                raise InputError(f"{d.host_path}: is a mount point; move the filesystem "
                                 "(fstab) instead")
            src_mount = hostfacts.mount_for(d.host_path, mounts)
            if src_mount is not None and src_mount.ssd and not force:
                plan.add(Item(iid, desc, OK, f"already on an SSD ({src_mount.source} at "
                              f"{src_mount.mount_point}): nothing to do"))
                continue
            if st.st_uid != p.uid:
                plan.add(Item(iid, desc, SKIPPED, _not_owner(p, st.st_uid)))
                continue
            mv.size = treestat.measure_tree(d.path)
            plan.add(_move_item(app, mv, jdir, space, problems, relink_from=None))
    if problems:
        raise OpsError("refusing to move anything:\n  " + "\n  ".join(problems))
    return plan


def _move_item(app: AppContext, mv: _Move, jdir: Path, space: _Space, problems: list[str],
               relink_from: linkrecords.LinkRecord | None) -> Item:
    root = app.root
    d = mv.data
    src_real = root.path(relink_from.target) if relink_from else d.path
    dest_real = root.path(mv.dest_host)
    if mv.size.unsupported:
        problems.append(f"{d.host_path}: holds sockets ({', '.join(mv.size.unsupported[:3])})"
                        "; a program is listening there")
    hold = _holders_error(app, [src_real], d.host_path)
    if hold:
        problems.append(hold)
    same_fs = _dev(src_real) == _dev(dest_real)
    if not same_fs:
        try:
            space.check(dest_real, mv.dest_base, mv.size, d.host_path)
        except OpsError as exc:
            problems.append(exc.message)
    how = "rename (same filesystem)" if same_fs else "verified copy"
    summary = f"{human(mv.size.bytes)} in {mv.size.files} files"
    desc = f"move {d.host_path} to {mv.dest_host} ({summary}, {how})"
    before = f"{d.host_path}/ (folder, {summary})" if not relink_from else \
        f"{d.host_path} -> {relink_from.link_text}"
    diff = (f"--- {before}\n+++ {d.host_path} -> {mv.dest_host}\n")
    item = Item(f"relocate:{d.host_path}", desc, diff=diff,
                data={"path": d.host_path, "to": mv.dest_host, "bytes": mv.size.bytes,
                      "files": mv.size.files, "method": "rename" if same_fs else "copy"})

    def action(ctx: ApplyContext) -> Undo | None:
        hold = _holders_error(app, [src_real], d.host_path)
        if hold:
            raise OpsError(hold)
        if relink_from:
            back = _Move(mv.project, d, mv.rel, relink_from.dest_base, relink_from.dest_rel)
            _do_back(app, back, jdir, None)
        created = relocation.missing_dirs(app.root, mv.dest_base)
        rec = mv.record("out")
        if created:
            rec["created_dirs"] = created
        with relocation.folder_times(app.root, rec):
            res = _do_out(app, mv, jdir, _progress_for(app, mv))
        item.data["result"] = res.to_json() if res else "completed by recovery"
        return Undo("relocate", rec)

    item.action = action
    return item


def _progress_for(app: AppContext, mv: _Move) -> Any:
    return _progress(app, f"{mv.data.kind} of {mv.project.name}", mv.size)


def _do_out(app: AppContext, mv: _Move, jdir: Path, bar: Any) -> moveplace.MoveResult | None:
    return relocation.out(app.root, mv.record("out"), jdir, bar,
                          bool(app.config.get("relocate.verify_from_disk", True)))


def _do_back(app: AppContext, mv: _Move, jdir: Path, bar: Any) -> moveplace.MoveResult | None:
    return relocation.back(app.root, mv.record("back"), jdir, bar,
                           bool(app.config.get("relocate.verify_from_disk", True)))


def _our_link(app: AppContext, p: Project, kind: str, d: DataDir
              ) -> linkrecords.LinkRecord | str:
    """The record of the link at a data folder when mnic-ops made it (its target there
    and owned by the install's owner), else why it is left alone. A recorded link whose
    target is gone is bad input (the data is not there)."""
    loc = linkrecords.locate(app.root, p, kind)
    rec = loc.record
    if rec is not None and rec.public == d.host_path:
        if loc.state == linkrecords.RELOCATED:
            return rec
        if loc.state == linkrecords.ABSENT:
            raise InputError(f"{d.host_path}: dangling symlink to {d.link_target}; the "
                             "data is not there (is the SSD mounted?); fix or remove the "
                             "link first")
    dangling = d.link_target is not None and not os.path.lexists(
        app.root.path(d.link_target))
    why = loc.note.split(": not followed", 1)[0] if loc.note else "not recorded"
    return (f"a {'dangling ' if dangling else ''}symlink to {d.link_target}, not made by "
            f"mnic-ops for this install: left alone, with or without --force ({why}); to "
            "hand its data to mnic-ops, put the folder back in place of the link and run "
            "relocate again")


def _not_owner(p: Project, uid: int) -> str:
    return (f"owned by uid {uid}, not by the install's owner {p.user} (uid {p.uid}): not "
            "moved, with or without --force (a folder of someone else must not end up in "
            "a folder the install's owner controls); chown it if it is theirs")


def plan_back(app: AppContext, projects: list[Project], force: bool, jdir: Path,
              busy: dict[str, str]) -> Plan:
    """``--undo``: every data folder that is a link made by relocate comes back."""
    root = app.root
    plan = Plan()
    kinds = relocate_kinds(app)
    space = _Space(float(app.config.get("relocate.margin_percent", 10.0)),
                   int(app.config.get("relocate.min_free_mib", 256)) << 20)
    problems: list[str] = []
    for p in projects:
        for kind in kinds:
            d = p.data[kind]
            iid = f"relocate-back:{d.host_path}"
            rel = _rel_in_project(p, d)
            desc = f"bring {d.host_path} back"
            if d.host_path in busy:
                plan.add(Item(iid, desc, SKIPPED, busy[d.host_path]))
                continue
            if not d.exists:
                plan.add(Item(iid, desc, SKIPPED, "not present"))
                continue
            if not d.is_link:
                if not stat.S_ISDIR(os.lstat(d.path).st_mode):
                    raise InputError(f"{d.host_path}: is a file, not a folder")
                plan.add(Item(iid, desc, OK, "already a folder"))
                continue
            rec = _our_link(app, p, kind, d)
            if isinstance(rec, str):  # not ours: never moved, whatever the flags
                plan.add(Item(iid, desc, SKIPPED, rec))
                continue
            real = root.path(rec.target)
            mv = _Move(p, d, rel, rec.dest_base, rec.dest_rel, treestat.measure_tree(real))
            hold = _holders_error(app, [real], d.host_path)
            if hold:
                problems.append(hold)
            if mv.size.unsupported:
                problems.append(f"{d.link_target}: holds sockets; a program is listening")
            same_fs = _dev(real) == _dev(d.path.parent)
            if not same_fs:
                try:
                    space.check(d.path.parent, os.path.dirname(d.host_path), mv.size,
                                d.host_path)
                except OpsError as exc:
                    problems.append(exc.message)
            summary = f"{human(mv.size.bytes)} in {mv.size.files} files"
            item = Item(iid, f"bring {d.host_path} back from {d.link_target} ({summary}, "
                        f"{'rename' if same_fs else 'verified copy'})",
                        diff=f"--- {d.host_path} -> {d.link_target}\n+++ {d.host_path}/ "
                             f"(folder, {summary})\n",
                        data={"path": d.host_path, "from": d.link_target,
                              "bytes": mv.size.bytes, "files": mv.size.files})
            item.action = _back_action(app, mv, jdir, item, real)
            plan.add(item)
    if problems:
        raise OpsError("refusing to move anything:\n  " + "\n  ".join(problems))
    return plan


def _back_action(app: AppContext, mv: _Move, jdir: Path, item: Item, real: Path) -> Any:
    def action(ctx: ApplyContext) -> Undo | None:
        hold = _holders_error(app, [real], mv.data.host_path)
        if hold:
            raise OpsError(hold)
        rec = mv.record("back")
        with relocation.folder_times(app.root, rec):
            res = _do_back(app, mv, jdir, _progress_for(app, mv))
        item.data["result"] = res.to_json() if res else "already a folder"
        return Undo("relocate", rec)
    return action


def plan_recovery(app: AppContext, jdir: Path, projects: list[Project]
                  ) -> tuple[Plan, dict[str, str]]:
    """Items that finish moves a crash interrupted, for the installs of this run only;
    they run before anything else. A journal of another install is listed as pending
    (skipped), one whose install or target is gone or that cannot be read is reported
    and skipped: never `changed`, never in the way of another install."""
    plan = Plan()
    busy: dict[str, str] = {}  # data folder -> why it is not moved in this run
    for pm in movejournal.pending_moves(jdir):
        if pm.data is None:
            plan.add(Item(f"recover:{pm.id}", f"interrupted move {pm.id}", SKIPPED,
                          f"{pm.error} (relocate --list-pending shows it; relocate --forget "
                          f"{pm.id} discards it)", data={"journal": str(pm.path)}))
            continue
        host, _project = pendingmoves.journal_host(pm)
        busy[host] = "an interrupted move of it is finished first"
        phase = pm.data.get("phase")
        desc = f"finish the interrupted move of {host} (journal {pm.id}, phase {phase})"
        info = {"path": host, "journal": str(pm.path), "phase": phase, "id": pm.id}
        status = pm.status()
        if status != "recoverable":
            why = pendingmoves.NOTHING_TO_FINISH[status].format(host=host, dest=pm.dest.path.parent)
            busy[host] = (f"an interrupted move of it (journal {pm.id}) cannot be finished: "
                          f"{why}; relocate --forget {pm.id} discards it once nothing of "
                          "it is left")
            plan.add(Item(f"recover:{host}", desc, SKIPPED, f"nothing to finish: {why} "
                          f"(relocate --forget {pm.id} discards the journal once nothing "
                          "of the move is left)", data={**info, "status": status}))
            continue
        if not pendingmoves.in_run(pm, projects):
            plan.add(Item(f"recover:{host}", desc, SKIPPED, "pending: its install is not "
                          "in this run (`mnic-ops relocate INSTALL` finishes it; relocate "
                          "--list-pending lists it)", data=info))
            continue
        what = ("roll back the partial copy, then move it again" if phase in ("start", "copy")
                else "complete it")
        item = Item(f"recover:{host}", f"finish the interrupted move of {host} "
                    f"(stopped in phase {phase}: {what})", data=info)
        meta = pm.data.get("meta") or {}

        def action(ctx: ApplyContext, jpath: Path = pm.path, item: Item = item,
                   meta: dict[str, Any] = meta, host: str = host) -> Undo | None:
            r = treemove.recover(jpath)
            item.data["result"] = r.message
            log.info("%s", r.message)
            if meta.get("direction") in ("out", "back"):
                relocation.sync_record(app.root, meta)
            if r.outcome == "completed" and meta.get("direction") in ("out", "back"):
                return Undo("relocate", meta)
            if r.outcome == "reverted":
                raise OpsError(r.message)
            if r.outcome == "rolled_back" and meta.get("direction") in ("out", "back"):
                # The data never left: do the move the interrupted run was doing.
                fn = relocation.out if meta["direction"] == "out" else relocation.back
                hold = _holders_error(app, [relocation.places(app.root, meta)[0].path], host)
                if hold:
                    raise OpsError(hold)
                res = fn(app.root, meta, jdir, None,
                         bool(app.config.get("relocate.verify_from_disk", True)))
                item.data["result"] += "; moved again" + (f" ({res.message})" if res else "")
                return Undo("relocate", meta)
            return None

        item.action = action
        plan.add(item)
    return plan, busy
