"""Checking config values against the schema, and saying where each bad one came from.

Every value is checked, not only the first bad one: :class:`Problems` collects each
error with the file and line that set the key (:func:`line_of`; tomllib gives no
positions) or the ``MNIC_OPS_*`` environment variable, and raises them together.
:func:`check_values` is the schema pass over a parsed TOML document,
:func:`env_overrides` the same for the environment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mnic_ops.core import quoting
from mnic_ops.core.configschema import SCHEMA, Key, Schema, Section
from mnic_ops.core.errors import InputError

# --- where a value came from: file:line or the environment variable ---------------------

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_KEY_PATH = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_KEY_PATH})\s*\]\]?")
_KEYLINE_RE = re.compile(rf"^\s*({_KEY_PATH})\s*=")


def _key_path(text: str) -> list[str] | None:
    """The key path of a TOML key expression (``a."b.c".d`` -> [a, b.c, d]), decoded
    by tomllib itself so that quoting and escapes mean what TOML says."""
    import tomllib

    try:
        cur: Any = tomllib.loads(f"{text} = 0")
    except tomllib.TOMLDecodeError:
        return None
    out: list[str] = []
    while isinstance(cur, dict) and len(cur) == 1:
        k, cur = next(iter(cur.items()))
        out.append(k)
    return out


def line_of(text: str, dotted: Sequence[str]) -> int | None:
    """The line of ``a.b.key`` in TOML text (tomllib gives no positions): the line that
    sets it, else the nearest enclosing key or table that the text sets (a value inside
    an inline table or a multi-line array is reported at its key)."""
    if not text:
        return None
    want = list(dotted)
    found: dict[tuple[str, ...], int] = {}
    section: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(line)
        if m:
            section = _key_path(m.group(1)) or []
            found.setdefault(tuple(section), n)
            continue
        km = _KEYLINE_RE.match(line)
        if km:
            path = _key_path(km.group(1))
            if path:
                full = section + path
                for i in range(len(section) + 1, len(full) + 1):
                    found.setdefault(tuple(full[:i]), n)
    for i in range(len(want), 0, -1):
        if tuple(want[:i]) in found:
            return found[tuple(want[:i])]
    return None


def _shown(dotted: Sequence[str]) -> str:
    return quoting.printable(".".join(dotted))


class Problems:
    """Every error found while loading one config, each naming where the value came
    from; raised together by :meth:`raise_any` (one line each)."""

    def __init__(self, path: str | None = None, text: str = "") -> None:
        self.path, self.text = path, text
        self.errors: list[str] = []
        self.env: dict[tuple[str, ...], str] = {}  # key path -> environment variable

    def where(self, dotted: Sequence[str]) -> str:
        key = tuple(dotted)
        for i in range(len(key), 0, -1):
            if key[:i] in self.env:
                return f"environment {self.env[key[:i]]}"
        if self.path is None:
            return "config"
        line = line_of(self.text, key)
        return f"{self.path}:{line}" if line else self.path

    def add(self, dotted: Sequence[str] | str, msg: str) -> None:
        parts = dotted.split(".") if isinstance(dotted, str) else list(dotted)
        self.errors.append(f"{self.where(parts)}: {_shown(parts)}: {msg}")

    def raise_any(self) -> None:
        """All errors in one InputError, one line each, in the file's line order."""
        if self.errors:
            def line(e: str) -> int:
                m = re.match(r"[^\n]*?:(\d+): ", e) if self.path else None
                return int(m.group(1)) if m else 0

            raise InputError("\n".join(sorted(self.errors, key=line)))


# --- the schema pass -------------------------------------------------------------------

def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _string_problem(spec: Key, v: str) -> str | None:
    bad = quoting.bad_char(v)
    if bad:
        return f"'{quoting.printable(v)}' contains {bad}; not allowed in any value"
    if spec.choices is not None and v not in spec.choices:
        if spec.noun:
            return f"unknown {spec.noun} {v!r}; expected one of {', '.join(spec.choices)}"
        return f"expected one of {', '.join(spec.choices)}, got {v!r}"
    if spec.rule is not None:
        return spec.rule.problem(v)
    return None


def _value_problem(spec: Key, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec``, or None."""
    t = spec.type
    if t == "str":
        if not isinstance(value, str):
            return f"expected str, got {_tname(value)}"
        return _string_problem(spec, value)
    if t == "list[str]":
        if not isinstance(value, list):
            return f"expected list[str], got {_tname(value)}"
        for i, x in enumerate(value):
            if not isinstance(x, str):
                return f"expected list[str], got {_tname(x)} as item {i + 1}"
            why = _string_problem(spec, x)
            if why:
                return why if why.startswith("unknown ") else f"item {i + 1}: {why}"
        return None
    if t == "bool":
        return None if isinstance(value, bool) else f"expected bool, got {_tname(value)}"
    if t == "table":
        return None if isinstance(value, dict) else f"expected a table, got {_tname(value)}"
    if t == "scalar":
        if isinstance(value, str):
            return _string_problem(spec, value)
        if isinstance(value, bool):
            return None
        if not _is_number(value):
            return f"expected a string, number or boolean, got {_tname(value)}"
    elif t == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected int, got {_tname(value)}"
    elif t == "float":
        if not _is_number(value):
            return f"expected float, got {_tname(value)}"
    else:
        raise AssertionError(t)
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if spec.minimum is not None and value < spec.minimum:
        return f"expected a value >= {spec.minimum:g}, got {value!r}"
    if spec.maximum is not None and value > spec.maximum:
        return f"expected a value <= {spec.maximum:g}, got {value!r}"
    return None


def check_values(schema: Schema, data: Mapping[str, Any], prefix: list[str],
                 problems: Problems, open_keys: Key | Section | None = None) -> dict[str, Any]:
    """The valid part of ``data``; every problem recorded, none raised."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        dotted = [*prefix, name]
        spec = schema.get(name, open_keys)
        if spec is None:
            known = ", ".join(sorted(schema)) or "(none)"
            problems.add(dotted, f"unknown key; expected one of: {known}")
            continue
        if isinstance(spec, Section):
            if not isinstance(value, dict):
                problems.add(dotted, f"expected a table, got {_tname(value)}")
                continue
            out[name] = check_values(spec.keys, value, dotted, problems, spec.open_keys)
            continue
        why = _value_problem(spec, value)
        if why:
            problems.add(dotted, why)
            continue
        out[name] = float(value) if spec.type == "float" else value
    return out


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


def env_overrides(env: Mapping[str, str], problems: Problems,
                  schema: Schema = SCHEMA) -> dict[str, Any]:
    out: dict[str, Any] = {}
    skip = {"MNIC_OPS_ROOT", "MNIC_OPS_CONFIG", "MNIC_OPS_JSON", "MNIC_OPS_VERBOSE"}
    for name, raw in sorted(env.items()):
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
        problems.env[tuple(parts)] = name
        try:
            value = _env_value(spec, raw)
        except ValueError:
            problems.add(parts, f"'{quoting.printable(raw)}': expected {spec.type}")
            continue
        why = _value_problem(spec, value)
        if why:
            problems.add(parts, why)
            continue
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = float(value) if spec.type == "float" else value
    return out
