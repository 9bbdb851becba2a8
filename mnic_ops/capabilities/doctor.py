"""``mnic-ops doctor``: the guide's performance baseline and troubleshooting list, run.

Per install it measures on this host (never estimates):

- **agent activation**: discover and parse every ``.claude/agents/**/*.md`` with its YAML
  front matter, the way the framework's own discovery does, in a fresh process
  (:mod:`mnic_ops.facts._probe`, timed inside the child);
- **context loading**: read the newest session files and the checkpoint index in a fresh
  process;
- **memory**: resident memory (RSS, as the guide's ``ps aux`` recipe) of the processes
  whose working directory or command line is inside the install; and of a running
  ``mnic-ops watch``.

Times are taken inside the child, so interpreter start-up is not in the figure;
``details.process_seconds`` has the whole child, like the guide's ``time python3 -c``.

Each figure is placed against the guide's "Expected Performance Metrics" table
(:data:`FIGURES`): *excellent*, *good*, *target* (meets the target only) or *missed*.
Then checks, each with a finding and the fix (an mnic-ops command where one exists).
Exit 0 when every figure meets its target and no check fails, 1 otherwise.

Everything is read-only except the optional node_exporter textfile (``--metrics``,
``doctor.metrics_file``), written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import stat
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities import render
from mnic_ops.core import execute, installfail, metrics, safefs, userjson
from mnic_ops.core.errors import EXIT_FAILURE, EXIT_OK, InputError, OpsError
from mnic_ops.engines import datatree
from mnic_ops.facts import hostfacts, inotify, linkrecords, policy
from mnic_ops.facts.projects import DATA_KINDS, Project, human, select_projects

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

log = logging.getLogger(__name__)

MIB = 1024 * 1024


# --- levels --------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """Upper bounds (exclusive) of the levels: below ``excellent`` is excellent, below
    ``good`` good, below ``target`` meets the target, anything else missed."""

    label: str
    unit: str  # "s" or "bytes"
    target: float
    good: float
    excellent: float


# The guide's table (docs/advanced/performance-optimization.md, "Expected Performance
# Metrics"): activation <2 s / <1 s / <0.5 s, context <5 s / <3 s / <1 s, memory
# <200 / <150 / <100 MB. The guide measures memory with `ps aux` RSS / 1024, i.e. MiB.
FIGURES: dict[str, Threshold] = {
    "agent_activation": Threshold("agent activation", "s", 2.0, 1.0, 0.5),
    "context_loading": Threshold("context loading", "s", 5.0, 3.0, 1.0),
    "memory": Threshold("memory", "bytes", 200 * MIB, 150 * MIB, 100 * MIB),
}
# The watcher's own budget: issue 7's idle goal (40 MB) is the target.
WATCHER = Threshold("watcher memory", "bytes", 40 * MIB, 30 * MIB, 20 * MIB)

LEVELS = ("excellent", "good", "target", "missed")
LEVEL_VALUE = {"excellent": 3, "good": 2, "target": 1, "missed": 0, "unknown": -1}
_LEVEL_COLOURS = {"excellent": "green", "good": "green", "target": "yellow",
                  "missed": "red", "unknown": "magenta"}
_STATUS_COLOURS = {"ok": "green", "fail": "red", "warn": "yellow", "skip": "cyan"}


def level(value: float | None, th: Threshold) -> str:
    if value is None or math.isnan(value):
        return "unknown"
    if value < th.excellent:
        return "excellent"
    if value < th.good:
        return "good"
    if value < th.target:
        return "target"
    return "missed"


@dataclass
class Figure:
    name: str
    value: float | None
    th: Threshold
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> str:
        return level(self.value, self.th)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.th.unit, "level": self.level,
                "target": self.th.target, "good": self.th.good,
                "excellent": self.th.excellent, "details": self.details}


@dataclass
class Check:
    """One troubleshooting check: ok, fail (counts for the exit code), warn or skip."""

    id: str
    status: str
    finding: str = ""
    fix: str = ""
    command: str | None = None  # the mnic-ops command that fixes it, when there is one
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.finding:
            out["finding"] = self.finding
        if self.fix:
            out["fix"] = self.fix
        out["command"] = self.command
        if self.details:
            out["details"] = self.details
        return out


def _cmd(root: HostRoot, *args: str) -> str:
    """The command line an admin types to fix something (with --root when not /)."""
    pre = ["mnic-ops"] + ([] if root.live else ["--root", str(root.root)])
    return shlex.join([*pre, *args])


# --- the measurement child ------------------------------------------------------------

_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from mnic_ops.facts._probe import main; sys.exit(main(sys.argv))")


def run_probe(req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :mod:`mnic_ops.facts._probe` in a fresh interpreter (``-I``: no PYTHON* variables,
    no user site, no cwd on the path) and return its answer; failures become
    ``{"fatal": reason}``."""
    pkg_parent = str(Path(__file__).resolve().parents[2])  # holds mnic_ops/
    argv = [sys.executable, "-I", "-c", _BOOT, pkg_parent, json.dumps(req)]
    try:
        proc = execute.run(argv, check=False, timeout=timeout, cwd="/")
    except OpsError as exc:
        return {"fatal": exc.message, "seconds": None}
    try:
        # bounded like any user file: the child ran as the install's owner
        res = userjson.parse(proc.stdout, "measurement output")
        if not isinstance(res, dict):
            raise ValueError("not an object")
    except (ValueError, userjson.UserDataError):
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        return {"fatal": f"measurement process exited {proc.returncode}"
                         + (f": {tail}" if tail else ""), "seconds": None}
    return res


