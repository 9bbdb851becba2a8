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

from mnic_ops import cron
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
    now = dt.datetime.now()
    assert now < nxt["mnic-ops:expire"] <= now + dt.timedelta(minutes=31)
    assert nxt["mnic-ops:compress"].time() == dt.time(3, 30)
    assert now < nxt["mnic-ops:compress"] <= now + dt.timedelta(days=1)


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
    got = cron.next_run(job, dt.datetime.fromisoformat(after))
    assert got == dt.datetime.fromisoformat(want)


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
export MNIC_OPS_CRON__COMPRESS_SCHEDULE="* * * * *"
export MNIC_OPS_CRON__EXPIRE_SCHEDULE="*/30 * * * *"
export MNIC_OPS_CRON__LOG="$work/cron.log"
"$py" -m mnic_ops cron install --system
cat /etc/cron.d/mnic-ops
"$py" -m mnic_ops cron show --system
cron -f -L 15 &
cronpid=$!
ok=0
# up to two minutes and a bit: a pass that starts at the same minute as the expiry job
# may find the project locked and leave its work to the next minute's run
for i in $(seq 1 140); do
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
    for host_path, data in files.items():
        if "/sessions/f" in host_path:
            assert content_of(host, host_path) == (None, data)
