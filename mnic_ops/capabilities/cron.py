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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities.protocol import (
    ProvisionContext,
    ProvisionStep,
    missing_service,
    no_installs,
)
from mnic_ops.changes.model import OK, ApplyContext, Item, Plan, Undo, undo_handler, unified_diff
from mnic_ops.core import beneathfs, quoting, safefs
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK, InputError, OpsError
from mnic_ops.core.hostroot import HostRoot

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

SYSTEM_FILE = "/etc/cron.d/mnic-ops"
MARK = "mnic-ops:"
DEFAULT_LOG = "/var/log/mnic-ops-cron.log"
HEADER = ("# Managed by mnic-ops (mnic-ops cron install/remove). Jobs marked mnic-ops:* are "
          "replaced on install.")
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
_ENV_RE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def _crontab() -> Any:
    """python-crontab, imported only when a cron command runs."""
    import crontab

    return crontab


@dataclass
class Target:
    system: bool
    user: str  # the user the jobs run as (system file user field, or the crontab owner)


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


def meeting(scheds: dict[str, str], now: dt.datetime | None = None) -> dt.datetime | None:
    """The next minute (within a year) at which the compress and expire jobs both
    start, or None: such a pair is allowed (the later job waits for the lock) but said."""
    croniter = _croniter()
    if "compress" not in scheds or "expire" not in scheds:
        return None
    it = croniter.croniter(scheds["compress"], now or dt.datetime(2026, 1, 1))
    for _ in range(400):
        t = it.get_next(dt.datetime)
        if croniter.croniter.match(scheds["expire"], t):
            return t  # type: ignore[no-any-return]
    return None


# --- parsing and rendering with python-crontab ------------------------------------------

class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


@contextmanager
def _library_complaints() -> Iterator[list[str]]:
    """What python-crontab logs about a line it drops, collected (the cause of our
    error) instead of printed to the user's terminal beside it."""
    log = logging.getLogger("crontab")
    said, propagate = _Said(), log.propagate
    log.addHandler(said)
    log.propagate = False
    try:
        yield said.messages
    finally:
        log.removeHandler(said)
        log.propagate = propagate


def parse(text: str, where: str, system: bool) -> Any:
    """A CronTab of ``text``; any line cron would not accept is an input error naming it
    (python-crontab would silently turn it into a comment)."""
    crontab = _crontab()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#") or _ENV_RE.match(s):
            continue
        with _library_complaints() as said:
            try:
                items = list(crontab.CronTab(tab=line + "\n",
                                             user=False if system else None))
            except (ValueError, KeyError) as exc:
                said.append(str(exc))
                items = []
        if len(items) != 1 or not items[0].is_valid() or (system and not items[0].user):
            # python-crontab says why in its log (and drops the line): that is the cause
            why = "; ".join(dict.fromkeys(said)) or (
                "a system crontab line needs a user field" if system else "")
            raise InputError(f"{where}:{n}: not a valid cron line"
                             + (f" ({why})" if why else "") + "; fix or remove it first")
    # our header is put back on top when rendering (python-crontab moves comments
    # below the environment lines)
    text = "".join(line for line in text.splitlines(keepends=True)
                   if line.rstrip("\n") != HEADER)
    return crontab.CronTab(tab=text, user=False if system else None)


def _ours(tab: Any) -> list[Any]:
    return [j for j in tab if str(j.comment or "").startswith(MARK)]


def with_jobs(tab: Any, jobs: dict[str, tuple[str, str]], target: Target) -> str:
    """Render ``tab`` with our jobs set to exactly ``jobs`` (others untouched)."""
    current = {str(j.comment): j for j in _ours(tab)}
    for marker, job in current.items():
        if marker not in jobs:
            tab.remove(job)
    for marker, (sched, cmd) in jobs.items():
        job = current.get(marker)
        if job is None:
            job = tab.new(command=cmd, comment=marker,
                          user=target.user if target.system else None)
        else:
            job.set_command(cmd)
            if target.system:
                job.user = target.user
        job.setall(sched)
    if target.system:
        tab.env["MAILTO"] = '""'  # our own file: no mail from these jobs
        tab.env["SHELL"] = "/bin/sh"
    text: str = tab.render()
    if target.system:
        text = HEADER + "\n" + text
    _reads_back(text, jobs, target)
    return text if text.endswith("\n") else text + "\n"


def _reads_back(text: str, jobs: dict[str, tuple[str, str]], target: Target) -> None:
    """Our jobs, read back from the rendered text, are exactly the ones meant: one line
    each, same schedule, user and command; anything else is refused, not written."""
    got: dict[str, list[Any]] = {}
    for j in _crontab().CronTab(tab=text, user=False if target.system else None):
        if str(j.comment or "").startswith(MARK):
            got.setdefault(str(j.comment), []).append(j)
    for marker, (sched, cmd) in jobs.items():
        found = got.pop(marker, [])
        ok = len(found) == 1 and str(found[0].command) == cmd and (
            str(found[0].slices) == str(_crontab().CronSlices(sched))) and (
            not target.system or found[0].user == target.user)
        if not ok:
            raise quoting.UnsafeValue(f"the {marker} job does not read back as written "
                                      f"('{quoting.printable(cmd)}'); not writing it")
    if got:
        raise quoting.UnsafeValue(f"unexpected jobs {sorted(got)} in the rendered crontab; "
                                  "not writing it")


