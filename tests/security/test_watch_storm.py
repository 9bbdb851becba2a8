"""Attack 5 of issue 15: a data owner storms the watcher.

A real plain user swaps her data subfolders with symlinks to a root-only folder
(renameat2 RENAME_EXCHANGE, in a loop) while root's watcher runs with -v. The watcher
must not watch, list or name anything in that folder, must survive the queue
overflows, poll the storming folder from then on (and say so), and keep compressing:
new files are compressed within their settle time plus a few seconds of the storm's
end, and the service's liveness record shows it working, not only alive.

The observer-death tests kill (or stall) the observer thread inside a real watcher
process, through a small driver that patches one method before running mnic-ops.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import watchstate
from tests.capabilities.test_watch import Watcher, payload, settle_env
from tests.cleanhelp import PROJECT, make_project, write_config
from tests.conftest import require
from tests.security.stormhelp import (
    chown_tree,
    inotify_watches,
    plain_user,
    reachable_tmp,
    start_storm,
    stop_storm,
    user_python,
)

SETTLE = 2.0  # settle time of every class in these tests
POLL = 1.0  # the polling observer's interval
GRACE = 6.0  # "a few seconds" beyond the settle time
PAIRS = 12  # folder/link pairs the user swaps
MAX_STORM = 40.0  # the storm stops at the latest after this long
VAULT_DIRS = (30, 30)  # the root-only folder: 30 folders of 30 folders, a file in each


def _state(root: Path) -> dict[str, Any] | None:
    return watchstate.read(HostRoot.open(root))


def _host(root: Path) -> tuple[Path, Path, Path]:
    """A host root with alice's install and a root-only vault; (root, install, vault)."""
    root = root / "host"
    for d in ("etc", "proc", "sys", "run", "var/lib", "home", "srv"):
        (root / d).mkdir(parents=True)
    make_project(root, files=3)
    write_config(root)
    return root, root / PROJECT.lstrip("/"), root / "srv/vault"


def _vault(vault: Path, token: str) -> None:
    a, b = VAULT_DIRS
    for i in range(a):
        for j in range(b):
            d = vault / f"VAULTDIR-{token}-{i}" / f"sub{j}"
            d.mkdir(parents=True)
            (d / f"TOPSECRET-{token}-{i}-{j}.json").write_bytes(b'{"k": 1}\n')
    os.chmod(vault, 0o700)


@pytest.mark.slow
def test_rename_exchange_storm_is_survived_without_leaking_names() -> None:
    require("root")
    token = secrets.token_hex(6)
    with reachable_tmp() as top, plain_user() as (_name, uid, gid):
        root, base, vault = _host(top)
        _vault(vault, token)
        core = base / ".claude/thinking-logs/core"
        for i in range(PAIRS):
            (core / f"d{i}/sub").mkdir(parents=True)
            (core / f"l{i}").symlink_to(vault)  # she can point a link anywhere
        chown_tree(root / "home/alice", uid, gid)
        user_dirs = sum(1 for _ in os.walk(base))  # links are not walked
        python = user_python(uid, gid)
        env = settle_env(SETTLE, MNIC_OPS_WATCH__POLL_SECONDS=str(POLL))
        with Watcher(root, "--service", env=env, verbose=True) as w:
            w.ready()
            before = _state(root)
            assert before is not None and before["state"] == "running", w.stderr()
            storm = start_storm(python, uid, gid, core, PAIRS, MAX_STORM)
            t0 = time.time()
            peak = writes = 0
            polled: list[dict[str, Any]] = []
            try:
                while time.time() - t0 < MAX_STORM and storm.poll() is None:
                    peak = max(peak, inotify_watches(w.p.pid))
                    # root keeps writing in its vault: a watched vault would name these
                    d = vault / f"VAULTDIR-{token}-{writes % VAULT_DIRS[0]}/sub0"
                    (d / f"TOPSECRET-{token}-w{writes}.json").write_bytes(b"{}\n")
                    writes += 1
                    polled = [e for e in w.of("polling")
                              if str(e.get("path", "")).endswith(".claude/thinking-logs")]
                    if polled:
                        break
                    time.sleep(0.05)
            finally:
                swaps, failed = stop_storm(storm)
            storm_end = time.time()
            overflows = w.of("overflow")
            print(f"storm: {swaps} exchanges ({failed} failed) as uid {uid} over "
                  f"{storm_end - t0:.1f}s; {len(overflows)} overflow report(s); folder "
                  f"polled after {polled[0]['time'] - t0:.1f}s" if polled else
                  "folder never polled", f"; peak inotify watches {peak} (user tree "
                  f"{user_dirs} folders); {writes} vault writes by root")
            assert polled, f"the storming folder was not moved to polling: {w.stderr()[-3000:]}"
            assert overflows, w.stderr()[-3000:]
            assert peak <= user_dirs + 2, (peak, user_dirs)

            # new files, in the stormed (now polled) folder and in an inotify one
            new = [core / "d0/after-storm.json", core / "d5/sub/after-storm.json",
                   base / "project_archive/sessions/after-storm.json"]
            for i, p in enumerate(new):
                p.write_bytes(payload(i))
                os.chown(p, uid, gid)
            written = time.time()
            done = w.wait_for(lambda: all(Path(f"{p}.gz").exists() for p in new),
                              SETTLE + GRACE)
            took = time.time() - written
            print(f"new files compressed {took:.1f}s after they were written "
                  f"({written - storm_end:.1f}s after the storm; settle {SETTLE:g}s)")
            assert done, (took, [str(p) for p in new if not Path(f"{p}.gz").exists()],
                          w.stderr()[-3000:])

            # really working, not just alive: the record moves and says why
            time.sleep(2 * (_state(root) or {}).get("heartbeat_seconds", 3))
            now = _state(root)
            assert now is not None
            assert watchstate.assess(now)[0] == "running", (now, w.stderr()[-2000:])
            assert now["heartbeat"] > before["heartbeat"]
            assert now["events"] > before["events"]
            assert now["compressed"] >= len(new)
            assert now["overflows"] >= 1 and now["polled_after_storm"] >= 1
            assert now["folders"]["polling"] >= 1 and now["folders"]["inotify"] >= 1
            assert now["observers"] == {"inotify": "running", "polling": "running"}
            later = core / "d3/later.json"
            later.write_bytes(payload(9))
            assert w.wait_for(lambda: Path(f"{later}.gz").exists(), SETTLE + GRACE), \
                w.stderr()[-2000:]
            assert w.stop() == 0, w.stderr()[-2000:]
        stopped = _state(root)
        assert stopped is not None and watchstate.assess(stopped)[0] == "stopped"
        out = json.dumps(w.events) + w.stderr()
        assert token not in out, [line for line in out.splitlines() if token in line][:5]
        assert "Traceback" not in w.stderr()
        # nothing of the vault was touched
        assert not list(vault.rglob("*.gz"))