def _owner(root: HostRoot, p: Project) -> dict[str, Any]:
    groups: list[int] = []
    if root.live and p.uid != 0 and p.user != str(p.uid):
        try:
            groups = os.getgrouplist(p.user, p.gid)
        except OSError:
            groups = []
    return {"uid": p.uid, "gid": p.gid, "groups": groups}


def _dir_spec(root: HostRoot, p: Project, kind: str) -> dict[str, Any] | None:
    """How the measurement child reaches a data folder: below the install root, or for
    data relocated by mnic-ops from the recorded base, every component below it without
    following links. None for a link mnic-ops did not make (never followed)."""
    loc = linkrecords.locate(root, p, kind)
    label = os.path.relpath(loc.host_path, p.host_path)
    if loc.state == linkrecords.REFUSED or loc.prefix is None:
        return None
    if loc.state == linkrecords.RELOCATED or (
            loc.state == linkrecords.ABSENT and loc.record is not None):
        return {"abs": str(root.path(loc.prefix)), "below": "/".join(loc.parts),
                "label": label, "owner": loc.owner}
    return {"rel": label, "label": label}


# --- processes -------------------------------------------------------------------------

@dataclass
class Proc:
    pid: int
    cmdline: list[str]
    cwd: str | None
    rss: int
    environ_root: str | None = None


def processes() -> list[Proc]:
    """Every process we may inspect (as root: all), except this one."""
    import psutil

    me = os.getpid()
    out: list[Proc] = []
    for pr in psutil.process_iter(["pid", "cmdline", "cwd", "memory_info"]):
        info = pr.info
        if info["pid"] == me or info.get("memory_info") is None:
            continue
        out.append(Proc(info["pid"], list(info.get("cmdline") or []), info.get("cwd"),
                        int(info["memory_info"].rss)))
    return out


def _inside(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == pre or path.startswith(pre.rstrip("/") + "/") for pre in prefixes)


def watch_root(cmdline: Sequence[str]) -> str | None:
    """The ``--root`` of an ``mnic-ops ... watch`` command line ("/" when none is
    given); None when the command line is not the watcher."""
    start = None
    for i, a in enumerate(cmdline):
        if os.path.basename(a) == "mnic-ops" or (
                a == "mnic_ops" and i > 0 and cmdline[i - 1] == "-m"):
            start = i + 1
            break
    if start is None:
        return None
    root = "/"
    rest = list(cmdline[start:])
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--root" and i + 1 < len(rest):
            root = rest[i + 1]
            i += 2
            continue
        if a.startswith("--root="):
            root = a.partition("=")[2]
        elif a == "watch":
            return os.path.normpath(root)
        elif a in ("--config",):
            i += 2
            continue
        elif not a.startswith("-"):
            return None  # another subcommand
        i += 1
    return None


def watchers(root: HostRoot, procs: list[Proc]) -> list[Proc]:
    out = []
    for pr in procs:
        wr = watch_root(pr.cmdline)
        if wr is None:
            continue
        try:
            same = os.path.samefile(wr, root.root)
        except OSError:
            same = os.path.normpath(wr) == str(root.root)
        if same:
            out.append(pr)
    return out


