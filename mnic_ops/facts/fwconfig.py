"""A framework config file of one install, read the bounded way, with the line of every
value: retention and storage values a user writes are input to a root process, and a
refusal must say ``file:line`` (issue 14's bad input).

Reading never follows a symlink below the install (:func:`mnic_ops.core.userjson.read_beneath`).
A file that does not parse is kept as an error, never as a value: the class it governs is
then left untouched for that install.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mnic_ops.core import userjson

Path_ = tuple[str | int, ...]


@dataclass
class FrameworkConfig:
    """One parsed file (``data`` None when absent or refused; ``error`` says why)."""

    host_path: str  # host path of the file, for messages
    present: bool = False
    data: Any = None
    error: str | None = None
    raw: bytes = b""
    _lines: dict[Path_, int] = field(default_factory=dict)

    def get(self, dotted: str, default: Any = None) -> Any:
        cur = self.data
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return default
            cur = cur[part]
        return cur

    def where(self, dotted: str) -> str:
        """``file:line`` of the value at ``dotted`` (the file alone when not found)."""
        key = tuple(dotted.split("."))
        if key not in self._lines:
            line = line_of(self.raw, key)
            self._lines[key] = line or 0
        line = self._lines[key]
        return f"{self.host_path}:{line}" if line else self.host_path


def read(base: str | os.PathLike[str], host_install: str, rel: str, *,
         base_ident: tuple[int, int, int] | None = None) -> FrameworkConfig:
    """Read ``rel`` below the install ``base`` (its real path); ``host_install`` names it;
    with ``base_ident`` the install root must still be the folder the data map found."""
    host = f"{host_install.rstrip('/')}/{rel}"
    cfg = FrameworkConfig(host)
    try:
        parent, _, name = rel.rpartition("/")
        raw = _read_raw(base, parent, name, host, base_ident)
    except userjson.UserDataError as exc:
        cfg.present, cfg.error = True, exc.message
        return cfg
    except OSError as exc:
        cfg.present, cfg.error = True, f"{host}: {exc.strerror or exc}"
        return cfg
    if raw is None:
        return cfg
    cfg.present, cfg.raw = True, raw
    try:
        cfg.data = userjson.parse(raw, host)
    except userjson.UserDataError as exc:
        cfg.error = exc.message
    return cfg


def _read_raw(base: str | os.PathLike[str], parent: str, name: str, host: str,
              base_ident: tuple[int, int, int] | None = None) -> bytes | None:
    import stat

    from mnic_ops.core import beneathfs
    from mnic_ops.core.errors import OpsError

    try:
        dfd = beneathfs.open_beneath(base, parent or ".", os.O_RDONLY | os.O_DIRECTORY,
                                  base_ident=base_ident)
    except FileNotFoundError:
        return None
    except (OpsError, NotADirectoryError):
        raise userjson.UserDataError(host, "a symlink or file is in the way of its "
                                     "folder; not followed") from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == 40:
                raise userjson.UserDataError(host, "is a symlink; not followed") from None
            raise
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise userjson.UserDataError(host, "not a regular file")
            return fh.read(userjson.MAX_BYTES + 1)
    finally:
        os.close(dfd)


# --- values with bounds -------------------------------------------------------------

DAYS_FLOOR = 1.0  # a retention or compression age below one day is refused
DAYS_CEILING = 36500.0  # a hundred years: anything beyond is a typo or an attack
COUNT_CEILING = 1_000_000
GB_FLOOR = 0.001
GB_CEILING = 1_048_576.0  # 1 PiB


class BadValue(Exception):
    """A declared value out of bounds: ``file:line: key: why``."""

    def __init__(self, cfg: FrameworkConfig, dotted: str, why: str) -> None:
        self.message = f"{cfg.where(dotted)}: {dotted}: {why}"
        super().__init__(self.message)


def _shown(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def days(cfg: FrameworkConfig, dotted: str) -> float | None:
    """A number of days in [1, 36500], None when absent; BadValue otherwise."""
    v = cfg.get(dotted)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BadValue(cfg, dotted, f"expected a number of days, got {_shown(v)}")
    if not DAYS_FLOOR <= v <= DAYS_CEILING:
        raise BadValue(cfg, dotted, f"expected {DAYS_FLOOR:g} to {DAYS_CEILING:g} days, "
                       f"got {_shown(v)}")
    return float(v)


def count(cfg: FrameworkConfig, dotted: str) -> int | None:
    v = cfg.get(dotted)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadValue(cfg, dotted, f"expected a whole number, got {_shown(v)}")
    if not 1 <= v <= COUNT_CEILING:
        raise BadValue(cfg, dotted, f"expected 1 to {COUNT_CEILING}, got {_shown(v)}")
    return v


def gigabytes(cfg: FrameworkConfig, dotted: str) -> float | None:
    v = cfg.get(dotted)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BadValue(cfg, dotted, f"expected a size in GB, got {_shown(v)}")
    if not GB_FLOOR <= v <= GB_CEILING:
        raise BadValue(cfg, dotted, f"expected {GB_FLOOR:g} to {GB_CEILING:g} GB, "
                       f"got {_shown(v)}")
    return float(v)


def relpath(cfg: FrameworkConfig, dotted: str) -> str | None:
    """A folder path value (relative to the install): a non-empty string or None."""
    v = cfg.get(dotted)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or "\x00" in v:
        raise BadValue(cfg, dotted, f"expected a folder path, got {_shown(v)}")
    return v


# --- where a value is ------------------------------------------------------------------

_WS = b" \t\r\n"


def line_of(raw: bytes, path: Sequence[str | int]) -> int | None:
    """The line on which the value at ``path`` (object keys, array indexes) starts in the
    JSON text ``raw`` (already known to parse); None when there is no such value."""
    want = tuple(path)
    frames: list[list[Any]] = []  # [kind, key-or-index, expecting_key]
    line, i, n = 1, 0, len(raw)

    def here() -> tuple[str | int, ...]:
        return tuple(f[1] for f in frames)

    def value_starts() -> bool:
        return here() == want

    while i < n:
        c = raw[i]
        if c == 0x0A:
            line += 1
            i += 1
            continue
        if c in _WS or c in (0x3A,):  # whitespace, ':'
            i += 1
            continue
        top = frames[-1] if frames else None
        if c == 0x22:  # a string
            j = i + 1
            while j < n and raw[j] != 0x22:
                j += 2 if raw[j] == 0x5C else 1
            text = raw[i:j + 1]
            if top is not None and top[0] == "{" and top[2]:
                import json

                try:
                    top[1] = json.loads(text)
                except ValueError:
                    top[1] = None
                top[2] = False
            elif value_starts():
                return line
            line += text.count(b"\n")
            i = j + 1
            continue
        if c == 0x2C:  # ','
            if top is not None:
                if top[0] == "{":
                    top[2] = True
                else:
                    top[1] += 1
            i += 1
            continue
        if c in (0x7D, 0x5D):  # '}' ']'
            frames.pop()
            i += 1
            continue
        if value_starts():
            return line
        if c == 0x7B:
            frames.append(["{", None, True])
        elif c == 0x5B:
            frames.append(["[", 0, False])
        else:  # a number or literal: skip it
            while i + 1 < n and raw[i + 1] not in b",]}" + _WS:
                i += 1
        i += 1
    return None
