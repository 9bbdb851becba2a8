"""Bounded JSON for files a user can write: framework configs, indexes, histories.

A root pass reads every install's JSON; one user's file must not stop it. ``json.loads``
alone recurses once per nesting level (``[`` x 100000 is a RecursionError), turns a
5000-digit integer into a ValueError, accepts ``NaN``/``Infinity`` and lets a duplicate
key silently win. :func:`parse` refuses all of that, and anything over the size limit,
and a ``\\ud800`` escape that pairs with nothing (Python keeps it as a lone surrogate, which
no path, encoder or terminal accepts: one such string crashed every command that touched
the install), with one :class:`UserDataError` that names the file, line and column (an
:class:`~mnic_ops.core.errors.InputError`, so the CLI prints it and exits 2, and a command
that works per install reports it for that install and goes on).

The limits are far above what the framework writes (its deepest file nests 8 levels,
its largest numbers are byte counts) and far below what harms a root process.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from typing import Any

from mnic_ops.core.errors import InputError, OpsError

MAX_BYTES = 16 << 20  # a checkpoint index with 10,000 entries is about 3 MiB
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 64  # "-1.2345678901234567e+308" is 24; ints up to 10**63
_NUMBER_CHARS = frozenset(b"0123456789+-.eE")
_LITERALS = (b"true", b"false", b"null")
# a \\uD800-\\uDFFF escape somewhere: only then is the document scanned for pairing
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class UserDataError(InputError):
    """A user-written JSON file that mnic-ops refuses to use: ``file:line:col: why``."""

    def __init__(self, source: str, reason: str, line: int | None = None,
                 col: int | None = None) -> None:
        where = source if line is None else f"{source}:{line}" + (
            "" if col is None else f":{col}")
        super().__init__(f"{where}: {reason}")
        self.source, self.reason, self.line, self.col = source, reason, line, col


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    col = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def _scan(raw: bytes, source: str, max_depth: int, max_number: int) -> None:
    """One linear pass outside strings: nesting depth, number length, bare words
    (``NaN``, ``Infinity`` and typos), so that the C parser never sees what it would
    recurse or choke on, and the error can say where."""
    depth = 0
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x22:  # '"': skip the string, honouring escapes
            i += 1
            while i < n:
                d = raw[i]
                if d == 0x5C:
                    i += 2
                    continue
                if d == 0x22:
                    break
                i += 1
            i += 1
            continue
        if c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise UserDataError(source, f"nested more than {max_depth} levels deep",
                                    *_position(raw, i))
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
        elif c in _NUMBER_CHARS:
            j = i
            while j < n and raw[j] in _NUMBER_CHARS:
                j += 1
            if j - i > max_number:
                raise UserDataError(source, f"a number of {j - i} characters (at most "
                                    f"{max_number})", *_position(raw, i))
            i = j
            continue
        elif 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:  # a bare word
            j = i
            while j < n and (0x41 <= raw[j] <= 0x5A or 0x61 <= raw[j] <= 0x7A):
                j += 1
            word = raw[i:j]
            if word not in _LITERALS:
                shown = word[:20].decode("ascii")
                raise UserDataError(source, f"{shown!r} is not a JSON value (NaN and "
                                    "Infinity are refused)", *_position(raw, i))
            i = j
            continue
        i += 1


def _escape_code(raw: bytes, i: int) -> int | None:
    """The code unit of the ``\\uXXXX`` escape starting at ``raw[i]`` (the backslash),
    None when there is none."""
    if raw[i + 1:i + 2] != b"u" or len(raw) < i + 6 or not all(c in _HEX
                                                              for c in raw[i + 2:i + 6]):
        return None
    return int(raw[i + 2:i + 6], 16)


def _unpaired_surrogate(raw: bytes) -> int | None:
    """Offset of the first ``\\uD800``-``\\uDFFF`` escape inside a string that is not
    half of a high-low pair (JSON's way to write a character above U+FFFF), or None."""
    i, n = 0, len(raw)
    while i < n:
        if raw[i] != 0x22:
            i += 1
            continue
        i += 1
        while i < n and raw[i] != 0x22:
            if raw[i] != 0x5C:
                i += 1
                continue
            code = _escape_code(raw, i)
            if code is None:
                i += 2
                continue
            if 0xD800 <= code <= 0xDBFF:
                low = _escape_code(raw, i + 6) if raw[i + 6:i + 7] == b"\\" else None
                if low is None or not 0xDC00 <= low <= 0xDFFF:
                    return i
                i += 12
                continue
            if 0xDC00 <= code <= 0xDFFF:
                return i
            i += 6
        i += 1
    return None


def _locate(raw: bytes, problem: str) -> tuple[int, int] | None:
    """Line and column of the first duplicate key (``"duplicate"``) or of the first
    number too large for a float (``"infinite"``) in a document already known to be
    valid and bounded JSON: only the error path pays for this second pass."""
    stack: list[set[str] | None] = []  # a set of keys per open object, None per array
    want_key = False
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x22:
            j = i + 1
            while j < n and raw[j] != 0x22:
                j += 2 if raw[j] == 0x5C else 1
            if want_key and stack and stack[-1] is not None:
                key = json.loads(raw[i:j + 1])
                if problem == "duplicate" and key in stack[-1]:
                    return _position(raw, i)
                stack[-1].add(key)
                want_key = False
            i = j + 1
            continue
        if c == 0x7B:
            stack.append(set())
            want_key = True
        elif c == 0x5B:
            stack.append(None)
        elif c in (0x5D, 0x7D):
            stack.pop()
        elif c == 0x2C:
            want_key = bool(stack) and stack[-1] is not None
        elif c in _NUMBER_CHARS:
            j = i
            while j < n and raw[j] in _NUMBER_CHARS:
                j += 1
            if problem == "infinite" and not math.isfinite(float(raw[i:j])):
                return _position(raw, i)
            i = j
            continue
        i += 1
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is out of range")
    return v


def _int_of(max_number: int) -> Any:
    def parse_int(text: str) -> int:
        if len(text) > max_number:
            raise ValueError(f"a number of {len(text)} characters")
        return int(text)
    return parse_int


def _finite_float_of(max_number: int) -> Any:
    def parse_float(text: str) -> float:
        if len(text) > max_number:
            raise ValueError(f"a number of {len(text)} characters")
        return _finite_float(text)
    return parse_float


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether containers nest more than ``max_depth`` levels: one pass per level over
    the containers only (the value may be as deep as the C parser's recursion limit)."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(max_depth):
        deeper: list[Any] = []
        for c in level:
            for x in (c.values() if type(c) is dict else c):
                if type(x) is dict or type(x) is list:
                    deeper.append(x)
        if not deeper:
            return False
        level = deeper
    return True


def _pairs(source: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise _Duplicate(k)
            out[k] = v
        return out
    return hook


class _Duplicate(ValueError):
    pass


def parse(raw: bytes | str, source: str, *, max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH, max_number: int = MAX_NUMBER_CHARS) -> Any:
    """The JSON document in ``raw``; :class:`UserDataError` naming ``source`` (and the
    line and column where known) for anything malformed or out of bounds."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise UserDataError(source, f"{len(data)} bytes, more than the {max_bytes} "
                            "mnic-ops reads")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserDataError(source, f"not UTF-8 ({exc.reason})",
                            *_position(data, exc.start)) from None
    if _SURROGATE_HINT.search(data) and (at := _unpaired_surrogate(data)) is not None:
        shown = data[at:at + 6].decode("ascii")
        raise UserDataError(source, f"{shown} is an unpaired surrogate escape, not a "
                            "character (no path or text can hold it)",
                            *_position(data, at))
    # Fast path: the C parser with cheap hooks (its own recursion check turns deep
    # nesting into RecursionError, never a crash), then the depth of what it built.
    # Only a refusal pays for the byte-by-byte scan that says where the problem is.
    try:
        value = json.loads(text, parse_constant=_no_constant,
                           parse_float=_finite_float_of(max_number),
                           parse_int=_int_of(max_number),
                           object_pairs_hook=_pairs(source))
    except (ValueError, RecursionError):
        _scan(data, source, max_depth, max_number)  # raises where it can say where
        return _slow(data, text, source)
    if _deeper_than(value, max_depth):
        _scan(data, source, max_depth, max_number)
    return value


def _slow(data: bytes, text: str, source: str) -> Any:
    """The refusal of a document the scan found nothing wrong with: a syntax error, a
    duplicate key, a number out of range (each with its place where it can be found)."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          object_pairs_hook=_pairs(source))
    except json.JSONDecodeError as exc:
        raise UserDataError(source, f"not valid JSON: {exc.msg}", exc.lineno,
                            exc.colno) from None
    except _Duplicate as exc:
        raise UserDataError(source, f"duplicate key {exc.args[0]!r}",
                            *(_locate(data, "duplicate") or (None, None))) from None
    except (ValueError, RecursionError) as exc:
        raise UserDataError(source, f"not usable JSON: {exc}",
                            *(_locate(data, "infinite") or (None, None))) from None


def read_at(dirfd: int, name: str, source: str, *, max_bytes: int = MAX_BYTES,
            **limits: int) -> Any:
    """Parse the regular file ``name`` in the folder ``dirfd`` (no symlink followed);
    FileNotFoundError when absent, :class:`UserDataError` when it is not a regular file,
    too large, or not valid bounded JSON."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dirfd)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise UserDataError(source, "is a symlink; not followed") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserDataError(source, "not a regular file")
        raw = fh.read(max_bytes + 1)
    return parse(raw, source, max_bytes=max_bytes, **limits)


def read_beneath(base: str | os.PathLike[str], rel: str, source: str | None = None, *,
                 max_bytes: int = MAX_BYTES, **limits: int) -> Any:
    """Parse ``base/rel`` reached without following any symlink below ``base``; None
    when it (or a folder on the way) does not exist."""
    from mnic_ops.core import beneathfs

    src = source or f"{os.fspath(base).rstrip('/')}/{rel}"
    parent, _, name = rel.strip("/").rpartition("/")
    try:
        dfd = beneathfs.open_beneath(base, parent or ".", os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except OpsError:
        raise UserDataError(src, "a symlink is in the way; not followed") from None
    except NotADirectoryError:
        raise UserDataError(src, "a file is in the way of its folder") from None
    try:
        return read_at(dfd, name, src, max_bytes=max_bytes, **limits)
    except FileNotFoundError:
        return None
    finally:
        os.close(dfd)
