"""Drives the real framework in an install, as its users do: run as the install's owner
with the install root as working directory and ``.ai-tools`` (and the relevant
``core/`` folders) on ``sys.path``, as the framework's README says. Never imported by
the tests: they run it in a subprocess as a plain uid and read its JSON on stdout.

    python driver.py populate SPEC.json   # make data with the framework's own classes
    python driver.py inspect              # what the framework's code reads back now
    python driver.py loaders              # the config loaders, with their warnings

Time: the framework stamps everything with ``datetime.now()`` (naive local time). To
make data "N days old" as the framework would have written it then, the driver gives
the framework's modules a clock that runs N days behind (their module-level
``datetime`` name), so ids, index entries, metadata, histories, cost records and task
results all carry that time, exactly as if the framework had run on that day.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

DAY = 86400.0
ROOT = Path.cwd()


class Capture(logging.Handler):
    """Warnings and errors the framework logs (it configures logging at INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


CAPTURE = Capture()
logging.getLogger().addHandler(CAPTURE)


def _clock(days_ago: float) -> type[_dt.datetime]:
    offset = days_ago * DAY

    class Clock(_dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
            return _dt.datetime.fromtimestamp(time.time() - offset, tz)

    return Clock


def _set_clock(modules: list[Any], days_ago: float) -> None:
    clock = _clock(days_ago)
    for m in modules:
        m.datetime = clock


DATA = (".ai-tools/checkpoint/storage", ".ai-tools/model-config/data", "project_archive")


def _mtimes() -> dict[str, int]:
    out = {}
    for top in DATA:
        for dirpath, _dirs, files in os.walk(ROOT / top):
            for n in files:
                p = os.path.join(dirpath, n)
                with contextlib.suppress(OSError):
                    out[p] = os.lstat(p).st_mtime_ns
    return out


def _stamp(before: dict[str, int], days_ago: float) -> None:
    """Files the framework wrote in this step get the step's time as their mtime, as if
    it had run then (the kernel stamps writes with the real clock)."""
    t = time.time() - days_ago * DAY
    for p, m in _mtimes().items():
        if before.get(p) != m:
            os.utime(p, (t, t))


# --- imports, as the framework's README says -------------------------------------------

def _checkpoint() -> Any:
    sys.path.insert(0, str(ROOT / ".ai-tools"))
    import checkpoint  # the package in .ai-tools/checkpoint

    return checkpoint


def _checkpoint_modules() -> list[Any]:
    return [sys.modules[n] for n in ("checkpoint.core.checkpoint_engine",
                                     "checkpoint.core.multi_agent_coordinator",
                                     "checkpoint.core.quality_gates_integration",
                                     "checkpoint.triggers.auto_trigger_system")]


def _core(folder: str, module: str) -> Any:
    path = str(ROOT / ".ai-tools" / folder / "core")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(module)


def _model_config() -> Any:
    """``.ai-tools/model-config`` as the package ``model_config`` (its README's import)."""
    if "model_config" in sys.modules:
        return sys.modules["model_config"]
    base = ROOT / ".ai-tools" / "model-config"
    spec = importlib.util.spec_from_file_location(
        "model_config", base / "__init__.py", submodule_search_locations=[str(base)])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["model_config"] = mod
    spec.loader.exec_module(mod)
    return mod


def _task_runner() -> Any:
    # task_runner opens project_archive/logs/background-tasks.log when imported
    os.makedirs("project_archive/logs", exist_ok=True)
    return _core("background", "task_runner")


def has_code() -> bool:
    return (ROOT / ".ai-tools" / "checkpoint" / "core" / "checkpoint_engine.py").exists()


# --- populate ---------------------------------------------------------------------------

def populate(spec: dict[str, Any]) -> dict[str, Any]:
    """Make data at the ages in ``spec`` with the framework's own code."""
    made: dict[str, Any] = {"checkpoints": {}, "tasks": {}, "cost_records": 0}
    if has_code():
        cp = _checkpoint()
        engine = cp.CheckpointEngine()
        coord = cp.MultiAgentCoordinator(engine)
        gates = cp.QualityGatesIntegration(engine)
        triggers = cp.AutoTriggerSystem(engine, coord, gates)
        mods = _checkpoint_modules()
        for n, item in enumerate(spec.get("checkpoints", [])):
            _set_clock(mods, item["age_days"])
            before = _mtimes()
            how = item["how"]
            if how == "coordinator":
                agent = item.get("agent", f"agent-{n}")
                cid = coord.pre_agent_execution_checkpoint(agent, description=f"step {n}")
                coord.post_agent_execution_checkpoint(
                    agent, success=True, modified_files=[f"src/{agent}/{n}.py"])
            elif how == "gate":
                res = gates.execute_quality_gate(cp.QualityGateType.CUSTOM,
                                                 gate_command="true",
                                                 description=f"gate {n}")
                cid = res.checkpoint_id
            elif how == "trigger":
                cid = triggers.trigger(cp.TriggerType.PRE_AGENT_EXECUTION,
                                       {"agent_type": item.get("agent", "backend-engineer")})
            else:
                level = cp.CheckpointLevel(item["level"])
                cid = engine.create_checkpoint(level=level, label=item.get("label",
                                                                           f"cp {n}"),
                                               description=f"made {n}", tags=["test"])
            made["checkpoints"][str(n)] = cid
            _stamp(before, item["age_days"])
        _set_clock(mods, 0)
        cost = _core("model-config", "cost_tracker")
        for item in spec.get("cost", []):
            _set_clock([cost], item["age_days"])
            before = _mtimes()
            tracker = cost.CostTracker()
            tracker.track_usage(item.get("agent", "backend-engineer"), "claude-sonnet-4-5",
                                1000 + made["cost_records"], 500)
            made["cost_records"] += 1
            _stamp(before, item["age_days"])
        _set_clock([cost], 0)
        if spec.get("tasks"):
            tr = _task_runner()
            for n, item in enumerate(spec["tasks"]):
                _set_clock([tr], item["age_days"])
                before = _mtimes()
                runner = tr.BackgroundTaskRunner()  # reloads state.json: results accumulate
                task = tr.BackgroundTask(task_id=f"task-{n:04d}", name=f"task {n}",
                                         task_type="custom", priority="low", timeout=60,
                                         command=["true"])
                runner.submit_task(task)
                proc = runner.running_tasks.get(task.task_id)
                if proc is not None:
                    proc.join(60)
                made["tasks"][str(n)] = task.task_id
                _stamp(before, item["age_days"])
            _set_clock([tr], 0)
    for rel, item in spec.get("files", {}).items():
        p = ROOT / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(item["text"])
        t = time.time() - item["age_days"] * DAY
        os.utime(p, (t, t))
    made["warnings"] = CAPTURE.records
    return made


# --- inspect ----------------------------------------------------------------------------

def inspect() -> dict[str, Any]:
    """Everything the framework's code reads back, as it reads it."""
    out: dict[str, Any] = {"has_code": has_code()}
    if has_code():
        cp = _checkpoint()
        engine = cp.CheckpointEngine()
        coord = cp.MultiAgentCoordinator(engine)
        gates = cp.QualityGatesIntegration(engine)
        triggers = cp.AutoTriggerSystem(engine, coord, gates)
        cps: dict[str, Any] = {}
        for c in engine.list_checkpoints(limit=1_000_000):
            cid = c["checkpoint_id"]
            md = engine.get_checkpoint_metadata(cid)
            rb = engine.rollback_to_checkpoint(cid, dry_run=True)
            cps[cid] = {"level": c["level"], "timestamp": c["timestamp"],
                        "label": c["label"], "readable": md is not None,
                        "metadata_timestamp": md.timestamp if md else None,
                        "rollback": rb.success, "rollback_message": rb.message}
        out["checkpoints"] = cps
        out["store"] = str(engine.storage_base)
        out["gate_history"] = gates.gate_history
        out["gate_stats"] = gates.get_gate_statistics()
        out["trigger_history"] = triggers.trigger_history
        out["coordination"] = {
            "status": coord.get_coordination_status(),
            "agents": {a: {"active": s.active_checkpoints, "last": s.last_checkpoint_id,
                           "files": sorted(s.modified_files), "count": s.execution_count}
                       for a, s in coord.agent_states.items()}}
        cost = _core("model-config", "cost_tracker")
        tracker = cost.CostTracker()
        out["cost_current"] = [dataclasses.asdict(r) for r in tracker.cost_records]
        daily = Path(tracker.data_dir) / "daily"
        # what CostTracker._archive_records reads back, by exact name
        out["cost_daily"] = {p.name: json.loads(p.read_text())
                             for p in sorted(daily.glob("*.json"))}
        tr = _task_runner()
        runner = tr.BackgroundTaskRunner()
        out["tasks_state"] = {tid: {**dataclasses.asdict(r), "status": r.status.value}
                              for tid, r in sorted(runner.task_results.items())}
        rdir = Path(runner.config.get("storage", {}).get(
            "task_results_dir", "project_archive/background-tasks/results"))
        # the framework's own glob (cleanup_old_results) and the files by task id
        out["tasks_glob"] = sorted(p.name for p in rdir.glob("*.json"))
        out["tasks_files"] = {p.stem: json.loads(p.read_text())
                              for p in sorted(rdir.glob("*.json"))}
    # the framework's own agent discovery (3.3.0 has no other code that reads data)
    sys.path.insert(0, str(ROOT / ".ai-tools" / "core" / "discovery"))
    import dynamic_agent_discovery as dad

    agents = dad.DynamicAgentDiscovery().scan_agents()
    out["agents"] = len(agents)
    out["warnings"] = CAPTURE.records
    return out


def loaders() -> dict[str, Any]:
    """The framework's config loaders on the install's (rendered) files."""
    out: dict[str, Any] = {}
    sys.path.insert(0, str(ROOT / ".ai-tools"))
    pa = importlib.import_module("parallel_agents.core.parallel_executor")
    ex = pa.ParallelExecutor()
    out["parallel"] = {"maxWorkers": ex.max_workers,
                       "maxParallelAgents": ex.config.get("maxParallelAgents")}
    ex.executor.shutdown(wait=False)
    tr = _task_runner()
    runner = tr.BackgroundTaskRunner()
    out["background"] = {"max_concurrent_tasks": runner.config.get("execution", {}).get(
        "max_concurrent_tasks")}
    mc = _model_config()
    bm = mc.BudgetManager()
    out["budget"] = sorted(bm.budgets)
    mgr = mc.ModelConfigManager()
    out["model_config"] = type(mgr).__name__
    out["warnings"] = CAPTURE.records
    return out


def main() -> int:
    cmd = sys.argv[1]
    if cmd == "populate":
        with open(sys.argv[2]) as fh:
            res = populate(json.load(fh))
    elif cmd == "inspect":
        res = inspect()
    elif cmd == "loaders":
        res = loaders()
    elif cmd == "hold":  # a framework process working in the install, for a while
        if has_code():
            cp = _checkpoint()
            cp.CheckpointEngine()
        sys.stdout.write("@@READY@@\n")
        sys.stdout.flush()
        time.sleep(float(sys.argv[2]))
        res = {}
    else:
        raise SystemExit(f"unknown command {cmd}")
    sys.stdout.write("\n@@RESULT@@" + json.dumps(res, default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)  # no atexit surprises from the framework's worker pools


if __name__ == "__main__":
    sys.exit(main())
