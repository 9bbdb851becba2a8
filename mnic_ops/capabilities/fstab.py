"""noatime for the filesystems that hold framework data: a diff of /etc/fstab, an
atomic verified apply, and a live remount.

A wrong fstab can keep a server from booting, so this module changes as little as it
can: the options field of the one entry that governs a mount point, nothing else (not
even the blanks around it). The parser is lossless (every line, comment and run of
blanks comes back byte for byte, whatever the encoding: bytes that are not UTF-8 are
carried as surrogate escapes and shown as ``\\xNN``) and follows libmount's own rules,
which the tests check against ``findmnt --tab-file``. The candidate file is checked
with ``findmnt --verify`` before it replaces the original and may not add an error the
current file does not have.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities.protocol import ProvisionContext, ProvisionStep
from mnic_ops.changes.model import (
    FAILED,
    OK,
    PENDING,
    SKIPPED,
    ApplyContext,
    Item,
    Plan,
    Undo,
    undo_handler,
    unified_diff,
)
from mnic_ops.core import beneathfs, execute, safefs
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, CommandError, InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostfacts

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

FSTAB = "/etc/fstab"

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


def _quoted(text: str) -> str:
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
            f"{_quoted(text.strip(_BLANK))}")
    for i in (4, 5):
        if len(fields) > i and not _NUMBER.match(fields[i].raw):
            raise InputError(
                f"{name}:{number}: cannot parse: field {i + 1} ({FIELD_NAMES[i]}) must be "
                f"a number, found {_quoted(fields[i].raw)}")
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


# --- which entry governs a mount point, and is it eligible --------------------------------

def norm_target(path: str) -> str:
    """Lexical normal form of a mount point ("/srv/" and "//srv" are "/srv")."""
    if not path.startswith("/"):
        return path
    return posixpath.normpath("/" + path.lstrip("/"))


def _is_network(fstype: str) -> bool:
    return (fstype in hostfacts.NETWORK_FS or fstype.startswith(("nfs", "fuse.sshfs"))
            or fstype in ("cifs", "smb3", "smbfs"))


def ineligible_reason(entry: Line, *, include_network: bool = False) -> str | None:
    """Why noatime does not belong on this entry, or None when it does."""
    fstype = entry.fstype
    names = option_names(entry.options)
    if fstype == "swap":
        return "swap space: it has no access times"
    if fstype == "ignore":
        return "type 'ignore': the entry is disabled"
    if "bind" in names or "rbind" in names:
        return ("bind mount: it shows a folder of another filesystem; change that "
                "filesystem's own entry")
    if any(t in hostfacts.PSEUDO_FS for t in fstype.split(",")):
        return (f"{fstype} is a pseudo or read-only media filesystem (made by the kernel, "
                "kept in memory or read-only)")
    if _is_network(fstype) and not include_network:
        return (f"{fstype} is a network filesystem (set fstab.include_network = true to "
                "include it)")
    if entry.options_raw is not None and "\\" in entry.options_raw:
        return "the options field uses octal escapes; edit this line by hand"
    if entry.options_raw is not None and entry.options_raw.count('"') % 2:
        return ("the options field has an unbalanced double quote (libmount's option "
                "parser stops there, so an option added after it would be lost); edit this "
                "line by hand")
    return None


TAG_DIRS = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid",
            "PARTLABEL": "by-partlabel"}
_TAG = re.compile(r"(UUID|LABEL|PARTUUID|PARTLABEL)=(.*)\Z", re.S)
_UDEV_SAFE = frozenset("#+-.:=@_")


def udev_encode(value: str) -> str:
    """The name udev gives a by-label/by-partlabel link (``/`` and blanks as \\xHH)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in _UDEV_SAFE or ord(c) > 127
                   else f"\\x{ord(c):02x}" for c in value)


