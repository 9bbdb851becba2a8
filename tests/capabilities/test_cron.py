"""`mnic-ops cron`: the cron.d file, user crontabs, and a real cron daemon running a job."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mnic_ops.capabilities import cron
from mnic_ops.engines import cronfile
from mnic_ops.facts import crontime
from tests.cleanhelp import content_of, make_project, write_config
from tests.conftest import REPO, require, run_mnic

FILE = "etc/cron.d/mnic-ops"
ENV = {"MNIC_OPS_CRON__COMPRESS_SCHEDULE": "30 3 * * *",
       "MNIC_OPS_CRON__EXPIRE_SCHEDULE": "*/30 * * * *"}


def mnic(root: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_mnic("--root", str(root), *args, env={**ENV, **(env or {})})


def test_install_is_atomic_idempotent_and_marked(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    r = mnic(fake_root, "cron", "install", "--check", "--diff")
    assert r.code == 3, r.err
    assert "+*/30 * * * * root " in r.out
    assert not (fake_root / FILE).exists()
    r = mnic(fake_root, "cron", "install")
    assert r.code == 0, r.err
    st = os.stat(fake_root / FILE)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    text = (fake_root / FILE).read_text()
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert 'MAILTO=""' in lines
    jobs = [x for x in lines if "mnic-ops:" in x]
    assert len(jobs) == 2
    for j in jobs:
        fields = j.split()
        assert fields[5] == "root"  # user field
        assert fields[6].startswith("/")  # mnic-ops (or its python) by absolute path
        assert ">>/var/log/mnic-ops-cron.log 2>&1" in j
    assert any(j.startswith("30 3 * * * root ") and "--only" not in j for j in jobs)
    assert any(j.startswith("*/30 * * * * root ") and "clean --only expire" in j
               for j in jobs)
    r = mnic(fake_root, "cron", "install")
    assert r.code == 0 and "already as wanted" in r.out
    assert (fake_root / FILE).read_text() == text
    # no temporaries left next to it (a dot in a cron.d name makes Debian's cron skip
    # it, but a leftover would still be clutter)
    assert os.listdir(fake_root / "etc/cron.d") == ["mnic-ops"]


def test_remove_deletes_only_ours_and_undo_restores(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    assert mnic(fake_root, "cron", "install").code == 0
    with open(fake_root / FILE, "a") as fh:
        fh.write("# the admin's own\n5 4 * * * alice /usr/bin/true\n")
    r = mnic(fake_root, "cron", "install", env={"MNIC_OPS_CRON__EXPIRE_SCHEDULE":
                                                "*/15 * * * *"})
    assert r.code == 0, r.err
    text = (fake_root / FILE).read_text()
    assert "*/15 * * * * root" in text and "5 4 * * * alice /usr/bin/true" in text
    assert mnic(fake_root, "cron", "remove").code == 0
    text = (fake_root / FILE).read_text()
    assert "mnic-ops:" not in text and "5 4 * * * alice /usr/bin/true" in text
    # only ours left -> the file goes; undo brings it back
    (fake_root / FILE).unlink()
    assert mnic(fake_root, "cron", "install").code == 0
    before = (fake_root / FILE).read_bytes()
    assert mnic(fake_root, "cron", "remove").code == 0
    assert not (fake_root / FILE).exists()
    r = mnic(fake_root, "undo", "--last")
    assert r.code == 0, r.err
    assert (fake_root / FILE).read_bytes() == before


def test_bad_lines_and_schedules_are_input_errors(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    (fake_root / FILE).write_text("MAILTO=root\n# fine\n* * * * * /no/user/field\n")
    r = mnic(fake_root, "cron", "install")
    assert r.code == 2 and f"/{FILE}:3:" in r.err and "Traceback" not in r.err
    assert (fake_root / FILE).read_text().endswith("/no/user/field\n")
    (fake_root / FILE).unlink()
    r = mnic(fake_root, "cron", "install", env={"MNIC_OPS_CRON__COMPRESS_SCHEDULE": "61 * * *"})
    assert r.code == 2 and "cron.compress_schedule" in r.err
    assert not (fake_root / FILE).exists()


def test_percent_is_escaped_and_syslog_logging(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    r = mnic(fake_root, "cron", "install", env={"MNIC_OPS_CRON__LOG": "/var/log/m%d.log"})
    assert r.code == 0, r.err
    assert ">>/var/log/m\\%d.log 2>&1" in (fake_root / FILE).read_text()
    r = mnic(fake_root, "cron", "install", env={"MNIC_OPS_CRON__LOG": "syslog"})
    assert "| " in (fake_root / FILE).read_text() and "logger -t mnic-ops" in (
        fake_root / FILE).read_text()


def test_show_prints_next_runs(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    r = mnic(fake_root, "--json", "cron", "show")
    assert r.code == 0 and json.loads(r.out)["installed"] is False
    mnic(fake_root, "cron", "install")
    r = mnic(fake_root, "--json", "cron", "show")
    data = json.loads(r.out)
    nxt = {j["marker"]: dt.datetime.fromisoformat(j["next_run"]) for j in data["jobs"]}
    assert data["timezone"] == "UTC"  # the host tree has no /etc/localtime
    now = dt.datetime.now(dt.UTC)
    assert now < nxt["mnic-ops:expire"] <= now + dt.timedelta(minutes=31)
    assert nxt["mnic-ops:compress"].time() == dt.time(3, 30)
    assert now < nxt["mnic-ops:compress"] <= now + dt.timedelta(days=1)


def _berlin_host(root: Path) -> None:
    zone = root / "usr/share/zoneinfo/Europe"
    zone.mkdir(parents=True)
    (zone / "Berlin").write_bytes(Path("/usr/share/zoneinfo/Europe/Berlin").read_bytes())
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/Europe/Berlin")


def test_show_uses_the_host_trees_zone_with_a_fixed_now(fake_root: Path) -> None:
    """cron show under --root: the zone of the host tree's /etc/localtime (a link
    resolved inside the tree), not this machine's; the day 02:30 does not exist."""
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

    if not Path("/usr/share/zoneinfo/Europe/Berlin").exists():
        pytest.skip("no tzdata on this machine")
    (fake_root / "etc/cron.d").mkdir()
    _berlin_host(fake_root)
    r = mnic(fake_root, "cron", "install", env={"MNIC_OPS_CRON__COMPRESS_SCHEDULE":
                                               "30 2 * * *"})
    assert r.code == 0, r.err
    app = AppContext(root=HostRoot.open(fake_root), config_path=None)
    now = dt.datetime(2026, 3, 28, 23, 0, tzinfo=dt.UTC)  # 00:00 CET on the 29th
    data = cron.show_data(app, cronfile.Target(True, "root"), now=now)
    assert data["timezone"] == "Europe/Berlin"
    jobs = {j["marker"]: j for j in data["jobs"]}
    assert jobs["mnic-ops:compress"]["next_run"] == "2026-03-29T03:00+02:00"
    assert "does not exist on 2026-03-29" in jobs["mnic-ops:compress"]["next_run_note"]
    assert jobs["mnic-ops:expire"]["next_run"] == "2026-03-29T00:30+01:00"
    assert "next_run_note" not in jobs["mnic-ops:expire"]
    # the command prints local times with the zone's own abbreviation
    out = mnic(fake_root, "cron", "show").out
    assert "(times in Europe/Berlin)" in out and ("CET" in out or "CEST" in out), out


