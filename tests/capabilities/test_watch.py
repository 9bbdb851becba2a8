"""`mnic-ops watch`: real inotify (and polling) against a project in a temporary host root.

Every watcher runs as a subprocess this test started and is stopped by its PID.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mnic_ops.engines import tempfiles
from tests.cleanhelp import (
    DAY,
    PROJECT,
    assert_nothing_lost,
    content_of,
    make_project,
    write_config,
)
from tests.conftest import REPO, require, run_mnic
from tests.linkhelp import relocate_by_hand

KINDS = ("sessions", "checkpoints", "checkpoint_store", "thinking_logs", "cost_records",
         "logs", "task_results")
BASE = PROJECT.lstrip("/")


def settle_env(seconds: float, **extra: str) -> dict[str, str]:
    env = {f"MNIC_OPS_WATCH__SETTLE_SECONDS__{k.upper()}": str(seconds) for k in KINDS}
    env["MNIC_OPS_WATCH__CHECK_SECONDS"] = "0.5"
    env.update(extra)
    return env


class Watcher:
    """``mnic-ops --json --root ROOT watch ARGS`` in a subprocess; stdout events parsed."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None,
                 verbose: bool = False, prefix: list[str] | None = None) -> None:
        e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
        e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
        e.update(env or {})
        cmd = [*(prefix or []), sys.executable, "-m", "mnic_ops", "--json",
               *(["-v"] if verbose else []), "--root", str(root), "watch", *args]
        # "Since start" is since the exec: what the test made before must be older than
        # that by more than the timestamps' granularity (coarse ctime, clock ticks).
        time.sleep(0.1)
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=e)
        self.events: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "text", "line": line}
            with self._lock:
                self.events.append(ev)

    def _read_err(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            with self._lock:
                self.err.append(line)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == kind]

    def compressed(self) -> list[str]:
        return [e["path"] for e in self.of("compressed")]

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if pred():
                return True
            if self.p.poll() is not None:
                time.sleep(0.2)  # let the readers catch up
                return pred()
            time.sleep(0.05)
        return pred()

    def ready(self, timeout: float = 60, count: int = 1) -> dict[str, Any]:
        assert self.wait_for(lambda: len(self.of("watching")) >= count, timeout), \
            f"not ready: {self.stderr()}"
        return self.of("watching")[-1]

    def stderr(self) -> str:
        with self._lock:
            return "".join(self.err)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        rc = self.p.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def host(rel: str) -> str:
    return f"{PROJECT}/{rel}"


