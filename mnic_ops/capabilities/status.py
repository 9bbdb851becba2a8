"""``mnic-ops status``: the whole host on one screen, read-only and fast.

The picture is otherwise split across ``detect``, ``projects``, ``clean``'s record,
``watch --check``, ``cron show``, ``relocate --list-pending``, ``verify`` and
``undo --list``. ``status`` asks each of them through its public function, one part at
a time: a part that cannot be read says why and the others still show (a part is never
the whole command's failure). Every part has a ``health``:

- ``ok``, ``warn`` (worth a look, not a failure), ``unknown`` (could not be read or
  not within its budget; says why), or ``failed``, which makes the command exit 1.

What counts as failed (each named in ``problems``): the config does not load; an
install whose own files cannot be read; relocated data whose recorded target is gone
(the SSD not mounted?); the last maintenance pass ended with an error; the watcher
stalled or stopped while its unit is enabled (or absent while enabled, on the running
host); a cron file that does not parse; an interrupted relocate journal; drift
(``verify``'s count is not 0).

Cost bounds: data sizes come from one walk per data folder with a shared budget
(:mod:`mnic_ops.facts.datasize`: 500,000 files or 2 s in all, then lower bounds); drift is
``verify``'s own plan (:func:`mnic_ops.capabilities.provision.verify_report`), given at most
:data:`DRIFT_SECONDS`; nothing is started but what those already start (``findmnt
--verify`` where an fstab exists, ``systemctl is-active`` on a live systemd host).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.core import installfail
from mnic_ops.core.app import AppContext, emit, error_entry
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, OpsError
from mnic_ops.facts import datasize, linkrecords, watchstate

if TYPE_CHECKING:
    from mnic_ops.facts.projects import Project

log = logging.getLogger(__name__)

OK, WARN, UNKNOWN, FAILED = "ok", "warn", "unknown", "failed"
DRIFT_SECONDS = 10.0  # verify's plan is given this long, then drift is "unknown"
JOURNAL_SHOWN = 5     # the last entries of the change journal shown
STALE_PASS_SECONDS = 2 * 86400  # no pass for this long while cron jobs are installed: warn
PARTS = ("config", "host", "installs", "last_pass", "watcher", "cron", "pending_moves",
         "drift", "journal")
_EVALUATION = ("config", "host", "installs", "cron", "last_pass", "watcher",
               "pending_moves", "drift", "journal")


class _OutOfTime(BaseException):
    """Raised by the alarm when a part overruns its budget (a BaseException, so that no
    ``except Exception`` on the way swallows it)."""


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``, interrupted after ``seconds`` (SIGALRM; main thread only). Only
    read-only work is run this way: stopping it half-way leaves nothing behind."""
    if threading.current_thread() is not threading.main_thread():
        return fn()

    def ring(signum: int, frame: Any) -> None:
        raise _OutOfTime()

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _part(health: str, summary: str, **data: Any) -> dict[str, Any]:
    return {"health": health, "summary": summary, **data}


def _unknown(exc: BaseException | str) -> dict[str, Any]:
    why = installfail.reason(exc) if not isinstance(exc, str) else exc
    return _part(UNKNOWN, f"cannot be read: {why}", error=why)


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _ago(t: Any, now: float) -> str:
    if not isinstance(t, int | float):
        return ""
    s = max(0.0, now - t)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} days ago"


# --- the parts ---------------------------------------------------------------------------

