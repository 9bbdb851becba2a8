"""Plan items for whole-file writes (create or replace), with backup and undo.

Used by every capability that owns or edits a file: the item carries the diff, the
action writes atomically after a verified backup, and undo restores the backup (or
removes a file the tool created) only if nobody changed the file since.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from mnic_ops.changes.model import OK, ApplyContext, Item, Undo, undo_handler, unified_diff
from mnic_ops.core import beneathfs, safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _compare(host_path: str, old: bytes, st: os.stat_result | None, data: bytes, *,
             mode: int | None, uid: int | None, gid: int | None, item_id: str | None,
             description: str | None) -> Item | tuple[str, str, str]:
    """The file already as wanted (an ``ok`` item), or the id, description and diff of
    the pending change; shared by the path-based and the beneath-based planners."""
    iid = item_id or f"file:{host_path}"
    desc = description or (f"write {host_path}" if st is None else f"update {host_path}")
    same_meta = st is not None and (
        (mode is None or stat.S_IMODE(st.st_mode) == mode)
        and (uid is None or st.st_uid == uid) and (gid is None or st.st_gid == gid))
    if st is not None and old == data and same_meta:
        return Item(id=iid, description=desc, state=OK, reason="already as wanted")
    try:
        diff = unified_diff(old.decode(), data.decode(), host_path)
    except UnicodeDecodeError:
        diff = f"binary file {host_path} differs\n"
    if st is not None and old == data:
        diff = f"{host_path}: mode/owner change\n"
    return iid, desc, diff


def file_item(
    root: HostRoot,
    host_path: str,
    new: bytes | str,
    *,
    description: str | None = None,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    follow: bool = False,
    item_id: str | None = None,
    beneath: str | None = None,
    make_parents: bool = False,
    beneath_ident: beneathfs.Ident | None = None,
    max_bytes: int = beneathfs.MAX_READ,
) -> Item:
    """Plan writing ``new`` to ``host_path``: ``ok`` when it already holds exactly that
    (and the requested mode/owner), else a pending item with a unified diff.

    ``mode``/``uid``/``gid`` apply to a new file; an existing file keeps its own unless
    given explicitly. ``beneath`` (a host path above ``host_path``, e.g. a user's
    project) makes every read and write go through folder descriptors that follow no
    symlink below it, so the user who owns that tree cannot redirect root;
    ``beneath_ident`` (the install root's identity as the data map found it) makes each
    of them check that ``beneath`` is still that folder (its path may lead elsewhere
    by then: :mod:`mnic_ops.core.installroot`), at planning, writing and undo. A file there of
    more than ``max_bytes`` is refused, never read whole (its owner decides its size).
    ``make_parents`` creates missing folders above a host file (root's, 0755: a bare
    ``--root``); undo removes them again when they are empty.
    """
    if beneath is not None:
        return _file_item_beneath(root, host_path, new, beneath, description=description,
                                  mode=mode, uid=uid, gid=gid, item_id=item_id,
                                  ident=beneath_ident, max_bytes=max_bytes)
    data = new.encode() if isinstance(new, str) else new
    real = root.path(host_path)
    try:
        st: os.stat_result | None = os.lstat(real)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode) and follow:
        real = type(real)(os.path.realpath(real))
        st = os.lstat(real) if os.path.lexists(real) else None
    old = b""
    if st is not None:
        old = safefs.read_bytes_nofollow(real)
    found = _compare(host_path, old, st, data, mode=mode, uid=uid, gid=gid,
                     item_id=item_id, description=description)
    if isinstance(found, Item):
        return found
    iid, desc, diff = found
    before = _sha(old) if st is not None else None

    def action(ctx: ApplyContext) -> Undo:
        # Re-check: the file must still be what we planned against.
        cur = safefs.read_bytes_nofollow(real) if os.path.lexists(real) else None
        if (None if cur is None else _sha(cur)) != before:
            raise OpsError(f"{host_path}: changed since the plan was made; run again")
        rec: dict[str, Any] = {"path": host_path, "real": str(real), "after": _sha(data)}
        if cur is not None:
            bak = ctx.backup_dir() / real.name
            safefs.backup(real, bak)
            rec["backup"] = str(bak)
        else:
            rec["created"] = True
        made = _missing_parents(str(real.parent)) if make_parents else []
        anchor = os.path.dirname(made[0]) if made else os.path.dirname(real)
        if made:
            rec["made_dirs"], rec["folder_anchor"] = made, anchor
        with FolderTimes(rec, anchor):
            for d in made:
                os.mkdir(d, 0o755)
            safefs.atomic_write(real, data, mode=mode, uid=uid, gid=gid, follow=follow)
        return Undo("file", rec)

    return Item(id=iid, description=desc, diff=diff, action=action,
                data={"path": host_path}, payload=(old if st is not None else None, data))


def _file_item_beneath(root: HostRoot, host_path: str, new: bytes | str, beneath: str, *,
                       description: str | None, mode: int | None, uid: int | None,
                       gid: int | None, item_id: str | None, ident: beneathfs.Ident | None,
                       max_bytes: int) -> Item:
    data = new.encode() if isinstance(new, str) else new
    base = root.path(beneath)
    rel = os.path.relpath(os.path.normpath(host_path), os.path.normpath(beneath))
    if rel.startswith("..") or os.path.isabs(rel):
        raise ValueError(f"{host_path} is not below {beneath}")
    got = beneathfs.read_beneath(base, rel, max_bytes=max_bytes, source=host_path,
                              base_ident=ident)
    old, st = (b"", None) if got is None else got
    found = _compare(host_path, old, st, data, mode=mode, uid=uid, gid=gid,
                     item_id=item_id, description=description)
    if isinstance(found, Item):
        return found
    iid, desc, diff = found
    before = _sha(old) if st is not None else None

    def action(ctx: ApplyContext) -> Undo:
        cur = beneathfs.read_beneath(base, rel, max_bytes=max_bytes, source=host_path,
                                  base_ident=ident)
        if (None if cur is None else _sha(cur[0])) != before:
            raise OpsError(f"{host_path}: changed since the plan was made; run again")
        rec: dict[str, Any] = {"path": host_path, "real": str(root.path(host_path)),
                               "after": _sha(data), "beneath": str(base), "rel": rel}
        if ident is not None:
            rec["beneath_ident"] = list(ident)
        if cur is not None:
            bak = ctx.backup_dir() / os.path.basename(rel)
            safefs.backup_data(cur[0], cur[1], bak)
            rec["backup"] = str(bak)
        else:
            rec["created"] = True
        with FolderTimes(rec, base, os.path.dirname(rel), ident=ident):
            beneathfs.atomic_write_beneath(base, rel, data, mode=mode, uid=uid, gid=gid,
                                        base_ident=ident)
        return Undo("file", rec)

    return Item(id=iid, description=desc, diff=diff, action=action,
                data={"path": host_path}, payload=(old if st is not None else None, data))


def _missing_parents(folder: str) -> list[str]:
    """``folder`` and its ancestors that do not exist, top first."""
    out: list[str] = []
    while folder not in ("", "/") and not os.path.lexists(folder):
        out.insert(0, folder)
        folder = os.path.dirname(folder)
    return out


class FolderTimes:
    """Around a change or its undo: the times of a folder the change adds a name to,
    replaces one in or removes one from (a file's folder, a data folder's parent) before
    it, and its mtime after, go into the record; on undo they are put back when nobody
    else changed the folder since (so provision then undo leaves folders as they were,
    times included). ``key`` names the pair in the record (``<key>_before``,
    ``<key>_after``) where one change moves several folders' times."""

    def __init__(self, rec: dict[str, Any], base: str | os.PathLike[str],
                 rel: str = "", *, restore: bool = False, key: str = "folder",
                 ident: beneathfs.Ident | None = None) -> None:
        self.rec, self.base, self.rel, self.restore = rec, base, rel, restore
        self.before, self.after = f"{key}_before", f"{key}_after"
        self.ident = ident
        self.fd = -1
        self.still_ours = False

    def __enter__(self) -> FolderTimes:
        try:
            self.fd = beneathfs.open_beneath(self.base, self.rel or ".",
                                          os.O_RDONLY | os.O_DIRECTORY,
                                          base_ident=self.ident)
        except (OSError, OpsError):
            self.fd = -1
            return self
        if self.restore:
            self.still_ours = os.fstat(self.fd).st_mtime_ns == self.rec.get(self.after)
        else:
            self.rec[self.before] = list(safefs.folder_times(self.fd))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd < 0:
            return
        try:
            if exc[0] is not None:
                return
            if not self.restore:
                self.rec[self.after] = os.fstat(self.fd).st_mtime_ns
            elif self.still_ours and self.before in self.rec:
                before = self.rec[self.before]
                os.utime(self.fd, ns=(before[0], before[1]))
        finally:
            os.close(self.fd)


def _undo_beneath(rec: dict[str, Any]) -> str:
    base, rel = rec["beneath"], rec["rel"]
    raw = rec.get("beneath_ident")
    ident: beneathfs.Ident | None = None
    if isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, int) for x in raw):
        ident = (raw[0], raw[1], raw[2])
    try:
        cur = beneathfs.read_beneath(base, rel, source=rec["path"], base_ident=ident)
    except beneathfs.BaseReplaced as exc:
        raise OpsError(f"{rec['path']}: not reverting: {exc.strerror} (the install at "
                       f"{base} is not the folder mnic-ops wrote into; backup: "
                       f"{rec.get('backup', 'none')})") from None
    if cur is not None and _sha(cur[0]) != rec["after"]:
        raise OpsError(f"{rec['path']}: changed since mnic-ops wrote it; not reverting "
                       f"(backup: {rec.get('backup', 'none')})")
    if rec.get("created"):
        with FolderTimes(rec, base, os.path.dirname(rel), restore=True, ident=ident):
            beneathfs.unlink_beneath(base, rel, base_ident=ident)
        return f"removed {rec['path']}"
    bak = beneathfs.read_beneath(os.path.dirname(rec["backup"]), os.path.basename(rec["backup"]))
    if bak is None:
        raise OpsError(f"{rec['path']}: backup {rec['backup']} is gone; not reverting")
    data, st = bak
    with FolderTimes(rec, base, os.path.dirname(rel), restore=True, ident=ident):
        beneathfs.atomic_write_beneath(base, rel, data, mode=stat.S_IMODE(st.st_mode),
                                    uid=st.st_uid, gid=st.st_gid,
                                    times_ns=(st.st_atime_ns, st.st_mtime_ns),
                                    base_ident=ident)
    return f"restored {rec['path']}"


