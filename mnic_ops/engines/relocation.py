"""Carrying out one recorded relocation, from its record alone (so that recovery and undo
can too): out (the data folder moves to the target, a symlink is left behind) or back,
through :mod:`mnic_ops.engines.treemove`; the install's folder on the target made with
its owner and mode; the link record kept in step with the disk; the times of the
folders a move changes; and the undo handler of a recorded move.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from mnic_ops.changes.model import undo_handler
from mnic_ops.core import installroot, safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import movejournal, moveplace, treemove
from mnic_ops.engines.pendingmoves import JOURNAL_DIR
from mnic_ops.facts import holders, linkrecords

log = logging.getLogger(__name__)


@contextmanager
def folder_times(root: HostRoot, rec: dict[str, Any], *, restore: bool = False
                  ) -> Iterator[None]:
    """The folders a move adds or removes a name in: the data folder's parent in the
    install (the link and the folder swap there) and, on the target, the folder above
    what the move creates. Their times go into the record, and undo puts them back
    (see :class:`mnic_ops.changes.filechange.FolderTimes`)."""
    from mnic_ops.changes.filechange import FolderTimes

    created = rec.get("created_dirs") or []
    anchor = os.path.dirname(created[0]) if created else rec["dest_base"]
    with FolderTimes(rec, root.path(rec["project"]), os.path.dirname(rec["public_rel"]),
                     restore=restore, key="public_parent"), \
            FolderTimes(rec, root.path(anchor), restore=restore, key="target_parent"):
        yield


def places(root: HostRoot, rec: dict[str, Any]) -> tuple[moveplace.Place, moveplace.Place]:
    """The data folder (below the install root, checked to be the one found) and its
    place on the target (below the admin's target base)."""
    return (moveplace.Place(str(root.path(rec["project"])), rec["public_rel"],
                           rec.get("root_ident")),
            moveplace.Place(str(root.path(rec["dest_base"])), rec["dest_rel"]))


def _make_base(root: HostRoot, host_dir: str) -> None:
    """Create the missing folders of the target base, root's and 0755 whatever root's
    umask (``mkdir`` alone gives 0700 under ``umask 077``, and the install's owner could
    not reach her own data)."""
    for d in missing_dirs(root, host_dir):
        real = root.path(d)
        try:
            os.mkdir(real, 0o755)
        except FileExistsError:
            continue
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)
        safefs.fsync_dir(real.parent)


def _install_mode(root: HostRoot, rec: dict[str, Any]) -> int:
    """The install root's permission bits, read from the folder the data map found."""
    fd = os.open(root.path(rec["project"]), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
    try:
        ident = rec.get("root_ident")
        installroot.check(fd, tuple(ident) if ident else None, rec["project"])
        return stat.S_IMODE(os.fstat(fd).st_mode) & 0o777
    finally:
        os.close(fd)


def _give(fd: int, rec: dict[str, Any], mode: int) -> None:
    uid, gid = rec["owner"]
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode | 0o700)  # set, not masked by root's umask