@pytest.mark.slow
def test_polling_never_lists_through_a_swapped_link() -> None:
    """The fallback must hold too: with every folder polled (network filesystems,
    --poll), the same storm never gets the vault listed (the snapshot used to lstat a
    folder and then list whatever the name was a moment later)."""
    require("root")
    token = secrets.token_hex(6)
    storm_seconds = 8.0
    with reachable_tmp() as top, plain_user() as (_name, uid, gid):
        root, base, vault = _host(top)
        _vault(vault, token)
        core = base / ".claude/thinking-logs/core"
        for i in range(PAIRS):
            (core / f"d{i}/sub").mkdir(parents=True)
            (core / f"l{i}").symlink_to(vault)
        chown_tree(root / "home/alice", uid, gid)
        env = settle_env(SETTLE, MNIC_OPS_WATCH__POLL_SECONDS="0.2")
        with Watcher(root, "--poll", env=env, verbose=True) as w:
            assert w.ready()["observers"] == ["polling"]
            storm = start_storm(user_python(uid, gid), uid, gid, core, PAIRS, storm_seconds)
            try:
                t0, writes = time.time(), 0
                while storm.poll() is None and time.time() - t0 < storm_seconds + 5:
                    d = vault / f"VAULTDIR-{token}-{writes % VAULT_DIRS[0]}/sub1"
                    (d / f"TOPSECRET-{token}-p{writes}.json").write_bytes(b"{}\n")
                    writes += 1
                    time.sleep(0.02)
            finally:
                swaps, failed = stop_storm(storm)
            polls = (time.time() - t0) / 0.2
            print(f"polling storm: {swaps} exchanges ({failed} failed) over "
                  f"{time.time() - t0:.1f}s, about {polls:.0f} snapshots, {writes} vault "
                  "writes by root")
            after = core / "d1/after.json"
            after.write_bytes(payload(1))
            assert w.wait_for(lambda: Path(f"{after}.gz").exists(), SETTLE + GRACE), \
                w.stderr()[-2000:]
            assert w.stop() == 0
        out = json.dumps(w.events) + w.stderr()
        assert token not in out, [line for line in out.splitlines() if token in line][:5]
        assert not list(vault.rglob("*.gz"))


# --- the observer thread dies, or stalls ---------------------------------------------------

