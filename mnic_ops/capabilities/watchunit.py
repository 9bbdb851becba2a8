"""The watcher's systemd unit: its text (restart on failure, a sandbox in which only the
data folders it compresses and mnic-ops's state folder are writable), the enable link,
the service's (re)start, and the plans that install and remove them, journalled for
undo."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mnic_ops.capabilities.watchroots import REFUSED, build_roots
from mnic_ops.changes import filechange
from mnic_ops.changes.model import OK, ApplyContext, Item, Undo, undo_handler
from mnic_ops.core import quoting, safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.engines import cleanjobs
from mnic_ops.facts import policy
from mnic_ops.facts.projects import Project

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

unit_path = "/etc/systemd/system/mnic-ops-watch.service"
UNIT_NAME = "mnic-ops-watch.service"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/mnic-ops-watch.service"

_UNIT_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")


def unit_word(s: str, *, exec_line: bool = False) -> str | None:
    """``s`` as one word of a unit-file setting (:func:`quoting.unit_word`), or None when
    it cannot be written there (control characters, bytes that are not UTF-8)."""
    try:
        return quoting.unit_word(s, exec_line=exec_line)
    except quoting.UnsafeValue:
        return None


def _under(path: str, tops: Iterable[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)


def service_argv(app: AppContext, extra: Sequence[str] = ()) -> list[str]:
    """The absolute command line of this mnic-ops running the watcher as a service."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "mnic-ops" and os.path.isfile(argv0):
        cmd = [os.path.abspath(argv0)]
    elif found := shutil.which("mnic-ops"):
        cmd = [os.path.abspath(found)]
    else:
        cmd = [os.path.abspath(sys.executable), "-m", "mnic_ops"]
    if app.config_path:
        cmd += ["--config", os.path.abspath(app.config_path)]
    return [*cmd, "watch", "--service", *extra]


def writable_paths(app: AppContext, projects: Sequence[Project],
                   extra: Sequence[str] = ()) -> list[str]:
    """Host paths of the folders the watcher writes: every data folder it would watch,
    under its own name and, for relocated data, its link's target (absent ones too, they
    may appear), plus ``extra`` (the relocation target when provision is about to move
    data there, so that the unit is the same before and after the move)."""
    cleanjobs.engine(app.config)  # a bad config is refused here as where the watcher starts
    roots = build_roots(app, projects, policy.tier_clean(app))
    ok = [r for r in roots if r.prefix is not None and r.state != REFUSED]
    paths = sorted({r.target_host for r in ok} | {r.host_path for r in ok}
                   | {os.path.normpath(p) for p in extra})
    out: list[str] = []
    for p in paths:  # sorted: a parent comes before its children
        if not _under(p, out):
            out.append(p)
    return out


