"""When cron runs a job: the next start of a schedule after a time, as Debian's cron
does across daylight saving changes, the zone cron on a host runs in, and the minute two
schedules first meet. croniter (python-crontab's own scheduler) is imported only when
needed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mnic_ops.core import beneathfs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot


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
