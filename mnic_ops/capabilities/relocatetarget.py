"""Where relocate puts the data: the target folder (``--to``, else ``ssd_path``, else the
writable local mount on non-rotational disks with the most free space), why a mount
cannot hold it, and the install's folder name there.

A target on rotational disks (unless ``--force``), tmpfs, a network or pseudo
filesystem, or read-only is refused with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostfacts
from mnic_ops.facts.projects import Project, human

TARGET_DIRNAME = "my-name-is-claude"
# Filesystems that keep owners, modes, symlinks and hardlinks.
POSIX_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs",
                      "jfs", "reiserfs", "nilfs2"})
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


# --- target --------------------------------------------------------------------------

@dataclass
class Target:
    host_path: str
    real: Path
    why: str  # how it was chosen
    mount: hostfacts.Mount | None = None

    def to_json(self) -> dict[str, Any]:
        m = self.mount
        return {"path": self.host_path, "chosen_by": self.why,
                "mount": None if m is None else {
                    "mount_point": m.mount_point, "source": m.source, "fstype": m.fstype,
                    "ssd": m.ssd, "disks": m.disks}}


def existing_ancestor(p: Path) -> Path:
    """``p`` or its nearest existing ancestor (where a new target folder would go)."""
    cur = p
    while not os.path.lexists(cur) and cur != cur.parent:
        cur = cur.parent
    return cur


def free_space(real: Path) -> tuple[int, int]:
    """(bytes, inodes) an unprivileged writer may still use at ``real``."""
    st = os.statvfs(existing_ancestor(real))
    return st.f_bavail * st.f_frsize, st.f_favail


def _unique_mounts(mounts: list[hostfacts.Mount]) -> list[hostfacts.Mount]:
    """One entry per filesystem: its first whole mount (root "/"), not bind mounts."""
    seen: set[str] = set()
    out = []
    for m in mounts:
        if m.root != "/" or m.dev in seen:
            continue
        seen.add(m.dev)
        out.append(m)
    return out


def mount_refusal(m: hostfacts.Mount | None, force: bool) -> str | None:
    """Why a mount cannot hold relocated data, or None."""
    if m is None:
        return "no mount holds it"
    if m.fstype in MEMORY_FS:
        return f"it is on {m.fstype} (memory: gone at the next reboot)"
    if m.network:
        return f"it is on a network filesystem ({m.fstype} {m.source})"
    if m.pseudo:
        return f"it is on a pseudo filesystem ({m.fstype})"
    if m.read_only:
        return f"it is on a read-only mount ({m.mount_point})"
    if m.fstype not in POSIX_FS:
        return (f"{m.fstype} on {m.mount_point} cannot keep owners, modes, symlinks and "
                "hardlinks")
    if not force:
        if m.ssd is False:
            disks = ", ".join(m.disks) or m.source
            return (f"it is on rotational storage ({disks} at {m.mount_point}); "
                    "--force to use it anyway")
        if m.ssd is None:
            return (f"the storage under {m.mount_point} ({m.source}) is of unknown kind "
                    "(no rotational flag); --force to use it anyway")
    return None


def choose_target(root: HostRoot, cfg_ssd: str | None, cfg_ssd_default: str, to: str | None,
                  mounts: list[hostfacts.Mount]) -> Target:
    """``--to``, else ``ssd_path``, else the best SSD mount; InputError when none fits."""
    if to:
        if not to.startswith("/"):
            if not root.live:
                raise InputError(f"--to {to}: give an absolute host path with --root")
            to = os.path.abspath(to)
        host = os.path.normpath(to)
        return Target(host, root.path(host), "--to")
    if cfg_ssd:
        host = os.path.normpath(cfg_ssd)
        real = root.path(host)
        explicit = cfg_ssd != cfg_ssd_default
        if explicit or os.path.lexists(real) or os.path.lexists(real.parent):
            return Target(host, real, "config ssd_path")
    best: tuple[int, hostfacts.Mount] | None = None
    rejected: list[str] = []
    for m in _unique_mounts(mounts):
        if m.pseudo or m.fstype in MEMORY_FS or m.network:
            continue
        why = mount_refusal(m, force=False)
        if why:
            rejected.append(f"{m.mount_point}: {why.split(';')[0]}")
            continue
        real = root.path(m.mount_point)
        if not os.access(real, os.W_OK):
            rejected.append(f"{m.mount_point}: not writable")
            continue
        try:
            free = free_space(real)[0]
        except OSError as exc:
            rejected.append(f"{m.mount_point}: {exc.strerror}")
            continue
        if best is None or free > best[0]:
            best = (free, m)
    if best is None:
        raise InputError(
            "no target: no writable local mount on non-rotational storage found ("
            + ("; ".join(rejected) or "no local mounts") + "); give --to DIR or set "
            "ssd_path in the config")
    mp = best[1].mount_point
    host = "/srv/" + TARGET_DIRNAME if mp == "/" else f"{mp.rstrip('/')}/{TARGET_DIRNAME}"
    return Target(host, root.path(host), f"the SSD mount with most free space ({mp}, "
                  f"{human(best[0])} free)", best[1])


def check_target(t: Target, mounts: list[hostfacts.Mount], force: bool) -> None:
    """Refuse a target that cannot safely hold the data (InputError with the reason)."""
    t.mount = hostfacts.mount_for(t.host_path, mounts)
    why = mount_refusal(t.mount, force)
    if why:
        raise InputError(f"target {t.host_path} ({t.why}): refused: {why}")
    anc = existing_ancestor(t.real)
    try:
        st = os.stat(anc)
    except OSError as exc:
        raise InputError(f"target {t.host_path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"target {t.host_path}: {'' if anc == t.real else 'its parent '}"
                         f"{anc} is not a folder")
    if os.statvfs(anc).f_flag & os.ST_RDONLY:
        raise InputError(f"target {t.host_path}: refused: {anc} is read-only")
    if not os.access(anc, os.W_OK):
        raise InputError(f"target {t.host_path}: refused: {anc} is not writable "
                         "(immutable or permission denied)")


# --- naming -------------------------------------------------------------------------

def project_dirname(p: Project) -> str:
    """Stable, readable and collision-free: the install's folder name plus a hash of its
    full path (two ``~/work/app`` installs of different users do not collide)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", p.name).strip("._") or "install"
    h = hashlib.sha256(p.host_path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{base[:48]}-{h}"
