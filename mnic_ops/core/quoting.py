"""One quoting layer for every value mnic-ops writes into a line-oriented file.

Cron lines (``/etc/cron.d/mnic-ops``, users' crontabs), systemd unit settings, the shell
snippet in ``/etc/profile.d/mnic-ops.sh`` and the ``/etc/sysctl.d`` setting are read one
line at a time by programs that run as root: a line break in a value is a new cron job,
unit directive or shell command. Every value that goes into such a line goes through
one function here, which returns its text for that one place or refuses it with
:class:`UnsafeValue` (an input error that names the value and the character). Nothing is
ever altered silently: a value either reads back exactly as given or is not written.

The rules, each checked by property tests (``tests/security/test_quoting.py``):

- no value may hold a line break or any other control character (Unicode Cc, line and
  paragraph separators, and lone surrogates, which are bytes that are not UTF-8);
- shell: one word per value, single-quoted where needed (:func:`shlex.quote`);
- cron: python-crontab writes each ``%`` of a command as ``\\%`` (cron turns a bare
  ``%`` into a newline and feeds the rest to stdin); a backslash anywhere in a command is
  refused, because cron implementations differ in what they make of ``\\\\`` and
  none can write a backslash right before a ``%``; so is a blank before ``#``, which
  python-crontab would read back as the start of the job's comment;
- systemd: one word, ``%`` doubled (specifiers), ``$`` doubled on command lines
  (variables), double-quoted with ``\\`` and ``"`` escaped where anything but
  ``[A-Za-z0-9_@%+=:,./-]`` appears; a command's program must be an absolute path;
- sysctl.d: a key of letters, digits, ``_``, ``-``, ``.``, ``/``; a value on one line
  with no leading or trailing blanks (they would be lost);
- logrotate.d: an absolute log path of plain characters only (no blank, quote, glob
  character or brace, which logrotate reads as syntax).
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Sequence

from mnic_ops.core.errors import InputError

# Unicode categories that end or corrupt a line: controls (C0 with \n, \r, \t, DEL and
# C1 with NEL), the line and paragraph separators, and surrogates (undecodable bytes).
_BAD_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\0": "a NUL byte"}
_UNIT_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_CRON_COMMENT = re.compile(r"\s#")
_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")


class UnsafeValue(InputError):
    """A value that cannot be written into a generated line without changing its
    meaning or adding a line; refused, never altered."""


def printable(s: str) -> str:
    """``s`` on one line for messages: controls and undecodable bytes as escapes."""
    out = []
    for ch in s:
        if ch == "\\" or (ch.isprintable() and unicodedata.category(ch) not in
                          _BAD_CATEGORIES):
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # surrogateescape: the original byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def bad_char(s: str) -> str | None:
    """What makes ``s`` unwritable on one line (the first offending character and its
    position), or None when it has none."""
    for i, ch in enumerate(s):
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            name = _NAMES.get(ch)
            if name is None:
                cat = unicodedata.category(ch)
                name = ("a byte that is not UTF-8" if cat == "Cs" else
                        f"the control character {printable(ch)}" if cat == "Cc" else
                        f"the line separator {printable(ch)}")
            return f"{name} at character {i + 1}"
    return None


def _refuse(what: str, value: str, why: str, where: str) -> UnsafeValue:
    return UnsafeValue(f"{what}: '{printable(value)}': {why}; it cannot be written into "
                       f"{where}")


def plain_text(value: str, what: str, where: str = "a generated file") -> str:
    """``value`` unchanged when it holds no line break or control character."""
    why = bad_char(value)
    if why:
        raise _refuse(what, value, f"contains {why}", where)
    return value


def comment_text(value: object, what: str = "value") -> str:
    """Text for a ``#`` comment line (shell, cron, unit, sysctl.d): one line."""
    return plain_text(str(value), what, "a comment line")


# --- POSIX shell -----------------------------------------------------------------------

def sh_word(value: str, what: str = "value") -> str:
    """One shell word that the shell reads back as exactly ``value``."""
    return shlex.quote(plain_text(value, what, "a shell command line"))


def sh_command(words: Sequence[str], what: str = "command") -> str:
    """A shell command line of ``words``, each one shell word."""
    if not words:
        raise UnsafeValue(f"{what}: an empty command")
    return " ".join(sh_word(w, what) for w in words)


# --- cron --------------------------------------------------------------------------------