@pytest.mark.parametrize("host_class", sorted(cron.TIER_SCHEDULES))
def test_default_schedules_never_start_together(host_class: str) -> None:
    """The daily pass and the */30 expiry pass met at 12:30 (laptop) and 03:30
    (workstation); one of them then found the install locked and skipped it."""
    assert crontime.meeting(cron.TIER_SCHEDULES[host_class]) is None
    assert crontime.meeting({"compress": "30 3 * * *", "expire": "*/30 * * * *"}) is not None


def test_jobs_wait_for_the_lock(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    r = mnic(fake_root, "cron", "install", "--check", "--diff")
    assert r.code == 3, r.err
    # ENV puts both at 03:30 and 03:00/03:30: allowed, and said
    assert "both start at 03:30: the later one waits for the lock" in r.out, r.out
    mnic(fake_root, "cron", "install", env={"MNIC_OPS_CRON__LOCK_WAIT_SECONDS": "600"})
    jobs = [x for x in (fake_root / FILE).read_text().splitlines()
            if x.endswith(("# mnic-ops:compress", "# mnic-ops:expire"))]
    assert len(jobs) == 2 and all(" --wait 600 " in j for j in jobs), jobs


DAEMON_SCRIPT = r"""
set -eu
host=$1 py=$2 work=$3 repo=$4
# a private view: the machine's crontabs, cron's pid file and mnic-ops' state stay
# untouched (everything below lives only in this mount namespace)
for d in /etc/cron.d /var/spool/cron /var/lib /var/log /run; do mount -t tmpfs tmpfs "$d"; done
: > "$work/crontab"
mount --bind "$work/crontab" /etc/crontab
mkdir -p /var/spool/cron/crontabs
chgrp crontab /var/spool/cron/crontabs 2>/dev/null || true
chmod 1730 /var/spool/cron/crontabs
export PYTHONPATH="$repo"
export MNIC_OPS_CRON__COMMAND="env PYTHONPATH=$repo $py -m mnic_ops --root $host"
# both jobs every minute: they always start together, and the one that finds the
# install locked waits for it (--wait) instead of skipping its work
export MNIC_OPS_CRON__COMPRESS_SCHEDULE="* * * * *"
export MNIC_OPS_CRON__EXPIRE_SCHEDULE="* * * * *"
export MNIC_OPS_CRON__LOG="$work/cron.log"
"$py" -m mnic_ops cron install --system
cat /etc/cron.d/mnic-ops
"$py" -m mnic_ops cron show --system
cron -f -L 15 &
cronpid=$!
ok=0
# the first minute's compress run does the work (a minute and a bit at most)
for i in $(seq 1 75); do
  sleep 1
  if "$py" - "$host" <<'PY'
import sys, os
from pathlib import Path
base = Path(sys.argv[1]) / "home/alice/proj/project_archive/sessions"
left = [n for n in os.listdir(base) if n.endswith(".json")]
done = [n for n in os.listdir(base) if n.endswith(".json.gz")]
sys.exit(0 if done and not left else 1)
PY
  then ok=1; break; fi
done
kill "$cronpid"
wait "$cronpid" || true
"$py" -m mnic_ops cron remove --system
test ! -e /etc/cron.d/mnic-ops
# a user's crontab, through crontab(1)
"$py" -m mnic_ops cron install --user nobody
crontab -l -u nobody | grep -q "mnic-ops:compress"
"$py" -m mnic_ops cron show --user nobody
"$py" -m mnic_ops cron remove --user nobody
if crontab -l -u nobody 2>/dev/null | grep -q mnic-ops; then exit 7; fi
echo "COMPRESSED=$ok"
"""


@pytest.mark.slow
def test_real_cron_daemon_runs_the_job(tmp_path: Path) -> None:
    require("cron", "unshare")
    host = tmp_path / "host"
    files = make_project(host, files=25)
    write_config(host)
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                        DAEMON_SCRIPT, "x", str(host), sys.executable, str(work), str(REPO)],
                       capture_output=True, text=True, timeout=240)
    log = (work / "cron.log").read_text() if (work / "cron.log").exists() else ""
    assert r.returncode == 0, r.stdout + r.stderr + log
    assert "COMPRESSED=1" in r.stdout, r.stdout + r.stderr + log
    assert "mnic-ops:compress" in r.stdout  # show listed it
    assert "another pass holds its lock" not in log, log
    for host_path, data in files.items():
        if "/sessions/f" in host_path:
            assert content_of(host, host_path) == (None, data)