def without_jobs(tab: Any) -> str:
    for job in _ours(tab):
        tab.remove(job)
    text: str = tab.render()
    return text if not text or text.endswith("\n") else text + "\n"


def has_foreign_jobs(tab: Any) -> bool:
    return any(not str(j.comment or "").startswith(MARK) for j in tab)


# --- next run times ---------------------------------------------------------------------

def _croniter() -> Any:
    """croniter (python-crontab's own scheduler), imported only when needed."""
    import croniter

    return croniter


def _fixed_time(expr: str) -> bool:
    """A job that runs at a particular time: no ``*`` in its minute or hour field (what
    Debian's cron treats specially around DST changes, see :func:`next_run`)."""
    fields = expr.split()
    return len(fields) >= 2 and not fields[0].startswith("*") and not \
        fields[1].startswith("*")


def job_expression(job: Any) -> str | None:
    """The five-field schedule of a python-crontab job (``@daily`` and friends
    expanded), or None for ``@reboot``."""
    spec = str(job.special or "") if job.special and job.special != "*" else ""
    if spec == "@reboot":
        return None
    text = str(job.slices)
    return {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}.get(text, text)


def next_run(job: Any, after: dt.datetime) -> dt.datetime | None:
    """When cron next starts ``job`` after ``after``; None for ``@reboot``.

    With an aware ``after`` the answer is in its zone and follows what Debian's cron
    does when the clock changes for daylight saving time (cron(8)): a job at a fixed
    time (no ``*`` in its minute or hour) whose time is skipped that day (02:30 when
    the clock jumps from 02:00 to 03:00) runs right after the jump, at 03:00; in the
    hour that repeats it runs once, the first time; a job with ``*`` in its minute or
    hour runs by the new time: not at the skipped times, twice in the repeated hour.
    A naive ``after`` is wall-clock time without daylight saving."""
    croniter = _croniter()
    expr = job_expression(job)
    if expr is None:
        return None
    start = after.replace(second=0, microsecond=0)
    it = croniter.croniter(expr, start)
    fixed = _fixed_time(expr)
    for _ in range(8):
        t: dt.datetime = it.get_next(dt.datetime)
        if t.tzinfo is not None and fixed and t.fold == 1 and \
                t.utcoffset() != t.replace(fold=0).utcoffset():
            continue  # the repeated hour: a fixed-time job already ran the first time
        return t
    return None


def dst_note(job: Any, when: dt.datetime) -> str | None:
    """Why ``when`` is not a time the schedule names (a run moved by a DST jump)."""
    expr = job_expression(job)
    if expr is None or when.tzinfo is None or _croniter().croniter.match(
            expr, when.replace(tzinfo=None)):
        return None
    return (f"the scheduled time does not exist on {when.date().isoformat()} (the clock "
            f"jumps forward to {when.strftime('%H:%M')}): cron runs the job right after "
            "the jump")


