"""``mnic-ops status`` (issue 16 item 3): each state built under a ``--root`` host tree
(healthy; last pass failed; watcher stalled; interrupted move; drift; relocated data,
and its target gone), checked in text, JSON and exit code; read-only; bounded sizes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import datasize, passstate
from tests.conftest import Result, run_mnic
from tests.fsenv import diff_snapshots, snapshot
from tests.hosttree import PROJECT, build_host, pending_journal, watch_state


def status(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Result, Any]:
    """Text and JSON of one state, with the same exit code."""
    text = run_mnic("--root", str(root), "status", *args, env=env)
    js = run_mnic("--root", str(root), "status", "--json", *args, env=env)
    assert "Traceback" not in text.err + js.err, text.err + js.err
    assert text.code == js.code, (text.code, js.code)
    return text, json.loads(js.out)


def health(doc: dict[str, Any]) -> dict[str, str]:
    return {k: doc[k]["health"] for k in ("config", "host", "installs", "last_pass",
                                          "watcher", "cron", "pending_moves", "drift",
                                          "journal")}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned host (data relocated to the SSD folder, cron jobs, watcher unit)
    after one clean pass; each test works on its own copy."""
    root = build_host(tmp_path_factory.mktemp("status") / "host")
    for cmd in (["provision"], ["clean"]):
        r = run_mnic("--root", str(root), *cmd)
        assert r.code == 0, r.out + r.err
    return root