class Status:
    """The parts of one run, built in order; each part catches its own errors."""

    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.now = time.time()
        self.parts: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.config_error: str | None = None
        self.projects: list[Project] = []
        self.cron_installed = False
        self.budget = datasize.Budget()

    def run(self) -> None:
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "config": self.config, "host": self.host, "installs": self.installs,
            "last_pass": self.last_pass, "watcher": self.watcher, "cron": self.cron,
            "pending_moves": self.pending_moves, "drift": self.drift,
            "journal": self.journal}
        got: dict[str, dict[str, Any]] = {}
        for name in _EVALUATION:  # cron before last_pass: a stale pass matters with jobs
            try:
                got[name] = steps[name]()
            except Exception as exc:  # one part that cannot be read is that part's only
                got[name] = _unknown(exc if isinstance(exc, OpsError | OSError) else
                                     f"{type(exc).__name__}: {exc}")
                log.debug("status %s: %s", name, exc, exc_info=True)
        self.parts = {name: got[name] for name in PARTS}

    def _needs_config(self) -> None:
        if self.config_error is not None:
            raise OpsError(f"the config does not load ({self.config_error})")

    def config(self) -> dict[str, Any]:
        try:
            cfg = self.app.config
        except OpsError as exc:
            lines = exc.message.splitlines() or [""]
            self.config_error = lines[0] if len(lines) == 1 else f"{len(lines)} errors"
            self.errors.extend(error_entry(line) for line in lines)
            return _part(FAILED, f"does not load: {exc.message.splitlines()[0]}",
                         file=None, loaded=False, error=exc.message)
        return _part(OK, f"{cfg.path} ({'loaded' if cfg.loaded else 'absent: defaults'})",
                     file=str(cfg.path), loaded=cfg.loaded)

    def host(self) -> dict[str, Any]:
        from mnic_ops.facts.hostclass import detect

        self._needs_config()
        decision, _facts = detect(self.app)
        why = f": {decision.reasons[-1]}" if decision.reasons else ""
        return _part(OK, f"{decision.host_class} ({decision.source}{why})",
                     **{"class": decision.host_class}, source=decision.source,
                     reasons=decision.reasons)

    def installs(self) -> dict[str, Any]:
        from mnic_ops.facts import projects

        self._needs_config()
        found = projects.find_projects(self.app.root, self.app.config)
        self.projects = installfail.usable(self.app, found)
        rows = []
        for p in found:
            try:
                rows.append(self._install(p))
            except (OpsError, OSError) as exc:  # one install: that install's row only
                rows.append({"root": p.host_path, "user": p.user, "group": p.group,
                             "version": p.version, "layout": p.layout,
                             "failure": f"cannot be read: {installfail.reason(exc)}"})
        health = OK
        problems = [f"{r['root']}: {r['failure']}" for r in rows if r.get("failure")]
        problems += [f"{d['path']}: {d['note']}" for r in rows
                     for d in r.get("data", {}).values() if d.get("unreachable")]
        refused = [f"{d['path']}: {d['note']}" for r in rows
                   for d in r.get("data", {}).values() if d["location"] == "refused"]
        if problems:
            health = FAILED
        elif refused:
            health = WARN
        summary = f"{len(found)} framework install(s)"
        if not found:
            summary = "no framework installs found (see search_paths and projects)"
        elif problems:
            summary += "; " + "; ".join(problems)
        elif refused:
            summary += "; " + "; ".join(refused)
        return _part(health, summary, items=rows, sizes=self.budget.to_json())

    def _install(self, p: Project) -> dict[str, Any]:
        out: dict[str, Any] = {"root": p.host_path, "user": p.user, "group": p.group,
                               "version": p.version, "layout": p.layout}
        if p.failure:
            out["failure"] = p.failure
            return out
        locs = linkrecords.locate_all(self.app.root, p)
        total = datasize.Size()
        data: dict[str, dict[str, Any]] = {}
        measured: dict[str, datasize.Size] = {}
        for kind, loc in locs.items():
            d: dict[str, Any] = {"path": loc.host_path, "location": loc.state}
            if loc.state == linkrecords.RELOCATED or (
                    loc.state == linkrecords.ABSENT and loc.record is not None):
                d["target"] = loc.target
            if loc.note and loc.note != "absent":
                d["note"] = loc.note
            # relocated data whose recorded target is gone: the framework cannot read it
            d["unreachable"] = loc.state == linkrecords.ABSENT and loc.record is not None
            if loc.state in (linkrecords.FOLDER, linkrecords.RELOCATED):
                key = loc.target or loc.host_path
                size = measured.get(key)
                if size is None:
                    try:
                        size = datasize.measure(self.app.root, loc, self.budget)
                    except OSError as exc:
                        d["note"] = installfail.reason(exc)
                    else:
                        measured[key] = size
                        # a folder inside another data folder is counted there
                        if not any(o != loc.host_path and _inside(loc.host_path, o)
                                   for o in (x.host_path for x in locs.values())):
                            total.add(size)
                if size is not None:
                    d.update(size.to_json())
            data[kind] = d
        out["data"] = data
        out["relocated"] = {k: v["target"] for k, v in data.items()
                            if v["location"] == linkrecords.RELOCATED}
        out["total"] = total.to_json()
        return out

    def last_pass(self) -> dict[str, Any]:
        from mnic_ops.facts import passstate

        rec = passstate.last(self.app.root)
        present = os.path.lexists(self.app.root.path(passstate.PATH))
        if rec is None:
            if present:
                return _part(UNKNOWN, f"{passstate.PATH} is there but not usable (not "
                             "root's own, or not JSON)", file=passstate.PATH, record=None,
                             error="not usable")
            health = WARN if self.projects else OK
            return _part(health, "no maintenance pass recorded yet (mnic-ops clean, or "
                         "the cron jobs, record one)", file=passstate.PATH, record=None)
        when = rec.get("finished") or rec.get("written")
        age = self.now - when if isinstance(when, int | float) else None
        what = "clean" + (f" --only {rec['only']}" if rec.get("only") else "")
        t = rec.get("totals") or {}
        done = (f"compressed {t.get('compressed', 0) + t.get('finished', 0)}, expired "
                f"{t.get('expired', 0) + t.get('retention_expired', 0)}")
        ok = rec.get("ok") is True and rec.get("exit_code") == 0
        summary = (f"{what} {_when(when)} ({_ago(when, self.now)}): "
                   + ("ok" if ok else f"FAILED (exit {rec.get('exit_code')})") + f", {done}")
        fails = rec.get("failed_installs") or []
        if fails:
            summary += f", {len(fails)} install(s) failed"
        health = OK if ok else FAILED
        if ok and age is not None and age > STALE_PASS_SECONDS and self.cron_installed:
            health = WARN
            summary += "; older than 2 days although the cron jobs are installed"
        return _part(health, summary, file=passstate.PATH, record=rec,
                     age_seconds=round(age, 1) if age is not None else None)

    def watcher(self) -> dict[str, Any]:
        from mnic_ops.capabilities import watchunit

        root = self.app.root
        state = watchstate.read(root)
        status, why = watchstate.assess(state, now=self.now, live=root.live)
        installed = os.path.lexists(root.path(watchunit.unit_path))
        enabled = os.path.lexists(root.path(watchunit.WANTS_LINK))
        active: bool | None = None
        if watchunit.systemd_running(root) and installed:
            from mnic_ops.core import execute

            active = execute.run(["systemctl", "is-active", "--quiet", watchunit.UNIT_NAME],
                                 check=False, timeout=10).returncode == 0
        s = state or {}
        unit = {"file": watchunit.unit_path, "installed": installed, "enabled": enabled,
                "active": active}
        data = {"status": status, "why": why, "running": status == "running",
                "pid": s.get("pid"), "since": s.get("started"),
                "heartbeat": s.get("heartbeat"), "files_done": s.get("compressed"),
                "bytes_saved": s.get("bytes_saved"), "backlog": s.get("pending"),
                "observers": s.get("observers"), "last_problem": s.get("last_problem"),
                "state_file": watchstate.STATE_FILE, "unit": unit}
        unit_text = ("unit not installed" if not installed else
                     "unit enabled" if enabled else "unit installed, not enabled")
        if active is not None:
            unit_text += ", active" if active else ", inactive"
        if status == "running":
            summary = (f"running since {_when(s.get('started'))}, "
                       f"{s.get('compressed', 0)} file(s) compressed, backlog "
                       f"{s.get('pending', 0)}; {unit_text}")
        else:
            summary = f"{status}: {why}; {unit_text}"
        failed = status == "stalled" or (enabled and status == "stopped") or (
            enabled and status == "absent" and root.live)
        return _part(FAILED if failed else OK, summary, **data)

    def cron(self) -> dict[str, Any]:
        from mnic_ops.capabilities import cron
        from mnic_ops.engines import cronfile

        self._needs_config()
        try:
            shown = cron.show_data(self.app, cronfile.Target(True, "root"))
        except OpsError as exc:  # cron ignores what it cannot parse: the jobs do not run
            return _part(FAILED, f"{cronfile.SYSTEM_FILE}: {exc.message}",
                         where=cronfile.SYSTEM_FILE,
                         installed=False, jobs=[], error=exc.message)
        self.cron_installed = bool(shown["installed"])
        jobs = shown["jobs"]
        if jobs:
            summary = f"{shown['where']}: " + "; ".join(
                f"{j['marker'].removeprefix(cronfile.MARK)} {j['schedule']} next "
                f"{(j['next_run'] or '-').replace('T', ' ')}" for j in jobs)
            health = OK
        else:
            summary = f"{shown['where']}: no mnic-ops jobs installed"
            health = WARN if self.projects else OK
        return _part(health, summary, **shown)

    def pending_moves(self) -> dict[str, Any]:
        from mnic_ops.engines import movejournal, pendingmoves

        rows = [pm.to_json() for pm in movejournal.pending_moves(
            self.app.root.path(pendingmoves.JOURNAL_DIR))]
        if not rows:
            return _part(OK, "no interrupted moves", journal_dir=pendingmoves.JOURNAL_DIR,
                         pending=[])
        return _part(FAILED, f"{len(rows)} interrupted move(s): "
                     + ", ".join(f"{r['id']} ({r['status'].replace('_', ' ')})"
                                 for r in rows)
                     + " (mnic-ops relocate --list-pending)",
                     journal_dir=pendingmoves.JOURNAL_DIR, pending=rows)

    def drift(self) -> dict[str, Any]:
        from mnic_ops.capabilities.provision import verify_report

        self._needs_config()
        try:
            rep = _within(DRIFT_SECONDS, lambda: verify_report(self.app))
        except _OutOfTime:
            return _part(UNKNOWN, f"verify did not finish within {DRIFT_SECONDS:g} s "
                         "(run mnic-ops verify)", drift=None, counts=None, items=[],
                         error="out of time")
        items = [i for i in rep["items"] if i["state"] in ("drift", "failed")]
        n = rep["drift"]
        if n and not self._provisioned():
            # nothing to drift from yet: what verify finds is provision's work to do
            return _part(WARN, f"not provisioned yet: {n} item(s) to set up (mnic-ops "
                         "provision --check)", drift=n, counts=rep["counts"], items=items,
                         provisioned=False)
        summary = ("none" if not n else f"{n} item(s) not as provisioned: "
                   + ", ".join(i["id"] for i in items[:4]) + (" ..." if n > 4 else "")
                   + " (mnic-ops verify)")
        return _part(FAILED if n else OK, summary, drift=n, counts=rep["counts"],
                     items=items)

    def _provisioned(self) -> bool:
        """Has provision ever applied a change here (by the journal)? A journal that
        cannot be read counts as yes: drift then stays a failure."""
        from mnic_ops.changes import model

        try:
            entries = model.read_journal(self.app.root)
        except (OSError, OpsError):
            return True
        return any(str(e.get("command") or "").split(" ")[0] == "provision"
                   for e in entries)

    def journal(self) -> dict[str, Any]:
        from mnic_ops.changes import model

        entries = model.read_journal(self.app.root)
        last = [{"entry": e.get("entry"), "change": e.get("change"),
                 "description": e.get("description"), "command": e.get("command"),
                 "time": e.get("time"), "undone": bool(e.get("undone"))}
                for e in entries[-JOURNAL_SHOWN:]]
        live = sum(1 for e in entries if not e.get("undone"))
        summary = (f"{len(entries)} recorded change(s), {live} not undone"
                   if entries else "no recorded changes")
        return _part(OK, summary, entries=len(entries), not_undone=live, last=last)

    # -- the result ---------------------------------------------------------------------

    def problems(self) -> list[dict[str, str]]:
        out = [{"part": n, "message": p["summary"]} for n, p in self.parts.items()
               if p["health"] == FAILED]
        for f in self.app.failures:
            if not any(f.install in x["message"] for x in out):
                out.append({"part": "installs", "message": f.text()})
        return out

    def to_json(self) -> dict[str, Any]:
        problems = self.problems()
        return {"healthy": not problems, "problems": problems,
                "warnings": [{"part": n, "message": p["summary"]}
                             for n, p in self.parts.items() if p["health"] == WARN],
                **self.parts, "errors": self.errors}


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