def host_timezone(root: HostRoot) -> tuple[dt.tzinfo, str]:
    """The zone cron on that host runs in, and its name: the running cron daemon's own
    ``TZ`` (the running system only; never the caller's), else ``/etc/localtime`` (a
    link into the zoneinfo folder, or a copy of a zone file) of the host tree, else
    ``/etc/timezone``, else UTC."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from mnic_ops.facts import hostservices

    daemon_tz = hostservices.cron_daemon_tz() if root.live else None
    if daemon_tz:
        name = daemon_tz.lstrip(":")
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    host = "/etc/localtime"
    try:
        real = beneathfs.resolve_beneath(root.root, host)
    except (OSError, OpsError):
        real = host
    name = ""
    if "/zoneinfo/" in real:
        name = real.split("/zoneinfo/", 1)[1]
    try:
        with open(root.path(real), "rb") as fh:
            return ZoneInfo.from_file(fh, key=name or None), name or "localtime"
    except (OSError, ValueError):
        pass
    try:
        name = root.path("/etc/timezone").read_text().strip()
        return ZoneInfo(name), name
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return dt.UTC, "UTC"


# --- reading and writing ----------------------------------------------------------------

def _read_system(root: HostRoot) -> str | None:
    try:
        return safefs.read_bytes_nofollow(root.path(SYSTEM_FILE)).decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise InputError(f"{SYSTEM_FILE}: not UTF-8 text") from None


def read_user_crontab(user: str) -> str:
    from mnic_ops.core import execute

    r = execute.run(["crontab", "-l", "-u", user], check=False)
    if r.returncode == 0:
        return r.stdout
    if "no crontab" in r.stderr:
        return ""
    raise OpsError(f"crontab -l -u {user}: {r.stderr.strip() or 'failed'}")


def write_user_crontab(user: str, text: str) -> None:
    from mnic_ops.core import execute

    if text.strip():
        execute.run(["crontab", "-u", user, "-"], input=text)
    else:
        execute.run(["crontab", "-u", user, "-r"], check=False)


def _remove_file_item(root: HostRoot, host_path: str, old: str) -> Item:
    real = root.path(host_path)

    def action(ctx: ApplyContext) -> Undo:
        from mnic_ops.changes.filechange import FolderTimes

        bak = ctx.backup_dir() / real.name
        safefs.backup(real, bak)
        rec = {"path": host_path, "real": str(real), "backup": str(bak)}
        with FolderTimes(rec, real.parent):
            os.unlink(real)
            safefs.fsync_dir(real.parent)
        return Undo("cron-file-removed", rec)

    return Item(id=f"file:{host_path}", description=f"remove {host_path}",
                diff=unified_diff(old, "", host_path), action=action,
                data={"path": host_path})


@undo_handler("cron-file-removed")
def _undo_removed(root: HostRoot, rec: dict[str, Any]) -> str:
    from mnic_ops.changes.filechange import FolderTimes

    if os.path.lexists(rec["real"]):
        raise OpsError(f"{rec['path']}: exists again; not restoring (backup: "
                       f"{rec['backup']})")
    with FolderTimes(rec, os.path.dirname(rec["real"]), restore=True):
        safefs.copy_verified(rec["backup"], rec["real"])
    return f"restored {rec['path']}"


def _user_item(user: str, old: str, new: str, description: str) -> Item:
    iid = f"crontab:{user}"
    if old == new:
        return Item(id=iid, description=description, state=OK, reason="already as wanted")

    def action(ctx: ApplyContext) -> Undo:
        if read_user_crontab(user) != old:
            raise OpsError(f"crontab of {user} changed since the plan was made; run again")
        write_user_crontab(user, new)
        return Undo("crontab", {"user": user, "before": old, "after": new})

    return Item(id=iid, description=description,
                diff=unified_diff(old, new, f"crontab:{user}"), action=action,
                data={"user": user})


@undo_handler("crontab")
def _undo_crontab(root: HostRoot, rec: dict[str, Any]) -> str:
    if read_user_crontab(rec["user"]) != rec["after"]:
        raise OpsError(f"crontab of {rec['user']} changed since mnic-ops wrote it; "
                       "not reverting")
    write_user_crontab(rec["user"], rec["before"])
    return f"restored the crontab of {rec['user']}"


def plan_install(app: AppContext, target: Target) -> Plan:
    from mnic_ops.changes.filechange import file_item

    plan = Plan()
    jobs = job_lines(app, target)
    if target.system:
        if not app.root.path("/etc/cron.d").is_dir():
            raise OpsError("/etc/cron.d does not exist: install cron first "
                           "(apt-get install --no-install-recommends cron)")
        old = _read_system(app.root) or ""
        new = with_jobs(parse(old, SYSTEM_FILE, True), jobs, target)
        item = plan.add(file_item(app.root, SYSTEM_FILE, new, mode=0o644, uid=0, gid=0,
                                  description=f"cleanup jobs in {SYSTEM_FILE}"))
    else:
        _live_only(app)
        old = read_user_crontab(target.user)
        new = with_jobs(parse(old, f"crontab of {target.user}", False), jobs, target)
        item = plan.add(_user_item(target.user, old, new, f"cleanup jobs in the crontab of "
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
        old = _read_system(app.root)
        if old is None:
            plan.add(Item(id=f"file:{SYSTEM_FILE}", description=f"remove {SYSTEM_FILE}",
                          state=OK, reason="not installed"))
            return plan
        tab = parse(old, SYSTEM_FILE, True)
        if not _ours(tab):
            plan.add(Item(id=f"file:{SYSTEM_FILE}", description="remove cleanup jobs",
                          state=OK, reason="none installed"))
        elif has_foreign_jobs(tab):
            plan.add(file_item(app.root, SYSTEM_FILE, without_jobs(tab),
                               description=f"remove our jobs from {SYSTEM_FILE} (others "
                               "kept)"))
        else:
            plan.add(_remove_file_item(app.root, SYSTEM_FILE, old))
    else:
        _live_only(app)
        old = read_user_crontab(target.user)
        tab = parse(old, f"crontab of {target.user}", False)
        plan.add(_user_item(target.user, old, without_jobs(tab) if _ours(tab) else old,
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
        text = _read_system(app.root)
        where = SYSTEM_FILE
    else:
        _live_only(app)
        text = read_user_crontab(target.user)
        where = f"crontab of {target.user}"
    jobs = []
    if text:
        tab = parse(text, where, target.system)
        for j in _ours(tab):
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