def write(root: Path, host_path: str, data: bytes) -> Path:
    p = root / host_path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def payload(i: int, size: int = 3000) -> bytes:
    line = f'{{"i": {i}, "agent": "qa-engineer", "note": "watch test"}}\n'.encode()
    return (line * (size // len(line) + 1))[:size]


def no_temporaries(base: Path) -> list[str]:
    return [str(p) for p in base.rglob("*") if tempfiles.is_ours(p.name)]


# --- behaviour ------------------------------------------------------------------------

def test_closed_moved_new_folders_held_open_and_no_loop(fake_root: Path) -> None:
    old = make_project(fake_root, files=10)
    write_config(fake_root)
    base = fake_root / BASE
    with Watcher(fake_root, env=settle_env(0.3)) as w:
        ready = w.ready()
        assert ready["observers"] == ["inotify"]
        files = {
            host("project_archive/sessions/new.json"): payload(1),
            host(".claude/thinking-logs/core/newagent/d.json"): payload(2),  # new folder
            host(".claude/checkpoints/a/b/c/deep.json"): payload(3),  # nested new folders
        }
        for h, data in files.items():
            write(fake_root, h, data)
        # an atomic writer: temporary name, then rename
        tmp = write(fake_root, host("project_archive/sessions/.writer.tmp"), payload(4))
        os.rename(tmp, base / "project_archive/sessions/atomic.json")
        files[host("project_archive/sessions/atomic.json")] = payload(4)
        # held open: written and flushed, never closed yet
        held_path = base / "project_archive/sessions/held.json"
        held = open(held_path, "wb")  # noqa: SIM115
        held.write(payload(5))
        held.flush()
        # names the watcher must leave alone
        write(fake_root, host("project_archive/sessions/SESSION_CURRENT.md"), b"# now\n")
        write(fake_root, host("project_archive/sessions/notes.txt"), b"not a pattern\n")
        assert w.wait_for(lambda: len(w.compressed()) >= 4, 30), w.stderr()
        time.sleep(1.5)  # several settle times: nothing else may happen (no .gz loop)
        assert sorted(w.compressed()) == sorted(files), w.stderr()
        assert held_path.exists() and not Path(str(held_path) + ".gz").exists()
        held.write(b"last line\n")
        held.close()
        files[host("project_archive/sessions/held.json")] = payload(5) + b"last line\n"
        assert w.wait_for(lambda: len(w.compressed()) == 5, 30), w.stderr()
        time.sleep(1.0)
        assert w.stop() == 0, w.stderr()
    assert len(w.compressed()) == 5
    for h, data in files.items():
        plain, packed = content_of(fake_root, h)
        assert plain is None and packed == data, h
    assert not list(base.rglob("*.gz.gz"))
    assert (base / "project_archive/sessions/SESSION_CURRENT.md").read_bytes() == b"# now\n"
    assert (base / "project_archive/sessions/notes.txt").exists()
    # files that were there before the start are left to clean
    for h, data in old.items():
        if not h.endswith("SESSION_CURRENT.md"):
            assert content_of(fake_root, h) == (data, None), h
    assert not no_temporaries(base)
    ev = w.of("compressed")[0]
    assert ev["bytes_before"] > ev["bytes_after"] > 0
    assert ev["bytes_saved"] == ev["bytes_before"] - ev["bytes_after"]


def test_once_settled_catches_up_and_stale_temporaries_are_recovered(fake_root: Path) -> None:
    old = make_project(fake_root, files=10)
    write_config(fake_root)
    base = fake_root / BASE
    dead = 4_000_000
    while True:  # a PID nobody has
        try:
            os.kill(dead, 0)
            dead -= 1
        except ProcessLookupError:
            break
    stale = base / f"project_archive/sessions/.f00000.json.gz.mnic-ops-tmp.{dead}.abcd1234"
    stale.write_bytes(b"half an archive")
    env = settle_env(0.3, MNIC_OPS_WATCH__SETTLE_SECONDS__COST_RECORDS="0.3")
    with Watcher(fake_root, "--once-settled", env=env) as w:
        w.ready()
        want = {h for h in old if os.path.basename(h).startswith("f")}
        assert w.wait_for(lambda: set(w.compressed()) == want, 30), w.stderr()
        assert w.stop() == 0
    assert not stale.exists()
    assert_nothing_lost(fake_root, old)
    for h in old:
        _plain, packed = content_of(fake_root, h)
        assert (packed is not None) == (h in want), h


def test_relocated_folder_is_watched_and_links_inside_are_not_followed(
        fake_root: Path, tmp_path: Path) -> None:
    make_project(fake_root, files=0)
    base = fake_root / BASE
    shutil.rmtree(base / "project_archive/sessions")
    ssd = relocate_by_hand(fake_root, PROJECT, "project_archive/sessions",
                           "/mnt/ssd/my-name-is-claude/proj/sessions", "sessions")
    outside = tmp_path / "outside"
    outside.mkdir()
    (ssd / "elsewhere").symlink_to(outside)
    write_config(fake_root)
    with Watcher(fake_root, env=settle_env(0.2)) as w:
        ready = w.ready()
        sess = next(r for r in ready["roots"] if r["kind"] == "sessions")
        assert sess["watched"] == "/mnt/ssd/my-name-is-claude/proj/sessions"
        (outside / "victim.json").write_bytes(payload(9))
        (ssd / "on-ssd.json").write_bytes(payload(8))
        assert w.wait_for(lambda: len(w.compressed()) >= 1, 30), w.stderr()
        time.sleep(1.0)
        assert w.stop() == 0
    assert w.compressed() == [host("project_archive/sessions/on-ssd.json")]
    assert (outside / "victim.json").read_bytes() == payload(9)
    assert gzip.decompress((ssd / "on-ssd.json.gz").read_bytes()) == payload(8)


def test_relocation_target_that_appears_later_is_watched(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    base = fake_root / BASE
    shutil.rmtree(base / "project_archive/sessions")
    relocate_by_hand(fake_root, PROJECT, "project_archive/sessions",
                     "/mnt/ssd/my-name-is-claude/p/sessions", "sessions", move=False)
    write_config(fake_root)
    with Watcher(fake_root, env=settle_env(0.2)) as w:
        ready = w.ready()
        assert next(r for r in ready["roots"] if r["kind"] == "sessions")["state"] == "absent"
        ssd = fake_root / "mnt/ssd/my-name-is-claude/p/sessions"
        ssd.mkdir(parents=True)  # the SSD gets mounted / the folder created
        time.sleep(1.5)
        (ssd / "late.json").write_bytes(payload(1))
        assert w.wait_for(lambda: len(w.compressed()) == 1, 30), w.stderr()
        assert w.stop() == 0
    assert w.compressed() == [host("project_archive/sessions/late.json")]


def test_deleted_and_recreated_folder_is_watched_again(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    sessions = fake_root / BASE / "project_archive/sessions"
    with Watcher(fake_root, env=settle_env(0.2)) as w:
        w.ready()
        shutil.rmtree(sessions)
        time.sleep(1.5)  # the watcher notices it is gone
        sessions.mkdir()
        time.sleep(0.1)
        (sessions / "after.json").write_bytes(payload(1))
        assert w.wait_for(lambda: len(w.compressed()) == 1, 30), w.stderr()
        # and when it comes back between two checks, with files already inside
        shutil.rmtree(sessions)
        sessions.mkdir()
        (sessions / "quick.json").write_bytes(payload(2))
        assert w.wait_for(lambda: len(w.compressed()) == 2, 30), w.stderr()
        assert w.stop() == 0
    assert sorted(w.compressed()) == [host("project_archive/sessions/after.json"),
                                      host("project_archive/sessions/quick.json")]


def test_service_exits_for_a_restart_when_a_folder_is_recreated(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    sessions = fake_root / BASE / "project_archive/sessions"
    with Watcher(fake_root, "--service", env=settle_env(30)) as w:
        w.ready()
        (sessions / "waiting.json").write_bytes(payload(1))
        time.sleep(0.3)
        shutil.rmtree(fake_root / BASE / ".claude/thinking-logs")
        (fake_root / BASE / ".claude/thinking-logs").mkdir()
        assert w.p.wait(30) == 75, w.stderr()
        w.stop()
    assert "restarting" in w.stderr()
    # what was still settling is handed to the next start
    saved = json.loads((fake_root / "var/lib/mnic-ops/watch-pending.json").read_text())
    assert [f[0] for f in saved["files"]] == [host("project_archive/sessions/waiting.json")]


def test_files_still_settling_survive_a_restart(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    sessions = fake_root / BASE / "project_archive/sessions"
    with Watcher(fake_root, env=settle_env(3)) as w:
        w.ready()
        (sessions / "slow.json").write_bytes(payload(1))
        time.sleep(0.5)
        assert w.stop(signal.SIGINT) == 0  # ^C in the foreground: same as SIGTERM
    assert not w.compressed()
    t0 = time.time()
    with Watcher(fake_root, env=settle_env(3)) as w2:
        w2.ready()
        assert w2.wait_for(lambda: len(w2.compressed()) == 1, 30), w2.stderr()
        assert w2.stop() == 0
    assert time.time() - t0 < 10
    assert not (fake_root / "var/lib/mnic-ops/watch-pending.json").exists()


def test_sighup_reloads_the_config(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    cfg = write_config(fake_root, "[watch.settle_seconds]\nsessions = 600\n")
    sessions = fake_root / BASE / "project_archive/sessions"
    with Watcher(fake_root) as w:
        w.ready()
        (sessions / "a.json").write_bytes(payload(1))
        time.sleep(1.0)
        assert not w.compressed()
        cfg.write_text(cfg.read_text().replace("sessions = 600", "sessions = 0.2"))
        w.p.send_signal(signal.SIGHUP)
        w.ready(count=2)
        assert w.wait_for(lambda: len(w.compressed()) == 1, 30), w.stderr()
        # a broken config on reload: an error, the watcher carries on
        cfg.write_text("[watch\n")
        w.p.send_signal(signal.SIGHUP)
        assert w.wait_for(lambda: "reload failed" in w.stderr(), 30)
        (sessions / "b.json").write_bytes(payload(2))
        assert w.wait_for(lambda: len(w.compressed()) == 2, 30), w.stderr()
        assert w.stop() == 0


def test_inotify_limit_too_small_falls_back_to_polling(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    limit = fake_root / "proc/sys/fs/inotify/max_user_watches"
    limit.parent.mkdir(parents=True)
    limit.write_text("8\n")
    r = run_mnic("--root", str(fake_root), "--json", "watch", "--check")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["fits"] is False and data["inotify_watches_needed"] >= 8
    assert "/etc/sysctl.d/60-mnic-ops.conf" in data["fix"]
    assert "fs.inotify.max_user_watches = 524288" in data["fix"]
    env = settle_env(0.2, MNIC_OPS_WATCH__POLL_SECONDS="0.2")
    with Watcher(fake_root, env=env) as w:
        assert w.ready()["observers"] == ["polling"]
        assert "60-mnic-ops.conf" in w.stderr() and "polling" in w.stderr()
        (fake_root / BASE / "project_archive/sessions/p.json").write_bytes(payload(1))
        (fake_root / BASE / ".claude/checkpoints/new/q.json").parent.mkdir()
        (fake_root / BASE / ".claude/checkpoints/new/q.json").write_bytes(payload(2))
        assert w.wait_for(lambda: len(w.compressed()) == 2, 30), w.stderr()
        assert w.stop() == 0


def _userns_watch_limit(n: int) -> list[str]:
    """Run the watcher in a user namespace whose inotify watch limit is ``n``: the
    kernel's own ENOSPC, without touching this machine's sysctl."""
    require("root")
    if not shutil.which("unshare"):
        pytest.skip("unshare not installed")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                            "echo 5 > /proc/sys/user/max_inotify_watches"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip("no per-user-namespace inotify limits here")
    return ["unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo {n} > /proc/sys/user/max_inotify_watches && exec "$0" "$@"']


@pytest.mark.parametrize("limit", [5, 14])
def test_kernel_watch_limit_hit_falls_back_to_polling(fake_root: Path, limit: int) -> None:
    """5: too few for the 10 folders at start; 14: enough at start, exhausted by new
    folders later (the observer thread dies with ENOSPC)."""
    make_project(fake_root, files=0)
    write_config(fake_root)
    prefix = _userns_watch_limit(limit)
    env = settle_env(0.2, MNIC_OPS_WATCH__POLL_SECONDS="0.2")
    base = fake_root / BASE
    with Watcher(fake_root, env=env, prefix=prefix) as w:
        w.ready()
        for i in range(8):
            d = base / f".claude/thinking-logs/core/agent{i}"
            d.mkdir()
            (d / "t.json").write_bytes(payload(i))
        assert w.wait_for(lambda: len(w.compressed()) == 8, 60), w.stderr()
        assert w.wait_for(lambda: "falling back to polling" in w.stderr(), 30)
        # a folder inotify could not take is still served (now by polling)
        (base / ".claude/thinking-logs/core/agent7/second.json").write_bytes(payload(9))
        (base / "project_archive/sessions/later.json").write_bytes(payload(10))
        assert w.wait_for(lambda: len(w.compressed()) == 10, 30), w.stderr()
        assert w.stop() == 0, w.stderr()
    err = w.stderr()
    assert "falling back to polling" in err and "60-mnic-ops.conf" in err, err
    assert "Traceback" not in err


def test_sigterm_while_compressing_a_large_file(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    sessions = fake_root / BASE / "project_archive/sessions"
    chunk = b"".join(b'{"step": %d, "thought": "weighing the options again"}\n' % i
                     for i in range(20000))
    h = hashlib.sha256()
    with Watcher(fake_root, env=settle_env(0)) as w:
        w.ready()
        with open(sessions / "big.json", "wb") as fh:
            for _ in range(120):  # about 120 MB
                fh.write(chunk)
                h.update(chunk)
        deadline = time.time() + 60
        while time.time() < deadline and not any(
                n.startswith(".big.json.gz.mnic-ops-tmp") for n in os.listdir(sessions)):
            time.sleep(0.005)
        assert time.time() < deadline, w.stderr()
        time.sleep(0.1)
        assert w.stop() == 0, w.stderr()
    big, gz = sessions / "big.json", sessions / "big.json.gz"
    if big.exists():
        assert not gz.exists()
        assert hashlib.sha256(big.read_bytes()).hexdigest() == h.hexdigest()
        assert "rolled back" in w.stderr()
        print("rolled back")
    else:
        print("finished")
        with gzip.open(gz) as fh:
            d = hashlib.sha256()
            while c := fh.read(1 << 20):
                d.update(c)
        assert d.hexdigest() == h.hexdigest()
    assert not no_temporaries(sessions)


@pytest.mark.slow
def test_burst_of_10k_files_all_compressed_none_twice(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    base = fake_root / BASE
    dirs = [base / ".claude/thinking-logs/core" / f"agent{i}" for i in range(4)]
    with Watcher(fake_root, env=settle_env(0.5)) as w:
        w.ready()
        written: dict[str, bytes] = {}
        for i in range(10_000):
            d = dirs[i % len(dirs)]
            if i < len(dirs):
                d.mkdir()
            data = payload(i, 1500)
            (d / f"{i:05d}.json").write_bytes(data)
            written[f"{PROJECT}/.claude/thinking-logs/core/{d.name}/{i:05d}.json"] = data
        assert w.wait_for(lambda: len(w.compressed()) >= 10_000, 240), \
            (len(w.compressed()), w.stderr()[-2000:])
        time.sleep(1.0)
        assert w.stop() == 0
    got = w.compressed()
    assert len(got) == len(set(got)) == 10_000
    assert set(got) == set(written)
    for h, data in written.items():
        assert content_of(fake_root, h) == (None, data), h
    assert not no_temporaries(base)


@pytest.mark.slow
def test_clean_and_watch_at_once(fake_root: Path) -> None:
    old = make_project(fake_root, files=200)
    write_config(fake_root)
    base = fake_root / BASE
    aged = time.time() - 10 * DAY
    files = dict(old)
    clean_counts: list[int] = []
    stop = threading.Event()

    def cleaner() -> None:
        while not stop.is_set():
            r = run_mnic("--root", str(fake_root), "--json", "clean")
            assert r.code == 0, r.err
            t = json.loads(r.out)["totals"]
            clean_counts.append(t["compressed"] + t["finished"])
            assert t["failed"] == 0

    with Watcher(fake_root, env=settle_env(0.1)) as w:
        w.ready()
        th = threading.Thread(target=cleaner)
        th.start()
        try:
            for i in range(300):
                rel = ("project_archive/sessions" if i % 2 else
                       ".claude/thinking-logs/core/arch") + f"/w{i:04d}.json"
                data = payload(i, 2000 + i)
                p = write(fake_root, host(rel), data)
                os.utime(p, (aged, aged))  # clean wants it too
                files[host(rel)] = data
                if i % 50 == 0:
                    time.sleep(0.3)
        finally:
            stop.set()
            th.join(300)
        # the watcher finishes what it has, then one last clean pass the rest
        time.sleep(2.0)
        assert w.stop() == 0, w.stderr()
    r = run_mnic("--root", str(fake_root), "--json", "clean")
    assert r.code == 0, r.err
    t = json.loads(r.out)["totals"]
    clean_counts.append(t["compressed"] + t["finished"])
    assert len(clean_counts) >= 2
    watched = w.compressed()
    print("watch compressed", len(watched), "clean passes", clean_counts,
          "lock waits", w.stderr().count("holds the lock"))
    assert len(watched) == len(set(watched))
    compressible = [h for h in files if os.path.basename(h).startswith(("f", "w"))]
    # every file compressed exactly once, by one of them
    assert len(watched) + sum(clean_counts) == len(compressible), (len(watched), clean_counts)
    assert_nothing_lost(fake_root, files)
    for h in compressible:
        assert content_of(fake_root, h)[0] is None, h
    assert not list(base.rglob("*.gz.gz"))
    assert not no_temporaries(base)


def test_bad_input_is_reported_without_a_traceback(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit", "--remove-unit")
    assert r.code == 2 and "not both" in r.err
    r = run_mnic("--root", str(fake_root), "watch", "nosuchproject")
    assert r.code == 2 and "nosuchproject" in r.err and "Traceback" not in r.err
    r = run_mnic("--root", str(fake_root), "watch", "--check",
                 env={"MNIC_OPS_WATCH__SETTLE_SECONDS__SESSIONS": "-1"})
    assert r.code == 2 and "settle_seconds" in r.err
