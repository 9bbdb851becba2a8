"""How `clean` behaves as a job: quiet from cron when it did nothing, never reporting
its own temporaries, a progress bar only on a terminal, `--check` that says what the run
does (open files included), and a bounded wait for the lock the other job holds."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import dirlock, tempfiles
from mnic_ops.facts import passstate
from tests.cleanhelp import PROJECT, content_of, make_project, write_config
from tests.conftest import REPO, run_mnic

TEXTFILE = "/var/lib/node-exporter/clean.prom"


def _setup(root: Path, files: int = 10, extra: str = "") -> dict[str, bytes]:
    made = make_project(root, files=files)
    (root / TEXTFILE.lstrip("/")).parent.mkdir(parents=True)
    write_config(root, f'[clean]\ntextfile = "{TEXTFILE}"\n{extra}')
    return made


# --- quiet cron runs -------------------------------------------------------------------

def test_a_pass_that_did_nothing_prints_nothing_off_a_terminal(fake_root: Path) -> None:
    _setup(fake_root)
    first = run_mnic("--root", str(fake_root), "clean")
    assert first.code == 0, first.err
    assert "compressed 10 files" in first.out  # real work prints
    for args in (["clean"], ["clean", "--only", "expire"]):
        before = passstate.last(HostRoot.open(fake_root))
        time.sleep(0.01)
        r = run_mnic("--root", str(fake_root), *args)
        assert r.code == 0, r.err
        assert r.out == "" and r.err == "", (args, r.out, r.err)
        # ... and the run is still recorded: state file and metrics
        after = passstate.last(HostRoot.open(fake_root))
        assert after is not None and before is not None
        assert after["started"] > before["started"]
        assert after["only"] == (args[2] if len(args) > 1 else None)
        prom = (fake_root / TEXTFILE.lstrip("/")).read_text()
        stamp = next(float(line.split()[-1]) for line in prom.splitlines()
                     if line.startswith("mnic_ops_clean_last_run_timestamp_seconds"))
        assert stamp == pytest.approx(after["started"], abs=0.01)
    # asked for: -v, --json and --check still answer
    assert "compressed 0 files" in run_mnic("--root", str(fake_root), "-v", "clean").out
    assert json.loads(run_mnic("--root", str(fake_root), "--json", "clean").out)["ok"]
    assert "would compress 0" in run_mnic("--root", str(fake_root), "clean", "--check").out


def test_errors_still_print_off_a_terminal(fake_root: Path) -> None:
    _setup(fake_root)
    run_mnic("--root", str(fake_root), "clean")
    cfg = fake_root / PROJECT.lstrip("/") / ".claude/config/extended-thinking-config.json"
    cfg.write_text('{"logging": {"retention_days": -5}}')
    r = run_mnic("--root", str(fake_root), "clean")
    assert r.code == 1
    assert "retention" in r.out + r.err and r.out.strip(), (r.out, r.err)


# --- its own temporaries ---------------------------------------------------------------

def test_own_temporaries_are_never_reported(fake_root: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A temporary of the running pass (its own pid, or one of its workers') is work in
    progress, not a leftover: it was reported as 'temporary of a running process' or
    'disappeared during the pass'. Run in-process, so that the pass's pid is known."""
    from mnic_ops.cli import main

    _setup(fake_root, files=20, extra="workers = 1\n")
    sessions = fake_root / PROJECT.lstrip("/") / "project_archive/sessions"
    mine = sessions / f".f00000.json.gz{tempfiles.TMP_MARK}.{os.getpid()}.abc1"
    mine.write_bytes(b"partial")
    child = subprocess.Popen(["sleep", "60"])  # stands for a worker of the pass
    theirs = sessions / f".f00005.json.gz{tempfiles.TMP_MARK}.{child.pid}.abc2"
    theirs.write_bytes(b"partial")
    try:
        with pytest.raises(SystemExit) as ex:
            main(["--root", str(fake_root), "--json", "clean"])
        assert ex.value.code == 0
    finally:
        child.kill()
        child.wait()
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["skipped"].get("tmp_in_use") is None, doc["totals"]["skipped"]
    assert doc["totals"]["skipped"].get("vanished") is None, doc["totals"]["skipped"]
    assert doc["totals"]["compressed"] == 20
    assert mine.exists() and theirs.exists()  # left to their owner, untouched


def test_many_files_in_one_folder_no_temporary_reported(fake_root: Path) -> None:
    made = make_project(fake_root, files=3000)
    write_config(fake_root, "[clean]\nbatch_files = 8\nworkers = 4\n")
    r = run_mnic("--root", str(fake_root), "--json", "clean", timeout=600)
    doc = json.loads(r.out)
    assert r.code == 0, r.err
    assert doc["totals"]["compressed"] == 3000
    for p in doc["projects"]:
        for k in p["kinds"].values():
            for reason, ex in k["skipped_examples"].items():
                assert not any(tempfiles.TMP_MARK in e or tempfiles.ASIDE_MARK in e for e in ex), \
                    (reason, ex)
    assert all(content_of(fake_root, h)[1] == d for h, d in made.items()
               if h.endswith(".json") and "/f0" in h)


# --- --check says what the run does ----------------------------------------------------

