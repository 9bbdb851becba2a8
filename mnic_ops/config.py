"""Configuration: a TOML file validated against a documented schema.

Precedence, highest first: command-line flag > ``MNIC_OPS_*`` environment variable >
config file > default. Environment names are ``MNIC_OPS_<KEY>`` for top-level keys and
``MNIC_OPS_<SECTION>__<KEY>`` for keys in a table (lists are comma-separated).

Every error (syntax, unknown key, wrong type, bad value) is an :class:`InputError` naming
the file, the line and what was expected. The schema below is also the reference
documentation (``docs/config.md`` is generated from the same table by ``mnic-ops
config --schema``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnic_ops.errors import InputError
from mnic_ops.framework_map import DATA_KINDS
from mnic_ops.hostroot import HostRoot

DEFAULT_CONFIG = "/etc/mnic-ops/config.toml"
HOST_CLASSES = ("laptop", "workstation", "server")


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, allowed values and one line of documentation."""

    type: str  # str | int | float | bool | list[str] | table
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None


Schema = dict[str, "Key | Section"]


@dataclass(frozen=True)
class Section:
    keys: Schema
    doc: str = ""
    open_keys: Key | Section | None = None  # schema for keys not listed (e.g. per tier)


def _days(doc: str, default: float) -> Key:
    return Key("float", default, doc, minimum=0)


