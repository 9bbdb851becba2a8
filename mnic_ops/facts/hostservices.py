"""Facts: does the host run what a planned change relies on? A cron daemon that reads
``/etc/cron.d``, systemd as its init. Read from the host tree (``--root``), so that an
image is judged by what it will boot, not by the machine looking at it.

*A cron daemon is present* when the tree has one of the daemons that run the jobs in
``/etc/cron.d``: Debian's and Ubuntu's ``cron`` (``/usr/sbin/cron``), cronie
(``/usr/sbin/crond``, ``/usr/bin/crond``) or systemd-cron (its crontab generator). An
``/etc/cron.d`` folder alone does not count: other packages ship files there (e2fsprogs'
``e2scrub_all``) on hosts with no daemon to run them. Busybox's ``crond`` reads only
``/var/spool/cron/crontabs`` and does not count either.

*systemd is present* when it runs the host (``/run/systemd/system`` is a folder: what
``sd_booted()`` checks) or is the init the host boots (``/sbin/init`` resolves, inside
the tree, to systemd's binary: what ``systemd-sysv`` installs). A host without either
would never start the watcher's unit.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from mnic_ops.core import beneathfs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot

CRON_NAMES = frozenset({"cron", "crond"})
CRON_DAEMONS = ("/usr/sbin/cron", "/usr/sbin/crond", "/usr/bin/crond", "/sbin/crond")
CRON_GENERATORS = ("/usr/lib/systemd/system-generators/systemd-crontab-generator",
                   "/lib/systemd/system-generators/systemd-crontab-generator")
SYSTEMD_BINARIES = frozenset({"systemd"})


@dataclass(frozen=True)
class Presence:
    present: bool
    evidence: str  # what was found, or what was looked for


def _executable(root: HostRoot, host_path: str) -> str | None:
    """The host path ``host_path`` resolves to (links followed inside the tree) when it
    is an executable regular file there, else None."""
    try:
        real = beneathfs.resolve_beneath(root.root, host_path)
        st = os.stat(root.path(real))
    except (OSError, OpsError):
        return None
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
        return real
    return None


def cron_daemon(root: HostRoot) -> Presence:
    """Is there a cron daemon that runs ``/etc/cron.d`` jobs on this host?"""
    for p in (*CRON_DAEMONS, *CRON_GENERATORS):
        real = _executable(root, p)
        if real is not None:
            return Presence(True, p if real == p else f"{p} -> {real}")
    return Presence(False, f"none of {', '.join(CRON_DAEMONS)} nor systemd-cron's "
                           "crontab generator")


def systemd(root: HostRoot) -> Presence:
    """Does systemd run this host, or is it the init it boots?"""
    if os.path.isdir(root.path("/run/systemd/system")):
        return Presence(True, "/run/systemd/system (systemd is running)")
    real = _executable(root, "/sbin/init")
    if real is not None and os.path.basename(real) in SYSTEMD_BINARIES:
        return Presence(True, f"/sbin/init -> {real}")
    how = f"/sbin/init is {real}" if real else "no /sbin/init"
    return Presence(False, f"no /run/systemd/system and {how}")


def cron_daemon_tz(proc: str = "/proc") -> str | None:
    """The ``TZ`` the running cron daemon was started with (its jobs' times follow it),
    when the root-owned cron processes (the daemon and the children it forks for jobs)
    all have the same one; else None (cron then runs in the zone of ``/etc/localtime``).
    Whoever runs mnic-ops has a ``TZ`` of their own that cron never sees, and a plain
    user's process that calls itself cron is not cron: neither counts."""
    found: set[str | None] = set()
    try:
        pids = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            if os.stat(f"{proc}/{pid}").st_uid != 0:
                continue
            with open(f"{proc}/{pid}/comm", "rb") as fh:
                if fh.read(64).strip().decode(errors="replace") not in CRON_NAMES:
                    continue
            with open(f"{proc}/{pid}/environ", "rb") as fh:
                env = fh.read(1 << 16).split(b"\0")
        except OSError:
            continue
        found.add(next((e[3:].decode(errors="replace") for e in env
                        if e.startswith(b"TZ=")), None))
    return found.pop() if len(found) == 1 else None
