"""Tier values: data in ``templates/tiers.toml``, overridden by config, fitted to the host.

The guide's table is a starting point, not a law: an admin overrides any value per tier
in ``[tiers.<tier>]`` of the config, and values that only make sense relative to the
machine (memory, worker and task counts, inotify watches) are treated as ceilings and
lowered to what the facts say the host has. Every derivation is explained in a reason
line, so ``render --json`` shows why a number is what it is (docs/tiers.md).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnic_ops.core.config import Config
from mnic_ops.core.configschema import HOST_CLASSES
from mnic_ops.core.configvalidate import line_of
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import inotify

MIB = 1024 * 1024
TIERS_FILE = "tiers.toml"
INOTIFY_WATCH_BYTES = inotify.WATCH_BYTES
MEMORY_STEP = 64 * 1024 * 1024  # machine memory is counted in these steps
INOTIFY_MIN = inotify.KERNEL_MIN
# Tables under [tiers.<tier>] that are not tier values: the clean policy and the cron
# schedules for hosts of that class (checked by the config schema, used by clean, cron).
SUBTABLES = ("clean", "cron")


def shipped_templates() -> Path:
    """The templates that come with mnic-ops (wheel: inside the package; checkout: the
    repository's ``templates/``)."""
    here = Path(__file__).resolve().parents[1]  # the mnic_ops package
    for cand in (here / "templates", here.parent / "templates"):
        if (cand / TIERS_FILE).is_file():
            return cand
    raise InputError(f"no shipped templates found next to {here} (broken install?)")


def template_dirs(root: HostRoot, cfg: Config) -> list[Path]:
    """Folders searched for templates, first match wins: the admin's ``templates_dir``
    (a host path; files it lacks come from the shipped set), then the shipped ones."""
    dirs: list[Path] = []
    custom = cfg.get("templates_dir")
    if custom:
        if not str(custom).startswith("/"):
            raise InputError(f"templates_dir: {custom!r} is not an absolute path")
        p = root.path(custom)
        if not p.is_dir():
            raise InputError(f"templates_dir: {custom}: no such directory")
        dirs.append(p)
    dirs.append(shipped_templates())
    return dirs


@dataclass
class TierTable:
    """The validated content of tiers.toml."""

    path: Path
    tiers: dict[str, dict[str, Any]]
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def kind(self, key: str) -> type:
        v = self.tiers[HOST_CLASSES[0]][key]
        return float if isinstance(v, float) else type(v)


def _toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text()
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise InputError(f"{where}: TOML syntax error: {msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string"}.get(
        type(v), type(v).__name__)


def check_value(table: TierTable, key: str, value: Any) -> str | None:
    """None when ``value`` fits ``key``, else what was expected."""
    want = table.kind(key)
    ok = (isinstance(value, bool) if want is bool
          else isinstance(value, int | float) and not isinstance(value, bool)
          if want is float
          else isinstance(value, want) and not isinstance(value, bool))
    if not ok:
        return f"expected {_tname(want())}, got {_tname(value)} {value!r}"
    meta = table.keys.get(key, {})
    if "choices" in meta and value not in meta["choices"]:
        return f"expected one of {', '.join(meta['choices'])}, got {value!r}"
    if "min" in meta and value < meta["min"]:
        return f"expected a value >= {meta['min']}, got {value!r}"
    if "max" in meta and value > meta["max"]:
        return f"expected a value <= {meta['max']}, got {value!r}"
    return None


def load_table(dirs: list[Path]) -> TierTable:
    """Read and check tiers.toml from the first folder that has it."""
    path = next((d / TIERS_FILE for d in dirs if (d / TIERS_FILE).is_file()), None)
    if path is None:
        raise InputError(f"{TIERS_FILE} not found in {', '.join(map(str, dirs))}")
    text, data = _toml(path)

    def fail(dotted: list[str], msg: str) -> InputError:
        line = line_of(text, dotted)
        return InputError(f"{path}{f':{line}' if line else ''}: {'.'.join(dotted)}: {msg}")

    for name in data:
        if name not in (*HOST_CLASSES, "keys"):
            raise fail([name], f"unknown table; expected {', '.join(HOST_CLASSES)} or keys")
    for tier in HOST_CLASSES:
        if not isinstance(data.get(tier), dict):
            raise fail([tier], "missing: every tier needs its table")
    ref = data[HOST_CLASSES[0]]
    for tier in HOST_CLASSES:
        for key, value in data[tier].items():
            if key not in ref:
                raise fail([tier, key], f"not set for {HOST_CLASSES[0]}; every tier needs "
                                        "the same keys")
            if isinstance(value, dict | list):
                raise fail([tier, key], "expected a string, number or boolean")
        for key in ref:
            if key not in data[tier]:
                raise fail([tier], f"{key} is missing; every tier needs the same keys")
    table = TierTable(path=path, tiers={t: dict(data[t]) for t in HOST_CLASSES},
                      keys=dict(data.get("keys", {})))
    for key in table.keys:
        if key not in ref:
            raise fail(["keys", key], "documents a key no tier sets")
    for tier in HOST_CLASSES:
        for key, value in table.tiers[tier].items():
            why = check_value(table, key, value)
            if why:
                raise fail([tier, key], why)
    return table


def effective(table: TierTable, tier: str, cfg: Config) -> dict[str, Any]:
    """The tier's values with ``[tiers.<tier>]`` from the config applied, each override
    checked against tiers.toml (unknown key, wrong type, out of bounds: file:line)."""
    if tier not in table.tiers:
        raise InputError(f"unknown tier {tier!r}; expected one of {', '.join(table.tiers)}")
    values = dict(table.tiers[tier])
    overrides = cfg.get("tiers") or {}
    text = ""
    if cfg.loaded and cfg.path is not None:
        try:
            text = cfg.path.read_text()
        except OSError:
            text = ""
    src = str(cfg.path) if cfg.loaded else "config"
    # Check every tier's overrides, not only this host's: a typo must not wait for the
    # day the config is used on another class of machine.
    for name, over in overrides.items():
        if not isinstance(over, dict):
            continue
        for key, value in over.items():
            if key in SUBTABLES:
                continue
            dotted = ["tiers", name, key]
            line = line_of(text, dotted)
            where = f"{src}:{line}" if line else src
            if key not in values:
                raise InputError(f"{where}: tiers.{name}.{key}: unknown tier key; expected "
                                 f"one of {', '.join(sorted(values))} (see {table.path})")
            why = check_value(table, key, value)
            if why:
                raise InputError(f"{where}: tiers.{name}.{key}: {why}")
    for key, value in (overrides.get(tier) or {}).items():
        if key not in SUBTABLES:
            values[key] = float(value) if table.kind(key) is float else value
    return values


def derive(values: dict[str, Any], *, cpus: int | None, memory_bytes: int | None,
           watch_dirs: int = 0) -> tuple[dict[str, Any], list[str]]:
    """Machine-fitted numbers for the templates, and one reason line per number."""
    t = values
    why: list[str] = []
    if memory_bytes:
        # MemTotal moves by some KiB from one boot to the next: fit to whole steps, so
        # that a reboot does not turn into a changed config on the next run.
        memory_bytes -= memory_bytes % MEMORY_STEP
    mem_mb = memory_bytes // MIB if memory_bytes else None

    memory = int(t["memory_limit_mb"])
    if mem_mb is None:
        why.append(f"memory_mb = {memory}: tier memory_limit_mb (machine memory unknown, "
                   "not capped)")
    else:
        cap = int(mem_mb * t["memory_share"])
        if cap < memory:
            memory = cap
            if memory >= 512:
                memory -= memory % 256
            memory = max(memory, 16)
            why.append(f"memory_mb = {memory}: memory_share {t['memory_share']:g} of "
                       f"{mem_mb} MiB caps tier memory_limit_mb {t['memory_limit_mb']}")
        else:
            why.append(f"memory_mb = {memory}: tier memory_limit_mb (within "
                       f"{t['memory_share']:g} of {mem_mb} MiB)")

    agents = int(t["max_agents"])
    fit = max(1, memory // int(t["min_agent_memory_mb"]))
    if fit < agents:
        why.append(f"agents = {fit}: {memory} MiB holds {fit} agents of "
                   f"min_agent_memory_mb {t['min_agent_memory_mb']} (tier max_agents "
                   f"{agents})")
        agents = fit
    else:
        why.append(f"agents = {agents}: tier max_agents")

    if cpus:
        workers = min(agents, cpus)
        why.append(f"workers = {workers}: agents {agents}, capped by {cpus} CPUs")
        bg_tasks = min(int(t["background_tasks"]), cpus)
        why.append(f"background_tasks = {bg_tasks}: tier background_tasks "
                   f"{t['background_tasks']}, capped by {cpus} CPUs")
    else:
        workers = agents
        bg_tasks = int(t["background_tasks"])
        why.append("workers, background_tasks: CPU count unknown, not capped")
    min_workers = min(int(t["min_workers"]), workers)
    per_agent = max(1, memory // agents)
    why.append(f"per_agent_mb = {per_agent}: memory_mb {memory} / agents {agents}")
    bg_memory = min(int(t["background_memory_mb"]), max(16, memory // 2))
    why.append(f"background_memory_mb = {bg_memory}: tier {t['background_memory_mb']}, "
               f"at most half of memory_mb {memory}")

    floor = int(t["inotify_watches"])
    # the one sizing rule (watch's fallback and doctor's check follow it too)
    need = inotify.suggested(watch_dirs, floor=0) if watch_dirs else 0
    want = max(floor, need)
    watches = want
    if memory_bytes:
        cap = int(memory_bytes * t["inotify_memory_percent"] / 100 // INOTIFY_WATCH_BYTES)
        cap -= cap % 1024
        if cap < want:
            watches = max(INOTIFY_MIN, cap)
    why.append(f"inotify_watches = {watches}: tier floor {floor}, watcher needs "
               f"{need} (2 x ({watch_dirs} folders + headroom), rounded up to a power of two)"
               + (f", capped at {t['inotify_memory_percent']:g}% of memory"
                  if watches < want else ""))
    derived = {"memory_mb": memory, "agents": agents, "workers": workers,
               "min_workers": min_workers, "per_agent_mb": per_agent,
               "background_tasks": bg_tasks, "background_memory_mb": bg_memory,
               "inotify_watches": watches, "cpus": cpus, "machine_memory_mb": mem_mb}
    return derived, why


def mb_label(mb: int) -> str:
    """2048 -> "2GB", 1536 -> "1536MB" (the guide's memoryLimit style)."""
    return f"{mb // 1024}GB" if mb % 1024 == 0 and mb >= 1024 else f"{mb}MB"

