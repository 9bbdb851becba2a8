"""doctor's checks of the host: a cleanup cron job, the watcher running, the inotify
limit for the folders to watch, PYTHONOPTIMIZE for the owners of installs, and drift of
the tier configs from the host class (render's own plan)."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mnic_ops.capabilities import render
from mnic_ops.capabilities.doctorreport import Check, fix_command, short
from mnic_ops.core import safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.facts import inotify
from mnic_ops.facts.processes import Proc
from mnic_ops.facts.projects import Project

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

log = logging.getLogger(__name__)


def _read_text(root: HostRoot, host_path: str, limit: int = 1 << 20) -> str | None:
    try:
        fd = safefs.open_nofollow(root.path(host_path))
    except (OSError, OpsError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


_CRON_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def _clean_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.strip().startswith("#")
            and re.search(r"\bmnic-ops\b.*\bclean\b", ln)]


def cron_check(root: HostRoot) -> Check:
    """A cleanup job: /etc/cron.d/mnic-ops (or another cron.d file, /etc/crontab, a
    spooled user crontab) with an ``mnic-ops clean`` line."""
    found: list[str] = []
    ignored: list[str] = []
    files = ["/etc/crontab"]
    for d in ("/etc/cron.d", "/var/spool/cron/crontabs", "/var/spool/cron"):
        try:
            names = sorted(os.listdir(root.path(d)))
        except OSError:
            continue
        files += [f"{d}/{n}" for n in names]
    for f in files:
        text = _read_text(root, f)
        if text is None or not _clean_lines(text):
            continue
        if f.startswith("/etc/cron.d/") and not _CRON_NAME_OK.match(os.path.basename(f)):
            ignored.append(f)
        else:
            found.append(f)
    fix = "install the cleanup jobs (daily compression, expiry every 30 minutes)"
    if found:
        return Check("cron", "ok", details={"files": found})
    if ignored:
        return Check("cron", "fail", "cleanup job only in a file cron ignores (names with "
                                     "dots are skipped in /etc/cron.d): " + ", ".join(ignored),
                     fix, fix_command(root, "cron", "install"), {"ignored": ignored})
    return Check("cron", "fail", "no cleanup cron job (no `mnic-ops clean` line in "
                                 "/etc/cron.d/mnic-ops, /etc/crontab or a crontab)",
                 fix, fix_command(root, "cron", "install"))


def watcher_check(root: HostRoot, found: list[Proc]) -> Check:
    if found:
        return Check("watcher", "ok", details={"pids": [w.pid for w in found]})
    where = "" if root.live else f" for --root {root.root}"
    return Check("watcher", "fail", f"watcher not running (no `mnic-ops watch` process"
                                    f"{where})",
                 "writes the systemd unit; then start it: systemctl enable --now "
                 "mnic-ops-watch.service",
                 fix_command(root, "watch", "--install-unit"))


SYSCTL_FILE = inotify.SYSCTL_FILE


def inotify_check(root: HostRoot, dirs: int) -> Check:
    """The watcher needs one inotify watch per folder; ``max_user_watches`` is per user
    and shared with every other root process: :func:`mnic_ops.facts.inotify.fits`, the rule
    render sizes the sysctl file by and the watcher checks before it uses inotify."""
    raw = _read_text(root, "/proc/sys/fs/inotify/max_user_watches")
    try:
        limit = int((raw or "").strip())
    except ValueError:
        return Check("inotify", "skip", "/proc/sys/fs/inotify/max_user_watches unreadable",
                     details={"watches_needed": dirs})
    details = {"watches_needed": dirs, "max_user_watches": limit}
    if inotify.fits(limit, dirs):
        return Check("inotify", "ok", details=details)
    want = inotify.suggested(dirs)
    conf = _read_text(root, SYSCTL_FILE)
    conf_val = inotify.configured(conf) if conf else None
    details["suggested"] = want
    if conf_val is not None and inotify.fits(conf_val, dirs):
        return Check("inotify", "fail",
                     f"inotify limit too low: {dirs} folders to watch, max_user_watches "
                     f"{limit}; {SYSCTL_FILE} sets {conf_val} but it is not loaded",
                     f"load it: sysctl -p {SYSCTL_FILE}", None, details)
    return Check("inotify", "fail",
                 f"inotify limit too low: {dirs} folders to watch, max_user_watches "
                 f"{limit} (room kept for other watchers)",
                 f"set fs.inotify.max_user_watches = {want} in {SYSCTL_FILE} "
                 f"(`mnic-ops render` writes that file), then sysctl -p {SYSCTL_FILE}",
                 fix_command(root, "render"), details)


_PYOPT = re.compile(r"^\s*(?:export\s+)?PYTHONOPTIMIZE=(['\"]?)([^'\"\s;]*)\1")
_CASE_HEAD = re.compile(r"^\s*case\s+.*?\s+in(?:\s+|$)")
_CASE_BRANCH = re.compile(r"^\s*\(?\s*([0-9][0-9|\s]*)\)")


def optimize_for(text: str) -> tuple[bool, set[int]]:
    """Who a shell profile sets a non-zero PYTHONOPTIMIZE for: (everyone, uids). Knows
    the plain ``export`` line of the guide and render's ``case "$(id -u)" in UID|UID)``
    form, which sets it only for the owners of framework installs."""
    everyone, uids = False, set()
    branch: set[int] | None = None
    for line in text.splitlines():
        s = line.split("#", 1)[0]
        if not s.strip():
            continue
        s = _CASE_HEAD.sub("", s, count=1)
        m = _CASE_BRANCH.match(s)
        if m and "PYTHONOPTIMIZE" not in s.split(")", 1)[0]:
            branch = {int(u) for u in re.findall(r"\d+", m.group(1))}
            s = s.split(")", 1)[1]
        for part in s.split(";"):
            pm = _PYOPT.match(part)
            if pm and pm.group(2) not in ("", "0"):
                if branch is None:
                    everyone = True
                else:
                    uids |= branch
        if ";;" in s or s.strip() == "esac":
            branch = None
    return everyone, uids


def pythonoptimize_check(root: HostRoot, projects: list[Project]) -> Check:
    """PYTHONOPTIMIZE for every owner of an install (root excluded, as render does: it
    strips asserts from every Python program the user runs)."""
    users = {p.uid: p.user for p in projects if p.uid != 0}
    if not users:
        return Check("pythonoptimize", "skip", "every install is owned by root, which is "
                                               "left out on purpose")
    covered: set[int] = set()
    files = []
    for f in ("/etc/profile.d/mnic-ops.sh", "/etc/environment"):
        text = _read_text(root, f)
        if text is None:
            continue
        everyone, uids = optimize_for(text)
        if everyone or uids & set(users):
            files.append(f)
        covered |= set(users) if everyone else uids
    missing = sorted(users[u] for u in set(users) - covered)
    if not missing:
        return Check("pythonoptimize", "ok", details={"files": files})
    return Check("pythonoptimize", "fail",
                 f"PYTHONOPTIMIZE not set for framework users {', '.join(missing)} (in "
                 "/etc/profile.d/mnic-ops.sh or /etc/environment)",
                 "render /etc/profile.d/mnic-ops.sh, which exports it for install owners "
                 "(the guide: 15-20% faster)", fix_command(root, "render"), {"users": missing})


def tier_drift_check(app: AppContext, names: Sequence[str]) -> Check:
    """Pending items of ``render``'s plan are drift from the host class (the same plan
    ``mnic-ops render --check`` prints)."""
    again = fix_command(app.root, "render", "--check", "--diff", *names)
    try:
        res = render.build(app, None, list(names))
    except OpsError as exc:
        return Check("tier_drift", "fail", f"tier configs cannot be planned: {exc.message}",
                     "fix what the message names, then look again", again)
    except Exception as exc:  # a render bug must not cost the admin the whole report
        log.debug("render.build failed", exc_info=True)
        return Check("tier_drift", "skip", f"render could not plan: "
                                           f"{type(exc).__name__}: {exc}")
    plan = res[0] if isinstance(res, tuple) else res
    items = list(getattr(plan, "items", []))
    refused = [it for it in items if it.state == "failed"]
    if refused:
        return Check("tier_drift", "fail",
                     "tier configs cannot be rendered: "
                     + short([it.error or it.description for it in refused]),
                     "fix the files named, then look again", again,
                     {"refused": [it.error or it.description for it in refused]})
    pending = [it.description for it in items if it.state == "pending"]
    if not pending:
        return Check("tier_drift", "ok")
    return Check("tier_drift", "fail",
                 f"{len(pending)} tier configs drifted from the host class: {short(pending)}",
                 f"see the diff first: {again}", fix_command(app.root, "render", *names),
                 {"pending": pending})