DRIVER = r"""
import os, sys, threading
from mnic_ops.capabilities import watchdaemon, watchobservers
fault, trigger = os.environ["WATCHFS_FAULT"], os.environ["WATCHFS_TRIGGER"]
fired = []

def armed():
    if fired or not os.path.exists(trigger):
        return False
    fired.append(1)
    return True

if fault == "inotify-dies":
    from mnic_ops.engines import treewatch
    parse = treewatch.TreeWatch._parse
    def _parse(self, data):
        if armed():
            raise RuntimeError("injected: the inotify reader dies")
        return parse(self, data)
    treewatch.TreeWatch._parse = _parse
elif fault == "inotify-stalls":
    from mnic_ops.engines import treewatch
    watchobservers.READER_STALL = 2.0
    read = treewatch.TreeWatch._read
    def _read(self):
        if armed():
            threading.Event().wait()  # never returns
        return read(self)
    treewatch.TreeWatch._read = _read
elif fault == "polling-dies":
    listdir = watchdaemon.Daemon._listdir
    def _listdir(self, path):
        if armed():
            raise RuntimeError("injected: the polling emitter dies")
        return listdir(self, path)
    watchdaemon.Daemon._listdir = _listdir
from mnic_ops.cli import main
sys.argv = ["mnic-ops", *sys.argv[4:]]  # after: python -m mnic_ops
main(sys.argv[1:])
"""


@pytest.mark.parametrize("fault", ["inotify-dies", "inotify-stalls", "polling-dies"])
def test_observer_death_or_stall_is_recovered(tmp_path: Path, fault: str) -> None:
    root = tmp_path / "host"
    for d in ("etc", "proc", "sys", "run", "var/lib", "home"):
        (root / d).mkdir(parents=True)
    make_project(root, files=0)
    write_config(root)
    base = root / PROJECT.lstrip("/")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    trigger = tmp_path / "trigger"
    env = settle_env(0.5, MNIC_OPS_WATCH__POLL_SECONDS="0.5", WATCHFS_FAULT=fault,
                     WATCHFS_TRIGGER=str(trigger))
    args = ["--service", *(["--poll"] if fault.startswith("polling") else [])]
    sessions = base / "project_archive/sessions"
    with Watcher(root, *args, env=env, prefix=[sys.executable, str(driver)]) as w:
        w.ready()
        (sessions / "before.json").write_bytes(payload(1))
        assert w.wait_for(lambda: len(w.compressed()) == 1, 20), w.stderr()
        trigger.touch()
        (sessions / "during.json").write_bytes(payload(2))
        t0 = time.time()
        assert w.wait_for(lambda: bool(w.of("observer_restart")), 30), w.stderr()
        restart = w.of("observer_restart")[0]
        print(f"{fault}: restarted {restart['time'] - t0:.1f}s after the fault: "
              f"{restart['reason']}")
        (sessions / "after.json").write_bytes(payload(3))
        (base / ".claude/checkpoints/new-folder").mkdir()
        (base / ".claude/checkpoints/new-folder/after.json").write_bytes(payload(4))
        assert w.wait_for(lambda: len(w.compressed()) == 4, 20), w.stderr()
        state = _state(root)
        assert state is not None and state["observer_restarts"] >= 1
        assert watchstate.assess(state)[0] == "running", state
        assert w.stop() == 0, w.stderr()
    assert sorted(os.path.basename(p) for p in w.compressed()) == \
        ["after.json", "after.json", "before.json", "during.json"]
    assert "restarting the observers" in w.stderr()
    assert "Traceback" not in w.stderr()


def test_an_observer_that_keeps_dying_is_restarted_ever_more_slowly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cause that persists (a config value that kills the thread at once, a user who
    keeps breaking it) must not make the watcher spin: 3 restarts at once, then
    2, 4, 8 ... seconds apart, at most 5 minutes; the window forgets old restarts."""
    from mnic_ops.capabilities import watchobservers
    from mnic_ops.capabilities.watchdaemon import Daemon
    from mnic_ops.core.app import AppContext

    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    make_project(root, files=0)
    write_config(root)
    d = Daemon(AppContext(root=HostRoot.open(root), config_path=None), (),
               poll=False, once_settled=False, service=False)
    d.roots = []
    clock = [1000.0]
    delays = []
    monkeypatch.setattr(watchobservers.time, "time", lambda: clock[0])
    for _ in range(12):
        d._restart_observers("the observer died")
        delays.append(0.0 if d.restart_at is None else d.restart_at - clock[0])
        if d.restart_at is not None:
            clock[0] = d.restart_at
            d._restart_observers(d.restart_why)  # the loop comes back when due
        assert d.restart_at is None
    assert delays == [0, 0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 300], delays
    clock[0] += watchobservers.RESTART_WINDOW + 1
    d._restart_observers("much later")
    assert d.restart_at is None  # old restarts no longer count
    assert d.restart_count == 13