def _ensure_project_dir(root: HostRoot, rec: dict[str, Any]) -> None:
    """Create ``<target>`` (root's, 0755) and ``<target>/<install>-<hash>`` (owned by
    the install's owner, with the install root's mode) when missing.

    The install's folder is made under a temporary name, given its owner and mode, and
    only then renamed into place: a ``kill -9`` never leaves it root's and out of the
    owner's reach. One left so by an older mnic-ops (root's, with that exact name, in
    a root-owned target where no user can make one) is repaired; one of another user is
    refused."""
    _make_base(root, rec["dest_base"])
    base = root.path(rec["dest_base"])
    slug = rec["dest_rel"].split("/")[0]
    where = f"{rec['dest_base']}/{slug}"
    mode = _install_mode(root, rec)
    bfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _drop_stale_tmp(bfd, slug)
        if _lstat_at(bfd, slug) is None:
            tmp = safefs.tmp_name(slug)
            os.mkdir(tmp, 0o700, dir_fd=bfd)
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=bfd)
                try:
                    _give(fd, rec, mode)
                finally:
                    os.close(fd)
                safefs.renameat2(bfd, tmp, bfd, slug, safefs.RENAME_NOREPLACE)
                tmp = ""
            except FileExistsError:
                pass  # made meanwhile (another mnic-ops): checked below like any other
            finally:
                if tmp:
                    with suppress(OSError):
                        os.rmdir(tmp, dir_fd=bfd)
            os.fsync(bfd)
        st = _lstat_at(bfd, slug)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise OpsError(f"{where}: exists and is not a folder; refusing to use it")
        if st.st_uid == rec["owner"][0]:
            return
        if st.st_uid != 0:
            raise OpsError(f"{where}: exists and belongs to uid {st.st_uid}, not to the "
                           f"install's owner (uid {rec['owner'][0]}); refusing to put its "
                           "data there")
        fd = os.open(slug, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=bfd)
        try:
            if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                raise OpsError(f"{where}: changed while being checked; run again")
            _give(fd, rec, mode)
        finally:
            os.close(fd)
        os.fsync(bfd)
        log.warning("%s: was root's (left by an interrupted relocate); given to the "
                    "install's owner (uid %d), mode %04o", where, rec["owner"][0],
                    mode | 0o700)
    finally:
        os.close(bfd)


def _drop_stale_tmp(bfd: int, slug: str) -> None:
    """Empty temporaries of the install's folder that a killed relocate left (its
    process is gone): removed."""
    prefix = f".{slug}{safefs.TMP_MARK}."
    with suppress(OSError):
        for name in os.listdir(bfd):
            if not name.startswith(prefix):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and \
                    not os.path.exists(f"/proc/{pid}"):
                with suppress(OSError):
                    os.rmdir(name, dir_fd=bfd)  # only when empty


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def missing_dirs(root: HostRoot, host_dir: str) -> list[str]:
    """The folders of ``host_dir`` (itself and its parents) that do not exist yet, top
    first: what the move is about to create, so that undo can take them away again."""
    missing: list[str] = []
    path = host_dir.rstrip("/") or "/"
    while path != "/" and not os.path.lexists(root.path(path)):
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


def _remove_project_dir_if_empty(root: HostRoot, rec: dict[str, Any]) -> None:
    """After a move back: the install's folder on the target, and the target folders
    this relocation created (``created_dirs``), go when nothing else is left in them."""
    slug = rec["dest_rel"].split("/")[0]
    with suppress(OSError):  # not empty (other kinds still there) or already gone
        os.rmdir(root.path(rec["dest_base"]) / slug)
    for host_dir in reversed(rec.get("created_dirs", [])):
        with suppress(OSError):  # not empty: someone else uses it now
            os.rmdir(root.path(host_dir))


def out(root: HostRoot, rec: dict[str, Any], jdir: Path, bar: Any,
         from_disk: bool = True) -> moveplace.MoveResult | None:
    """Move the data folder of ``rec`` to its place on the target and leave the link
    (None: it already is the link)."""
    pub, dst = places(root, rec)
    kind, text, uid = pub.state()
    if kind == "link" and text == rec["link_text"]:
        sync_record(root, rec)
        return None  # already there (an interrupted run was completed by recovery)
    if kind == "dir" and uid != rec["owner"][0]:
        raise OpsError(f"{rec['public']}: now owned by uid {uid}, not by the install's "
                       f"owner (uid {rec['owner'][0]}); not moved")
    _ensure_project_dir(root, rec)
    # The record first: a link of mnic-ops's own making never exists without it.
    linkrecords.add(root, linkrecords.LinkRecord.from_move(rec))
    try:
        with bar or _null() as progress:
            res = treemove.link_out(pub, dst, rec["link_text"], jdir,
                                    owner=(rec["owner"][0], rec["owner"][1]),
                                    progress=progress, verify_from_disk=from_disk, meta=rec,
                                    source_owner=rec["owner"][0])
    finally:
        sync_record(root, rec)
    kind, text, _uid = pub.state()
    if kind != "link" or text != rec["link_text"] or not dst.path.is_dir():
        raise OpsError(f"{rec['public']}: after the move it is not the link to "
                       f"{rec['link_text']}")
    return res