@undo_handler("file")
def _undo_file(root: HostRoot, rec: dict[str, Any]) -> str:
    if "beneath" in rec:
        return _undo_beneath(rec)
    real = rec["real"]
    if os.path.lexists(real):
        cur = _sha(safefs.read_bytes_nofollow(real))
        if cur != rec["after"]:
            raise OpsError(f"{rec['path']}: changed since mnic-ops wrote it; not reverting "
                           f"(backup: {rec.get('backup', 'none')})")
    with FolderTimes(rec, rec.get("folder_anchor") or os.path.dirname(real), restore=True):
        if rec.get("created"):
            if os.path.lexists(real):
                os.unlink(real)
                safefs.fsync_dir(os.path.dirname(real))
            for d in reversed(rec.get("made_dirs") or []):
                with suppress(OSError):  # not empty: something else lives there now
                    os.rmdir(d)
            return f"removed {rec['path']}"
        safefs.copy_verified(rec["backup"], real)
    return f"restored {rec['path']}"


def removal_item(root: HostRoot, host_path: str, old: bytes, kind: str, *,
                 after: Callable[[], None] | None = None) -> Item:
    """Remove a root-owned file mnic-ops wrote (its cron file, its unit): a verified
    backup first, the folder's times kept, journalled as ``kind`` (whose undo handler
    calls :func:`restore_removed`). A file that changed since the plan was made is left
    alone, as :func:`file_item` does. ``after`` runs once the file is gone."""
    real = root.path(host_path)

    def action(ctx: ApplyContext) -> Undo:
        try:
            now = safefs.read_bytes_nofollow(real)
        except FileNotFoundError:
            now = None
        if now != old:
            raise OpsError(f"{host_path} changed since the plan was made; run again")
        bak = ctx.backup_dir() / real.name
        safefs.backup(real, bak)
        rec = {"path": host_path, "real": str(real), "backup": str(bak)}
        with FolderTimes(rec, real.parent):
            os.unlink(real)
            safefs.fsync_dir(real.parent)
        if after is not None:
            after()
        return Undo(kind, rec)

    return Item(id=f"file:{host_path}", description=f"remove {host_path}",
                diff=unified_diff(old.decode(errors="replace"), "", host_path),
                action=action, data={"path": host_path})


def restore_removed(rec: dict[str, Any]) -> str:
    """Undo of :func:`removal_item`: the verified backup copied back, unless something
    is at the path again."""
    if os.path.lexists(rec["real"]):
        raise OpsError(f"{rec['path']}: exists again; not restoring (backup: "
                       f"{rec['backup']})")
    with FolderTimes(rec, os.path.dirname(rec["real"]), restore=True):
        safefs.copy_verified(rec["backup"], rec["real"])
    return f"restored {rec['path']}"