# --- text --------------------------------------------------------------------------------

_HEALTH_COLOURS = {OK: "green", WARN: "yellow", UNKNOWN: "cyan", FAILED: "red"}
_TITLES = {"config": "config", "host": "host", "installs": "installs",
           "last_pass": "last pass", "watcher": "watcher", "cron": "cron",
           "pending_moves": "relocate", "drift": "drift", "journal": "journal"}


def _size_text(d: dict[str, Any]) -> str:
    from mnic_ops.facts.projects import human

    if "bytes" not in d:
        return "-"
    more = "" if d.get("complete", True) else ">="
    share = d.get("compressed_share")
    gz = f", {share * 100:.0f}% gzip" if share is not None else ""
    return f"{more}{human(d['bytes'])} in {more}{d['files']} files{gz}"


def text(data: dict[str, Any], colour: bool) -> str:
    def mark(health: str) -> str:
        word = {OK: "ok", WARN: "warn", UNKNOWN: "?", FAILED: "FAIL"}[health]
        return click.style(f"{word:<4}", fg=_HEALTH_COLOURS[health]) if colour \
            else f"{word:<4}"

    lines: list[str] = []
    for name in PARTS:
        p = data[name]
        lines.append(f"{mark(p['health'])} {_TITLES[name]:<10} {p['summary']}")
        if name == "installs":
            for r in p.get("items", []):
                if r.get("failure"):
                    lines.append(f"       {r['root']}: failed: {r['failure']}")
                    continue
                lines.append(f"       {r['root']}  {r['user']}  "
                             f"{r['version'] or 'version unknown'}  "
                             f"{_size_text(r['total'])}")
                for kind, d in r["data"].items():
                    if d["location"] == "absent" and not d.get("unreachable"):
                        continue
                    where = ""
                    if d["location"] == "relocated":
                        where = f"  -> {d['target']}"
                    elif d.get("unreachable"):
                        where = f"  UNREACHABLE: {d['note']}"
                    elif d["location"] == "refused" or d.get("note"):
                        where = f"  ({d.get('note', 'not followed')})"
                    lines.append(f"         {kind:<17} {_size_text(d)}{where}")
        if name == "journal":
            for e in reversed(p.get("last", [])):
                undone = " (undone)" if e["undone"] else ""
                lines.append(f"       {_when(e['time'])}  {e['command'] or '-'}: "
                             f"{e['change']}{undone}")
    verdict = "healthy" if data["healthy"] else "FAILED: " + "; ".join(
        x["part"] for x in data["problems"])
    if colour:
        verdict = click.style(verdict, fg="green" if data["healthy"] else "red", bold=True)
    lines.append(f"status: {verdict}")
    return "\n".join(lines)


@click.command("status", epilog=EXIT_CODES_HELP.replace(
    "1 failure", "1 something has failed (see `problems`)"))
@click.pass_obj
def status_cmd(app: AppContext) -> int:
    """Show the host on one screen: class, installs (data per class, relocated,
    compressed share), last clean pass, watcher, cron jobs, interrupted moves, drift
    and the last recorded changes. Read-only; exit 1 when something has failed."""
    app.failures.active = True  # failed_installs is always there, as for every command
    st = Status(app)           # over installs (even when the config stops the search)
    st.run()
    data = st.to_json()
    emit(app, data, lambda: text(data, app.color))
    return EXIT_OK if data["healthy"] else EXIT_FAILURE
