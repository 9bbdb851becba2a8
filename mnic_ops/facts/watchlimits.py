"""The inotify limits of the user the watcher runs as: the kernel's maximums, the
watches and instances its processes already hold (this machine's /proc), the value
the sysctl file sets, and whether (and how) a number of folders fits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnic_ops.facts import inotify

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot

SYSCTL_FILE = inotify.SYSCTL_FILE


@dataclass
class Limits:
    max_watches: int | None
    max_instances: int | None
    used_watches: int = 0
    used_instances: int = 0
    sysctl_file_value: int | None = None

    def problem(self, need: int) -> str | None:
        """Why ``need`` more watches (and one instance) do not fit, or None."""
        if self.max_instances is not None and self.used_instances + 1 > self.max_instances:
            return (f"fs.inotify.max_user_instances is {self.max_instances} and "
                    f"{self.used_instances} are in use")
        if self.max_watches is not None and \
                not inotify.fits(self.max_watches, need, self.used_watches):
            return (f"{need} folders to watch, but fs.inotify.max_user_watches is "
                    f"{self.max_watches} and {self.used_watches} are in use by this user")
        return None

    def fix(self, need: int) -> str:
        if self.max_instances is not None and self.used_instances + 1 > self.max_instances:
            want_i = inotify.instances_fix(self.used_instances)
            return (f"add `fs.inotify.max_user_instances = {want_i}` to a file in "
                    f"/etc/sysctl.d/ and run `sysctl --system`")
        want = inotify.suggested(need, self.used_watches)
        if self.sysctl_file_value is not None and \
                inotify.fits(self.sysctl_file_value, need, self.used_watches):
            return (f"{SYSCTL_FILE} already sets {self.sysctl_file_value}: run "
                    "`sysctl --system` to apply it")
        return (f"set `fs.inotify.max_user_watches = {want}` in {SYSCTL_FILE} (`mnic-ops "
                "render` writes that file from the tier), then run `sysctl --system`")


def _read_int(root: HostRoot, host_path: str) -> int | None:
    try:
        return int(root.path(host_path).read_text().strip())
    except (OSError, ValueError):
        return None


def inotify_usage(uid: int) -> tuple[int, int]:
    """(watches, instances) held by processes of ``uid`` (this machine's /proc)."""
    watches = instances = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0, 0
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    watches += sum(1 for line in fh if line.startswith("inotify wd:"))
                instances += 1
            except OSError:
                continue
    return watches, instances


def read_limits(root: HostRoot) -> Limits:
    lim = Limits(_read_int(root, "/proc/sys/fs/inotify/max_user_watches"),
                 _read_int(root, "/proc/sys/fs/inotify/max_user_instances"))
    if root.live:
        lim.used_watches, lim.used_instances = inotify_usage(os.geteuid())
    try:
        text = root.path(SYSCTL_FILE).read_text(errors="replace")
        lim.sysctl_file_value = inotify.configured(text)
    except OSError:
        pass
    return lim