def memory_figure(p: Project, procs: list[Proc], skip: set[int]) -> Figure:
    prefixes = {str(p.path), os.path.realpath(p.path)}
    hits: list[Proc] = []
    for pr in procs:
        if pr.pid in skip:
            continue
        if pr.cwd and _inside(pr.cwd, prefixes):
            hits.append(pr)
            continue
        for a in pr.cmdline:
            cand = a.partition("=")[2] if "=" in a and not a.startswith("/") else a
            if cand.startswith("/") and _inside(os.path.normpath(cand), prefixes):
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
                 + _short([f"{r['path']} -> {r['link_target']}" for r in refused]),
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
                      _cmd(root, "relocate", p.host_path),
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
                     _cmd(root, "fstab"),
                     {"mounts": sorted(atime)})
    elif atime_known:
        c_at = Check("noatime", "ok")
    else:
        c_at = Check("noatime", "skip", "data folders are on pseudo, network or "
                                        "read-only filesystems only")
    return c_rot, c_at


def _short(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


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
                         + _short([f"{e['path']} ({e['error']})" for e in unreadable]),
                         f"give {p.user} read access below {p.host_path}/.claude/agents",
                         None, {"paths": unreadable}))
    else:
        out.append(Check("readable", "ok"))
    if broken:
        out.append(Check("agent_front_matter", "fail",
                         f"{len(broken)} agent files the framework skips: "
                         + _short([f"{e['path']}: {e['error']}" for e in broken]),
                         "fix the YAML front matter between the --- lines (the framework "
                         "loads it with yaml.safe_load)", None, {"files": broken}))
    elif res.get("no_front_matter"):
        nf = res["no_front_matter"]
        out.append(Check("agent_front_matter", "warn",
                         f"{len(nf)} .md files without front matter: {_short(nf)}",
                         "add a --- front matter block or move them out of .claude/agents",
                         None, {"files": nf}))
    else:
        out.append(Check("agent_front_matter", "ok"))
    if res.get("symlinks"):
        out.append(Check("agent_symlinks", "warn",
                         f"symlinks under .claude/agents not followed: "
                         f"{_short(res['symlinks'])}",
                         "copy the agent files into the install; a link may lead out of it",
                         None, {"paths": res["symlinks"]}))
    big = res.get("big") or []
    if big:
        out.append(Check("agent_size", "fail",
                         f"{len(big)} agent files over {human(limit)}: "
                         + _short([f"{b['path']} ({human(b['bytes'])})" for b in big]),
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
                             + _short([f"{e['path']}: {e['error']}" for e in errs]),
                             "repair or move the file aside (a gzip archive of an old "
                             "session is made by `mnic-ops clean`)", None, {"files": errs}))
        else:
            out.append(Check("session_files", "ok"))
    sess = scans.get("sessions")
    big = sess.big if sess else []
    if big:
        out.append(Check("session_size", "fail",
                         f"{len(big)} session files over {human(limit)}: "
                         + _short([f"{b['path']} ({human(b['bytes'])})" for b in big]),
                         "compress old sessions (`mnic-ops clean`); prune the current one "
                         "(the guide keeps sessions under 10 MB)",
                         _cmd(root, "clean", p.host_path), {"files": big,
                                                            "limit_bytes": limit}))
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
                 "compress it in place (gzip, crash-safe)", _cmd(root, "clean", p.host_path),
                 {"policy_days": days,
                  "kinds": {s.kind: {"files": s.old_files, "bytes": s.old_bytes,
                                     "examples": s.old_examples} for s in old}})


# --- host checks ----------------------------------------------------------------------

def _read_text(root: HostRoot, host_path: str, limit: int = 1 << 20) -> str | None:
    try:
        fd = safefs.open_nofollow(root.path(host_path))
    except (OSError, OpsError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


_CRON_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def _clean_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.strip().startswith("#")
            and re.search(r"\bmnic-ops\b.*\bclean\b", ln)]


def cron_check(root: HostRoot) -> Check:
    """A cleanup job: /etc/cron.d/mnic-ops (or another cron.d file, /etc/crontab, a
    spooled user crontab) with an ``mnic-ops clean`` line."""
    found: list[str] = []
    ignored: list[str] = []
    files = ["/etc/crontab"]
    for d in ("/etc/cron.d", "/var/spool/cron/crontabs", "/var/spool/cron"):
        try:
            names = sorted(os.listdir(root.path(d)))
        except OSError:
            continue
        files += [f"{d}/{n}" for n in names]
    for f in files:
        text = _read_text(root, f)
        if text is None or not _clean_lines(text):
            continue
        if f.startswith("/etc/cron.d/") and not _CRON_NAME_OK.match(os.path.basename(f)):
            ignored.append(f)
        else:
            found.append(f)
    fix = "install the cleanup jobs (daily compression, expiry every 30 minutes)"
    if found:
        return Check("cron", "ok", details={"files": found})
    if ignored:
        return Check("cron", "fail", "cleanup job only in a file cron ignores (names with "
                                     "dots are skipped in /etc/cron.d): " + ", ".join(ignored),
                     fix, _cmd(root, "cron", "install"), {"ignored": ignored})
    return Check("cron", "fail", "no cleanup cron job (no `mnic-ops clean` line in "
                                 "/etc/cron.d/mnic-ops, /etc/crontab or a crontab)",
                 fix, _cmd(root, "cron", "install"))