def test_check_and_run_agree_on_a_file_open_for_writing(fake_root: Path) -> None:
    made = _setup(fake_root, files=10)
    busy = next(h for h in sorted(made) if "/sessions/f" in h)
    fd = os.open(fake_root / busy.lstrip("/"), os.O_WRONLY | os.O_APPEND)
    try:
        c = run_mnic("--root", str(fake_root), "--json", "clean", "--check")
        check = json.loads(c.out)
        assert c.code == 3, c.err
        r = run_mnic("--root", str(fake_root), "--json", "clean")
        run = json.loads(r.out)
        assert r.code == 0, r.err
    finally:
        os.close(fd)
    assert check["totals"]["would_compress"] == 9
    assert check["totals"]["skipped"]["open_for_writing"] == 1
    assert run["totals"]["compressed"] == 9
    assert run["totals"]["skipped"]["open_for_writing"] == 1
    for kind, k in check["projects"][0]["kinds"].items():
        r_k = run["projects"][0]["kinds"][kind]
        assert k["would_compress"] == r_k["compressed"] + r_k["finished"], kind
        assert k["skipped"] == r_k["skipped"], kind
    assert content_of(fake_root, busy) == (made[busy], None)


def test_check_and_run_agree_with_a_writer_that_leases_cannot_see(fake_root: Path) -> None:
    """Another process holding the file open for writing (here: a child process), and a
    hard-link-free archive name taken by a folder: both skipped in --check as in the
    run."""
    made = _setup(fake_root, files=10)
    names = [h for h in sorted(made) if "/sessions/f" in h]
    writer = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1],"
                               "'a'); print('ok', flush=True); time.sleep(60)",
                               str(fake_root / names[0].lstrip("/"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ok\n"
        (fake_root / (names[1] + ".gz").lstrip("/")).mkdir()
        check = json.loads(run_mnic("--root", str(fake_root), "--json", "clean",
                                    "--check").out)
        run = json.loads(run_mnic("--root", str(fake_root), "--json", "clean").out)
    finally:
        writer.kill()
        writer.wait()
    assert check["totals"]["skipped"] == run["totals"]["skipped"]
    assert check["totals"]["skipped"]["open_for_writing"] == 1
    assert check["totals"]["skipped"]["archive_exists"] == 1
    assert check["totals"]["would_compress"] == run["totals"]["compressed"] == 8


# --- waiting for the lock ------------------------------------------------------------------

def _hold_lock(root: Path, seconds: float) -> threading.Thread:
    lock = dirlock.lock_path(HostRoot.open(root), PROJECT)
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release() -> None:
        time.sleep(seconds)
        os.close(fd)

    t = threading.Thread(target=release)
    t.start()
    return t


def test_wait_for_the_lock_then_do_the_work(fake_root: Path) -> None:
    made = _setup(fake_root, files=5)
    t = _hold_lock(fake_root, 2.0)
    t0 = time.monotonic()
    r = run_mnic("--root", str(fake_root), "clean", "--wait", "30")
    took = time.monotonic() - t0
    t.join()
    assert r.code == 0, r.err
    assert took >= 1.5, took
    assert "compressed 5 files" in r.out, r.out
    assert all(content_of(fake_root, h)[1] == d for h, d in made.items() if "/f0" in h)


def test_a_wait_that_runs_out_fails_and_says_so(fake_root: Path) -> None:
    _setup(fake_root, files=5)
    t = _hold_lock(fake_root, 4.0)
    r = run_mnic("--root", str(fake_root), "clean", "--wait", "1")
    t.join()
    assert r.code == 1, (r.out, r.err)
    assert "skipped: another pass holds its lock (waited 1 s for it)" in r.out, r.out
    rec = passstate.last(HostRoot.open(fake_root))
    assert rec is not None and rec["ok"] is False and rec["exit_code"] == 1
    t = _hold_lock(fake_root, 3.0)
    r = run_mnic("--root", str(fake_root), "--json", "clean", "--wait", "0.5")
    t.join()
    doc = json.loads(r.out)
    assert r.code == 1 and doc["ok"] is False
    assert doc["errors"] == [{"message": f"{PROJECT}: another pass held its lock for the "
                                         "0.5 s waited; not cleaned"}], doc["errors"]


def test_wait_is_a_checked_number(fake_root: Path) -> None:
    _setup(fake_root)
    r = run_mnic("--root", str(fake_root), "clean", "--wait", "-3")
    assert r.code == 2 and "--wait" in r.err


# --- progress on a terminal ------------------------------------------------------------------

def _on_terminal(args: list[str]) -> tuple[bytes, float, int]:
    cmd = " ".join([sys.executable, "-m", "mnic_ops", *args])
    e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    e.update(PYTHONPATH=str(REPO), TERM="xterm")
    t0 = time.monotonic()
    run = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, env=e,
                         timeout=600)
    return run.stdout, time.monotonic() - t0, run.returncode


def test_clean_shows_files_and_bytes_on_a_terminal(fake_root: Path) -> None:
    _setup(fake_root, files=400, extra="batch_files = 4\n")
    raw, took, code = _on_terminal(["--root", str(fake_root), "clean"])
    out = raw.decode(errors="replace")
    assert code == 0, out
    assert "clean  " in out and "400/400 files" in out and "MiB ->" in out, out
    # the bar fills as files are done: its last state reads 100%, with the full count
    last = [seg for seg in out.split("\r") if "files," in seg][-1]
    assert "100%" in last and "400/400 files" in last and "#" in last, last
    redraws = raw.count(b"\r") - raw.count(b"\r\n")
    assert 1 <= redraws <= 10 * took + 2, (redraws, took)
    # off a terminal, or with --json: no bar
    r = run_mnic("--root", str(fake_root), "clean")
    assert "files," not in r.err and "\r" not in r.err
