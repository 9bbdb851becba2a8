"""``mnic-ops cron install|remove|show``: the cleanup jobs, in cron.

``--system`` (the default as root) owns ``/etc/cron.d/mnic-ops`` (a name Debian's cron
accepts: no dot), written atomically, root-owned, mode 0644, through
:func:`filechange.file_item` (diff, backup, undo) rather than python-crontab's own
non-atomic ``write``. ``--user USER`` edits that user's crontab through ``crontab``.
Jobs are marked with a comment (``mnic-ops:expire``, ``mnic-ops:compress``) so that
install is idempotent and remove deletes only ours. They call the installed mnic-ops by
absolute path and send their output to a log file or syslog, never to mail.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities.protocol import (
    ProvisionContext,
    ProvisionStep,
    missing_service,
    no_installs,
)
from mnic_ops.changes.model import OK, Item, Plan
from mnic_ops.core import quoting
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK, InputError, OpsError
from mnic_ops.engines.cronfile import (
    MARK,
    SYSTEM_FILE,
    Target,
    has_foreign_jobs,
    ours,
    parse,
    read_system,
    read_user_crontab,
    remove_file_item,
    user_item,
    with_jobs,
    without_jobs,
)
from mnic_ops.facts.crontime import dst_note, host_timezone, meeting, next_run

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

DEFAULT_LOG = "/var/log/mnic-ops-cron.log"
# Schedules per host class: the guide's */30 for expiry; compression once a day, at
# lunchtime on laptops (often asleep at night; cron does not catch up) and at night else,
# at minute 15, which */30 never meets (at 12:30 and 03:30 both jobs started together
# and one of them found the install locked).
TIER_SCHEDULES: dict[str, dict[str, str]] = {
    "laptop": {"expire": "*/30 * * * *", "compress": "15 12 * * *"},
    "workstation": {"expire": "*/30 * * * *", "compress": "15 3 * * *"},
    "server": {"expire": "*/30 * * * *", "compress": "15 3 * * *"},
}
JOBS = {"compress": ("clean", "daily pass: compress aged files, expire old archives"),
        "expire": ("clean --only expire", "frequent pass: expire old archives")}
DEFAULT_LOCK_WAIT = 1500  # seconds: under the */30 interval, so expiry jobs never pile up


def _target(system: bool, user: str | None) -> Target:
    if system and user:
        raise InputError("give --system or --user USER, not both")
    if user:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", user):
            raise InputError(f"--user {user!r}: not a valid user name")
        return Target(False, user)
    if system or os.geteuid() == 0:
        return Target(True, "root")
    import pwd

    return Target(False, pwd.getpwuid(os.geteuid()).pw_name)


# --- what to install ---------------------------------------------------------------

def mnic_command(app: AppContext) -> str:
    """The absolute command line that runs this mnic-ops: the ``cron.command`` config,
    else the script we were started as, else ``mnic-ops`` on PATH, else this Python
    with ``-m mnic_ops``."""
    configured = app.config.get("cron.command")
    if configured:
        return quoting.cron_command(str(configured), "cron.command")
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "mnic-ops" and os.path.isfile(argv0):
        words = [os.path.abspath(argv0)]
    elif found := shutil.which("mnic-ops"):
        words = [os.path.abspath(found)]
    else:
        words = [os.path.abspath(sys.executable), "-m", "mnic_ops"]
    cmd = quoting.sh_command(words, "the path of mnic-ops")
    if app.config_path:
        cmd += f" --config {quoting.sh_word(os.path.abspath(app.config_path), '--config')}"
    return quoting.cron_command(cmd, "the command that runs mnic-ops")


def schedules(app: AppContext) -> dict[str, str]:
    """Per job: config ``cron.*_schedule`` > ``[tiers.<class>.cron]`` > the tier table."""
    cfg = app.config
    out: dict[str, str] = {}
    tier_vals: dict[str, Any] = {}
    need_tier = any(not cfg.get(f"cron.{j}_schedule") for j in JOBS)
    if need_tier:
        from mnic_ops.facts.hostclass import detect

        decision, _ = detect(app)
        out.update(TIER_SCHEDULES.get(decision.host_class, TIER_SCHEDULES["workstation"]))
        t = (cfg.get("tiers") or {}).get(decision.host_class) or {}
        tier_vals = t.get("cron") or {} if isinstance(t, dict) else {}
    for job in JOBS:
        v = cfg.get(f"cron.{job}_schedule") or tier_vals.get(f"{job}_schedule")
        if v:
            out[job] = str(v)
    for job, sched in out.items():
        quoting.cron_schedule(sched, f"cron.{job}_schedule")
    return out


def log_redirect(app: AppContext, target: Target) -> str:
    dest = app.config.get("cron.log") or (DEFAULT_LOG if target.system else "syslog")
    if dest == "syslog":
        logger = shutil.which("logger") or "/usr/bin/logger"
        return f"2>&1 | {quoting.sh_word(logger, 'logger')} -t mnic-ops"
    if not str(dest).startswith("/"):
        raise InputError(f"cron.log: {dest!r}: expected an absolute path or 'syslog'")
    return f">>{quoting.sh_word(str(dest), 'cron.log')} 2>&1"


def job_lines(app: AppContext, target: Target) -> dict[str, tuple[str, str]]:
    """marker -> (schedule, command) for our jobs (python-crontab escapes ``%`` as
    ``\\%`` when rendering, as cron needs)."""
    cmd = mnic_command(app)
    redirect = log_redirect(app, target)
    scheds = schedules(app)
    wait = int(app.config.get("cron.lock_wait_seconds", DEFAULT_LOCK_WAIT))
    # --wait: a job that finds the other one (or the watcher) working on an install
    # waits for it rather than skipping that install's work
    return {f"{MARK}{job}": (scheds[job],
                             quoting.cron_command(f"{cmd} {args} --wait {wait} {redirect}",
                                                  f"{job} job"))
            for job, (args, _) in JOBS.items()}


# --- the plans ------------------------------------------------------------------------

def plan_install(app: AppContext, target: Target) -> Plan:
    from mnic_ops.changes.filechange import file_item

    plan = Plan()
    jobs = job_lines(app, target)
    if target.system:
        if not app.root.path("/etc/cron.d").is_dir():
            raise OpsError("/etc/cron.d does not exist: install cron first "
                           "(apt-get install --no-install-recommends cron)")
        old = read_system(app.root) or ""
        new = with_jobs(parse(old, SYSTEM_FILE, True), jobs, target)
        item = plan.add(file_item(app.root, SYSTEM_FILE, new, mode=0o644, uid=0, gid=0,
                                  description=f"cleanup jobs in {SYSTEM_FILE}"))
    else:
        _live_only(app)
        old = read_user_crontab(target.user)
        new = with_jobs(parse(old, f"crontab of {target.user}", False), jobs, target)
        item = plan.add(user_item(target.user, old, new, f"cleanup jobs in the crontab of "
                                                         f"{target.user}"))
    met = meeting({job.split(":", 1)[1]: sched for job, (sched, _cmd) in jobs.items()})
    if met is not None:
        note = (f"the compress and expire jobs both start at {met:%H:%M}: the later one "
                "waits for the lock (cron.lock_wait_seconds)")
        item.reason = f"{item.reason}; {note}" if item.reason else note
    return plan


def plan_remove(app: AppContext, target: Target) -> Plan:
    from mnic_ops.changes.filechange import file_item

    plan = Plan()
    if target.system:
        old = read_system(app.root)
        if old is None:
            plan.add(Item(id=f"file:{SYSTEM_FILE}", description=f"remove {SYSTEM_FILE}",
                          state=OK, reason="not installed"))
            return plan
        tab = parse(old, SYSTEM_FILE, True)
        if not ours(tab):
            plan.add(Item(id=f"file:{SYSTEM_FILE}", description="remove cleanup jobs",
                          state=OK, reason="none installed"))
        elif has_foreign_jobs(tab):
            plan.add(file_item(app.root, SYSTEM_FILE, without_jobs(tab),
                               description=f"remove our jobs from {SYSTEM_FILE} (others "
                               "kept)"))
        else:
            plan.add(remove_file_item(app.root, SYSTEM_FILE, old))
    else:
        _live_only(app)
        old = read_user_crontab(target.user)
        tab = parse(old, f"crontab of {target.user}", False)
        plan.add(user_item(target.user, old, without_jobs(tab) if ours(tab) else old,
                            f"remove cleanup jobs from the crontab of {target.user}"))
    return plan


def _live_only(app: AppContext) -> None:
    if not app.root.live:
        raise InputError("--user works on the running system only (crontab ignores "
                         "--root); use --system for an image")


def show_data(app: AppContext, target: Target, now: dt.datetime | None = None
              ) -> dict[str, Any]:
    """The installed jobs and their next runs, in the host's zone (``now``: a test's
    fixed time; default the current time)."""
    tz, tzname = host_timezone(app.root)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    if target.system:
        text = read_system(app.root)
        where = SYSTEM_FILE
    else:
        _live_only(app)
        text = read_user_crontab(target.user)
        where = f"crontab of {target.user}"
    jobs = []
    if text:
        tab = parse(text, where, target.system)
        for j in ours(tab):
            nxt = next_run(j, now)
            row = {"marker": str(j.comment), "schedule": str(j.slices), "user": j.user,
                   "command": str(j.command),
                   "next_run": nxt.isoformat(timespec="minutes") if nxt else None}
            note = dst_note(j, nxt) if nxt else None
            if note:
                row["next_run_note"] = note
            jobs.append(row)
    return {"where": where, "installed": bool(jobs), "timezone": tzname, "jobs": jobs}


# --- the command ----------------------------------------------------------------------

@click.group("cron", epilog=EXIT_CODES_HELP)
def cron_cmd() -> None:
    """Install, remove or show the cleanup cron jobs (`mnic-ops clean` on a schedule)."""


def _common(f: Any) -> Any:
    f = click.option("--user", "user", metavar="USER", default=None,
                     help="That user's crontab (through `crontab`).")(f)
    f = click.option("--system", is_flag=True,
                     help=f"{SYSTEM_FILE} (the default as root).")(f)
    return f


@cron_cmd.command("install", epilog=EXIT_CODES_HELP)
@_common
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show the diff.")
@click.pass_obj
def install_cmd(app: AppContext, system: bool, user: str | None, check: bool,
                diff: bool) -> int:
    """Install (or update) the expiry and daily compression jobs."""
    from mnic_ops.changes.run import run_plan
    from mnic_ops.facts import hostservices

    target = _target(system, user)
    daemon = hostservices.cron_daemon(app.root)
    if not daemon.present:
        # still installed (a daemon may come later, as in an image), but said
        logging.getLogger(__name__).warning(
            "no cron daemon on this host (%s): the jobs will not run until one is "
            "installed (apt install cron)", daemon.evidence)
    return run_plan(app, plan_install(app, target), check=check, diff=diff,
                    command="cron install")


@cron_cmd.command("remove", epilog=EXIT_CODES_HELP)
@_common
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show the diff.")
@click.pass_obj
def remove_cmd(app: AppContext, system: bool, user: str | None, check: bool,
               diff: bool) -> int:
    """Remove our jobs (marked mnic-ops:*); other lines stay."""
    from mnic_ops.changes.run import run_plan

    target = _target(system, user)
    return run_plan(app, plan_remove(app, target), check=check, diff=diff,
                    command="cron remove")


@cron_cmd.command("show", epilog=EXIT_CODES_HELP)
@_common
@click.pass_obj
def show_cmd(app: AppContext, system: bool, user: str | None) -> int:
    """Print the installed jobs and when each runs next."""
    from mnic_ops.core.app import emit

    data = show_data(app, _target(system, user))

    def text() -> str:
        if not data["jobs"]:
            return f"{data['where']}: no mnic-ops jobs installed"
        tz, _name = host_timezone(app.root)
        lines = [f"{data['where']} (times in {data['timezone']}):"]
        for j in data["jobs"]:
            nxt = j["next_run"] or "at boot"
            if j["next_run"]:
                when = dt.datetime.fromisoformat(j["next_run"]).astimezone(tz)
                nxt = f"{when:%Y-%m-%d %H:%M} {when.tzname() or ''} ({when:%z})"
            lines.append(f"  {j['marker']:<18} {j['schedule']:<14} next {nxt}"
                         f"{'  as ' + j['user'] if j['user'] else ''}")
            if j.get("next_run_note"):
                lines.append(f"    note: {j['next_run_note']}")
            lines.append(f"    {j['command']}")
        return "\n".join(lines)

    emit(app, data, text)
    return EXIT_OK


PROVISION = ProvisionStep(40, "cron", "cron")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    from mnic_ops.facts import hostservices

    what = f"cleanup jobs in {SYSTEM_FILE}"
    skip = no_installs(ctx, "cron", what)
    if skip:
        return skip
    daemon = hostservices.cron_daemon(ctx.app.root)
    if not daemon.present:
        return missing_service(ctx, "cron", what, "cron",
                               "apt install cron (or your distribution's cronie)",
                               f"no cron daemon on this host ({daemon.evidence})")
    return plan_install(ctx.app, Target(True, "root")).items