def watcher_check(root: HostRoot, found: list[Proc]) -> Check:
    if found:
        return Check("watcher", "ok", details={"pids": [w.pid for w in found]})
    where = "" if root.live else f" for --root {root.root}"
    return Check("watcher", "fail", f"watcher not running (no `mnic-ops watch` process"
                                    f"{where})",
                 "writes the systemd unit; then start it: systemctl enable --now "
                 "mnic-ops-watch.service",
                 _cmd(root, "watch", "--install-unit"))


SYSCTL_FILE = inotify.SYSCTL_FILE


def inotify_check(root: HostRoot, dirs: int) -> Check:
    """The watcher needs one inotify watch per folder; ``max_user_watches`` is per user
    and shared with every other root process: :func:`mnic_ops.facts.inotify.fits`, the rule
    render sizes the sysctl file by and the watcher checks before it uses inotify."""
    raw = _read_text(root, "/proc/sys/fs/inotify/max_user_watches")
    try:
        limit = int((raw or "").strip())
    except ValueError:
        return Check("inotify", "skip", "/proc/sys/fs/inotify/max_user_watches unreadable",
                     details={"watches_needed": dirs})
    details = {"watches_needed": dirs, "max_user_watches": limit}
    if inotify.fits(limit, dirs):
        return Check("inotify", "ok", details=details)
    want = inotify.suggested(dirs)
    conf = _read_text(root, SYSCTL_FILE)
    conf_val = inotify.configured(conf) if conf else None
    details["suggested"] = want
    if conf_val is not None and inotify.fits(conf_val, dirs):
        return Check("inotify", "fail",
                     f"inotify limit too low: {dirs} folders to watch, max_user_watches "
                     f"{limit}; {SYSCTL_FILE} sets {conf_val} but it is not loaded",
                     f"load it: sysctl -p {SYSCTL_FILE}", None, details)
    return Check("inotify", "fail",
                 f"inotify limit too low: {dirs} folders to watch, max_user_watches "
                 f"{limit} (room kept for other watchers)",
                 f"set fs.inotify.max_user_watches = {want} in {SYSCTL_FILE} "
                 f"(`mnic-ops render` writes that file), then sysctl -p {SYSCTL_FILE}",
                 _cmd(root, "render"), details)


_PYOPT = re.compile(r"^\s*(?:export\s+)?PYTHONOPTIMIZE=(['\"]?)([^'\"\s;]*)\1")
_CASE_HEAD = re.compile(r"^\s*case\s+.*?\s+in(?:\s+|$)")
_CASE_BRANCH = re.compile(r"^\s*\(?\s*([0-9][0-9|\s]*)\)")


def optimize_for(text: str) -> tuple[bool, set[int]]:
    """Who a shell profile sets a non-zero PYTHONOPTIMIZE for: (everyone, uids). Knows
    the plain ``export`` line of the guide and render's ``case "$(id -u)" in UID|UID)``
    form, which sets it only for the owners of framework installs."""
    everyone, uids = False, set()
    branch: set[int] | None = None
    for line in text.splitlines():
        s = line.split("#", 1)[0]
        if not s.strip():
            continue
        s = _CASE_HEAD.sub("", s, count=1)
        m = _CASE_BRANCH.match(s)
        if m and "PYTHONOPTIMIZE" not in s.split(")", 1)[0]:
            branch = {int(u) for u in re.findall(r"\d+", m.group(1))}
            s = s.split(")", 1)[1]
        for part in s.split(";"):
            pm = _PYOPT.match(part)
            if pm and pm.group(2) not in ("", "0"):
                if branch is None:
                    everyone = True
                else:
                    uids |= branch
        if ";;" in s or s.strip() == "esac":
            branch = None
    return everyone, uids