SCHEMA: Schema = {
    "host_class": Key("str", None, "Force the host class instead of detecting it.",
                      choices=HOST_CLASSES),
    "projects": Key("list[str]", [], "Framework install folders to manage, as host paths."),
    "search_paths": Key(
        "list[str]", ["/opt/my-name-is-claude", "/srv", "/home/*", "/root"],
        "Where `projects` searches for installs (globs allowed)."),
    "search_depth": Key("int", 3, "How many folder levels below each search path to look.",
                        minimum=0),
    "ssd_path": Key("str", "/mnt/ssd/my-name-is-claude",
                    "Where `relocate` moves sessions and checkpoints."),
    "templates_dir": Key("str", None, "Use these templates instead of the shipped ones."),
    "detect": Section({
        "server_min_cpus": Key("int", 32, "Resources fallback: at least this many logical "
                               "CPUs makes a server.", minimum=1),
        "server_min_memory_gib": Key("float", 48.0, "Resources fallback: at least this much "
                                     "memory (GiB) makes a server.", minimum=0),
        "laptop_max_cpus": Key("int", 4, "Resources fallback: at most this many CPUs and ...",
                               minimum=0),
        "laptop_max_memory_gib": Key("float", 8.0, "... at most this much memory (GiB) "
                                     "makes a laptop-sized host; anything else is a "
                                     "workstation.", minimum=0),
    }, "Host-class detection thresholds."),
    # Sections below are owned by their capability modules.
    "tiers": Section({
        name: Key("table", {}, f"Override {name} values of templates/tiers.toml (keys and "
                               "bounds: docs/tiers.md); checked when rendering.")
        for name in HOST_CLASSES
    }, "Per-tier overrides of the tier values in templates/tiers.toml."),
    "render": Section({
        "system_files": Key("bool", True, "`render` without PROJECT also writes "
                            "/etc/profile.d/mnic-ops.sh and /etc/sysctl.d/60-mnic-ops.conf."),
    }, "Tier config rendering."),
    "relocate": Section({
        "kinds": Key("list[str]", ["sessions", "checkpoints", "checkpoint_store"],
                     "Data folders `relocate` moves, by data-map kind (sessions, "
                     "checkpoints, checkpoint_store, thinking_logs, cost_records, logs, "
                     "task_results)."),
        "margin_percent": Key("float", 10.0, "Free space the target must have beyond the "
                              "data's size, in percent of that size.", minimum=0),
        "min_free_mib": Key("int", 256, "Free space (MiB) that must remain on the target "
                            "after a move.", minimum=0),
        "verify_from_disk": Key("bool", True, "Drop the copy from the page cache before "
                                "comparing it with the source, so the check reads what "
                                "reached the disk, not what is still in memory."),
    }, "Moving data to an SSD."),
    "fstab": Section({
        "mount_points": Key("list[str]", [], "Mount points `fstab` always considers, besides "
                            "those holding framework data and any --mount-point."),
        "nodiratime": Key("bool", False, "Also add nodiratime. Redundant on Linux, where "
                          "noatime already implies it; for admins whose checklists ask."),
        "include_network": Key("bool", False, "Also propose noatime for network filesystems "
                               "(nfs, cifs, ...); off because atime there is the server's "
                               "business and a remount can hang on a dead server."),
    }, "noatime proposals for /etc/fstab."),
    "clean": Section({
        **{kind: Section({
            "patterns": Key("list[str]", None, "Names to gzip (globs; with a `/` they match "
                            "the path below the data folder). Unset: the built-in default."),
            "compress_after_days": Key("float", None, "Gzip matching files not modified "
                                       "for this many days; 0 turns compression off.",
                                       minimum=0),
            "expire_patterns": Key("list[str]", None, "Archives to delete when old "
                                   "(default: each pattern + `.gz`)."),
            "delete_after_days": Key("float", None, "Delete matching archives older than "
                                     "this many days; 0 keeps them forever.", minimum=0),
        }, f"Policy for {kind} (unset keys: tier, then the framework's own config, then "
           "the built-in default).")
           for kind in DATA_KINDS},
        "workers": Key("int", 0, "Compressing processes; 0 = two per CPU (one compresses "
                       "while the other waits for its batch's sync), at most 8.", minimum=0),
        "level": Key("int", 5, "gzip level 1-9; zlib-ng at 5 is as small as gzip -6 "
                     "(within 2 %) and a third faster.", minimum=1),
        "compressor": Key("str", "auto", "Deflate implementation; auto prefers zlib-ng "
                          "(same output format, faster) and falls back to zlib.",
                          choices=("auto", "zlib-ng", "isal", "zlib")),
        "batch_files": Key("int", 256, "Files written before one filesystem sync makes "
                           "them durable together.", minimum=1),
        "follow_links_under": Key("list[str]", [], "Besides ssd_path and the install "
                                  "itself: host folders a data folder may be a symlink "
                                  "into (other links are not followed)."),
        "textfile": Key("str", "/var/lib/prometheus/node-exporter/mnic_ops_clean.prom",
                        "node_exporter textfile written after each pass (when its folder "
                        "exists); empty = none."),
    }, "Maintenance pass policy."),
    "cron": Section({
        "compress_schedule": Key("str", None, "Cron schedule of the daily compress+expire "
                                 "pass (default: from the tier)."),
        "expire_schedule": Key("str", None, "Cron schedule of the expiry pass (default: "
                               "from the tier; the guide's */30 * * * *)."),
        "command": Key("str", None, "How jobs invoke mnic-ops (default: the installed "
                       "mnic-ops found by absolute path)."),
        "log": Key("str", None, "Where job output goes: an absolute file path or `syslog` "
                   "(default: /var/log/mnic-ops-cron.log for --system, syslog for "
                   "--user)."),
    }, "Cleanup cron jobs."),
    "watch": Section({
        "settle_seconds": Section({
            kind: Key("float", minutes * 60.0, f"Seconds a {kind.replace('_', ' ')} file must "
                      f"stay quiet after its writer closed it before it is gzipped (default "
                      f"{minutes:g} minutes{why}).", minimum=0)
            for kind, minutes, why in (
                ("sessions", 60, ": a session summary untouched for an hour is finished"),
                ("claude_sessions", 60, ": as sessions"),
                ("checkpoints", 15, ": each checkpoint is written once"),
                ("checkpoint_store", 15, ": each metadata file is written once"),
                ("thinking_logs", 10, ": each decision record is written once"),
                ("cost_records", 1500, ": daily/DATE.json is rewritten all day, so it is "
                 "left until its day is over"),
                ("logs", 60, ""),
                ("task_results", 60, ""),
                ("task_logs", 60, ""))
        }, "Per data class; which files and classes are compressed at all is the "
           "[clean] policy (patterns; compress_after_days = 0 turns a class off)."),
        "poll": Key("bool", False, "Always use the polling observer (as --poll); it is "
                    "used anyway for network filesystems."),
        "poll_seconds": Key("float", 30.0, "Interval of the polling observer.", minimum=0.1),
        "check_seconds": Key("float", 5.0, "How often each data folder is checked to still "
                             "be the folder watched (deleted, re-created, relinked).",
                             minimum=0.1),
        "rescan_minutes": Key("float", 60.0, "Safety net: re-list the watched folders this "
                              "often for files written since start that no event announced "
                              "(after an inotify queue overflow one runs at once); 0 = only "
                              "after overflows.", minimum=0),
    }, "Auto-compression watcher (`mnic-ops watch`)."),
    "doctor": Section({
        "metrics_file": Key("str", None, "Write the figures as a node_exporter textfile here "
                            "(host path, e.g. /var/lib/prometheus/node-exporter/"
                            "mnic_ops.prom) on every run; --metrics overrides."),
        "session_max_mb": Key("float", 10.0, "A session file larger than this (MiB) is a "
                              "finding (the guide prunes sessions at 10 MB).", minimum=0),
        "agent_max_kib": Key("float", 100.0, "An agent definition larger than this (KiB) is "
                             "a finding (the shipped agents are 5-30 KiB).", minimum=0),
        "context_files": Key("int", 5, "How many of the newest session files the context "
                             "measurement reads (besides SESSION_CURRENT.md).", minimum=1),
        "probe_timeout": Key("float", 60.0, "Seconds a measurement process may take before "
                             "it counts as failed.", minimum=1),
    }, "Health checks and baseline measurements (`mnic-ops doctor`)."),
    "provision": Section({
        "relocate": Key("bool", True, "Move sessions and checkpoints to ssd_path when an "
                        "SSD target exists."),
        "apply_fstab": Key("bool", False, "Write noatime into fstab and remount (else only "
                           "propose the diff)."),
        "cron": Key("bool", True, "Install the cleanup cron jobs."),
        "watcher": Key("bool", True, "Install the auto-compression watcher unit."),
    }, "What `mnic-ops provision` does."),
}


