"""Configuration: a TOML file validated against a documented schema.

Precedence, highest first: command-line flag > ``MNIC_OPS_*`` environment variable >
config file > default. Environment names are ``MNIC_OPS_<KEY>`` for top-level keys and
``MNIC_OPS_<SECTION>__<KEY>`` for keys in a table (lists are comma-separated).

Every value is checked when the config is loaded, not when a command first uses it:
its type, a finite number inside the key's range, an absolute path where a path is
meant, a list of strings where patterns are meant, a table where a table is meant, and
no control character in any string (values end up in cron lines, unit files and shell
snippets, where a newline is a new command). Environment overrides get the same checks.
Then the cross-key checks in :data:`CHECKS` run. Every error is collected and all are
reported together, one line each, naming the file and line (or the environment
variable) and what was expected: an :class:`InputError`, exit 2, so that a bad file is
refused by ``mnic-ops config`` (the Ansible role's ``validate:`` step) before it is used.

The schema is in :mod:`mnic_ops.core.configschema` (also the reference documentation,
``mnic-ops config --schema``); checking each value and naming where it came from is in
:mod:`mnic_ops.core.configvalidate`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnic_ops.core import patterns, quoting
from mnic_ops.core.configschema import SCHEMA, Schema, Section
from mnic_ops.core.configvalidate import Problems, check_values, env_overrides
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot

DEFAULT_CONFIG = "/etc/mnic-ops/config.toml"


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
            out[name] = _defaults(spec.keys) if spec.fill else {}
        else:
            out[name] = _copy(spec.default)
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return v


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


# --- checks after the schema pass --------------------------------------------------------

ConfigCheck = Callable[[Config, Problems], None]
# Checks that look at the merged values (file, environment, defaults) after every key
# passed its own schema check: each reports with ``problems.add(key, message)``, which
# names the file and line (or the environment variable) of ``key``. A capability adds
# its own with :func:`config_check`.
CHECKS: list[ConfigCheck] = []


def config_check(fn: ConfigCheck) -> ConfigCheck:
    """Register a check run by :func:`load` after the schema pass."""
    CHECKS.append(fn)
    return fn


@config_check
def _framework_data(cfg: Config, problems: Problems) -> None:
    """Clean patterns that would cover files the framework reads back are refused
    (issue 14; the rule lives in mnic_ops.core.patterns, the data map in
    mnic_ops.core.framework_map)."""
    for dotted, why in patterns.pattern_problems(cfg.values):
        problems.add(dotted, why)


# --- loading -----------------------------------------------------------------------------

def load(root: HostRoot, path: str | None = None,
         env: Mapping[str, str] | None = None) -> Config:
    """Load defaults, then the config file (absent is fine unless named explicitly),
    then ``MNIC_OPS_*`` environment overrides; every problem in any of them is reported
    at once (InputError, one line each)."""
    env = os.environ if env is None else env
    values = _defaults(SCHEMA)
    explicit = path is not None
    cfg_path = Path(path) if path is not None else root.path(DEFAULT_CONFIG)
    shown = quoting.printable(str(cfg_path))
    loaded = False
    try:
        raw = cfg_path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise InputError(f"{shown}: config file not found") from None
        raw = None
    except IsADirectoryError:
        raise InputError(f"{shown}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise InputError(f"{shown}: permission denied") from None
    problems = Problems()
    if raw is not None:
        import tomllib  # only when there is a file: detect without one stays lean

        try:
            text = raw.decode()
            data = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            raise InputError(f"{shown}: not UTF-8 text ({exc.reason})") from None
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            where = f"{shown}:{m.group(1)}:{m.group(2)}" if m else shown
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
            raise InputError(f"{where}: TOML syntax error: {msg}; expected valid TOML "
                             "(key = value, [section])") from None
        problems = Problems(shown, text)
        _merge(values, check_values(SCHEMA, data, [], problems))
        loaded = True
    _merge(values, env_overrides(env, problems))
    cfg = Config(values=values, path=cfg_path, loaded=loaded)
    if not problems.errors:  # cross-key checks only see values that passed their own
        for check in CHECKS:
            check(cfg, problems)
    problems.raise_any()
    return cfg