def pythonoptimize_check(root: HostRoot, projects: list[Project]) -> Check:
    """PYTHONOPTIMIZE for every owner of an install (root excluded, as render does: it
    strips asserts from every Python program the user runs)."""
    users = {p.uid: p.user for p in projects if p.uid != 0}
    if not users:
        return Check("pythonoptimize", "skip", "every install is owned by root, which is "
                                               "left out on purpose")
    covered: set[int] = set()
    files = []
    for f in ("/etc/profile.d/mnic-ops.sh", "/etc/environment"):
        text = _read_text(root, f)
        if text is None:
            continue
        everyone, uids = optimize_for(text)
        if everyone or uids & set(users):
            files.append(f)
        covered |= set(users) if everyone else uids
    missing = sorted(users[u] for u in set(users) - covered)
    if not missing:
        return Check("pythonoptimize", "ok", details={"files": files})
    return Check("pythonoptimize", "fail",
                 f"PYTHONOPTIMIZE not set for framework users {', '.join(missing)} (in "
                 "/etc/profile.d/mnic-ops.sh or /etc/environment)",
                 "render /etc/profile.d/mnic-ops.sh, which exports it for install owners "
                 "(the guide: 15-20% faster)", _cmd(root, "render"), {"users": missing})


def tier_drift_check(app: AppContext, names: Sequence[str]) -> Check:
    """Pending items of ``render``'s plan are drift from the host class (the same plan
    ``mnic-ops render --check`` prints)."""
    again = _cmd(app.root, "render", "--check", "--diff", *names)
    try:
        res = render.build(app, None, list(names))
    except OpsError as exc:
        return Check("tier_drift", "fail", f"tier configs cannot be planned: {exc.message}",
                     "fix what the message names, then look again", again)
    except Exception as exc:  # a render bug must not cost the admin the whole report
        log.debug("render.build failed", exc_info=True)
        return Check("tier_drift", "skip", f"render could not plan: "
                                           f"{type(exc).__name__}: {exc}")
    plan = res[0] if isinstance(res, tuple) else res
    items = list(getattr(plan, "items", []))
    refused = [it for it in items if it.state == "failed"]
    if refused:
        return Check("tier_drift", "fail",
                     "tier configs cannot be rendered: "
                     + _short([it.error or it.description for it in refused]),
                     "fix the files named, then look again", again,
                     {"refused": [it.error or it.description for it in refused]})
    pending = [it.description for it in items if it.state == "pending"]
    if not pending:
        return Check("tier_drift", "ok")
    return Check("tier_drift", "fail",
                 f"{len(pending)} tier configs drifted from the host class: {_short(pending)}",
                 f"see the diff first: {again}", _cmd(app.root, "render", *names),
                 {"pending": pending})


# --- the run --------------------------------------------------------------------------

def _probe_agents(app: AppContext, p: Project, limit: int, timeout: float
                  ) -> dict[str, Any]:
    req = {"mode": "agents", "base": str(p.path), "label": p.host_path,
           "ident": list(p.ident) if p.ident else None,
           "rel": ".claude/agents", "big": limit, **_owner(app.root, p)}
    return run_probe(req, timeout)


def _probe_context(app: AppContext, p: Project, newest: int, timeout: float
                   ) -> dict[str, Any]:
    req: dict[str, Any] = {"mode": "context", "base": str(p.path), "label": p.host_path,
                           "ident": list(p.ident) if p.ident else None,
                           "newest": newest, **_owner(app.root, p)}
    for kind in ("sessions", "checkpoint_store"):
        if p.data[kind].exists:
            spec = _dir_spec(app.root, p, kind)
            if spec is not None:
                req[kind] = spec
    return run_probe(req, timeout)


