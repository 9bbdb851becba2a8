"""``mnic-ops watch``: gzip the framework's finished files as they settle, in the foreground.

Cron passes leave a day of uncompressed data behind on busy servers; the watcher keeps
the data folders compact continuously at near-zero cost while idle. It is a thin event
loop around the same pieces as ``clean``: the data map, clean's per-class policy (which
names, which classes), the protected names, the fd-based walk, the crash-safe engine in
:mod:`mnic_ops.engines.compress` and the per-project lock, so that the two never work on the
same file at once.

How a file gets compressed:

- Each data folder is watched recursively with inotify (the real folder when the data
  folder is a symlink to an SSD) by :mod:`mnic_ops.engines.treewatch`, which opens every folder
  from the data folder down without following links and anchors the watch on that
  descriptor: a link a user swaps in is never followed, not even for an instant.
  Network filesystems, ``--poll`` and an inotify limit that is too small use watchdog's
  polling observer instead, whose listings go through the same no-follow opens.
- A writer closing a file it wrote (``IN_CLOSE_WRITE``) or a file moved in (atomic
  writers) makes it a candidate; it is compressed once it has been quiet for its class's
  settle time (``[watch.settle_seconds]``). Our own ``.gz`` output and temporaries never
  are candidates. Files already there at start are left to ``clean`` unless
  ``--once-settled`` asks for a catch-up.
- Events are only hints: every file is opened again from the data folder down with
  ``O_NOFOLLOW``, checked and compressed by the engine (regular, one link, not open for
  writing, same filesystem, old enough), so a hostile event path cannot steer root.
- Safety nets for lost events: new folders are listed when they appear, and after an
  inotify queue overflow (and every ``rescan_minutes``) the folders are listed again for
  files written since start that no event announced. A data folder that overflows the
  queue again and again (a storm of renames) is polled from then on; an observer whose
  thread dies or stalls is restarted (with a growing delay when that repeats).
- The service records its liveness in :mod:`mnic_ops.facts.watchstate` (a heartbeat and
  counters, no names), so that "running but stalled" can be told from "running".

Signals: SIGTERM/SIGINT finish (or, while an archive is still being written, roll back)
the file in hand and exit 0; files still settling are saved and picked up by the next
start. SIGHUP reloads the config and the data map.

This module is the command, its ``--check`` preflight and its provision step; the
pieces are :mod:`~mnic_ops.capabilities.watchroots` (the data folders),
:mod:`~mnic_ops.facts.watchlimits` (the inotify limits), the daemon
(:mod:`~mnic_ops.capabilities.watchcandidates`, ``watchobservers``, ``watchcompress``,
``watchdaemon``) and :mod:`~mnic_ops.capabilities.watchunit` (the systemd unit).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from mnic_ops.capabilities.protocol import (
    ProvisionContext,
    ProvisionStep,
    missing_service,
    no_installs,
)
from mnic_ops.capabilities.watchdaemon import Daemon, process_start_time
from mnic_ops.capabilities.watchroots import READY, build_roots, count_dirs, dur, prepare_root
from mnic_ops.capabilities.watchunit import UNIT_NAME, plan_remove_unit, plan_unit, unit_path
from mnic_ops.changes.model import Item
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, InputError
from mnic_ops.engines import cleanjobs
from mnic_ops.facts import policy
from mnic_ops.facts.watchlimits import read_limits

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

log = logging.getLogger(__name__)


# --- preflight (--check without unit flags) --------------------------------------------

def preflight(app: AppContext, names: Sequence[str], poll: bool) -> int:
    from mnic_ops.core.app import emit
    from mnic_ops.facts import hostfacts
    from mnic_ops.facts.projects import select_projects

    projects = select_projects(app, names)
    cleanjobs.engine(app.config)  # the config is checked as the watcher checks it
    tier = policy.tier_clean(app)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    force = poll or bool(app.config.get("watch.poll", False))
    roots = build_roots(app, projects, tier)
    for r in roots:
        prepare_root(app, r, mounts, force)
        if r.state == READY:
            r.dirs = count_dirs(app, r)
    need = sum(r.dirs for r in roots if r.state == READY and not r.poll)
    limits = read_limits(app.root)
    problem = limits.problem(need) if need and not force else None
    if problem:
        for r in roots:
            r.poll = r.poll or r.state == READY
    data = {"command": "watch", "check": True, "folders": sum(r.dirs for r in roots),
            "inotify_watches_needed": need,
            "limits": {"max_user_watches": limits.max_watches,
                       "max_user_instances": limits.max_instances,
                       "watches_in_use": limits.used_watches,
                       "instances_in_use": limits.used_instances},
            "fits": problem is None, "problem": problem,
            "fix": limits.fix(need) if problem else None,
            "roots": [r.to_json() for r in roots]}

    def text() -> str:
        lines = []
        for r in roots:
            what = (f"{r.dirs} folders, {'polling' if r.poll else 'inotify'}"
                    + (", network filesystem" if r.network else "")) \
                if r.state == READY else r.state + (f": {r.note}" if r.note else "")
            lines.append(f"{cleanjobs.printable(r.host_path)} ({r.kind}, settle "
                         f"{dur(r.settle)}): {what}")
        if problem:
            lines.append(f"{problem}: the watcher would fall back to polling. To use "
                         f"inotify, {limits.fix(need)}.")
        else:
            lines.append(f"{need} inotify watches needed; max_user_watches "
                         f"{limits.max_watches}, {limits.used_watches} in use: fits")
        if not projects:
            lines.append("no framework installs found (see search_paths and projects)")
        return "\n".join(lines)

    emit(app, data, text)
    return EXIT_OK


# --- the command -------------------------------------------------------------------------

@click.command("watch", epilog=EXIT_CODES_HELP)
@click.option("--poll", is_flag=True, help="Use the polling observer everywhere (it is "
              "used anyway for network filesystems and when inotify limits are too low).")
@click.option("--once-settled", is_flag=True, help="Also compress, once settled, the "
              "files already there at start (otherwise left to `clean`).")
@click.option("--install-unit", is_flag=True, help=f"Install, enable and (on a running "
              f"systemd) start {unit_path} instead of watching.")
@click.option("--remove-unit", is_flag=True, help="Stop, disable and remove that unit.")
@click.option("--check", is_flag=True, help="With --install-unit/--remove-unit: show the "
              "diff, change nothing. Alone: list what would be watched and whether the "
              "inotify limits fit.")
@click.option("--service", is_flag=True, help="Run as the systemd service (the unit's "
              "ExecStart): a data folder that appears or is re-created makes it exit 75 "
              "for a restart that gives the sandbox access to it; missing installs only "
              "warn.")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def watch_cmd(app: AppContext, poll: bool, once_settled: bool, install_unit: bool,
              remove_unit: bool, check: bool, service: bool, names: tuple[str, ...]) -> int:
    """Watch the data folders and gzip each finished file once it has settled.

    Runs in the foreground (the unit runs it as a service). A file is a candidate when a
    writer closes it after writing or when it is moved in, and is compressed after its
    class's settle time ([watch.settle_seconds]) under the same rules as `clean`: names
    the framework reads back never, regular single-link files only, not open for
    writing, no symlink followed, crash-safe gzip, the same per-install lock. One line
    per compressed file; -v also shows events. SIGTERM/SIGINT stop (exit 0), SIGHUP
    reloads the config.
    """
    from mnic_ops.changes.model import Plan
    from mnic_ops.changes.run import run_plan
    from mnic_ops.facts.projectargs import resolve_args
    from mnic_ops.facts.projects import select_projects

    if install_unit and remove_unit:
        raise InputError("give --install-unit or --remove-unit, not both")
    if install_unit or remove_unit:
        if once_settled or service:
            raise InputError("--once-settled and --service apply to the watcher itself, "
                             "not to --install-unit/--remove-unit")
        if install_unit:
            # the unit runs from /, not from here: relative paths become host paths
            args = resolve_args(app, names)
            extra = [*(["--poll"] if poll else []), *(["--", *args] if args else [])]
            items = plan_unit(app, select_projects(app, names), extra)
            cmd = "watch --install-unit"
        else:
            items = plan_remove_unit(app)
            cmd = "watch --remove-unit"
        return run_plan(app, Plan(items), check=check, diff=check or app.verbose > 0,
                        command=cmd)
    if check:
        return preflight(app, names, poll)
    # "Since start" counts from the exec, not from here: files closed while Python was
    # still importing (seconds on a loaded or emulated host, right after boot) are ours.
    daemon = Daemon(app, names, poll=poll, once_settled=once_settled, service=service,
                    started=process_start_time())
    try:
        return daemon.run()
    except OSError as exc:
        log.error("watcher failed: %s", exc)
        return EXIT_FAILURE


PROVISION = ProvisionStep(50, "watcher", "watcher")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    from mnic_ops.facts import hostservices

    what = f"the watcher unit {UNIT_NAME}"
    skip = no_installs(ctx, "watcher", what)
    if skip:
        return skip
    init = hostservices.systemd(ctx.app.root)
    if not init.present:
        return missing_service(ctx, "watcher", what, "systemd",
                               "boot the host with systemd (apt install systemd-sysv), or run "
                        "`mnic-ops watch` under the host's own supervisor",
                        f"systemd is not this host's init ({init.evidence})")
    return plan_unit(ctx.app, ctx.projects,
                     extra_paths=[ctx.ssd_target] if ctx.ssd_target else [])