def back(root: HostRoot, rec: dict[str, Any], jdir: Path, bar: Any,
          from_disk: bool = True) -> moveplace.MoveResult | None:
    """Bring the data of ``rec`` back in place of its link (None: already a folder)."""
    pub, dst = places(root, rec)
    kind = pub.state()[0]
    if kind == "dir":
        sync_record(root, rec)
        return None
    try:
        with bar or _null() as progress:
            res = treemove.link_back(pub, dst, rec["link_text"], jdir, progress=progress,
                                     verify_from_disk=from_disk, meta=rec)
    finally:
        sync_record(root, rec)
    if pub.state()[0] != "dir":
        raise OpsError(f"{rec['public']}: after moving back it is not a folder")
    if rec.get("dest_rel", "").count("/") == 1:
        _remove_project_dir_if_empty(root, rec)
    return res


@contextmanager
def _null() -> Iterator[None]:
    yield None


def sync_record(root: HostRoot, rec: dict[str, Any]) -> None:
    """Keep the link record (:mod:`mnic_ops.facts.linkrecords`) in step with the disk after a
    move, its recovery or its undo: the data folder is the link this move makes ->
    recorded; anything else -> no record for that link."""
    try:
        lr = linkrecords.LinkRecord.from_move(rec)
    except (ValueError, KeyError, TypeError, IndexError):
        return  # not a relocate record (a bare treemove journal): nothing to keep
    pub, _dst = places(root, rec)
    try:
        kind, text, _uid = pub.state()
    except (OSError, OpsError) as exc:  # cannot tell (the install replaced): left as is
        log.warning("%s: link record left as it is: %s", rec.get("public"),
                    exc.strerror if isinstance(exc, OSError) else exc.message)
        return
    if kind == "link" and text == lr.link_text:
        linkrecords.add(root, lr)
    else:
        linkrecords.discard(root, lr.public, lr.link_text)


# --- undo ---------------------------------------------------------------------------

@undo_handler("relocate")
def _undo_relocate(root: HostRoot, rec: dict[str, Any]) -> str:
    """Revert a recorded move: a move out comes back, a move back goes out again."""
    jdir = root.path(JOURNAL_DIR)
    pub, _dst = places(root, rec)
    jpath = movejournal.journal_path(jdir, pub)
    if jpath.exists():
        treemove.recover(jpath)
    if root.live:
        hs = holders.holders([str(pub.path), str(root.path(rec["link_text"]))])
        if hs:
            raise OpsError(f"{rec['public']}: in use by PIDs "
                           f"{', '.join(str(h.pid) for h in hs)}; stop them and run again")
    kind, text, _uid = pub.state()
    if rec["direction"] == "out":
        if kind == "dir":
            return f"{rec['public']} is already a folder"
        if kind != "link" or text != rec["link_text"]:
            raise OpsError(f"{rec['public']}: no longer the link to {rec['link_text']}; "
                           "not reverting")
        with folder_times(root, rec, restore=True):
            back(root, rec, jdir, None)
        return f"moved {rec['public']} back from {rec['link_text']}"
    if kind == "link" and text == rec["link_text"]:
        return f"{rec['public']} is already relocated"
    if kind != "dir":
        raise OpsError(f"{rec['public']}: not a folder any more; not reverting")
    with folder_times(root, rec, restore=True):
        out(root, rec, jdir, None)
    return f"moved {rec['public']} to {rec['link_text']} again"
