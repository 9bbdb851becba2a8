"""The /etc/fstab format: a lossless parse and render, the options field's noatime edit,
and ``findmnt --verify`` reports that two files can be compared by.

A wrong fstab can keep a server from booting, so the parser is lossless (every line,
comment and run of blanks comes back byte for byte, whatever the encoding: bytes that
are not UTF-8 are carried as surrogate escapes and shown as ``\\xNN``) and follows
libmount's own rules, which the tests check against ``findmnt --tab-file``. Which entry
gets noatime, and writing the file, are the ``fstab`` command's.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mnic_ops.core import execute
from mnic_ops.core.errors import CommandError, InputError

# --- the lossless parser ---------------------------------------------------------------
#
# libmount (tab_parse.c): a line whose first non-blank character is '#' is a comment;
# blank means spaces and tabs only. A trailing "\r" before the newline is dropped.
# Fields are separated by runs of spaces and tabs (nothing else: a vertical tab is
# part of a field). Source, target and type are required; options, freq and passno
# are optional; freq and passno are decimal (strtol) numbers that must end at a blank
# or the end of the line; anything after the sixth field is ignored (an inline comment).
# Octal escapes \ooo are decoded in every field.

_BLANK = " \t"
_TOKEN = re.compile(r"[^ \t]+")
_NUMBER = re.compile(r"[+-]?[0-9]+\Z")
_OCTAL = re.compile(rb"\\([0-7])([0-7])([0-7])")
FIELD_NAMES = ("source", "mount point", "type", "options", "dump frequency", "fsck pass")


def decode(data: bytes) -> str:
    """fstab bytes as text; undecodable bytes survive the round trip."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def shown(text: str) -> str:
    """Text from the file made safe to print, to a terminal or in JSON: bytes that are
    not UTF-8 as ``\\xNN``, control characters but tab and newline as escapes (so a
    vertical tab or a carriage return cannot split or overwrite a line)."""
    out: list[str] = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch in "\t\n" or ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def quoted(text: str) -> str:
    return "'" + shown(text) + "'"


def unmangle(raw: str) -> str:
    """Decode ``\\ooo`` escapes the way libmount does (byte value modulo 256; the C
    string ends at a decoded NUL)."""
    out = _OCTAL.sub(lambda m: bytes([(64 * int(m[1]) + 8 * int(m[2]) + int(m[3])) & 0xFF]),
                     encode(raw))
    nul = out.find(b"\0")
    return decode(out if nul < 0 else out[:nul])


def _s32(raw: str) -> int:
    """strtol() clamped to a long, then stored in a C int, as libmount does."""
    v = max(min(int(raw), 2**63 - 1), -(2**63)) & 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


@dataclass(frozen=True)
class Field:
    raw: str    # the text as it stands in the file (escapes not decoded)
    start: int  # offset in the line

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


@dataclass(frozen=True)
class Line:
    """One line of the file: its text without the line end, the line end itself
    (``\\n``, ``\\r\\n``, or nothing on a last line without newline), and for an entry
    the first six fields with their positions."""

    number: int
    text: str
    eol: str
    fields: tuple[Field, ...] = ()

    @property
    def is_entry(self) -> bool:
        return bool(self.fields)

    def render(self) -> str:
        return self.text + self.eol

    def _value(self, i: int) -> str | None:
        return unmangle(self.fields[i].raw) if len(self.fields) > i else None

    @property
    def source(self) -> str:
        return unmangle(self.fields[0].raw)

    @property
    def target(self) -> str:
        return unmangle(self.fields[1].raw)

    @property
    def fstype(self) -> str:
        return unmangle(self.fields[2].raw)

    @property
    def options(self) -> str | None:
        return self._value(3)

    @property
    def options_raw(self) -> str | None:
        return self.fields[3].raw if len(self.fields) > 3 else None

    @property
    def freq(self) -> int:
        return _s32(self.fields[4].raw) if len(self.fields) > 4 else 0

    @property
    def passno(self) -> int:
        return _s32(self.fields[5].raw) if len(self.fields) > 5 else 0

    @property
    def tail(self) -> str:
        """What follows the sixth field (an inline comment); libmount ignores it."""
        return self.text[self.fields[5].end:] if len(self.fields) > 5 else ""


def parse_line(number: int, text: str, eol: str = "\n", name: str = "fstab") -> Line:
    """Parse one line (without its line end); a line libmount would reject is an
    :class:`InputError` naming ``name:number``."""
    if "\0" in text:
        raise InputError(f"{name}:{number}: contains a NUL byte; the file looks damaged")
    body = text.lstrip(" \t")
    if not body or body.startswith("#"):
        return Line(number, text, eol)
    fields = tuple(Field(m.group(), m.start()) for m in _TOKEN.finditer(text))[:6]
    if len(fields) < 3:
        raise InputError(
            f"{name}:{number}: cannot parse: expected at least source, mount point and "
            f"type (found {len(fields)} field{'s' if len(fields) != 1 else ''}): "
            f"{quoted(text.strip(_BLANK))}")
    for i in (4, 5):
        if len(fields) > i and not _NUMBER.match(fields[i].raw):
            raise InputError(
                f"{name}:{number}: cannot parse: field {i + 1} ({FIELD_NAMES[i]}) must be "
                f"a number, found {quoted(fields[i].raw)}")
    return Line(number, text, eol, fields)


