"""Applying the noatime plan: the fstab file located and written (a candidate beside it,
``findmnt --verify`` with no new error, a backup, an atomic rename, read back), and the
live remount; each recorded for ``mnic-ops undo`` with its handler here.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnic_ops.capabilities.fstabplan import Decision, live_mount
from mnic_ops.changes.model import OK, SKIPPED, ApplyContext, Item, Undo, undo_handler, unified_diff
from mnic_ops.core import beneathfs, execute, safefs
from mnic_ops.core.errors import InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostfacts
from mnic_ops.facts.fstabfile import decode, findmnt_verify, new_errors, norm_target, shown

FSTAB = "/etc/fstab"


# --- locating the file ---------------------------------------------------------------------

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
        live = live_mount(mp, hostfacts.mounts(root, hostfacts.Absent()))
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
    live = live_mount(mp, hostfacts.mounts(root, hostfacts.Absent()))
    if live is None or "noatime" in live.options:
        raise OpsError(f"{mp}: remounted, but noatime is still live")
    return f"remounted {mp} with {','.join(opts[1:])}"