@pytest.mark.parametrize(("line", "cause"), [
    ("61 * * * * root /bin/true", "not in 0-59"),
    ("* * * * * /bin/true", "Missing user or command"),
])
def test_a_bad_line_in_our_file_is_refused_with_its_real_cause(fake_root: Path, line: str,
                                                               cause: str) -> None:
    """The error names what python-crontab found wrong with the line (not always "needs a
    user field"), and the library's own log lines do not leak to the terminal."""
    (fake_root / "etc/cron.d").mkdir()
    (fake_root / FILE).write_text(f"{line}\n")
    r = mnic(fake_root, "cron", "install")
    assert r.code == 2, r.err
    assert f"{FILE}:1: not a valid cron line" in r.err and cause in r.err, r.err
    if "user" not in cause:
        assert "user field" not in r.err, r.err
    assert "crontab:" not in r.err.replace(f"/{FILE}", ""), r.err
    assert (fake_root / FILE).read_text() == f"{line}\n"


def test_install_on_a_host_without_a_cron_daemon_says_so(fake_root: Path) -> None:
    """The jobs are still written (an image may get its daemon later), with a warning
    that they will not run; on a host with a daemon, no such warning."""
    (fake_root / "etc/cron.d").mkdir()
    r = mnic(fake_root, "cron", "install")
    assert r.code == 0 and (fake_root / FILE).exists(), r.err
    assert "no cron daemon on this host" in r.err and "apt install cron" in r.err, r.err
    daemon = fake_root / "usr/sbin/cron"
    daemon.parent.mkdir(parents=True, exist_ok=True)
    daemon.write_text("#!/bin/sh\n")
    daemon.chmod(0o755)
    r = mnic(fake_root, "cron", "install", "--check")
    assert r.code == 0 and "no cron daemon" not in r.err, r.err
