"""The framework's own code is the client (issue 14).

For v3.10.0 and v3.3.0, with and without ``.claude/config/``: install the framework with
its copy script, make it used with its own classes as a plain uid (data back-dated by
running the framework on a clock that is N days behind), then after every mnic-ops
operation ask the framework's code what it can still read: every checkpoint it lists
is readable and can be rolled back (dry run), its histories, coordinator state, cost
records and task results are what they were minus what the declared retention expired,
nothing it reads by name was gzipped, and its config loaders load the rendered files
without a warning.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.framework.fwhelp import (
    DAY,
    Host,
    Install,
    framework_view,
    gzipped_read_back,
    host,
    index_problems,
    install,
    plain_user,
)

pytestmark = pytest.mark.root

VARIANTS = [("v3.10.0", True), ("v3.10.0", False), ("v3.3.0", True), ("v3.3.0", False)]
IDS = [f"{v}-{'config' if c else 'no-config'}" for v, c in VARIANTS]

# What the framework's config declares (v3.10.0 .claude/config/checkpoint-config.json)
# and what its code falls back to without one (CheckpointEngine._get_default_config).
DAYS_CONFIG = {"agent_execution": 7, "quality_gate": 14, "commit_preparation": 30,
               "manual": 90}
DAYS_DEFAULT = {"manual": 90}


def log_name(days: float, decision: str) -> str:
    t = dt.datetime.fromtimestamp(time.time() - days * DAY)
    return f"{t:%Y-%m-%d-%H%M%S}-{decision}.json"


def spec(with_code: bool) -> dict[str, Any]:
    """Data at ages either side of every declared limit."""
    logs = {d: log_name(d, f"decision-{int(d)}") for d in (95, 85, 10, 3)}
    files: dict[str, Any] = {
        "project_archive/sessions/SESSION_CURRENT.md": {"text": "# now\n", "age_days": 20},
        "project_archive/sessions/SESSION_TODOS.md": {"text": "- [ ] a\n", "age_days": 20},
        "project_archive/sessions/SESSION_SUMMARY_2025-01-01.md": {"text": "# s\n" * 50,
                                                                    "age_days": 20},
        "project_archive/sessions/session_a.json": {"text": '{"h": 1}', "age_days": 20},
        "project_archive/sessions/SESSION_SUMMARY_recent.md": {"text": "# r\n",
                                                               "age_days": 1},
        ".claude/sessions/SESSION_STATE.md": {"text": "# state\n", "age_days": 20},
        ".claude/sessions/notes.md": {"text": "# notes\n" * 20, "age_days": 20},
        ".claude/checkpoints/manual/cp-spec.json": {"text": '{"spec": 1}', "age_days": 20},
    }
    for d, name in logs.items():
        files[f".claude/thinking-logs/core/software-architect/{name}"] = {
            "text": json.dumps({"agent": "software-architect", "decision": {"c": 0.9}}),
            "age_days": d}
    files[".claude/thinking-logs/index.json"] = {"text": json.dumps({"logs": [
        {"path": f".claude/thinking-logs/core/software-architect/{n}", "agent":
         "software-architect"} for n in logs.values()]}, indent=2), "age_days": 20}
    out: dict[str, Any] = {"files": files}
    if with_code:
        out["checkpoints"] = [
            {"how": "coordinator", "agent": "backend-engineer", "age_days": 8},
            {"how": "coordinator", "agent": "frontend-engineer", "age_days": 6},
            {"how": "trigger", "agent": "data-engineer", "age_days": 1},
            {"how": "gate", "age_days": 15}, {"how": "gate", "age_days": 13},
            {"how": "engine", "level": "commit_preparation", "age_days": 31},
            {"how": "engine", "level": "commit_preparation", "age_days": 29},
            {"how": "engine", "level": "manual", "age_days": 91},
            {"how": "engine", "level": "manual", "age_days": 89},
            {"how": "engine", "level": "manual", "age_days": 0}]
        out["cost"] = [{"age_days": a} for a in (100, 92, 88, 0.5, 0)]
        out["tasks"] = [{"age_days": a} for a in (10, 8, 6, 1)]
    return out


def age_days(ts: str) -> float:
    return (time.time() - dt.datetime.fromisoformat(ts).timestamp()) / DAY


def expected_expiry(seen: dict[str, Any], with_config: bool) -> dict[str, set[str]]:
    """The declared rules applied to what the framework itself says (its recorded times)."""
    days = DAYS_CONFIG if with_config else DAYS_DEFAULT
    cps = {cid for cid, c in seen.get("checkpoints", {}).items()
           if c["level"] in days and age_days(c["timestamp"]) > days[c["level"]]}
    daily, tasks = set(), set()
    if with_config:
        for name in seen.get("cost_daily", {}):
            end = dt.datetime.fromisoformat(name[:10]).timestamp() + DAY
            if (time.time() - end) / DAY > 90:
                daily.add(name)
        for tid, t in seen.get("tasks_state", {}).items():
            if age_days(t["end_time"]) > 7:
                tasks.add(tid)
    return {"checkpoints": cps, "daily": daily, "tasks": tasks}


def minus(seen: dict[str, Any], gone: dict[str, set[str]]) -> dict[str, Any]:
    """What the framework must read after the expiry: the same, minus what expired."""
    view = json.loads(json.dumps(framework_view(seen)))
    for cid in gone["checkpoints"]:
        view.get("checkpoints", {}).pop(cid, None)
    for name in gone["daily"]:
        view.get("cost_daily", {}).pop(name, None)
    for tid in gone["tasks"]:
        view.get("tasks_state", {}).pop(tid, None)
        view.get("tasks_files", {}).pop(tid, None)
        if f"{tid}.json" in view.get("tasks_glob", []):
            view["tasks_glob"].remove(f"{tid}.json")
    return view


def check_framework(inst: Install, want: dict[str, Any], base_warnings: list[str],
                    step: str) -> dict[str, Any]:
    """Ask the framework: the same view, every listed checkpoint readable and rolled back
    (dry run), no new warning, nothing it reads by name gzipped, the index consistent."""
    seen = inst.inspect()
    got = framework_view(seen)
    if got != want:
        diff = {k: (want.get(k), got.get(k)) for k in set(want) | set(got)
                if want.get(k) != got.get(k)}
        raise AssertionError(f"after {step}: the framework reads something else: "
                             f"{json.dumps(diff, default=str)[:3000]}")
    for cid, c in seen.get("checkpoints", {}).items():
        assert c["readable"] and c["rollback"], f"after {step}: {cid}: {c}"
    new = [w for w in seen["warnings"] if w not in base_warnings]
    assert not new, f"after {step}: new framework warnings: {new}"
    assert not gzipped_read_back(inst), f"after {step}: {gzipped_read_back(inst)}"
    assert not index_problems(inst.store), f"after {step}: {index_problems(inst.store)}"
    return seen


def tree(base: Path) -> dict[str, tuple[Any, ...]]:
    """Content, type, owner and mode of every entry (times aside)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = p.relative_to(base).as_posix()
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p), st.st_uid)
            elif p.is_file():
                out[rel] = ("f", st.st_mode, st.st_uid, st.st_gid,
                            hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("d", st.st_mode, st.st_uid, st.st_gid)
    return out


def run_watcher(h: Host, want: set[str], timeout: float = 60) -> set[str]:
    """``watch --once-settled`` until the files in ``want`` were compressed; the host
    paths it compressed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    for kind in ("SESSIONS", "CLAUDE_SESSIONS", "CHECKPOINTS", "CHECKPOINT_STORE",
                 "THINKING_LOGS", "COST_RECORDS", "LOGS", "TASK_RESULTS", "TASK_LOGS"):
        env[f"MNIC_OPS_WATCH__SETTLE_SECONDS__{kind}"] = "0.3"
    env["MNIC_OPS_WATCH__CHECK_SECONDS"] = "0.5"
    p = subprocess.Popen([sys.executable, "-m", "mnic_ops", "--json", "--root", str(h.root),
                          "--config", str(h.config), "watch", "--once-settled"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    done: set[str] = set()
    lines: list[str] = []

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "compressed":
                done.add(ev["path"])

    t = threading.Thread(target=read, daemon=True)
    t.start()
    end = time.time() + timeout
    try:
        while time.time() < end and not want <= done and p.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # anything else it would do to the framework's files, it does now
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait(30)
        t.join(5)
    err = p.stderr.read() if p.stderr else ""
    assert want <= done, f"watch compressed {sorted(done)}, not {sorted(want - done)}\n" \
                         f"{''.join(lines)[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err, err
    return done


@pytest.fixture
def fw_host() -> Iterator[Host]:
    with host() as h:
        yield h


@pytest.mark.parametrize(("version", "with_config"), VARIANTS, ids=IDS)
def test_operations_keep_the_framework_working(fw_host: Host, version: str,
                                               with_config: bool) -> None:
    h = fw_host
    with plain_user("alice") as user:
        inst = install(h, version, user, with_config=with_config)
        h.write_config([inst.host_path])
        code = version != "v3.3.0"

        # projects: the real release, the missing config said, the data map
        pj = h.mnic_json("projects")["projects"][0]
        assert pj["version"] == version.lstrip("v")
        assert pj["version_sources"]["VERSION"] == "3.2.1"  # stale, as shipped
        assert pj["has_config"] is with_config
        assert any("copy_framework_to_project.sh" in n for n in pj["notes"]) \
            is (not with_config)
        for kind in ("claude_sessions", "task_logs", "checkpoint_store"):
            assert kind in pj["data"]

        made = inst.populate(spec(code))
        # without .claude/config/ the framework says so itself and runs on defaults
        assert not [w for w in made["warnings"] if with_config or not (
            "config" in w and "No such file" in w)], made["warnings"]
        base = inst.inspect()
        base_warnings = base["warnings"]
        assert base["agents"] > 20  # the framework's own discovery reads its agents
        gone = expected_expiry(base, with_config)
        if code:
            assert len(base["checkpoints"]) >= 10
            assert gone["checkpoints"], "the data must cross some declared limit"
        # every level at retention_days +/- 1 day: exactly the older side goes
        days = DAYS_CONFIG if with_config else DAYS_DEFAULT
        for cid, c in base.get("checkpoints", {}).items():
            a = age_days(c["timestamp"])
            if c["level"] in days and abs(a - days[c["level"]]) < 1.5:
                assert (cid in gone["checkpoints"]) is (a > days[c["level"]]), (cid, a)

        # clean --check: every checkpoint it would expire, with level, age and rule
        chk = h.mnic_json("clean", "--check", ok=(0, 3))
        kinds = chk["projects"][0]["kinds"]
        ret = kinds["checkpoint_store"].get("retention") or {}
        listed = {i["id"]: i for i in ret.get("items", [])}
        assert set(listed) == gone["checkpoints"]
        for cid, item in listed.items():
            lvl = base["checkpoints"][cid]["level"]
            assert item["level"] == lvl
            assert abs(item["age_days"] - age_days(base["checkpoints"][cid]["timestamp"])) < 0.1
            assert f"checkpointLevels.{lvl}.retention_days {days[lvl]}" in item["rule"]
            assert ("checkpoint-config.json:" in item["rule"]) is with_config
        assert check_framework(inst, framework_view(base), base_warnings, "clean --check")

        # clean: compression and the declared retention
        r = h.mnic_json("clean")
        want = minus(base, gone)
        seen = check_framework(inst, want, base_warnings, "clean")
        k = r["projects"][0]["kinds"]
        if code:
            assert k["checkpoint_store"]["retention"]["expired"] == len(gone["checkpoints"])
            assert k["cost_records"]["retention"]["expired"] == len(gone["daily"])
            assert k["task_results"]["retention"]["expired"] == len(gone["tasks"])
        sess = inst.path / "project_archive/sessions"
        assert (sess / "SESSION_SUMMARY_2025-01-01.md.gz").exists()
        assert (sess / "SESSION_CURRENT.md").exists() and (sess / "SESSION_TODOS.md").exists()
        assert (inst.path / ".claude/sessions/SESSION_STATE.md").exists()
        assert (inst.path / ".claude/sessions/notes.md.gz").exists()
        logs = inst.path / ".claude/thinking-logs/core/software-architect"
        names = sorted(p.name for p in logs.iterdir())
        if with_config and version == "v3.10.0":
            # declared: gzip_after_7_days, retention_days 90 (index.json kept in step)
            assert sum(n.endswith(".json.gz") for n in names) == 2, names
            assert sum(n.endswith(".json") for n in names) == 1, names
            assert len(names) == 3
            idx = json.loads((inst.path / ".claude/thinking-logs/index.json").read_text())
            assert len(idx["logs"]) == 3
        else:
            # no extended-thinking-config.json declaring it: glob-read logs untouched
            assert len(names) == 4 and all(n.endswith(".json") for n in names), names

        # clean --only expire (the frequent cron job): nothing more goes
        r = h.mnic_json("clean", "--only", "expire")
        assert r["totals"]["retention_expired"] == 0
        seen = check_framework(inst, want, base_warnings, "clean --only expire")

        # watch --once-settled: new aged files compressed, nothing read by name
        extra = {"project_archive/sessions/SESSION_SUMMARY_late.md": 10,
                 "project_archive/sessions/SESSION_CURRENT.md": 10}
        for rel, d in extra.items():
            p = inst.path / rel
            p.write_text("# late\n" * 30)
            os.chown(p, user.uid, user.gid)
            os.utime(p, (time.time() - d * DAY,) * 2)
        run_watcher(h, {f"{inst.host_path}/project_archive/sessions/SESSION_SUMMARY_late.md"})
        assert (sess / "SESSION_CURRENT.md").exists()
        seen = check_framework(inst, want, base_warnings, "watch --once-settled")

        # relocate to the SSD, clean there, back
        before_move = tree(inst.path)
        r = h.mnic("relocate", "--to", "/srv/ssd/moved", inst.host_path)
        assert r.code == 0, r.out + r.err
        assert (inst.path / "project_archive/sessions").is_symlink()
        seen = check_framework(inst, want, base_warnings, "relocate")
        r = h.mnic("clean")
        assert r.code == 0, r.out + r.err
        seen = check_framework(inst, want, base_warnings, "clean on relocated data")
        r = h.mnic("relocate", "--undo", inst.host_path)
        assert r.code == 0, r.out + r.err
        assert not (inst.path / "project_archive/sessions").is_symlink()
        assert tree(inst.path) == before_move
        seen = check_framework(inst, want, base_warnings, "relocate --undo")

        # render: the framework's loaders take the rendered files without a warning
        before = tree(inst.path)  # undo --all below reverts everything since
        r = h.mnic("render")
        if with_config:
            assert r.code == 0, r.out + r.err
            if code:
                ld = inst.run("loaders")
                assert not ld["warnings"], ld["warnings"]
                rendered = json.loads((inst.path / ".claude/config/"
                                       "parallel-agents-config.json").read_text())
                assert ld["parallel"]["maxWorkers"] == \
                    rendered["execution"]["workerPool"]["maxWorkers"]
                assert ld["parallel"]["maxParallelAgents"] == rendered["maxParallelAgents"]
                bg = json.loads((inst.path / ".claude/config/background-tasks.json")
                                .read_text())
                assert ld["background"]["max_concurrent_tasks"] == \
                    bg["execution"]["max_concurrent_tasks"]
        else:
            assert r.code == 0, r.out + r.err
            assert "no .claude/config/" in r.out and "copy_framework_to_project.sh" in \
                r.out and "then run mnic-ops render" in r.out, r.out
            assert not (inst.path / ".claude/config").exists()
        seen = check_framework(inst, want, base_warnings, "render")

        # provision, then undo --all: the install as it was before render
        r = h.mnic("provision")
        assert r.code == 0, r.out + r.err
        seen = check_framework(inst, want, base_warnings, "provision")
        r = h.mnic("undo", "--all")
        assert r.code == 0, r.out + r.err
        assert tree(inst.path) == before
        check_framework(inst, want, base_warnings, "undo --all")
        del seen


def test_clean_on_relocated_data(fw_host: Host) -> None:
    """relocate --to X, then clean compresses on X and expires there, no extra setting."""
    h = fw_host
    with plain_user("bob") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        h.write_config([inst.host_path])
        inst.populate({"checkpoints": [{"how": "engine", "level": "manual", "age_days": 91},
                                       {"how": "engine", "level": "manual", "age_days": 1}],
                       "files": {"project_archive/sessions/old.md": {"text": "x" * 500,
                                                                     "age_days": 20}}})
        r = h.mnic("relocate", "--to", "/srv/ssd/elsewhere", inst.host_path)
        assert r.code == 0, r.out + r.err
        base = inst.inspect()
        r = h.mnic("clean")
        assert r.code == 0, r.out + r.err
        target = next((h.root / "srv/ssd/elsewhere").iterdir())
        assert (target / "sessions/old.md.gz").exists()
        after = inst.inspect()
        assert len(after["checkpoints"]) == len(base["checkpoints"]) - 1
        assert not index_problems(inst.store)