@pytest.fixture
def host(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "host"
    shutil.copytree(template, root, symlinks=True)
    # links made by relocate are absolute host paths: still right in the copy; the
    # journals and records name real paths under the template, which the copy keeps
    for p in (root / "var/lib/mnic-ops").rglob("*.json*"):
        p.write_text(p.read_text().replace(str(template), str(root)))
    return root


def test_healthy(host: Path) -> None:
    r, doc = status(host)
    assert r.code == 0, r.out + r.err
    assert doc["ok"] is True and doc["healthy"] is True and doc["problems"] == []
    assert set(health(doc).values()) == {"ok"}, health(doc)
    assert doc["host"]["class"] == "server" and doc["host"]["source"] == "override"
    assert doc["cron"]["installed"] and all(j["next_run"] for j in doc["cron"]["jobs"])
    assert doc["watcher"]["unit"] == {"file": "/etc/systemd/system/mnic-ops-watch.service",
                                      "installed": True, "enabled": True, "active": None}
    assert doc["drift"]["drift"] == 0 and doc["pending_moves"]["pending"] == []
    assert doc["last_pass"]["record"]["ok"] is True
    assert doc["journal"]["entries"] >= 5 and len(doc["journal"]["last"]) == 5
    lines = r.out.splitlines()
    assert lines[-1] == "status: healthy"
    assert any(ln.startswith("ok   host       server (override") for ln in lines), r.out
    assert any(ln.startswith("ok   last pass  clean ") and ": ok, compressed" in ln
               for ln in lines), r.out
    assert "\x1b[" not in r.out  # no colour off a terminal


def test_relocated_install_sizes_and_compressed_share(host: Path) -> None:
    _r, doc = status(host)
    [inst] = doc["installs"]["items"]
    assert inst["root"] == PROJECT and inst["user"] == "root"
    assert set(inst["relocated"]) == {"sessions", "checkpoints", "checkpoint_store"}
    target = inst["relocated"]["sessions"]
    assert target.startswith("/mnt/ssd/mnic/proj-") and target.endswith("/sessions")
    # the sizes are those of the data where it is now, counted here independently
    for kind in ("sessions", "claude_sessions", "thinking_logs"):
        d = inst["data"][kind]
        real = host / (d.get("target") or d["path"]).lstrip("/")
        names = [n for _p, _d, fs in os.walk(real) for n in fs]
        gz = [n for n in names if n.endswith(".gz")]
        assert (d["files"], d["compressed_files"]) == (len(names), len(gz)), kind
        assert d["bytes"] == sum(os.path.getsize(os.path.join(p, n))
                                 for p, _d, fs in os.walk(real) for n in fs)
        assert d["complete"] is True
    sess = inst["data"]["sessions"]
    assert sess["location"] == "relocated" and 0 < sess["compressed_share"] < 1
    assert inst["total"]["files"] == sum(d.get("files", 0) for d in inst["data"].values())
    r = run_mnic("--root", str(host), "status")
    assert f"-> {target}" in r.out and "% gzip" in r.out


def test_relocated_target_gone_is_a_failure(host: Path) -> None:
    _r, doc = status(host)
    target = doc["installs"]["items"][0]["relocated"]["sessions"]
    shutil.rmtree(host / target.lstrip("/"))  # the SSD folder is gone (not mounted?)
    r, doc = status(host)
    assert r.code == 1
    d = doc["installs"]["items"][0]["data"]["sessions"]
    assert d["unreachable"] is True and d["location"] == "absent" and "bytes" not in d
    assert doc["installs"]["health"] == "failed"
    assert "installs" in [p["part"] for p in doc["problems"]]
    assert "UNREACHABLE" in r.out and r.out.splitlines()[-1].startswith("status: FAILED")


def test_last_pass_failed(host: Path) -> None:
    passstate.record(HostRoot(host), {"started": 1.0, "finished": 2.0, "only": "expire",
                                      "duration_seconds": 1.0, "exit_code": 1, "ok": False,
                                      "totals": {"failed": 3}, "projects": [],
                                      "failed_installs": []})
    r, doc = status(host)
    assert r.code == 1 and doc["healthy"] is False
    assert [p["part"] for p in doc["problems"]] == ["last_pass"]
    assert doc["last_pass"]["record"]["exit_code"] == 1
    assert "FAIL last pass  clean --only expire" in r.out and "FAILED (exit 1)" in r.out
    assert r.out.splitlines()[-1] == "status: FAILED: last_pass"


@pytest.mark.parametrize(("age", "state", "observers", "want", "code"), [
    (5, "running", None, "running", 0),
    (600, "running", None, "stalled", 1),  # no heartbeat for 10 min
    (5, "running", {"inotify": "dead", "polling": None}, "stalled", 1),
    (5, "stopped", None, "stopped", 1),  # stopped while its unit is enabled
])
def test_watcher(host: Path, age: float, state: str, observers: dict[str, Any] | None,
                 want: str, code: int) -> None:
    watch_state(host, heartbeat_age=age, state=state, observers=observers)
    r, doc = status(host)
    w = doc["watcher"]
    assert r.code == code and w["status"] == want, (r.out, w)
    assert w["running"] is (want == "running")
    assert (w["files_done"], w["backlog"], w["bytes_saved"]) == (41, 3, 123456)
    if want == "running":
        assert w["health"] == "ok" and "41 file(s) compressed, backlog 3" in r.out
    else:
        assert w["health"] == "failed" and "watcher" in [p["part"] for p in doc["problems"]]
        assert f"FAIL watcher    {want}" in r.out


def test_watcher_stopped_without_its_unit_is_no_failure(host: Path) -> None:
    (host / "etc/systemd/system/multi-user.target.wants/mnic-ops-watch.service").unlink()
    watch_state(host, heartbeat_age=5, state="stopped")
    r, doc = status(host)
    assert doc["watcher"]["unit"]["enabled"] is False and doc["watcher"]["health"] == "ok"
    assert "ok   watcher    stopped: " in r.out and "unit installed, not enabled" in r.out
    # the link provision made is gone: that is drift, not a watcher failure
    assert [p["part"] for p in doc["problems"]] == ["drift"], doc["problems"]


def test_pending_journal(host: Path) -> None:
    move = pending_journal(host)
    r, doc = status(host)
    assert r.code == 1
    [pm] = doc["pending_moves"]["pending"]
    assert pm["id"] == move and pm["project"] == PROJECT
    assert doc["pending_moves"]["health"] == "failed"
    assert f"FAIL relocate   1 interrupted move(s): {move}" in r.out


def test_drift_is_verifys_count(host: Path) -> None:
    (host / "etc/cron.d/mnic-ops").unlink()
    cfg = host / PROJECT.lstrip("/") / ".claude/config/mnic-ops-performance.json"
    cfg.write_text(cfg.read_text().replace("10", "11"))
    r, doc = status(host)
    assert r.code == 1
    v = json.loads(run_mnic("--root", str(host), "verify", "--json").out)
    assert doc["drift"]["drift"] == v["drift"] == 2, doc["drift"]
    assert doc["drift"]["counts"] == v["counts"]
    assert {i["id"] for i in doc["drift"]["items"]} == {
        "file:/etc/cron.d/mnic-ops", f"file:{PROJECT}/.claude/config/mnic-ops-performance.json"}
    assert "FAIL drift      2 item(s) not as provisioned" in r.out
    assert doc["cron"]["installed"] is False and doc["cron"]["health"] == "warn"


def test_never_provisioned_host_warns_and_drift_after_provision_fails(tmp_path: Path
                                                                        ) -> None:
    """Before provision ever ran, what verify finds is provision's work to do: a warning
    that says so, not a failure; once provision ran, the same finding is drift."""
    root = build_host(tmp_path / "host")
    r, doc = status(root)
    d = doc["drift"]
    assert d["health"] == "warn" and d["provisioned"] is False and d["drift"] >= 1, d
    assert "not provisioned yet" in d["summary"] and "provision --check" in d["summary"]
    assert not any(p["part"] == "drift" for p in doc["problems"])
    assert "warn drift" in r.out.lower() or "not provisioned yet" in r.out, r.out
    assert run_mnic("--root", str(root), "provision").code == 0
    (root / "etc/cron.d/mnic-ops").unlink()
    r, doc = status(root)
    assert doc["drift"]["health"] == "failed" and "provisioned" not in doc["drift"]
    assert r.code == 1


def test_a_part_that_cannot_be_read_says_why_and_the_rest_shows(host: Path) -> None:
    journal = host / "var/lib/mnic-ops/journal.jsonl"
    journal.unlink()
    journal.mkdir()  # not a file any more
    (host / "var/lib/mnic-ops/clean-last.json").chmod(0o666)  # not mnic-ops's own
    r, doc = status(host)
    assert doc["journal"]["health"] == "unknown" and doc["journal"]["error"]
    assert doc["last_pass"]["health"] == "unknown"
    assert "not usable" in doc["last_pass"]["summary"]
    assert doc["drift"]["health"] == "ok" and doc["installs"]["health"] == "ok"
    assert r.code == 0 and "?    journal    cannot be read" in r.out  # unknown is no failure


def test_status_is_read_only(host: Path) -> None:
    def snap() -> dict[str, tuple[Any, ...]]:
        # file atimes aside: reading is what status does
        return {k: (v[:5] + v[6:] if v[0] == "f" else v) for k, v in snapshot(host).items()}

    before = snap()
    watch_state(host, heartbeat_age=5)
    before = snap()
    status(host)
    assert diff_snapshots(before, snap()) == []


def test_colour_only_when_asked(host: Path) -> None:
    r = run_mnic("--root", str(host), "--color", "always", "status")
    assert "\x1b[32m" in r.out
    r = run_mnic("--root", str(host), "--color", "auto", "status", env={"NO_COLOR": "1"})
    assert "\x1b[" not in r.out


def test_no_installs_no_config(fake_root: Path) -> None:
    r, doc = status(fake_root)
    assert doc["installs"]["items"] == [] and doc["config"]["loaded"] is False
    # nothing to warn about without installs (drift is provision's plan for the host)
    assert {k: h for k, h in health(doc).items() if k != "drift"} == dict.fromkeys(
        ("config", "host", "installs", "last_pass", "watcher", "cron", "pending_moves",
         "journal"), "ok")
    assert "no framework installs found" in r.out


# --- bounded sizes -------------------------------------------------------------------------

def _tree(base: Path, n: int) -> Path:
    for i in range(n):
        d = base / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / (f"f{i}.json.gz" if i % 4 == 0 else f"f{i}.json")).write_bytes(b"x" * (i % 50))
    return base