def doctor_project(app: AppContext, p: Project, mounts: list[hostfacts.Mount],
                   procs: list[Proc], skip_pids: set[int],
                   tier: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = app.config
    agent_limit = int(float(cfg.get("doctor.agent_max_kib", 100.0)) * 1024)
    session_limit = int(float(cfg.get("doctor.session_max_mb", 10.0)) * MIB)
    timeout = float(cfg.get("doctor.probe_timeout", 60.0))
    newest = int(cfg.get("doctor.context_files", 5))

    t = time.perf_counter()
    ares = _probe_agents(app, p, agent_limit, timeout)
    a_proc = time.perf_counter() - t
    t = time.perf_counter()
    cres = _probe_context(app, p, newest, timeout)
    c_proc = time.perf_counter() - t
    act = Figure("agent_activation", None if ares.get("fatal") else ares.get("seconds"),
                 FIGURES["agent_activation"],
                 {"agents": ares.get("count", 0), "files": ares.get("files", 0),
                  "bytes": ares.get("bytes", 0), "largest": ares.get("largest", []),
                  "as_user": p.user, "process_seconds": round(a_proc, 4)})
    ctx = Figure("context_loading", None if cres.get("fatal") else cres.get("seconds"),
                 FIGURES["context_loading"],
                 {"files": cres.get("files", []), "bytes": cres.get("bytes", 0),
                  "missing": cres.get("missing", []), "as_user": p.user,
                  "process_seconds": round(c_proc, 4)})
    mem = memory_figure(p, procs, skip_pids)

    now = time.time()
    pols = policy.resolve_policy(cfg, p, tier)
    days = {k: pol.compress_after_days for k, pol in pols.items() if policy.compresses(pol)}
    scans: dict[str, DirScan] = {}
    for kind in DATA_KINDS:
        s = scan_data(app.root, p, kind, big_bytes=session_limit, now=now,
                      pol=pols[kind] if kind in days else None)
        if s is not None:
            scans[kind] = s

    checks: list[Check] = []
    checks += agent_checks(app.root, p, ares, agent_limit)
    checks += context_checks(app.root, p, cres, scans, session_limit)
    checks.append(uncompressed_check(app.root, p, scans, days))
    checks += storage_checks(app.root, p, mounts, list(cfg.get("relocate.kinds") or ()))
    links = link_check(app.root, p)
    if links is not None:
        checks.append(links)
    scan_errors = [e for s in scans.values() for e in s.errors]
    if scan_errors:
        checks.append(Check("data_folders", "warn",
                            f"{len(scan_errors)} data folders could not be read: "
                            + _short([f"{e['path']} ({e['error']})" for e in scan_errors]),
                            "check their owner and mode", None, {"errors": scan_errors}))
    figures = {f.name: f for f in (act, ctx, mem)}
    return {
        "project": p.host_path, "name": p.name, "user": p.user, "version": p.version,
        "figures": {k: f.to_json() for k, f in figures.items()},
        "checks": [c.to_json() for c in checks],
        "watch_dirs": sum(s.dirs for s in scans.values()),
    }


def run_doctor(app: AppContext, projects: list[Project], names: Sequence[str] = ()
               ) -> dict[str, Any]:
    t0 = time.time()
    root = app.root
    mounts = hostfacts.mounts(root, hostfacts.Absent())
    procs = processes()
    found_watchers = watchers(root, procs)
    skip = {w.pid for w in found_watchers}
    tier = policy.tier_clean(app)
    rows: list[dict[str, Any]] = []
    for p in projects:  # one install's failure is that install's, the others are measured
        with installfail.guard(app, p.host_path, "doctor"):
            rows.append(doctor_project(app, p, mounts, procs, skip, tier))

    host_figures: dict[str, Any] = {}
    host_checks: list[Check] = []
    if projects:
        if found_watchers:
            host_figures["watcher_memory"] = Figure(
                "watcher_memory", float(sum(w.rss for w in found_watchers)), WATCHER,
                {"pids": [w.pid for w in found_watchers]}).to_json()
        host_checks = [cron_check(root), watcher_check(root, found_watchers),
                       inotify_check(root, sum(r["watch_dirs"] for r in rows)),
                       pythonoptimize_check(root, projects), tier_drift_check(app, names)]
    failed = any(c.status == "fail" for c in host_checks) or any(
        c["status"] == "fail" for r in rows for c in r["checks"]) or any(
        f["level"] in ("missed", "unknown") for r in rows for f in r["figures"].values()
    ) or any(f["level"] in ("missed", "unknown") for f in host_figures.values())
    return {
        "command": "doctor", "root": str(root), "ok": not failed,
        "levels": {k: {"unit": t.unit, "target": t.target, "good": t.good,
                       "excellent": t.excellent} for k, t in
                   {**FIGURES, "watcher_memory": WATCHER}.items()},
        "projects": rows,
        "host": {"figures": host_figures, "checks": [c.to_json() for c in host_checks]},
        "started": t0, "duration_seconds": round(time.time() - t0, 3),
    }


# --- node_exporter textfile -------------------------------------------------------------

class _Metrics:
    """The doctor's gauges, all named ``mnic_ops_doctor_*``."""

    def __init__(self) -> None:
        self.file = metrics.Textfile()

    def add(self, name: str, help_: str, value: float,
            labels: dict[str, str] | None = None) -> None:
        self.file.add(f"mnic_ops_doctor_{name}", help_, float(value), labels)


_FIGURE_METRIC = {
    "agent_activation": ("agent_activation_seconds", "Seconds to discover and parse every "
                         "agent definition, measured in a fresh process."),
    "context_loading": ("context_loading_seconds", "Seconds to read the newest session "
                        "files and the checkpoint index, measured in a fresh process."),
    "memory": ("memory_bytes", "Resident memory of the processes running inside the "
               "install."),
}


def metrics_text(report: dict[str, Any]) -> metrics.Textfile:
    """The report as node_exporter textfile metrics (``mnic_ops_doctor_*``)."""
    m = _Metrics()
    lvl_help = ("Level of a figure against the guide's table: 3 excellent, 2 good, "
                "1 meets the target, 0 missed, -1 not measured.")
    for r in report["projects"]:
        proj = r["project"]
        for fname, f in r["figures"].items():
            metric, help_ = _FIGURE_METRIC[fname]
            if f["value"] is not None:
                m.add(metric, help_, f["value"], {"project": proj})
    for r in report["projects"]:
        proj = r["project"]
        a = r["figures"]["agent_activation"]["details"]
        c = r["figures"]["context_loading"]["details"]
        mem = r["figures"]["memory"]["details"]
        m.add("agents", "Agent definitions the framework loads (valid front matter).",
              a.get("agents", 0), {"project": proj})
        m.add("agent_largest_bytes", "Size of the largest agent definition.",
              max([x["bytes"] for x in a.get("largest", [])] or [0]), {"project": proj})
        m.add("context_bytes", "Bytes read by the context loading measurement.",
              c.get("bytes", 0), {"project": proj})
        m.add("processes", "Processes running inside the install.",
              mem.get("processes", 0), {"project": proj})
        m.add("watch_dirs", "Data folders (inotify watches) of the install.",
              r.get("watch_dirs", 0), {"project": proj})
    for r in report["projects"]:
        for fname, f in r["figures"].items():
            m.add("level", lvl_help, LEVEL_VALUE[f["level"]],
                  {"project": r["project"], "figure": fname})
    for fname, f in report["host"]["figures"].items():
        m.add("level", lvl_help, LEVEL_VALUE[f["level"]], {"figure": fname})
    chk_help = "1 when the check failed (see `mnic-ops doctor` for the finding and fix)."
    for r in report["projects"]:
        for c in r["checks"]:
            if c["status"] != "skip":
                m.add("check_failed", chk_help, int(c["status"] == "fail"),
                      {"project": r["project"], "check": c["id"]})
    for c in report["host"]["checks"]:
        if c["status"] != "skip":
            m.add("check_failed", chk_help, int(c["status"] == "fail"), {"check": c["id"]})
    wm = report["host"]["figures"].get("watcher_memory")
    if wm is not None:
        m.add("watcher_memory_bytes", "Resident memory of the running mnic-ops watch.",
              wm["value"])
    for c in report["host"]["checks"]:
        if c["id"] == "inotify" and "max_user_watches" in c.get("details", {}):
            m.add("inotify_max_user_watches", "fs.inotify.max_user_watches.",
                  c["details"]["max_user_watches"])
        if c["id"] == "inotify":
            m.add("inotify_watches_needed", "Folders the watcher needs to watch.",
                  c.get("details", {}).get("watches_needed", 0))
    m.add("projects", "Framework installs checked.", len(report["projects"]))
    m.add("ok", "1 when every figure meets its target and no check failed.",
          int(report["ok"]))
    m.add("duration_seconds", "How long the doctor run took.", report["duration_seconds"])
    m.add("last_run_timestamp_seconds", "When the doctor last ran (Unix time).",
          round(report["started"], 3))
    return m.file


def write_metrics(root: HostRoot, host_path: str, text: metrics.Textfile) -> Path:
    real = root.path(host_path)
    if not real.parent.is_dir():
        raise OpsError(f"--metrics {host_path}: folder {os.path.dirname(host_path)} does "
                       "not exist (node_exporter's --collector.textfile.directory)")
    return text.write(real)


# --- text report ------------------------------------------------------------------------

def _value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return human(int(v))


def _bound(v: float, unit: str) -> str:
    return f"<{v:g} s" if unit == "s" else f"<{v / MIB:g} MiB"


def _figure_note(name: str, f: dict[str, Any]) -> str:
    d = f["details"]
    if name == "agent_activation":
        lg = d.get("largest") or []
        big = f", largest {lg[0]['path']} {human(lg[0]['bytes'])}" if lg else ""
        return f"{d.get('agents', 0)} agents{big}"
    if name == "context_loading":
        return f"{len(d.get('files', []))} files, {human(d.get('bytes', 0))}"
    if name == "memory":
        return d.get("note") or f"{d.get('processes', 0)} processes"
    if name == "watcher_memory":
        return f"pid {', '.join(str(x) for x in d.get('pids', []))}"
    return ""


def report_text(report: dict[str, Any], colour: bool) -> str:
    def lv(s: str) -> str:
        return click.style(f"{s:<9}", fg=_LEVEL_COLOURS.get(s)) if colour else f"{s:<9}"

    def st(s: str) -> str:
        t = s.upper() if s == "fail" else s
        return click.style(f"{t:<5}", fg=_STATUS_COLOURS.get(s), bold=s == "fail") \
            if colour else f"{t:<5}"

    lines: list[str] = []
    if not report["projects"]:
        lines.append("no framework installs found (see search_paths and projects in the "
                     "config)")

    def figure_rows(figs: dict[str, Any]) -> None:
        lines.append(f"  {'measurement':<17} {'value':>10}  {'level':<9}  "
                     f"{'target':>9} {'good':>9} {'excellent':>10}  notes")
        for name, f in figs.items():
            label = FIGURES[name].label if name in FIGURES else WATCHER.label
            lines.append(f"  {label:<17} {_value(f['value'], f['unit']):>10}  "
                         f"{lv(f['level'])}  {_bound(f['target'], f['unit']):>9} "
                         f"{_bound(f['good'], f['unit']):>9} "
                         f"{_bound(f['excellent'], f['unit']):>10}  {_figure_note(name, f)}")

    def check_rows(checks: list[dict[str, Any]]) -> None:
        oks = [c["id"] for c in checks if c["status"] == "ok"]
        for c in checks:
            if c["status"] == "ok":
                continue
            lines.append(f"  {st(c['status'])} {c['id']}: {c.get('finding', '')}")
            if c["status"] in ("fail", "warn"):
                if c.get("command"):
                    lines.append(f"        fix: {c['command']}")
                    if c.get("fix"):
                        lines.append(f"             {c['fix']}")
                elif c.get("fix"):
                    lines.append(f"        fix: {c['fix']}")
        if oks:
            lines.append(f"  {st('ok')} {', '.join(oks)}")

    for r in report["projects"]:
        ver = f", framework {r['version']}" if r.get("version") else ""
        lines.append(f"{r['project']} (owner {r['user']}{ver})")
        figure_rows(r["figures"])
        check_rows(r["checks"])
        lines.append("")
    host = report["host"]
    if host["figures"] or host["checks"]:
        lines.append("host")
        if host["figures"]:
            figure_rows(host["figures"])
        check_rows(host["checks"])
        lines.append("")
    verdict = "every figure meets its target, no check failed" if report["ok"] else \
        "figures below target or failed checks (exit 1)"
    n = len(report["projects"])
    lines.append(f"doctor: {n} install{'' if n == 1 else 's'}, {verdict}")
    if report.get("metrics_file"):
        lines.append(f"metrics written to {report['metrics_file']}")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------

@click.command("doctor", epilog="Exit codes: 0 every figure meets its target and no check "
               "failed, 1 otherwise, 2 bad input.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document with every "
              "figure, level and finding (same as the global --json).")
@click.option("--metrics", "metrics", metavar="FILE", default=None,
              help="Also write the figures as a node_exporter textfile to FILE (a host "
                   "path under --root; default: doctor.metrics_file).")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def doctor_cmd(app: AppContext, as_json: bool, metrics: str | None,
               names: tuple[str, ...]) -> int:
    """Measure agent activation, context loading and memory per install against the
    guide's table, and check storage, noatime, compression, cron, watcher, inotify,
    tier drift and PYTHONOPTIMIZE; each finding names its fix."""
    from mnic_ops.core.app import emit

    if as_json:
        app.json = True
    path = metrics if metrics is not None else app.config.get("doctor.metrics_file")
    if path is not None:
        if not path:
            raise InputError("--metrics: empty path")
        path = os.path.normpath(os.path.join(os.getcwd(), path)) if not path.startswith(
            "/") else os.path.normpath(path)
    report = run_doctor(app, select_projects(app, names), names)
    error: str | None = None
    if path is not None:
        try:
            write_metrics(app.root, path, metrics_text(report))
            report["metrics_file"] = path
        except OpsError as exc:
            error = exc.message
        except OSError as exc:
            error = f"--metrics {path}: {exc.strerror or exc}"
        if error:
            report["metrics_error"] = error
    emit(app, report, lambda: report_text(report, app.color))
    if error:
        raise OpsError(error)  # after the report: the measurements are not lost
    return EXIT_OK if report["ok"] else EXIT_FAILURE