@dataclass
class Fstab:
    lines: list[Line]
    name: str = "fstab"

    def render(self) -> str:
        return "".join(line.render() for line in self.lines)

    @property
    def entries(self) -> list[Line]:
        return [line for line in self.lines if line.is_entry]


def parse(text: str, name: str = "fstab") -> Fstab:
    """Parse fstab text; ``parse(t).render() == t`` for every text it accepts."""
    pieces = text.split("\n")
    lines: list[Line] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last and piece == "":
            break
        eol = "" if last else "\n"
        if piece.endswith("\r"):
            piece, eol = piece[:-1], "\r" + eol
        lines.append(parse_line(i + 1, piece, eol, name))
    return Fstab(lines, name)


# --- the options change ------------------------------------------------------------------

ATIME_CONFLICTS = ("relatime", "strictatime", "atime")


def split_options(raw: str) -> list[str]:
    """Split an options field at commas outside double quotes (SELinux ``context="a,b"``
    is one option), keeping empty items so that joining gives the field back."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in raw:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def option_names(raw: str | None) -> list[str]:
    return [t.split("=", 1)[0] for t in split_options(raw)] if raw else []


def noatime_options(raw: str | None, *, nodiratime: bool = False) -> str:
    """The options field with ``noatime``: ``relatime``, ``strictatime`` and ``atime``
    removed (``noatime`` takes the place of the first of them, else joins the end of
    the list, so ``defaults`` becomes ``defaults,noatime``), ``nodiratime`` only when
    asked; every other option and the order stay as they are."""
    if raw is None:
        return "noatime,nodiratime" if nodiratime else "noatime"
    drop = set(ATIME_CONFLICTS) | ({"diratime"} if nodiratime else set())
    out: list[str] = []
    slot: int | None = None
    for tok in split_options(raw):
        if tok.split("=", 1)[0] in drop:
            if slot is None:
                slot = len(out)
            continue
        out.append(tok)
    names = [t.split("=", 1)[0] for t in out]
    add = [n for n in ("noatime", "nodiratime" if nodiratime else "") if n and n not in names]
    if add:
        if slot is None:
            slot = len(out)
            while slot > 0 and out[slot - 1] == "":  # keep a trailing comma trailing
                slot -= 1
        out[slot:slot] = add
    return ",".join(out)


def set_options(line: Line, new_raw: str) -> Line:
    """The line with only its options field replaced, every other byte kept (the blanks
    after it too, even where the columns no longer line up); an entry without options
    gets them after its type, behind a copy of the blanks before the type."""
    f, text = line.fields, line.text
    if len(f) >= 4:
        new = text[:f[3].start] + new_raw + text[f[3].end:]
    else:
        new = text[:f[2].end] + text[f[1].end:f[2].start] + new_raw + text[f[2].end:]
    return parse_line(line.number, new, line.eol)


# --- mount points ------------------------------------------------------------------------

def norm_target(path: str) -> str:
    """Lexical normal form of a mount point ("/srv/" and "//srv" are "/srv")."""
    if not path.startswith("/"):
        return path
    return posixpath.normpath("/" + path.lstrip("/"))


# --- findmnt --verify ------------------------------------------------------------------

_VERIFY_MSG = re.compile(r"^   \[(.)\] (.*)$")
_PARSE_ERR = re.compile(r"parse error at line (\d+)")


@dataclass
class Verify:
    errors: Counter[str]
    warnings: Counter[str]

    def to_json(self) -> dict[str, Any]:
        return {"errors": sorted(shown(e) for e in self.errors.elements()),
                "warnings": sorted(shown(w) for w in self.warnings.elements())}


def parse_verify(stdout: str, stderr: str) -> Verify:
    """Errors and warnings of ``findmnt --verify`` keyed by target and message (parse
    errors by line number), so that two files' reports can be compared."""
    errors: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    target = ""
    for line in stdout.splitlines():
        m = _VERIFY_MSG.match(line)
        if m is None:
            target = line
            continue
        (errors if m.group(1) == "E" else warnings)[f"{target}: {m.group(2)}"] += 1
    for n in _PARSE_ERR.findall(stderr):
        errors[f"line {n}: parse error"] += 1
    return Verify(errors, warnings)


def findmnt_verify(path: str, *, pass_fds: Sequence[int] = ()) -> Verify:
    # findmnt prints the file's targets as they are: decode them the way the file is
    # decoded, so that the current file's report and the candidate's compare.
    r = execute.run(["findmnt", "--verify", "--tab-file", path], check=False, timeout=60,
                    pass_fds=pass_fds, errors="surrogateescape")
    # The exit status is the number of errors found, so only a missing report fails.
    if "can't read" in r.stderr or (r.returncode != 0 and not r.stdout
                                    and not _PARSE_ERR.search(r.stderr)):
        raise CommandError(f"findmnt --verify --tab-file {path}: "
                           f"{shown(r.stderr.strip())}")
    return parse_verify(r.stdout, r.stderr)


def new_errors(current: Verify, candidate: Verify) -> list[str]:
    """Errors the candidate has that the current file does not."""
    return sorted((candidate.errors - current.errors).elements())


def verify_text(text: str) -> Verify:
    """``findmnt --verify`` of text that is not on disk (a memfd; nothing written)."""
    fd = os.memfd_create("mnic-ops-fstab")
    try:
        os.write(fd, encode(text))
        return findmnt_verify(f"/proc/self/fd/{fd}", pass_fds=[fd])
    finally:
        os.close(fd)