def cron_command(command: str, what: str = "cron command") -> str:
    """``command`` for the command field of a cron line, as handed to python-crontab
    (which writes each ``%`` as ``\\%``, see :func:`cron_escape`). Refused: line breaks
    and controls, and backslashes (after escaping, ``\\%`` must be the only backslash
    in the field: cron reads ``\\\\%`` as a backslash and the end of the command, and
    cron implementations differ on ``\\\\`` elsewhere)."""
    plain_text(command, what, "a cron line")
    if "\\" in command:
        raise _refuse(what, command, "has a backslash", "a cron line")
    if _CRON_COMMENT.search(command):
        raise _refuse(what, command, "has a blank before '#' (crontab tools read the "
                      "rest of the line as a comment)", "a cron line")
    if not command.strip():
        raise UnsafeValue(f"{what}: an empty command")
    return command


def cron_escape(command: str) -> str:
    """The command field as it stands in the crontab: ``%`` -> ``\\%`` (cron(5): an
    unescaped ``%`` ends the command and starts its standard input)."""
    return command.replace("%", "\\%")


def cron_unescape(field: str) -> tuple[str, str | None]:
    """What cron makes of a command field (cron's own rule, do_command.c): the command
    it runs and the standard input it feeds (None when there is no bare ``%``)."""
    out: list[str] = []
    escaped = False
    for i, ch in enumerate(field):
        if escaped:
            if ch == "%":
                out[-1] = "%"  # the backslash goes, the % stays
            else:
                out.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
            out.append(ch)
            continue
        if ch == "%":
            return "".join(out), field[i + 1:].replace("%", "\n")
        out.append(ch)
    return "".join(out), None


def cron_schedule(schedule: str, what: str = "cron schedule") -> str:
    """A schedule of five fields (or an @keyword) that python-crontab and cron accept."""
    plain_text(schedule, what, "a cron line")
    import crontab

    if not crontab.CronSlices.is_valid(schedule):
        raise UnsafeValue(f"{what}: {schedule!r} is not a valid cron schedule (expected "
                          "five fields like '*/30 * * * *')")
    return schedule


# --- systemd ---------------------------------------------------------------------------

def unit_word(value: str, *, exec_line: bool = False, what: str = "value") -> str:
    """``value`` as one word of a unit-file setting: ``%`` doubled (specifiers), for
    command lines ``$`` doubled too (variables), double-quoted where it holds anything
    but ``[A-Za-z0-9_@%+=:,./-]``, with ``\\`` and ``"`` escaped inside the quotes."""
    plain_text(value, what, "a systemd unit")
    s = value.replace("%", "%%")
    if exec_line:
        s = s.replace("$", "$$")
    if _UNIT_SAFE.fullmatch(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_exec(argv: Sequence[str], what: str = "command") -> str:
    """An ``Exec*=`` value: the program by absolute path (so no systemd prefix such as
    ``-`` or ``@`` can be read into it), then its arguments, one word each."""
    if not argv or not argv[0].startswith("/"):
        raise UnsafeValue(f"{what}: '{printable(argv[0] if argv else '')}': the program "
                          "must be an absolute path in a systemd unit")
    return " ".join(unit_word(a, exec_line=True, what=what) for a in argv)


# --- sysctl.d ----------------------------------------------------------------------------

def sysctl_value(value: object, what: str = "sysctl value") -> str:
    """A sysctl.d value: one line, no blanks at either end (sysctl.d strips them)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UnsafeValue(f"{what}: {value!r}: expected an integer or a string")
    s = plain_text(str(value), what, "a sysctl.d file")
    if not s or s != s.strip():
        raise _refuse(what, s, "is empty or has blanks at either end", "a sysctl.d file")
    return s


def sysctl_line(key: str, value: object) -> str:
    """``key = value`` for a sysctl.d file, both checked."""
    if not _SYSCTL_KEY.fullmatch(key):
        raise UnsafeValue(f"sysctl key '{printable(key)}': expected letters, digits, "
                          "'_', '-', '.' and '/'")
    return f"{key} = {sysctl_value(value, key)}"


# --- logrotate.d -------------------------------------------------------------------------

_LOGROTATE_PATH = re.compile(r"/[A-Za-z0-9_@%+=:,./-]*")


def logrotate_path(value: str, what: str = "log path") -> str:
    """A log file name in a logrotate.d file: an absolute path of plain characters
    (logrotate reads blanks and quotes as separators, ``* ? [`` as globs and braces as
    the start and end of a block)."""
    plain_text(value, what, "a logrotate.d file")
    if not _LOGROTATE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise _refuse(what, value, "logrotate would read a blank, quote, glob character "
                      "(* ? [) or brace in a log path as syntax; use letters, digits and "
                      "_@%+=:,./-", "a logrotate.d file")
    return value


# Filters for the Jinja templates of the files above (render registers them).
JINJA_FILTERS = {"comment_text": comment_text, "sh_word": sh_word,
                 "sysctl_value": sysctl_value}
