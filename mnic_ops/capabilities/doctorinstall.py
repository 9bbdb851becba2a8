"""doctor's checks of one install: the memory figure of the processes inside it, one
streaming scan per data folder (folders to watch, files due for compression, oversized
sessions), and the findings on storage (rotational disks, noatime), links not made by
mnic-ops, agent definitions, session files and uncompressed data."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnic_ops.capabilities.doctorreport import FIGURES, Check, Figure, fix_command, short
from mnic_ops.core import safefs
from mnic_ops.engines import datatree
from mnic_ops.facts import hostfacts, linkrecords, policy
from mnic_ops.facts.processes import Proc, inside
from mnic_ops.facts.projects import DATA_KINDS, Project, human

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot


# --- processes -------------------------------------------------------------------------

def memory_figure(p: Project, procs: list[Proc], skip: set[int]) -> Figure:
    prefixes = {str(p.path), os.path.realpath(p.path)}
    hits: list[Proc] = []
    for pr in procs:
        if pr.pid in skip:
            continue
        if pr.cwd and inside(pr.cwd, prefixes):
            hits.append(pr)
            continue
        for a in pr.cmdline:
            cand = a.partition("=")[2] if "=" in a and not a.startswith("/") else a
            if cand.startswith("/") and inside(os.path.normpath(cand), prefixes):
                hits.append(pr)
                break
    rss = sum(h.rss for h in hits)
    details: dict[str, Any] = {
        "processes": len(hits),
        "pids": sorted(h.pid for h in hits)[:50],
        "largest": [{"pid": h.pid, "rss": h.rss, "command": " ".join(h.cmdline)[:120]}
                    for h in sorted(hits, key=lambda h: -h.rss)[:3]],
    }
    if not hits:
        details["note"] = "no framework process running now"
    return Figure("memory", float(rss), FIGURES["memory"], details)


# --- data folders ----------------------------------------------------------------------

@dataclass
class DirScan:
    kind: str
    storage: str  # host path where the data really is (the link target when relocated)
    dirs: int = 0
    files: int = 0
    old_files: int = 0
    old_bytes: int = 0
    old_examples: list[str] = field(default_factory=list)
    big: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def _storage(root: HostRoot, p: Project, kind: str) -> linkrecords.Location | None:
    """Where a data folder's files are (see :mod:`mnic_ops.facts.linkrecords`); None when
    absent or not followed."""
    loc = linkrecords.locate(root, p, kind)
    if loc.state in (linkrecords.FOLDER, linkrecords.RELOCATED):
        return loc
    return None


def link_check(root: HostRoot, p: Project) -> Check | None:
    """Data folders that are symlinks mnic-ops did not make: not followed by any pass,
    so their data is neither compressed, expired, watched nor measured."""
    refused = []
    for kind in DATA_KINDS:
        if not p.data[kind].is_link:
            continue
        loc = linkrecords.locate(root, p, kind)
        if loc.state == linkrecords.REFUSED:
            refused.append({"kind": kind, "path": loc.host_path,
                            "link_target": p.data[kind].link_target, "note": loc.note})
    if not refused:
        return None
    return Check("links", "warn",
                 "symlinks not made by mnic-ops are not followed: "
                 + short([f"{r['path']} -> {r['link_target']}" for r in refused]),
                 "put the data back in place of the link (rm the link, mv its target "
                 "there); `mnic-ops relocate` then moves it and keeps the link it makes",
                 None, {"links": refused})


def scan_data(root: HostRoot, p: Project, kind: str, *, pol: policy.Policy | None,
              now: float, big_bytes: int) -> DirScan | None:
    """One streaming walk of a data folder (relocated: its target), following no
    symlink nor leaving its filesystem (:func:`mnic_ops.engines.datatree.walk`, clean's walk):
    folder count (inotify watches, as :func:`mnic_ops.engines.datatree.count_folders`), files
    the clean policy would compress now (:func:`mnic_ops.facts.policy.due`, the same rule
    clean acts on, so that its fix clears the finding), and (sessions) files over the
    size limit."""
    where = _storage(root, p, kind)
    if where is None or where.target is None:
        return None
    host = where.target
    res = DirScan(kind, host)
    try:
        top = linkrecords.open_location(root, where)
    except OSError as exc:
        res.errors.append({"path": host, "error": exc.strerror or str(exc)})
        return res
    def skip(reason: str, rel: str, error: OSError | None) -> None:
        if reason == "unreadable_dir" and error is not None and len(res.errors) < 20:
            res.errors.append({"path": host if rel == "." else f"{host}/{rel}",
                               "error": error.strerror or str(error)})

    try:
        for reldir, _parts, _ident, entries in datatree.walk(top, None, skip):
            res.dirs += 1  # the count the watcher's watches follow (datatree.count_folders)
            rel = f"{reldir}/" if reldir else ""
            for name, st in entries:
                res.files += 1
                if name.endswith(".gz") or safefs.is_tmp_name(name) or \
                        policy.protected(kind, name, rel + name) is not None:
                    continue
                if kind in ("sessions", "claude_sessions") and st.st_size > big_bytes \
                        and len(res.big) < 20:
                    res.big.append({"path": f"{host}/{rel}{name}", "bytes": st.st_size})
                if pol is None:
                    continue
                d = policy.due(pol, name, rel + name, st, now, only="compress")
                if d is not None and d.action == "compress":
                    res.old_files += 1
                    res.old_bytes += st.st_size
                    if len(res.old_examples) < 5:
                        res.old_examples.append(f"{host}/{rel}{name}")
    finally:
        os.close(top)
    return res


# --- per-install checks ----------------------------------------------------------------

def storage_checks(root: HostRoot, p: Project, mounts: list[hostfacts.Mount],
                   movable: Sequence[str] = ("sessions", "checkpoints", "checkpoint_store")
                   ) -> tuple[Check, Check]:
    """Data folders on rotational disks (relocate, for the classes it moves:
    ``movable``, the config's relocate.kinds) and mounts without noatime (fstab)."""
    if not mounts:
        why = "no mount table under the root (/proc/self/mountinfo)"
        return Check("rotational", "skip", why), Check("noatime", "skip", why)
    rot: list[str] = []
    stay: list[str] = []  # on rotational storage, but relocate does not move the class
    rot_known = 0
    atime: dict[str, list[str]] = {}
    atime_known = 0
    seen_mounts: dict[str, hostfacts.Mount] = {}
    for kind in DATA_KINDS:
        where = _storage(root, p, kind)
        if where is None or where.target is None:
            continue
        m = hostfacts.mount_for(where.target, mounts)
        if m is None:
            continue
        if m.ssd is not None:
            rot_known += 1
            if not m.ssd:
                (rot if kind in movable else stay).append(
                    f"{kind} ({where.target} on {m.device or m.source})")
        if m.pseudo or m.network or m.read_only:
            continue
        atime_known += 1
        if "noatime" not in m.options:
            atime.setdefault(m.mount_point, []).append(kind)
            seen_mounts[m.mount_point] = m
    if rot:
        also = ("; " + ", ".join(stay) + " also on rotational storage: relocate moves "
                "them only when listed in [relocate] kinds") if stay else ""
        c_rot = Check("rotational", "fail",
                      "data on rotational storage: " + ", ".join(rot) + also,
                      "move them to an SSD behind symlinks",
                      fix_command(root, "relocate", p.host_path),
                      {"folders": rot, "not_moved_by_relocate": stay})
    elif stay:
        c_rot = Check("rotational", "warn",
                      "data on rotational storage that relocate does not move (not in "
                      "[relocate] kinds): " + ", ".join(stay),
                      "list these classes in [relocate] kinds in the mnic-ops config, then "
                      "run mnic-ops relocate (or move the install to an SSD)", None,
                      {"folders": [], "not_moved_by_relocate": stay})
    elif rot_known:
        c_rot = Check("rotational", "ok")
    else:
        c_rot = Check("rotational", "skip", "storage type of the data folders unknown "
                                            "(no block device behind their mounts)")
    if atime:
        parts = []
        for mp, kinds in atime.items():
            m = seen_mounts[mp]
            mode = next((o for o in m.options if o in ("relatime", "strictatime")),
                        "atime")
            parts.append(f"{mp} ({m.fstype}, {mode}) holds {', '.join(kinds)}")
        c_at = Check("noatime", "fail", "filesystem without noatime: " + "; ".join(parts),
                     "add noatime to the fstab entry and remount (the command shows the "
                     "diff first and applies it when asked)",
                     fix_command(root, "fstab"),
                     {"mounts": sorted(atime)})
    elif atime_known:
        c_at = Check("noatime", "ok")
    else:
        c_at = Check("noatime", "skip", "data folders are on pseudo, network or "
                                        "read-only filesystems only")
    return c_rot, c_at


def agent_checks(root: HostRoot, p: Project, res: dict[str, Any], limit: int
                 ) -> list[Check]:
    out: list[Check] = []
    if res.get("fatal"):
        out.append(Check("readable", "fail", f"agent definitions cannot be read as "
                                             f"{p.user}: {res['fatal']}",
                         f"give {p.user} read access to {p.host_path} (for example "
                         f"chmod -R u+rwX {shlex.quote(p.host_path)}), or fix the symlink",
                         None, {"error": res["fatal"]}))
        return out
    errs = res.get("errors") or []
    unreadable = [e for e in errs if not e["error"].startswith(("front matter", "not UTF"))]
    broken = [e for e in errs if e not in unreadable]
    if unreadable:
        out.append(Check("readable", "fail",
                         f"{len(unreadable)} agent paths unreadable as {p.user}: "
                         + short([f"{e['path']} ({e['error']})" for e in unreadable]),
                         f"give {p.user} read access below {p.host_path}/.claude/agents",
                         None, {"paths": unreadable}))
    else:
        out.append(Check("readable", "ok"))
    if broken:
        out.append(Check("agent_front_matter", "fail",
                         f"{len(broken)} agent files the framework skips: "
                         + short([f"{e['path']}: {e['error']}" for e in broken]),
                         "fix the YAML front matter between the --- lines (the framework "
                         "loads it with yaml.safe_load)", None, {"files": broken}))
    elif res.get("no_front_matter"):
        nf = res["no_front_matter"]
        out.append(Check("agent_front_matter", "warn",
                         f"{len(nf)} .md files without front matter: {short(nf)}",
                         "add a --- front matter block or move them out of .claude/agents",
                         None, {"files": nf}))
    else:
        out.append(Check("agent_front_matter", "ok"))
    if res.get("symlinks"):
        out.append(Check("agent_symlinks", "warn",
                         f"symlinks under .claude/agents not followed: "
                         f"{short(res['symlinks'])}",
                         "copy the agent files into the install; a link may lead out of it",
                         None, {"paths": res["symlinks"]}))
    big = res.get("big") or []
    if big:
        out.append(Check("agent_size", "fail",
                         f"{len(big)} agent files over {human(limit)}: "
                         + short([f"{b['path']} ({human(b['bytes'])})" for b in big]),
                         "shorten them: move reference material out of .claude/agents into "
                         "docs the agent reads on demand (the guide: reduce agent file size)",
                         None, {"files": big, "limit_bytes": limit}))
    else:
        out.append(Check("agent_size", "ok"))
    return out


def context_checks(root: HostRoot, p: Project, res: dict[str, Any],
                   scans: dict[str, DirScan], limit: int) -> list[Check]:
    out: list[Check] = []
    if res.get("fatal"):
        out.append(Check("session_files", "fail",
                         f"session state cannot be read as {p.user}: {res['fatal']}",
                         f"give {p.user} read access to {p.host_path}", None,
                         {"error": res["fatal"]}))
    else:
        errs = res.get("errors") or []
        if errs:
            out.append(Check("session_files", "fail",
                             f"{len(errs)} session files the framework cannot load: "
                             + short([f"{e['path']}: {e['error']}" for e in errs]),
                             "repair or move the file aside (a gzip archive of an old "
                             "session is made by `mnic-ops clean`)", None, {"files": errs}))
        else:
            out.append(Check("session_files", "ok"))
    sess = scans.get("sessions")
    big = sess.big if sess else []
    if big:
        out.append(Check("session_size", "fail",
                         f"{len(big)} session files over {human(limit)}: "
                         + short([f"{b['path']} ({human(b['bytes'])})" for b in big]),
                         "compress old sessions (`mnic-ops clean`); prune the current one "
                         "(the guide keeps sessions under 10 MB)",
                         fix_command(root, "clean", p.host_path),
                         {"files": big, "limit_bytes": limit}))
    else:
        out.append(Check("session_size", "ok"))
    return out


def uncompressed_check(root: HostRoot, p: Project, scans: dict[str, DirScan],
                       days: dict[str, float]) -> Check:
    old = [s for s in scans.values() if s.old_files]
    if not old:
        return Check("uncompressed", "ok", details={"policy_days": days})
    total = sum(s.old_bytes for s in old)
    parts = [f"{s.kind}: {s.old_files} files ({human(s.old_bytes)}) older than "
             f"{days[s.kind]:g} days" for s in old]
    return Check("uncompressed", "fail",
                 f"uncompressed data older than the policy, {human(total)}: "
                 + "; ".join(parts),
                 "compress it in place (gzip, crash-safe)",
                 fix_command(root, "clean", p.host_path),
                 {"policy_days": days,
                  "kinds": {s.kind: {"files": s.old_files, "bytes": s.old_bytes,
                                     "examples": s.old_examples} for s in old}})