class Resolver:
    """Turns an fstab source or a live mount into identities (``dev:MAJ:MIN``,
    ``path:/dev/x``) that can be compared: through ``<root>/dev/disk/by-*`` links
    resolved inside the root, or ``blkid`` on the live system."""

    def __init__(self, root: HostRoot, *, use_blkid: bool | None = None) -> None:
        self.root = root
        self.use_blkid = root.live if use_blkid is None else use_blkid
        self._cache: dict[str, tuple[set[str], str | None]] = {}

    def _device(self, host: str) -> tuple[set[str], str | None]:
        """Identities of a device path and the path it resolves to (None: missing)."""
        resolved = beneathfs.resolve_beneath(self.root.root, host)
        ids = {"path:" + resolved}
        try:
            st = os.stat(self.root.path(resolved))
        except OSError:
            return ids, None
        if stat.S_ISBLK(st.st_mode):
            ids.add(f"dev:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        return ids, resolved

    def _tag(self, tag: str, value: str) -> str | None:
        d = f"/dev/disk/{TAG_DIRS[tag]}"
        names = [udev_encode(value), value]
        for name in names:
            if name and "/" not in name and os.path.lexists(self.root.path(f"{d}/{name}")):
                return f"{d}/{name}"
        if tag in ("UUID", "PARTUUID"):  # vfat and GPT ids are upper case in some tools
            try:
                for name in os.listdir(self.root.path(d)):
                    if name.lower() == value.lower():
                        return f"{d}/{name}"
            except OSError:
                pass
        if self.use_blkid and execute.which("blkid"):
            try:
                r = execute.run(["blkid", "-c", "/dev/null", "-o", "device", "-t",
                                 f"{tag}={value}"], check=False, timeout=30)
            except CommandError:
                return None
            devs = r.stdout.split()
            if r.returncode == 0 and devs:
                return devs[0]
        return None

    def source(self, spec: str) -> tuple[set[str], str | None]:
        """(identities, resolved device host path or None when it cannot be found)."""
        if spec in self._cache:
            return self._cache[spec]
        m = _TAG.match(spec)
        out: tuple[set[str], str | None]
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            dev = self._tag(m.group(1), value)
            out = self._device(dev) if dev else (set(), None)
        elif spec.startswith("/"):
            out = self._device(spec)
        else:
            out = ({"src:" + spec}, None)
        self._cache[spec] = out
        return out

    def mount(self, m: hostfacts.Mount) -> set[str]:
        ids = {f"dev:{m.dev}"}
        if m.source.startswith("/"):
            ids |= self.source(m.source)[0]
        return ids


@dataclass
class Decision:
    """What happens to one mount point, and why."""

    mount_point: str
    holds: list[str]      # framework data folders on it; or how it was asked for
    state: str = "skip"  # change | ok | skip
    reason: str = ""
    line: int | None = None
    entry: str | None = None
    options: str | None = None
    new_options: str | None = None
    live: dict[str, Any] | None = None
    live_noatime: bool | None = None
    notes: list[str] = field(default_factory=list)
    ambiguous: bool = False  # several entries for it: never guessed, a failed item

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _shown_json(asdict(self))
        return out


def _shown_json(v: Any) -> Any:
    """Every string of a JSON-able value through :func:`shown`."""
    if isinstance(v, str):
        return shown(v)
    if isinstance(v, dict):
        return {shown(str(k)): _shown_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_shown_json(x) for x in v]
    return v


def _live_mount(mp: str, mounts: Sequence[hostfacts.Mount]) -> hostfacts.Mount | None:
    found = [m for m in mounts if norm_target(m.mount_point) == mp]
    return found[-1] if found else None  # the top of a stack of mounts


def plan_noatime(fstab: Fstab, wanted: dict[str, list[str]], mounts: Sequence[hostfacts.Mount],
                 resolver: Resolver | None = None, *, nodiratime: bool = False,
                 include_network: bool = False) -> tuple[list[Decision], Fstab]:
    """Decide for each wanted mount point (-> what it holds) and build the new file."""
    by_target: dict[str, list[Line]] = {}
    for e in fstab.entries:
        by_target.setdefault(norm_target(e.target), []).append(e)
    new_lines = {line.number: line for line in fstab.lines}
    decisions: list[Decision] = []
    for mp, holds in wanted.items():
        d = Decision(mount_point=mp, holds=list(holds))
        decisions.append(d)
        live = _live_mount(mp, mounts)
        if live is not None:
            d.live = {"source": live.source, "fstype": live.fstype,
                      "options": ",".join(live.options)}
            d.live_noatime = "noatime" in live.options
        entries = by_target.get(mp, [])
        if not entries:
            d.reason = (f"no fstab entry for {mp}" + (" (the root filesystem of a "
                        "container, say)" if mp == "/" else "") + "; nothing to change")
            continue
        if len(entries) > 1:
            d.ambiguous = True
            d.reason = (f"{len(entries)} entries for {mp} (lines "
                        f"{', '.join(str(e.number) for e in entries)}): ambiguous, refusing "
                        "to guess which one governs it")
            continue
        e = entries[0]
        d.line, d.entry, d.options = e.number, e.text.strip(), e.options_raw
        why = ineligible_reason(e, include_network=include_network)
        if why:
            d.reason = why
            continue
        if live is not None and resolver is not None and not _is_network(e.fstype):
            ids, dev = resolver.source(e.source)
            if dev is None:
                d.notes.append(f"{e.source} could not be resolved to a device here; matched "
                               "by mount point only")
            elif not ids & resolver.mount(live):
                d.reason = (f"the live mount at {mp} comes from {live.source}, not from "
                            f"this entry's {e.source} ({dev}): refusing to change an entry "
                            "that does not govern it")
                continue
            elif dev != e.source:
                d.notes.append(f"{e.source} is {dev}")
        elif live is None:
            d.notes.append(f"{mp} is not mounted now")
        new = noatime_options(e.options_raw, nodiratime=nodiratime)
        if new == e.options_raw:
            d.state = "ok"
            d.reason = "already noatime"
            if d.live_noatime is False:
                d.reason += (f", but the live mount is not ({d.live['options'] if d.live else ''}"
                             "): run with --remount")
            continue
        d.state, d.new_options = "change", new
        d.reason = (f"{e.fstype}: options {e.options_raw or '(none)'} -> {new}")
        new_lines[e.number] = set_options(e, new)
    new_fstab = Fstab([new_lines[line.number] for line in fstab.lines], fstab.name)
    _self_check(fstab, new_fstab, {d.line: d.new_options for d in decisions
                                   if d.state == "change" and d.line is not None})
    return decisions, new_fstab


def _self_check(old: Fstab, new: Fstab, changed: dict[int, str | None]) -> None:
    """The new text must parse back to the old entries with only the planned options
    fields changed; anything else is a bug, and nothing may be written."""
    again = parse(new.render(), new.name)
    if len(again.lines) != len(old.lines):
        raise OpsError("internal error: the planned fstab has a different number of lines")
    for a, b in zip(old.lines, again.lines, strict=True):
        if a.number not in changed:
            if a.render() != b.render():
                raise OpsError(f"internal error: line {a.number} would change unplanned")
            continue
        same = (a.source, a.target, a.fstype, a.freq, a.passno, a.tail.strip()) == \
               (b.source, b.target, b.fstype, b.freq, b.passno, b.tail.strip())
        if not same or b.options_raw != changed[a.number] or a.eol != b.eol:
            raise OpsError(f"internal error: line {a.number} would change beyond its options")


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


# --- locating the file, mount points of the framework's data -----------------------------

@dataclass
class Target:
    display: str      # what the admin knows it as (host path or --fstab FILE)
    real: Path        # the regular file actually read and written
    host: str | None  # host path of the real file (None for --fstab)


def locate(root: HostRoot, fstab_file: str | None) -> Target:
    """The fstab to work on; a symlinked /etc/fstab resolves (inside the root) to the
    file it points to, which is the one written."""
    if fstab_file is not None:
        real = Path(os.path.realpath(fstab_file))
        display, host = shown(fstab_file), None
    else:
        host = beneathfs.resolve_beneath(root.root, FSTAB)
        real, display = root.path(host), FSTAB
    try:
        st = os.stat(real)
    except FileNotFoundError:
        hint = "" if fstab_file else " (name another file with --fstab FILE)"
        link = f" (a symlink to {host}, which is missing)" if host not in (None, FSTAB) \
            else ""
        raise InputError(f"{display}: no such file{link}{hint}") from None
    except OSError as exc:
        raise InputError(f"{display}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{display}: not a regular file")
    return Target(display, real, host)


def data_mount_points(root: HostRoot, cfg: Any, mounts: Sequence[hostfacts.Mount],
                      fstab: Fstab) -> dict[str, list[str]]:
    """Mount point -> the framework data folders it holds: each folder where
    :func:`mnic_ops.facts.linkrecords.locate` puts its data (a link to the SSD only when
    relocate made it; a link a user made counts for nothing). The trusted prefix (the
    install root, the recorded target base) is resolved inside the root, the rest is
    taken as it is. Without live mounts (an image under --root) the fstab entry with
    the longest matching mount point stands in."""
    from mnic_ops.facts import linkrecords
    from mnic_ops.facts.projects import find_projects

    targets = [norm_target(e.target) for e in fstab.entries if e.target.startswith("/")]
    out: dict[str, list[str]] = {}
    for p in find_projects(root, cfg):
        for kind, loc in linkrecords.locate_all(root, p).items():
            if loc.state not in (linkrecords.FOLDER, linkrecords.RELOCATED):
                continue
            assert loc.prefix is not None
            try:
                os.close(linkrecords.open_location(root, loc))
            except OSError:
                continue  # gone meanwhile, or a link in the way: not followed
            base = beneathfs.resolve_beneath(root.root, loc.prefix)
            real = posixpath.join(base, *loc.parts)
            m = hostfacts.mount_for(real, list(mounts))
            if m is not None:
                mp = norm_target(m.mount_point)
            else:
                inside = [t for t in targets if hostfacts.path_is_within(real, t)]
                if not inside:
                    continue
                mp = max(inside, key=len)
            host = p.data[kind].host_path
            label = host + (f" -> {real}" if real != host else "")
            out.setdefault(mp, []).append(label)
    return out


# --- apply, verify, undo -----------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def backup_path(real: Path) -> Path:
    """``fstab.mnic-ops.<timestamp>`` beside the file (a number added if taken)."""
    base = real.parent / f"{real.name}.mnic-ops.{time.strftime('%Y%m%d-%H%M%S')}"
    p, n = base, 0
    while os.path.lexists(p):
        n += 1
        p = Path(f"{base}.{n}")
    return p


def mounted_over(target: Target, root: HostRoot, mounts: Sequence[hostfacts.Mount]) -> str | None:
    """The mount whose mount point is the fstab file itself (a file bind mount), if any:
    such a file cannot be replaced by rename, only overwritten in place."""
    host = target.host if target.host is not None else (
        str(target.real) if root.live else None)
    if host is None:
        return None
    for m in mounts:
        if norm_target(m.mount_point) == host:
            return m.source if m.root == "/" else f"{m.root} on {m.source}"
    return None


def remove_stale_temporaries(real: Path) -> list[str]:
    """Temporaries a killed earlier run left beside the file, for the file itself or for
    its backup (their process is gone): the original was never replaced by them, so
    they are only litter."""
    removed = []
    mark = safefs.TMP_MARK + "."
    for name in os.listdir(real.parent):
        if not name.startswith(f".{real.name}") or mark not in name:
            continue
        pid = name.split(mark, 1)[1].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            (real.parent / name).unlink(missing_ok=True)
            removed.append(name)
    return removed


def fstab_write_item(target: Target, old: bytes, new: bytes,
                     changed: list[str]) -> Item:
    """The pending change of the whole file: diff now; on apply, candidate beside the
    original -> findmnt --verify (no new error) -> backup -> atomic rename -> read back."""
    before, after = _sha(old), _sha(new)
    display = target.display

    def action(ctx: ApplyContext) -> Undo:
        real = target.real
        if _sha(safefs.read_bytes_nofollow(real)) != before:
            raise OpsError(f"{display}: changed since the plan was made; nothing written, "
                           "run again")
        if not execute.which("findmnt"):
            raise OpsError(f"findmnt not found: cannot verify the new {display}; nothing "
                           "written (install util-linux)")
        remove_stale_temporaries(real)
        current = findmnt_verify(str(real))
        made: list[Path] = []

        def check(tmp: Path) -> None:
            added = new_errors(current, findmnt_verify(str(tmp)))
            if added:
                raise OpsError(f"{display}: findmnt --verify finds new errors in the "
                               f"candidate: {shown('; '.join(added))}; nothing written")
            made.append(safefs.backup(real, backup_path(real)))

        from mnic_ops.changes.filechange import FolderTimes

        times: dict[str, Any] = {}  # /etc gains the backup: undo puts its times back
        try:
            with FolderTimes(times, real.parent):
                safefs.atomic_write(real, new, before_rename=check)
        except OSError as exc:
            for b in made:  # the original is still in place: the copy is not needed
                b.unlink(missing_ok=True)
            if exc.errno == errno.EBUSY:
                raise OpsError(f"{display}: a file is mounted over it, so it cannot be "
                               "replaced atomically; nothing written") from exc
            raise
        if _sha(safefs.read_bytes_nofollow(real)) != after:
            raise OpsError(f"{display}: does not read back as written (backup: {made[0]})")
        return Undo("fstab", {"path": display, "real": str(real), "backup": str(made[0]),
                              "before": before, "after": after, "mount_points": changed,
                              **times})

    return Item(id=f"fstab:{display}",
                description=f"add noatime to {display} for {shown(', '.join(changed))}",
                diff=unified_diff(shown(decode(old)), shown(decode(new)), display),
                action=action, data={"path": display,
                                     "mount_points": [shown(m) for m in changed]})


@undo_handler("fstab")
def _undo_fstab(root: HostRoot, rec: dict[str, Any]) -> str:
    """Put the backup back, only if the file is still exactly what mnic-ops wrote."""
    from mnic_ops.changes.filechange import FolderTimes

    real = rec["real"]
    if _sha(safefs.read_bytes_nofollow(real)) != rec["after"]:
        raise OpsError(f"{rec['path']}: changed since mnic-ops wrote it; not reverting "
                       f"(backup: {rec['backup']})")
    bak = Path(rec["backup"])
    with FolderTimes(rec, os.path.dirname(real), restore=True):
        safefs.copy_verified(rec["backup"], real)
        if _sha(safefs.read_bytes_nofollow(real)) != rec["before"]:
            raise OpsError(f"{rec['path']}: restored copy does not match the original")
        # The backup now duplicates the file in place: remove it, so that undo leaves
        # /etc as it was before mnic-ops touched it (its times too).
        if _sha(safefs.read_bytes_nofollow(bak)) == rec["before"]:
            bak.unlink()
            safefs.fsync_dir(bak.parent)
    return f"restored {rec['path']} (its backup {bak.name} is no longer needed: removed)"


def _atime_mode(options: Iterable[str]) -> str:
    opts = set(options)
    return "noatime" if "noatime" in opts else "relatime" if "relatime" in opts \
        else "strictatime"


def remount_item(root: HostRoot, d: Decision, *, nodiratime: bool) -> Item:
    """``mount -o remount,noatime MP``, then confirm from /proc/self/mountinfo."""
    mp = d.mount_point
    iid = f"remount:{shown(mp)}"
    desc = f"remount {shown(mp)} with noatime"
    if d.live is None:
        return Item(iid, desc, state=SKIPPED, reason="not mounted now; the fstab change "
                    "applies when it is next mounted")
    if d.live_noatime:
        return Item(iid, desc, state=OK, reason="noatime is live")
    if not root.live:
        return Item(iid, desc, state=SKIPPED,
                    reason=f"--root {root} is not the running system")
    prev = _atime_mode(d.live["options"].split(","))
    had_nodiratime = "nodiratime" in d.live["options"].split(",")
    opts = "remount,noatime" + (",nodiratime" if nodiratime else "")
    item = Item(iid, desc, data={"mount_point": shown(mp), "before": d.live["options"]})

    def action(ctx: ApplyContext) -> Undo:
        execute.run(["mount", "-o", opts, mp], timeout=120)
        live = _live_mount(mp, hostfacts.mounts(root, hostfacts.Absent()))
        now = ",".join(live.options) if live else "(not mounted)"
        item.data["after"] = now
        if live is None or "noatime" not in live.options:
            raise OpsError(f"{shown(mp)}: remounted, but /proc/self/mountinfo shows {now}")
        return Undo("fstab-remount", {"mount_point": mp, "previous": prev,
                                      "drop_nodiratime": nodiratime and not had_nodiratime})

    item.action = action
    return item


@undo_handler("fstab-remount")
def _undo_remount(root: HostRoot, rec: dict[str, Any]) -> str:
    """Remount with the access-time mode it had before (``atime`` clears noatime)."""
    mp = rec["mount_point"]
    if not root.live:
        raise OpsError(f"{mp}: a remount can only be reverted on the running system")
    opts = ["remount", "atime"]
    if rec["previous"] != "strictatime":
        opts.append(rec["previous"])
    else:
        opts.append("strictatime")
    if rec.get("drop_nodiratime"):
        opts.append("diratime")
    execute.run(["mount", "-o", ",".join(opts), mp], timeout=120)
    live = _live_mount(mp, hostfacts.mounts(root, hostfacts.Absent()))
    if live is None or "noatime" in live.options:
        raise OpsError(f"{mp}: remounted, but noatime is still live")
    return f"remounted {mp} with {','.join(opts[1:])}"


# --- the command -------------------------------------------------------------------------

def report_text(target: Target, decisions: Sequence[Decision], extra: Sequence[str]) -> str:
    lines = [f"fstab: {target.display}" + (f" (-> {target.host})" if target.host
                                            and target.host != target.display else "")]
    for d in decisions:
        data = [h for h in d.holds if not h.startswith("(")]
        asked = [h[1:-1] for h in d.holds if h.startswith("(")]
        lines.append(f"{d.mount_point}:" + (f" holds {', '.join(data)}" if data else "")
                     + (f" (asked for by {', '.join(asked)})" if asked else ""))
        if d.line is not None:
            lines.append(f"  line {d.line}: {d.entry}")
        if d.live is not None:
            lines.append(f"  live: {d.live['source']} {d.live['fstype']} {d.live['options']}")
        lines.extend(f"  note: {n}" for n in d.notes)
        tag = {"change": "eligible", "ok": "ok", "skip": "not eligible"}[d.state]
        lines.append(f"  {tag}: {d.reason}")
    lines.extend(extra)
    return shown("\n".join(lines))


@click.command("fstab", epilog=EXIT_CODES_HELP)
@click.option("--mount-point", "mount_points", multiple=True, metavar="MP",
              help="Work on this mount point (repeatable); the ones given are the whole "
                   "set. Default: the mount points that hold framework data, plus "
                   "fstab.mount_points from the config.")
@click.option("--fstab", "fstab_file", metavar="FILE", default=None,
              help="Work on FILE instead of <root>/etc/fstab.")
@click.option("--apply", "apply_", is_flag=True,
              help="Write the change (verified with findmnt --verify, backed up, atomic, "
                   "recorded for `mnic-ops undo`). Without it: propose only.")
@click.option("--remount", is_flag=True,
              help="Remount each changed mount point with noatime and confirm it is live.")
@click.option("--check", is_flag=True,
              help="Propose only (the default without --apply); exit 3 when a change is "
                   "pending.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def fstab_cmd(app: AppContext, mount_points: tuple[str, ...], fstab_file: str | None,
              apply_: bool, remount: bool, check: bool, as_json: bool) -> int:
    """Propose noatime in /etc/fstab for the filesystems that hold framework data.

    For each mount point it prints the governing fstab entry and why it is or is not
    eligible, then a unified diff of the whole file. Only the options field of that
    entry changes: noatime is added, relatime/strictatime/atime are removed. Exit 3
    when a change is proposed and not applied, 0 when nothing would change, 1 when a
    mount point of the set has several entries (ambiguous: nothing guessed).
    """
    from mnic_ops.changes.run import run_plan

    if as_json:
        app.json = True
    if check and apply_:
        raise InputError("--check and --apply exclude each other")
    plan, title, extra = build(app, mount_points, fstab_file, apply_=apply_,
                               remount=remount)
    code = run_plan(app, plan, check=not apply_, diff=True, command="fstab",
                    title=title, extra=extra)
    if any(i.state == FAILED for i in plan.items):
        return EXIT_FAILURE
    return code


def build(app: AppContext, mount_points: Sequence[str] = (), fstab_file: str | None = None,
          *, apply_: bool = False, remount: bool = False, also: Sequence[str] = ()
          ) -> tuple[Plan, str, dict[str, Any]]:
    """The fstab plan (the file change, remounts), the report text and the JSON extras.
    ``mount_points`` (``--mount-point``) is the whole set when given; ``also`` adds to
    the automatic one (provision: the SSD the data is about to move to). Pure apart
    from reading, and removing a killed run's temporaries when ``apply_``."""
    cfg = app.config
    nodiratime = bool(cfg.get("fstab.nodiratime", False))
    include_network = bool(cfg.get("fstab.include_network", False))
    for mp in mount_points:
        if not mp.startswith("/"):
            raise InputError(f"--mount-point {shown(mp)}: not an absolute path")
    target = locate(app.root, fstab_file)
    stale = remove_stale_temporaries(target.real) if apply_ else []
    old = safefs.read_bytes_nofollow(target.real)
    fstab = parse(decode(old), target.display)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())

    # --mount-point names the whole set; without it: the mount points that hold
    # framework data, plus fstab.mount_points
    data = data_mount_points(app.root, cfg, mounts, fstab)
    wanted: dict[str, list[str]] = {}
    if mount_points:
        for mp in mount_points:
            holds = wanted.setdefault(norm_target(mp), [])
            if not holds:
                holds.extend(data.get(norm_target(mp), []))
            holds.append("(--mount-point)")
    else:
        for mp, holds in data.items():
            wanted.setdefault(mp, []).extend(holds)
        for mp in cfg.get("fstab.mount_points") or []:
            if not mp.startswith("/"):
                raise InputError(f"fstab.mount_points: {_quoted(mp)} is not an absolute "
                                 "path")
            wanted.setdefault(norm_target(mp), []).append("(fstab.mount_points)")
        for mp in also:
            holds = wanted.setdefault(norm_target(mp), [])
            if not holds:
                holds.append("(relocation target)")

    decisions, new_fstab = plan_noatime(fstab, wanted, mounts, Resolver(app.root),
                                        nodiratime=nodiratime,
                                        include_network=include_network)
    new = encode(new_fstab.render())
    plan = Plan()
    extra = [f"removed {n}: a temporary file an interrupted run left behind" for n in stale]
    verify: dict[str, Any] = {}
    if not wanted:
        extra.append("no framework data found and no --mount-point given: nothing to do")
    changed = [d.mount_point for d in decisions if d.state == "change"]
    if new != old:
        item = plan.add(fstab_write_item(target, old, new, changed))
        over = mounted_over(target, app.root, mounts)
        if over:
            item.state, item.action = FAILED, None
            item.error = (f"a file is mounted over {target.display} (from {over}): it cannot "
                          "be replaced atomically; edit the file behind it instead")
        elif execute.which("findmnt"):
            cur, cand = findmnt_verify(str(target.real)), verify_text(decode(new))
            added = new_errors(cur, cand)
            verify = {"current": cur.to_json(), "candidate": cand.to_json(),
                      "new_errors": [shown(e) for e in added]}
            if added:
                item.state, item.action = FAILED, None
                item.error = ("findmnt --verify finds new errors in the candidate: "
                              + shown("; ".join(added)))
            else:
                extra.append(f"findmnt --verify: the candidate adds no error "
                             f"({sum(cur.errors.values())} already in the current file)")
        else:
            extra.append("findmnt not found: the candidate is not verified (--apply refuses)")
    else:
        plan.add(Item(f"fstab:{target.display}", f"{target.display}", state=OK,
                      reason="nothing to change"))
    # Two entries for one mount point that holds data or was asked for: which one
    # governs it is not guessed, and that is a failure, not a quiet "not eligible".
    for d in decisions:
        if d.ambiguous:
            plan.add(Item(f"fstab:{shown(d.mount_point)}",
                          f"noatime for {shown(d.mount_point)}", state=FAILED,
                          error=f"{shown(d.reason)}; keep one entry for it in "
                                f"{target.display}", contained=True))
    # An explicit set is all or nothing: the admin asked for these mount points, and
    # writing the others while one of them cannot be done would be a surprise.
    ambiguous = [shown(d.mount_point) for d in decisions if d.ambiguous]
    if mount_points and ambiguous:
        for item in plan.items[:1]:  # the file's change comes first
            if item.action is not None:
                item.state, item.action = SKIPPED, None
                item.reason = (f"not written: {', '.join(ambiguous)} asked for with "
                               "--mount-point but ambiguous")
    if remount:
        for d in decisions:
            if d.state == "change" or (d.state == "ok" and d.live_noatime is False):
                plan.add(remount_item(app.root, d, nodiratime=nodiratime))
    if changed and app.root.live and os.path.isdir("/run/systemd/system"):
        extra.append("systemd: after applying, `systemctl daemon-reload` lets the mount "
                     "units pick the change up")

    title = report_text(target, decisions, extra)
    return plan, title, {"fstab": target.display, "fstab_real": shown(str(target.real)),
                         "mount_points": [d.to_json() for d in decisions],
                         "verify": verify}


PROVISION = ProvisionStep(30, "fstab")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    """noatime for the filesystems holding framework data: applied (and remounted) only
    with --apply-fstab / provision.apply_fstab, else shown as a proposal."""
    root = ctx.app.root
    if not root.path("/etc/fstab").exists():
        return [Item(id="fstab", description="noatime in /etc/fstab", state=SKIPPED,
                     reason="no /etc/fstab on this host")]
    # The SSD the data is about to move to holds framework data once this plan is
    # applied: name it now so that one run suffices.
    mps = [ctx.ssd_mount] if ctx.ssd_mount else []
    plan, _title, _extra = build(ctx.app, also=mps,
                                 apply_=ctx.apply_fstab and not ctx.verifying,
                                 remount=ctx.apply_fstab)
    if not ctx.apply_fstab:
        for it in plan.items:
            if it.state == PENDING:
                it.state, it.action = SKIPPED, None
                it.reason = "proposal only: apply with --apply-fstab (diff with --diff)"
    return plan.items