def test_sizes_are_exact_within_the_budget_and_lower_bounds_beyond(tmp_path: Path) -> None:
    top = _tree(tmp_path / "t", 1000)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        full = datasize.measure_fd(fd, datasize.Budget())
        assert (full.files, full.compressed_files, full.complete) == (1000, 250, True)
        assert full.bytes == sum(i % 50 for i in range(1000))
        assert full.compressed_share == 0.25
        small = datasize.Budget(files=300)
        part = datasize.measure_fd(fd, small)
        assert part.complete is False and part.files < 300 and small.spent
        # the budget is the run's: a second folder gets nothing once it is spent
        again = datasize.measure_fd(fd, small)
        assert again.complete is False and again.files == 0
        late = datasize.measure_fd(fd, datasize.Budget(seconds=0.0))
        assert late.complete is False and late.files < 1000
    finally:
        os.close(fd)


def test_symlinks_in_a_data_folder_are_not_followed(tmp_path: Path) -> None:
    top = _tree(tmp_path / "t", 10)
    outside = _tree(tmp_path / "outside", 100)
    (top / "link").symlink_to(outside)
    (top / "d0" / "file-link").symlink_to(outside / "d0" / "f0.json.gz")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert datasize.measure_fd(fd, datasize.Budget()).files == 10
    finally:
        os.close(fd)