@dataclass
class Config:
    """Validated configuration values plus where they came from."""

    values: dict[str, Any]
    path: Path | None = None
    loaded: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def get(self, dotted: str, default: Any = None) -> Any:
        cur: Any = self.values
        for part in dotted.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return default
            cur = cur[part]
        return cur

    def __getitem__(self, dotted: str) -> Any:
        return self.get(dotted)

    def set(self, dotted: str, value: Any, source: str = "flag") -> None:
        """Apply a command-line flag (highest precedence)."""
        parts = dotted.split(".")
        cur = self.values
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        self.sources[dotted] = source


def _defaults(schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        if isinstance(spec, Section):
            out[name] = _defaults(spec.keys)
        else:
            out[name] = _copy(spec.default)
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return v


def _type_ok(spec: Key, value: Any) -> bool:
    t = spec.type
    if t == "str":
        return isinstance(value, str)
    if t == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t == "bool":
        return isinstance(value, bool)
    if t == "list[str]":
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if t == "table":
        return isinstance(value, dict)
    raise AssertionError(t)


def _line_of(text: str, dotted: list[str]) -> int | None:
    """Best-effort line of ``a.b.key`` in TOML text (tomllib gives no positions)."""
    if not text:
        return None
    lines = text.splitlines()
    section: list[str] = []
    key = dotted[-1]
    want = dotted[:-1]
    hdr = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for n, line in enumerate(lines, 1):
        m = hdr.match(line)
        if m:
            section = [p.strip().strip('"') for p in m.group(1).split(".")]
            if section == dotted:
                return n
            continue
        km = re.match(r"^\s*([A-Za-z0-9_.\"-]+)\s*=", line)
        if km:
            full = section + [p.strip().strip('"') for p in km.group(1).split(".")]
            if full[: len(want) + 1] == [*want, key] or full == dotted:
                return n
    return None


class _Validator:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text

    def fail(self, dotted: list[str], msg: str) -> InputError:
        line = _line_of(self.text, dotted)
        where = f"{self.path}:{line}" if line else self.path
        return InputError(f"{where}: {'.'.join(dotted)}: {msg}")

    def check(self, schema: Schema, data: Mapping[str, Any], prefix: list[str],
              open_keys: Key | Section | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in data.items():
            dotted = [*prefix, name]
            spec = schema.get(name, open_keys)
            if spec is None:
                known = ", ".join(sorted(schema)) or "(none)"
                raise self.fail(dotted, f"unknown key; expected one of: {known}")
            if isinstance(spec, Section):
                if not isinstance(value, dict):
                    raise self.fail(dotted, f"expected a table, got {_tname(value)}")
                out[name] = self.check(spec.keys, value, dotted, spec.open_keys)
                continue
            out[name] = self.value(spec, value, dotted)
        return out

    def value(self, spec: Key, value: Any, dotted: list[str]) -> Any:
        if not _type_ok(spec, value):
            raise self.fail(dotted, f"expected {spec.type}, got {_tname(value)}")
        if spec.choices is not None and value not in spec.choices:
            raise self.fail(dotted, f"expected one of {', '.join(spec.choices)}, "
                                    f"got {value!r}")
        if spec.minimum is not None and value < spec.minimum:
            raise self.fail(dotted, f"expected a value >= {spec.minimum:g}, got {value!r}")
        return float(value) if spec.type == "float" else value


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _env_value(spec: Key, raw: str) -> Any:
    t = spec.type
    if t == "list[str]":
        return [p.strip() for p in raw.split(",") if p.strip()]
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    if t == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return raw


def _env_overrides(env: Mapping[str, str], schema: Schema = SCHEMA) -> dict[str, Any]:
    out: dict[str, Any] = {}
    skip = {"MNIC_OPS_ROOT", "MNIC_OPS_CONFIG", "MNIC_OPS_JSON", "MNIC_OPS_VERBOSE"}
    for name, raw in env.items():
        if not name.startswith("MNIC_OPS_") or name in skip:
            continue
        parts = name[len("MNIC_OPS_"):].lower().split("__")
        spec: Key | Section | None = None
        cur_schema: Schema | None = schema
        for p in parts:
            spec = cur_schema.get(p) if cur_schema is not None else None
            cur_schema = spec.keys if isinstance(spec, Section) else None
        if not isinstance(spec, Key):
            continue  # not a config key (could be an option read by click)
        try:
            value = _env_value(spec, raw)
        except ValueError as exc:
            raise InputError(f"environment {name}={raw!r}: expected {spec.type}") from exc
        v = _Validator(f"environment {name}", "")
        value = v.value(spec, value, parts)
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def load(root: HostRoot, path: str | None = None,
         env: Mapping[str, str] | None = None) -> Config:
    """Load defaults, then the config file (absent is fine unless named explicitly),
    then ``MNIC_OPS_*`` environment overrides."""
    env = os.environ if env is None else env
    values = _defaults(SCHEMA)
    explicit = path is not None
    cfg_path = Path(path) if path is not None else root.path(DEFAULT_CONFIG)
    loaded = False
    try:
        raw = cfg_path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise InputError(f"{cfg_path}: config file not found") from None
        raw = None
    except IsADirectoryError:
        raise InputError(f"{cfg_path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise InputError(f"{cfg_path}: permission denied") from None
    if raw is not None:
        import tomllib  # only when there is a file: detect without one stays lean

        try:
            text = raw.decode()
            data = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            raise InputError(f"{cfg_path}: not UTF-8 text ({exc.reason})") from None
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            where = f"{cfg_path}:{m.group(1)}:{m.group(2)}" if m else str(cfg_path)
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
            raise InputError(f"{where}: TOML syntax error: {msg}; expected valid TOML "
                             "(key = value, [section])") from None
        _merge(values, _Validator(str(cfg_path), text).check(SCHEMA, data, []))
        loaded = True
    _merge(values, _env_overrides(env))
    _check_framework_data(values, str(cfg_path), text if raw is not None else "")
    return Config(values=values, path=cfg_path, loaded=loaded)


def _check_framework_data(values: dict[str, Any], path: str, text: str) -> None:
    """Clean patterns that would cover files the framework reads back are refused
    (issue 14; the rule and the data map live in mnic_ops.policy)."""
    from mnic_ops import policy

    def where(dotted: str) -> str:
        line = _line_of(text, dotted.split("."))
        return f"{path}:{line}" if line else f"{path} (or its MNIC_OPS_* environment)"

    policy.check_patterns(values, where)


def schema_doc(schema: Schema = SCHEMA, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for the documentation."""
    rows: list[tuple[str, str, str, str]] = []
    for name, spec in schema.items():
        full = f"{prefix}{name}"
        if isinstance(spec, Section):
            rows.append((f"[{full}]", "table", "", spec.doc))
            rows.extend(schema_doc(spec.keys, full + "."))
        else:
            t = spec.type + (f" ({'|'.join(spec.choices)})" if spec.choices else "")
            rows.append((full, t, repr(spec.default), spec.doc))
    return rows
