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
(:data:`mnic_ops.capabilities.doctorreport.FIGURES`): *excellent*, *good*, *target*
(meets the target only) or *missed*.
Then checks, each with a finding and the fix (an mnic-ops command where one exists).
Exit 0 when every figure meets its target and no check fails, 1 otherwise.

Everything is read-only except the optional node_exporter textfile (``--metrics``,
``doctor.metrics_file``), written atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities.doctorhost import (
    cron_check,
    inotify_check,
    pythonoptimize_check,
    tier_drift_check,
    watcher_check,
)
from mnic_ops.capabilities.doctorinstall import (
    DirScan,
    agent_checks,
    context_checks,
    link_check,
    memory_figure,
    scan_data,
    storage_checks,
    uncompressed_check,
)
from mnic_ops.capabilities.doctorreport import (
    FIGURES,
    MIB,
    WATCHER,
    Check,
    Figure,
    metrics_text,
    report_text,
    short,
    write_metrics,
)
from mnic_ops.core import installfail
from mnic_ops.core.errors import EXIT_FAILURE, EXIT_OK, InputError, OpsError
from mnic_ops.facts import hostfacts, policy
from mnic_ops.facts.measure import probe_agents, probe_context
from mnic_ops.facts.processes import Proc, processes, watchers
from mnic_ops.facts.projects import DATA_KINDS, Project, select_projects

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext


# --- the run --------------------------------------------------------------------------

def doctor_project(app: AppContext, p: Project, mounts: list[hostfacts.Mount],
                   procs: list[Proc], skip_pids: set[int],
                   tier: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = app.config
    agent_limit = int(float(cfg.get("doctor.agent_max_kib", 100.0)) * 1024)
    session_limit = int(float(cfg.get("doctor.session_max_mb", 10.0)) * MIB)
    timeout = float(cfg.get("doctor.probe_timeout", 60.0))
    newest = int(cfg.get("doctor.context_files", 5))

    t = time.perf_counter()
    ares = probe_agents(app, p, agent_limit, timeout)
    a_proc = time.perf_counter() - t
    t = time.perf_counter()
    cres = probe_context(app, p, newest, timeout)
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
                            + short([f"{e['path']} ({e['error']})" for e in scan_errors]),
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
