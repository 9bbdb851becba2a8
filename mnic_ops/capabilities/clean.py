"""``mnic-ops clean``: the maintenance pass (compress aged data in place, expire archives).

It replaces the guide's ``find -exec gzip {} \\;`` and ``find -delete`` cron lines. The
pass itself (the walk, the worker pool, the per-class report) is
:class:`mnic_ops.engines.cleanpass.Pass`; the jobs its workers run are in
:mod:`mnic_ops.engines.cleanjobs`; what it says afterwards (text, JSON totals, textfile,
log) is :mod:`mnic_ops.capabilities.cleanreport`. One pass per project at a time (a lock
shared with ``watch``); a second one says it skipped and exits 0.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import click

from mnic_ops.capabilities import cleanreport
from mnic_ops.core import installfail, progress
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, EXIT_PENDING
from mnic_ops.engines.cleanjobs import printable
from mnic_ops.engines.cleanpass import Pass, ProjectReport
from mnic_ops.facts import policy
from mnic_ops.facts.projects import select_projects

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext


@click.command("clean", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Say what would be compressed and expired; "
              "change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (same as "
              "the global --json).")
@click.option("--only", type=click.Choice(["compress", "expire"]), default=None,
              help="Only compress, or only expire archives (the frequent cron job).")
@click.option("--wait", "wait", type=click.FloatRange(0, 86400), default=0.0,
              metavar="SECONDS", help="When another pass (the other cron job, the "
              "watcher) holds an install's lock, wait for it up to SECONDS (default 0: skip "
              "that install at once and say so); the cron jobs use cron.lock_wait_seconds. "
              "An install still locked after the wait fails the run (exit 1).")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def clean_cmd(app: AppContext, check: bool, as_json: bool, only: str | None, wait: float,
              names: tuple[str, ...]) -> int:
    """Compress aged framework data in place (standard gzip) and delete old archives.

    Policy per data class: checkpoints and sessions gzip after 7 days and expire after
    30; thinking logs after 7 and 90 (or what the project's
    extended-thinking-config.json says); cost records after 7 and 90. Names the
    framework reads back are never touched. Symlinks are never followed; files with
    several links or open for writing are skipped and reported.

    Off a terminal (cron), a pass that changed nothing and found nothing wrong prints
    nothing (its state file and textfile still record it); -v prints it anyway.
    """
    if as_json:
        app.json = True
    from mnic_ops.changes.run import apply_log_handler
    from mnic_ops.core.app import emit

    projects = select_projects(app, names)
    tier = policy.tier_clean(app)
    started = time.time()
    t0 = time.monotonic()
    p = Pass(app, check=check, only=only)
    p.wait = wait
    handler = None if check else apply_log_handler(app)
    reports: list[ProjectReport] = []
    try:
        with progress.bar(app, "clean --check" if check else "clean", 0, p.progress_text
                          ) if projects else nullcontext() as p.bar:
            try:
                for proj in projects:
                    # One install's unusable file fails that install; the others go on.
                    with installfail.guard(app, proj.host_path, "clean"):
                        r = p.run_project(proj, tier)
                        reports.append(r)
                        if not check:
                            cleanreport.log_project(r)
                        for kind, k in r.kinds.items():  # a class left untouched
                            if k.retention is not None and k.retention.status == "failed":
                                app.failures.add(proj.host_path, k.retention.reason,
                                                 f"clean {kind}")
            finally:
                p.close()  # every batch finished before the bar draws its last state
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    duration = time.monotonic() - t0
    totals = cleanreport.totals(reports, check)
    textfile = None
    if not check and any(r.status == "done" for r in reports):
        textfile = cleanreport.write_textfile(
            app, cleanreport.textfile_body(reports, totals, started, duration))
    data = {"command": "clean", "check": check, "only": only, "started": started,
            "duration_seconds": round(duration, 3), "textfile": textfile,
            "projects": [{"project": r.project, "status": r.status,
                          "kinds": {k: v.to_json(check) for k, v in r.kinds.items()}}
                         for r in reports], "totals": totals,
            "counts": cleanreport.counts(reports, check,
                                         len({f.install for f in app.failures}
                                             - {r.project for r in reports}))}
    if wait > 0:  # asked to wait, and the lock never came: the work was not done
        data["errors"] = [{"message": f"{printable(r.project)}: another pass held its lock "
                                      f"for the {wait:g} s waited; not cleaned"}
                          for r in reports if r.status == "locked"]
    if totals["retention_failed"]:
        rc = EXIT_FAILURE  # a class left untouched: bad declared value, unparsable index
    elif check:
        rc = EXIT_PENDING if (totals["would_compress"] or totals["would_expire"]
                              or totals["retention_would_expire"]
                              or totals["retention_would_restore"]
                              or totals["retention_would_keep"]) else EXIT_OK
    elif totals["failed"] or (wait > 0 and totals["projects_locked"]):
        rc = EXIT_FAILURE  # asked to wait for a lock and it never came: work not done
    else:
        rc = EXIT_OK
    if not check:  # when it last ran and how it ended, for status and the admin
        from mnic_ops.facts import passstate

        rc_all = app.failures.exit_code(rc)
        data["state_file"] = passstate.record(app.root, {
            "started": started, "finished": round(time.time(), 3), "only": only,
            "duration_seconds": data["duration_seconds"], "exit_code": rc_all,
            "ok": rc_all == EXIT_OK, "totals": totals,
            "projects": [{"project": r.project, "status": r.status} for r in reports],
            "failed_installs": app.failures.to_json()})
    if cleanreport.quiet(app, check, rc, totals):
        return rc  # cron: nothing done, nothing wrong, nothing to say
    emit(app, data, lambda: cleanreport.text(reports, totals, check, app.verbose, wait)
         if projects else "no framework installs found (see search_paths and projects)")
    return rc