def render_unit(app: AppContext, paths: Sequence[str], argv: Sequence[str]) -> str:
    """The unit file text: restart on failure, and a sandbox in which the whole system
    is read-only except the data folders and mnic-ops's state folder."""
    exec_start = quoting.unit_exec(argv, "the command that runs the watcher")
    kill = quoting.unit_exec([shutil.which("kill") or "/bin/kill"], "kill")
    rw: list[str] = []
    left_out = 0
    for p in paths:
        w = unit_word("-" + p)
        if w is None:
            left_out += 1
        else:
            rw.append(w)
    considered = [*paths, argv[0], *([os.path.abspath(app.config_path)]
                                     if app.config_path else [])]
    lines = [
        "# Managed by mnic-ops (`mnic-ops watch --install-unit`, `mnic-ops provision`);",
        "# local changes are overwritten: put them in a drop-in "
        "(systemctl edit mnic-ops-watch).",
        "[Unit]",
        "Description=mnic-ops watcher: gzip finished My Name Is Claude data as it settles",
        "After=local-fs.target remote-fs.target",
    ]
    lines += [f"RequiresMountsFor={p}" for p in paths if _UNIT_SAFE.fullmatch(p)
              and "%" not in p]
    lines += [
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + exec_start,
        f"ExecReload={kill} -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5s",
        "# SIGTERM finishes or rolls back the file in hand; files still settling are saved",
        "TimeoutStopSec=90s",
        "Nice=10",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
        "",
        "# Sandbox: everything read-only but the data folders it compresses in place and",
        "# /var/lib/mnic-ops (locks shared with `clean`, files still settling). A missing",
        "# folder (-) does not stop the start; one that appears later makes the watcher",
        "# exit for a restart, which gives the new sandbox write access to it.",
        "ProtectSystem=strict",
        *(f"ReadWritePaths={w}" for w in rw),
        *([f"# {left_out} data folder(s) left out: their names cannot be written here"]
          if left_out else []),
        "StateDirectory=mnic-ops",
        "StateDirectoryMode=0700",
        "# /run/mnic-ops/watch-state.json: its heartbeat (counters, no names), for doctor",
        "RuntimeDirectory=mnic-ops",
        "RuntimeDirectoryMode=0755",
    ]
    if _under_any(considered, HOME_DIRS):
        lines += ["# No ProtectHome=: data folders (or mnic-ops) live under /home or /root,",
                  "# and ReadWritePaths= cannot reopen a hidden home; ProtectSystem=strict",
                  "# already keeps the rest of it read-only."]
    else:
        lines.append("ProtectHome=yes")
    if _under_any(considered, TMP_DIRS):
        lines.append("# No PrivateTmp=: a data folder lives under /tmp or /var/tmp.")
    else:
        lines.append("PrivateTmp=yes")
    lines += [
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "IPAddressDeny=any",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "# Give archives the owner, mode and times of the original (CHOWN, FOWNER, FSETID),",
        "# read and write users' folders (DAC_*), take leases that prove no writer has a",
        "# file open (LEASE) and, where leases do not work, look for writers in /proc",
        "# (SYS_PTRACE; for the same reason ProtectProc= is not set).",
        "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER "
        "CAP_FSETID CAP_LEASE CAP_SYS_PTRACE",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _under_any(paths: Iterable[str], tops: Iterable[str]) -> bool:
    tops = tuple(tops)
    return any(_under(p, tops) for p in paths)


def systemd_running(root: HostRoot) -> bool:
    return root.live and os.path.isdir("/run/systemd/system")


def _service_active() -> bool:
    from mnic_ops.core import execute

    return execute.run(["systemctl", "is-active", "--quiet", UNIT_NAME],
                       check=False).returncode == 0


def _link_item(root: HostRoot, want: str | None) -> Item:
    """The multi-user.target.wants link that enables the unit at boot (``want`` is the
    target to set, or None to remove it)."""
    real = root.path(WANTS_LINK)
    try:
        cur: str | None = os.readlink(real)
    except FileNotFoundError:
        cur = None
    except OSError:
        if os.path.lexists(real):
            return Item(id=f"link:{WANTS_LINK}", description=f"enable {UNIT_NAME}",
                        state="failed", error=f"{WANTS_LINK} exists and is not a symlink")
        cur = None
    desc = f"enable {UNIT_NAME} at boot" if want else f"disable {UNIT_NAME}"
    if cur == want or (want is None and cur != unit_path):
        return Item(id=f"link:{WANTS_LINK}", description=desc, state=OK,
                    reason="already as wanted" if cur == want else "not ours")

    def action(ctx: ApplyContext) -> Undo:
        rec = {"path": WANTS_LINK, "real": str(real), "before": cur, "after": want}
        _set_link(real, want, rec)
        return Undo("watch-link", rec)

    diff = f"{WANTS_LINK}: {cur or '(none)'} -> {want or '(removed)'}\n"
    return Item(id=f"link:{WANTS_LINK}", description=desc, diff=diff, action=action,
                data={"path": WANTS_LINK, "expected": want, "actual": cur})


def _set_link(real: Any, target: str | None, rec: dict[str, Any], *,
              restore: bool = False) -> None:
    """Set (or remove) the link; the times of its folder go into ``rec`` (restored when
    undoing), and a folder made for it (``made_dir``) goes again on undo."""
    from mnic_ops.changes.filechange import FolderTimes

    folder = os.path.dirname(real)
    if target is None:
        if os.path.islink(real):
            if not restore:  # an undo makes it again: with its own times too
                st = os.lstat(real)
                rec["link_times"] = [st.st_atime_ns, st.st_mtime_ns]
            with FolderTimes(rec, folder, restore=restore, key="link_folder"):
                os.unlink(real)
                safefs.fsync_dir(folder)
        made = rec.get("made_dir")
        if restore and made and folder == made:
            with contextlib.suppress(OSError), FolderTimes(rec, os.path.dirname(made),
                                                          restore=True,
                                                          key="made_dir_parent"):
                os.rmdir(made)  # only when empty: someone else's link keeps it
        return
    if not os.path.isdir(folder):
        with FolderTimes(rec, os.path.dirname(folder), key="made_dir_parent"):
            os.makedirs(folder, mode=0o755, exist_ok=True)
        rec["made_dir"] = folder
    with FolderTimes(rec, folder, restore=restore, key="link_folder"):
        tmp = os.path.join(folder, safefs.tmp_name(os.path.basename(real)))
        os.symlink(target, tmp)
        try:
            if restore and rec.get("link_times"):
                os.utime(tmp, ns=tuple(rec["link_times"]), follow_symlinks=False)
            os.rename(tmp, real)
        except BaseException:
            os.unlink(tmp)
            raise
        safefs.fsync_dir(folder)


@undo_handler("watch-link")
def _undo_link(root: HostRoot, rec: dict[str, Any]) -> str:
    try:
        cur: str | None = os.readlink(rec["real"])
    except OSError:
        cur = None
    if cur != rec["after"]:
        raise OpsError(f"{rec['path']}: changed since mnic-ops set it; not reverting")
    _set_link(rec["real"], rec["before"], rec, restore=True)
    return f"restored {rec['path']}" if rec["before"] else f"removed {rec['path']}"


def _service_item(start: bool, changed: bool) -> Item | None:
    """Live hosts with systemd running: (re)start after an install, stop before a
    removal."""
    from mnic_ops.core import execute

    active = _service_active()
    if start:
        desc = f"reload systemd and (re)start {UNIT_NAME}"
        if active and not changed:
            return Item(id=f"service:{UNIT_NAME}", description=desc, state=OK,
                        reason="running with this unit")
    else:
        desc = f"stop {UNIT_NAME}"
        if not active:
            return None

    def action(ctx: ApplyContext) -> Undo:
        execute.run(["systemctl", "daemon-reload"])
        execute.run(["systemctl", "restart" if start else "stop", UNIT_NAME])
        return Undo("watch-service", {"did": "start" if start else "stop"})

    return Item(id=f"service:{UNIT_NAME}", description=desc, action=action)


@undo_handler("watch-service")
def _undo_service(root: HostRoot, rec: dict[str, Any]) -> str:
    from mnic_ops.core import execute

    if not systemd_running(root):
        return "systemd is not running here: nothing to stop or start"
    verb = "stop" if rec.get("did") == "start" else "start"
    execute.run(["systemctl", "daemon-reload"])
    execute.run(["systemctl", verb, UNIT_NAME], check=False)
    return f"{verb} {UNIT_NAME}"


def _daemon_reload(root: HostRoot) -> None:
    if systemd_running(root):
        from mnic_ops.core import execute

        execute.run(["systemctl", "daemon-reload"], check=False)


@undo_handler("watch-file-removed")
def _undo_removed(root: HostRoot, rec: dict[str, Any]) -> str:
    return filechange.restore_removed(rec)


def plan_unit(app: AppContext, projects: Sequence[Project],
              extra_args: Sequence[str] = (), extra_paths: Sequence[str] = ()) -> list[Item]:
    """Items that install the watcher's unit for these installs: the unit file (atomic,
    journalled), its enable link, and on a live host with systemd running a
    daemon-reload and (re)start. Pure: nothing is written until the plan is applied."""
    from mnic_ops.changes.filechange import file_item

    text = render_unit(app, writable_paths(app, projects, extra_paths),
                       service_argv(app, extra_args))
    unit = file_item(app.root, unit_path, text, mode=0o644, uid=0, gid=0,
                     item_id=f"file:{unit_path}", make_parents=True,  # a bare --root
                     description=f"write the watcher unit {unit_path}")
    items = [unit]
    items.append(_link_item(app.root, unit_path))
    if systemd_running(app.root):
        changed = any(i.state != OK for i in items)
        svc = _service_item(True, changed)
        if svc is not None:
            items.append(svc)
    return items


def plan_remove_unit(app: AppContext) -> list[Item]:
    """Items that stop (live), disable and remove the watcher's unit, journalled."""
    items: list[Item] = []
    if systemd_running(app.root):
        svc = _service_item(False, True)
        if svc is not None:
            items.append(svc)
    items.append(_link_item(app.root, None))
    real = app.root.path(unit_path)
    try:
        old = safefs.read_bytes_nofollow(real)
    except FileNotFoundError:
        items.append(Item(id=f"file:{unit_path}", description=f"remove {unit_path}",
                          state=OK, reason="not installed"))
    else:
        items.append(filechange.removal_item(app.root, unit_path, old, "watch-file-removed",
                                             after=lambda: _daemon_reload(app.root)))
    return items
