"""The cron file format and where it is kept: a crontab parsed with python-crontab (a
line cron would not accept is an input error naming it), rendered with our marked jobs
(``mnic-ops:*``) set or removed and the rest untouched, and read back before it is
written; ``/etc/cron.d/mnic-ops`` and users' crontabs (through ``crontab``) read and
written, with undo. python-crontab is imported only when a crontab is parsed."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mnic_ops.changes import filechange
from mnic_ops.changes.model import OK, ApplyContext, Item, Undo, undo_handler, unified_diff
from mnic_ops.core import quoting, safefs
from mnic_ops.core.errors import InputError, OpsError
from mnic_ops.core.hostroot import HostRoot

SYSTEM_FILE = "/etc/cron.d/mnic-ops"
MARK = "mnic-ops:"
HEADER = ("# Managed by mnic-ops (mnic-ops cron install/remove). Jobs marked mnic-ops:* are "
          "replaced on install.")
_ENV_RE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def _crontab() -> Any:
    """python-crontab, imported only when a cron command runs."""
    import crontab

    return crontab


@dataclass
class Target:
    system: bool
    user: str  # the user the jobs run as (system file user field, or the crontab owner)


# --- parsing and rendering with python-crontab ------------------------------------------

class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


@contextmanager
def _library_complaints() -> Iterator[list[str]]:
    """What python-crontab logs about a line it drops, collected (the cause of our
    error) instead of printed to the user's terminal beside it."""
    log = logging.getLogger("crontab")
    said, propagate = _Said(), log.propagate
    log.addHandler(said)
    log.propagate = False
    try:
        yield said.messages
    finally:
        log.removeHandler(said)
        log.propagate = propagate


def parse(text: str, where: str, system: bool) -> Any:
    """A CronTab of ``text``; any line cron would not accept is an input error naming it
    (python-crontab would silently turn it into a comment)."""
    crontab = _crontab()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#") or _ENV_RE.match(s):
            continue
        with _library_complaints() as said:
            try:
                items = list(crontab.CronTab(tab=line + "\n",
                                             user=False if system else None))
            except (ValueError, KeyError) as exc:
                said.append(str(exc))
                items = []
        if len(items) != 1 or not items[0].is_valid() or (system and not items[0].user):
            # python-crontab says why in its log (and drops the line): that is the cause
            why = "; ".join(dict.fromkeys(said)) or (
                "a system crontab line needs a user field" if system else "")
            raise InputError(f"{where}:{n}: not a valid cron line"
                             + (f" ({why})" if why else "") + "; fix or remove it first")
    # our header is put back on top when rendering (python-crontab moves comments
    # below the environment lines)
    text = "".join(line for line in text.splitlines(keepends=True)
                   if line.rstrip("\n") != HEADER)
    return crontab.CronTab(tab=text, user=False if system else None)


def ours(tab: Any) -> list[Any]:
    return [j for j in tab if str(j.comment or "").startswith(MARK)]


def with_jobs(tab: Any, jobs: dict[str, tuple[str, str]], target: Target) -> str:
    """Render ``tab`` with our jobs set to exactly ``jobs`` (others untouched)."""
    current = {str(j.comment): j for j in ours(tab)}
    for marker, job in current.items():
        if marker not in jobs:
            tab.remove(job)
    for marker, (sched, cmd) in jobs.items():
        job = current.get(marker)
        if job is None:
            job = tab.new(command=cmd, comment=marker,
                          user=target.user if target.system else None)
        else:
            job.set_command(cmd)
            if target.system:
                job.user = target.user
        job.setall(sched)
    if target.system:
        tab.env["MAILTO"] = '""'  # our own file: no mail from these jobs
        tab.env["SHELL"] = "/bin/sh"
    text: str = tab.render()
    if target.system:
        text = HEADER + "\n" + text
    _reads_back(text, jobs, target)
    return text if text.endswith("\n") else text + "\n"


def _reads_back(text: str, jobs: dict[str, tuple[str, str]], target: Target) -> None:
    """Our jobs, read back from the rendered text, are exactly the ones meant: one line
    each, same schedule, user and command; anything else is refused, not written."""
    got: dict[str, list[Any]] = {}
    for j in _crontab().CronTab(tab=text, user=False if target.system else None):
        if str(j.comment or "").startswith(MARK):
            got.setdefault(str(j.comment), []).append(j)
    for marker, (sched, cmd) in jobs.items():
        found = got.pop(marker, [])
        ok = len(found) == 1 and str(found[0].command) == cmd and (
            str(found[0].slices) == str(_crontab().CronSlices(sched))) and (
            not target.system or found[0].user == target.user)
        if not ok:
            raise quoting.UnsafeValue(f"the {marker} job does not read back as written "
                                      f"('{quoting.printable(cmd)}'); not writing it")
    if got:
        raise quoting.UnsafeValue(f"unexpected jobs {sorted(got)} in the rendered crontab; "
                                  "not writing it")


def without_jobs(tab: Any) -> str:
    for job in ours(tab):
        tab.remove(job)
    text: str = tab.render()
    return text if not text or text.endswith("\n") else text + "\n"


def has_foreign_jobs(tab: Any) -> bool:
    return any(not str(j.comment or "").startswith(MARK) for j in tab)


# --- reading and writing ----------------------------------------------------------------

def read_system(root: HostRoot) -> str | None:
    try:
        return safefs.read_bytes_nofollow(root.path(SYSTEM_FILE)).decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise InputError(f"{SYSTEM_FILE}: not UTF-8 text") from None


def read_user_crontab(user: str) -> str:
    from mnic_ops.core import execute

    r = execute.run(["crontab", "-l", "-u", user], check=False)
    if r.returncode == 0:
        return r.stdout
    if "no crontab" in r.stderr:
        return ""
    raise OpsError(f"crontab -l -u {user}: {r.stderr.strip() or 'failed'}")


def write_user_crontab(user: str, text: str) -> None:
    from mnic_ops.core import execute

    if text.strip():
        execute.run(["crontab", "-u", user, "-"], input=text)
    else:
        execute.run(["crontab", "-u", user, "-r"], check=False)


def remove_file_item(root: HostRoot, host_path: str, old: str) -> Item:
    return filechange.removal_item(root, host_path, old.encode(), "cron-file-removed")


@undo_handler("cron-file-removed")
def _undo_removed(root: HostRoot, rec: dict[str, Any]) -> str:
    return filechange.restore_removed(rec)


def user_item(user: str, old: str, new: str, description: str) -> Item:
    iid = f"crontab:{user}"
    if old == new:
        return Item(id=iid, description=description, state=OK, reason="already as wanted")

    def action(ctx: ApplyContext) -> Undo:
        if read_user_crontab(user) != old:
            raise OpsError(f"crontab of {user} changed since the plan was made; run again")
        write_user_crontab(user, new)
        return Undo("crontab", {"user": user, "before": old, "after": new})

    return Item(id=iid, description=description,
                diff=unified_diff(old, new, f"crontab:{user}"), action=action,
                data={"user": user})


@undo_handler("crontab")
def _undo_crontab(root: HostRoot, rec: dict[str, Any]) -> str:
    if read_user_crontab(rec["user"]) != rec["after"]:
        raise OpsError(f"crontab of {rec['user']} changed since mnic-ops wrote it; "
                       "not reverting")
    write_user_crontab(rec["user"], rec["before"])
    return f"restored the crontab of {rec['user']}"
