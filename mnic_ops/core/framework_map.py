"""The framework's data, as its own code reads it: per data class, where the folder is,
which framework config moves it, and for each file whether the framework reads it back
by exact name (compressing or moving it apart breaks the framework), by a glob that a
``.gz`` drops out of, or not at all.

Derived from the framework's code (v3.3.0 and v3.10.0, ``../shared/framework``); every
rule names the file and function that reads the name. This table is data: ``clean``,
``watch``, ``doctor`` and the config loader ask it (through :mod:`mnic_ops.facts.policy`), so
that one place says what mnic-ops may touch. Paths in the framework are relative to the
process's working directory, which the framework documents as the install root.

Versions: the checkpoint engine arrived in 3.7.0, cost tracking in 3.6.0, background
tasks in 3.5.0, extended thinking (thinking logs) in 3.10.0; 3.3.0 only documents
``.claude/checkpoints/`` (no code writes it). A rule protects files whatever the
install's version (an install upgraded in place keeps its old data); the version decides
what ``projects`` expects to find and which config file declares what.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

# Every data class, in the order commands report them.
DATA_KINDS = ("sessions", "claude_sessions", "checkpoints", "checkpoint_store",
              "thinking_logs", "cost_records", "logs", "task_results", "task_logs")

# How the framework gets a file back.
BY_NAME = "name"  # opened by its exact name: never compressed, never moved apart
BY_GLOB = "glob"  # found by a glob such as *.json: a .gz drops out of it

CONFIG_DIR = ".claude/config"
CHECKPOINT_CONFIG = f"{CONFIG_DIR}/checkpoint-config.json"        # 3.7.0+
CHECKPOINT_SYSTEM = f"{CONFIG_DIR}/checkpoint-system.json"        # 3.3.0 (a specification)
THINKING_CONFIG = f"{CONFIG_DIR}/extended-thinking-config.json"   # 3.10.0
COST_CONFIG = f"{CONFIG_DIR}/cost-optimization.json"               # 3.3.0+
BACKGROUND_CONFIG = f"{CONFIG_DIR}/background-tasks.json"          # 3.5.0+


@dataclass(frozen=True)
class FileRule:
    """Files of a data class the framework reads back.

    ``pattern`` is matched like a clean pattern (with a ``/`` against the path below the
    data folder, else against the name); ``samples`` are real names of such files, used
    to tell whether an admin's pattern would cover one.
    """

    pattern: str
    read: str  # BY_NAME or BY_GLOB
    reader: str  # framework file:function that reads it
    since: str  # framework version whose code reads it
    samples: tuple[str, ...]

    def covers(self, name: str, rel: str) -> bool:
        return fnmatch.fnmatchcase(rel if "/" in self.pattern else name, self.pattern)


@dataclass(frozen=True)
class Folder:
    """Where a data class lives and who decides that."""

    kind: str
    default: str  # relative to the install root (per-project layout)
    opt_default: str  # in the /opt/my-name-is-claude layout
    config: tuple[str, str] | None  # (config file, dotted key) that moves it, if any
    since: str | None  # first framework version whose code writes it (None: the assistant)
    writer: str
    rules: tuple[FileRule, ...] = ()


_CP = ".ai-tools/checkpoint/core"
_TH = "thinking logs"

FOLDERS: dict[str, Folder] = {f.kind: f for f in (
    Folder("sessions", "project_archive/sessions", "sessions", None, None,
           "the assistant (session-manager prompts)", (
               # .claude/prompts/agents/session/*.md: the session agents load these by
               # name at the start of a session and rewrite them at its end.
               FileRule("SESSION_CURRENT.md", BY_NAME, "session-manager (guide, doctor "
                        "context load)", "3.0.0", ("SESSION_CURRENT.md",)),
               FileRule("SESSION_STATE.md", BY_NAME, ".claude/prompts/agents/session/"
                        "session-continuation-from-summary.md", "3.0.0",
                        ("SESSION_STATE.md",)),
               FileRule("SESSION_TODOS.md", BY_NAME, ".claude/prompts/agents/session/"
                        "session-continuation-from-summary.md", "3.0.0",
                        ("SESSION_TODOS.md",)),
               FileRule("CONTINUATION_CONTEXT.md", BY_NAME, ".claude/prompts/agents/"
                        "session/session-continuation-from-summary.md", "3.0.0",
                        ("CONTINUATION_CONTEXT.md",)),
           )),
    # The install guides add .claude/sessions/ to .gitignore
    # (docs/getting-started/framework-installation.md): the assistant keeps session
    # files there too, with the same names.
    Folder("claude_sessions", ".claude/sessions", ".claude/sessions", None, None,
           "the assistant", (
               FileRule("SESSION_CURRENT.md", BY_NAME, "session-manager", "3.0.0",
                        ("SESSION_CURRENT.md",)),
               FileRule("SESSION_STATE.md", BY_NAME, "session-manager", "3.0.0",
                        ("SESSION_STATE.md",)),
               FileRule("SESSION_TODOS.md", BY_NAME, "session-manager", "3.0.0",
                        ("SESSION_TODOS.md",)),
               FileRule("CONTINUATION_CONTEXT.md", BY_NAME, "session-manager", "3.0.0",
                        ("CONTINUATION_CONTEXT.md",)),
           )),
    # 3.3.0 documents this folder (.claude/checkpoints/.gitkeep, checkpoint-system.json
    # checkpointStorage.location) but no code writes or reads it; the guide gzips it.
    Folder("checkpoints", ".claude/checkpoints", "checkpoints", None, None,
           "the assistant (3.3.0 specification)"),
    Folder("checkpoint_store", ".ai-tools/checkpoint/storage", ".ai-tools/checkpoint/storage",
           (CHECKPOINT_CONFIG, "storage.base_path"), "3.7.0",
           f"{_CP}/checkpoint_engine.py CheckpointEngine.create_checkpoint", (
               # CheckpointEngine._load_checkpoint_index / _save_checkpoint_index
               FileRule("checkpoint_index.json", BY_NAME,
                        f"{_CP}/checkpoint_engine.py CheckpointEngine._load_checkpoint_index",
                        "3.7.0", ("checkpoint_index.json",)),
               # MultiAgentCoordinator._load_coordination_state
               FileRule("agent_coordination.json", BY_NAME,
                        f"{_CP}/multi_agent_coordinator.py "
                        "MultiAgentCoordinator._load_coordination_state", "3.7.0",
                        ("agent_coordination.json",)),
               # QualityGatesIntegration._load_gate_history
               FileRule("quality_gate_history.json", BY_NAME,
                        f"{_CP}/quality_gates_integration.py "
                        "QualityGatesIntegration._load_gate_history", "3.7.0",
                        ("quality_gate_history.json",)),
               # AutoTriggerSystem._load_trigger_history
               FileRule("trigger_history.json", BY_NAME,
                        ".ai-tools/checkpoint/triggers/auto_trigger_system.py "
                        "AutoTriggerSystem._load_trigger_history", "3.7.0",
                        ("trigger_history.json",)),
               # get_checkpoint_metadata (list, rollback, semantic_rewind, coordinator)
               FileRule("metadata/*.json", BY_NAME,
                        f"{_CP}/checkpoint_engine.py CheckpointEngine.get_checkpoint_metadata",
                        "3.7.0", ("metadata/cp_20251017_160000_0a1b2c3d.json",)),
               # rollback_to_checkpoint: gzip.open(checkpoints/<id>.dat.gz)
               FileRule("checkpoints/*.dat.gz", BY_NAME,
                        f"{_CP}/checkpoint_engine.py CheckpointEngine.rollback_to_checkpoint",
                        "3.7.0", ("checkpoints/cp_20251017_160000_0a1b2c3d.dat.gz",)),
           )),
    # logging.storage_path: .claude/thinking-logs/{category}/{agent}/{ts}-{decision}.json,
    # written by the assistant (docs/advanced/extended-thinking-mode.md); its readers
    # glob them (logs_dir.rglob('*.json')) and diagnostic-framework-integration.json names
    # the index (storage_and_retrieval.thinking_log_database.index_file).
    Folder("thinking_logs", ".claude/thinking-logs", ".claude/thinking-logs",
           (THINKING_CONFIG, "logging.storage_path"), None,
           "the assistant (extended-thinking-wrapper.md)", (
               FileRule("index.json", BY_NAME, "diagnostic-framework-integration.json "
                        "thinking_log_database.index_file", "3.10.0", ("index.json",)),
               FileRule("*.json", BY_GLOB, "docs/advanced/extended-thinking-mode.md "
                        "logs_dir.rglob('*.json')", "3.10.0",
                        ("core/software-architect/2025-10-17-160000-architecture-pattern"
                         "-selection.json",)),
           )),
    # CostTracker.data_dir = <install>/.ai-tools/model-config/data (not configurable).
    Folder("cost_records", ".ai-tools/model-config/data", ".ai-tools/model-config/data",
           None, "3.6.0", ".ai-tools/model-config/core/cost_tracker.py CostTracker.track_usage",
           (
               # CostTracker._load_historical_records
               FileRule("current_session.json", BY_NAME,
                        ".ai-tools/model-config/core/cost_tracker.py "
                        "CostTracker._load_historical_records", "3.6.0",
                        ("current_session.json",)),
               # CostTracker._archive_records reads daily/<date>.json to append to it
               FileRule("daily/*.json", BY_NAME,
                        ".ai-tools/model-config/core/cost_tracker.py "
                        "CostTracker._archive_records", "3.6.0", ("daily/2025-10-17.json",)),
           )),
    # project_archive/logs: BackgroundTaskRunner's logging.FileHandler appends to
    # background-tasks.log by name (task_runner.py, at import).
    Folder("logs", "project_archive/logs", "logs", None, "3.5.0",
           ".ai-tools/background/core/task_runner.py logging.FileHandler", (
               FileRule("background-tasks.log", BY_NAME,
                        ".ai-tools/background/core/task_runner.py logging.FileHandler "
                        "(appends)", "3.5.0", ("background-tasks.log",)),
           )),
    # storage.task_results_dir: results/<task_id>.json written by
    # BackgroundTaskRunner._save_task_result, globbed by cleanup_old_results; state.json
    # (storage.task_state_file) lists every result and is read by _load_state.
    Folder("task_results", "project_archive/background-tasks/results",
           "project_archive/background-tasks/results",
           (BACKGROUND_CONFIG, "storage.task_results_dir"), "3.5.0",
           ".ai-tools/background/core/task_runner.py BackgroundTaskRunner._save_task_result",
           (
               FileRule("*.json", BY_NAME, ".ai-tools/background/core/task_runner.py "
                        "BackgroundTaskRunner.cleanup_old_results (results_dir.glob"
                        "('*.json')), state.json by task id", "3.5.0",
                        ("task-0001.json",)),
           )),
    # storage.task_logs_dir: created by BackgroundTaskRunner._ensure_directories.
    Folder("task_logs", "project_archive/background-tasks/logs",
           "project_archive/background-tasks/logs",
           (BACKGROUND_CONFIG, "storage.task_logs_dir"), "3.5.0",
           ".ai-tools/background/core/task_runner.py BackgroundTaskRunner._ensure_directories"),
)}

# Files outside the data folders that the framework reads back by name and that a data
# class's retention keeps consistent (the "index" of that class).
TASK_STATE = ("storage.task_state_file", "project_archive/background-tasks/state.json")


def version_key(v: str | None) -> tuple[int, ...] | None:
    """``"3.10.0"`` -> (3, 10, 0); None when it is no dotted version."""
    if not v:
        return None
    parts = v.split("-")[0].split("+")[0].split(".")
    try:
        return tuple(int(p) for p in parts[:3])
    except ValueError:
        return None


def written_by(kind: str, version: str | None) -> bool:
    """Does the framework's code of ``version`` write this class (None: unknown, yes)?"""
    since = FOLDERS[kind].since
    have, need = version_key(version), version_key(since)
    return since is None or have is None or need is None or have >= need


def read_back(kind: str, name: str, rel: str) -> FileRule | None:
    """The rule under which the framework reads this file back, or None."""
    for r in FOLDERS[kind].rules:
        if r.covers(name, rel):
            return r
    return None


def by_name(kind: str, name: str, rel: str) -> FileRule | None:
    """The rule when the framework opens this file by its exact name. The exact names of
    every class count in every folder (a user may keep a copy or move folders around):
    protecting too much costs a few bytes, compressing one breaks the framework."""
    r = read_back(kind, name, rel)
    if r is not None and r.read == BY_NAME:
        return r
    return EXACT_NAMES.get(name)


# Every literal name the framework reads back, with its rule; and state.json (the
# background tasks' index, outside the results folder, storage.task_state_file).
EXACT_NAMES: dict[str, FileRule] = {
    r.pattern: r for f in FOLDERS.values() for r in f.rules
    if r.read == BY_NAME and not any(c in r.pattern for c in "*?[/")}
EXACT_NAMES["state.json"] = FileRule(
    "state.json", BY_NAME, ".ai-tools/background/core/task_runner.py "
    "BackgroundTaskRunner._load_state", "3.5.0", ("state.json",))
