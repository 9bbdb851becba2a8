"""When cron runs a job: next runs (across daylight saving changes, as Debian's cron), and
the zone cron runs in (the daemon's TZ, not the caller's)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mnic_ops.facts import crontime


@pytest.mark.parametrize(("sched", "after", "want"), [
    ("*/30 * * * *", "2026-03-04 10:07", "2026-03-04 10:30"),
    ("30 3 * * *", "2026-03-04 04:00", "2026-03-05 03:30"),
    ("0 0 13 * 5", "2026-03-07 00:00", "2026-03-13 00:00"),  # 13th or a Friday
    ("0 0 13 * 5", "2026-03-13 00:00", "2026-03-20 00:00"),
    ("0 12 29 2 *", "2026-03-01 00:00", "2028-02-29 12:00"),
    ("15 10 * * 1-5", "2026-03-06 11:00", "2026-03-09 10:15"),  # Fri -> Mon
])
def test_next_run(sched: str, after: str, want: str) -> None:
    from crontab import CronTab

    job = next(iter(CronTab(tab=f"{sched} /bin/true\n")))
    got = crontime.next_run(job, dt.datetime.fromisoformat(after))
    assert got == dt.datetime.fromisoformat(want)


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(("sched", "after", "want"), [
    # spring forward (2026-03-29, 02:00 CET -> 03:00 CEST): 02:30 does not exist that
    # day; Debian's cron runs a fixed-time job right after the jump
    ("30 2 * * *", "2026-03-28 12:00", "2026-03-29 03:00+02:00"),
    ("30 2 * * *", "2026-03-29 03:00", "2026-03-30 02:30+02:00"),
    ("15 3 * * *", "2026-03-29 01:00", "2026-03-29 03:15+02:00"),
    # ... a job with * in its minute or hour runs by the new time
    ("*/30 * * * *", "2026-03-29 01:45", "2026-03-29 03:00+02:00"),
    # fall back (2026-10-25, 03:00 CEST -> 02:00 CET): a fixed-time job runs once, the
    # first time; a */30 job runs by the new time, so again in the repeated hour
    ("30 2 * * *", "2026-10-25 00:00", "2026-10-25 02:30+02:00"),
    ("30 2 * * *", "2026-10-25 02:30+02:00", "2026-10-26 02:30+01:00"),
    ("*/30 * * * *", "2026-10-25 02:40+02:00", "2026-10-25 02:00+01:00"),
])
def test_next_run_across_dst(sched: str, after: str, want: str) -> None:
    from crontab import CronTab

    job = next(iter(CronTab(tab=f"{sched} /bin/true\n")))
    start = dt.datetime.fromisoformat(after)
    start = start if start.tzinfo else start.replace(tzinfo=BERLIN)
    got = crontime.next_run(job, start.astimezone(BERLIN))
    assert got is not None
    assert got.isoformat(timespec="minutes") == dt.datetime.fromisoformat(want).isoformat(
        timespec="minutes")


def test_show_uses_the_cron_daemons_tz_not_the_callers(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """cron runs its jobs in its own zone: the TZ it was started with, else
    /etc/localtime. The TZ of the shell running ``cron show`` is not cron's."""
    from mnic_ops.core.hostroot import HostRoot

    for zone in ("Europe/Berlin", "Asia/Tokyo"):
        if not Path(f"/usr/share/zoneinfo/{zone}").exists():
            pytest.skip("no tzdata on this machine")
    if subprocess.run(["pgrep", "-x", "cron|crond"], capture_output=True).returncode == 0:
        pytest.skip("a cron daemon runs on this machine: the fake one would be one of two")
    live = HostRoot.open("/")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    tz, name = crontime.host_timezone(live)
    assert name != "Europe/Berlin"  # the caller's zone is ignored
    # a process named cron (a copy of sleep) started with TZ: the daemon's zone counts
    fake = tmp_path / "cron"
    shutil.copy("/bin/sleep", fake)
    proc = subprocess.Popen([str(fake), "30"], env={"TZ": "Asia/Tokyo"})
    try:
        time.sleep(0.2)
        tz, name = crontime.host_timezone(live)
    finally:
        proc.kill()
        proc.wait()
    assert name == "Asia/Tokyo"
    # a plain user's process that names itself cron is not cron: its TZ does not count
    code = "open('/proc/self/comm', 'w').write('cron'); print('in', flush=True); " \
        "import time; time.sleep(30)"
    user = subprocess.Popen(["/usr/bin/python3", "-c", code], env={"TZ": "Asia/Tokyo"},
                            user=65534, group=65534, extra_groups=[], cwd="/",
                            stdout=subprocess.PIPE, text=True)
    try:
        assert user.stdout is not None and user.stdout.readline().strip() == "in"
        assert crontime.host_timezone(live)[1] != "Asia/Tokyo"
    finally:
        user.kill()
        user.wait()
    from crontab import CronTab

    job = next(iter(CronTab(tab="30 2 * * * /bin/true\n")))
    now = dt.datetime(2026, 3, 28, 12, 0, tzinfo=dt.UTC).astimezone(tz)
    assert crontime.next_run(job, now) == dt.datetime(2026, 3, 28, 17, 30, tzinfo=dt.UTC)
