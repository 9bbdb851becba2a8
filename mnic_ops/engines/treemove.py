"""Verified, crash-safe moves of a folder to another place behind a symlink.

Two operations, mirror images of each other:

* :func:`link_out`: the folder at ``public`` moves to ``dest`` and ``public`` becomes a
  symlink to it (``sessions/`` -> ``/mnt/ssd/.../sessions``);
* :func:`link_back`: ``public`` is such a symlink; the data moves back into a real
  folder at ``public`` and the copy at ``dest`` goes.

Across filesystems the data is copied to a hidden staging folder next to its new place
(keeping modes, owners, times, xattrs, symlinks as symlinks and hardlinks as hardlinks),
the target filesystem is flushed (``syncfs``), every file is read back from the disk and
compared byte for byte with the source, then the names are swapped with
``renameat2(RENAME_EXCHANGE)``: one atomic step in which ``public`` turns from the
folder into the link (or back). Only when the old tree is proven unchanged since the
copy (every entry's inode, size, mtime and ctime) is it removed. On one filesystem the
folder is renamed, no copy: a self-referencing link is created at ``dest`` and swapped
with ``public`` in one ``RENAME_EXCHANGE``.

A journal file, rewritten atomically before each step, names every temporary name, so
that after ``kill -9`` or a power cut :func:`recover` either rolls the move back (before
the swap: the staging copy is removed) or completes it (after the swap). At every
instant ``public`` resolves to the complete data, through the folder or the link.
Only where a filesystem lacks ``RENAME_EXCHANGE`` (ZFS before 2.2, some FUSE and
network filesystems) does the swap take two renames, and for the microseconds between
them ``public`` does not exist (ENOENT for a reader); the journal covers that gap.

The source trees are user-writable and this runs as root: every walk works on
directory file descriptors with ``O_NOFOLLOW``, so a symlink swapped in mid-move is a
refusal, never a way out of the tree; staging folders stay root-only 0700 until verified.

The parts: :mod:`~mnic_ops.engines.moveplace` (places, swapping names, the crash test
seam), :mod:`~mnic_ops.engines.treestat` (digests and sizes),
:mod:`~mnic_ops.engines.treecopy` (copy and verify), :mod:`~mnic_ops.engines.movejournal`
(the journal, interrupted moves), :mod:`~mnic_ops.engines.movesteps` (each step of a move);
this module starts a move and recovers one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnic_ops.core import safefs
from mnic_ops.engines.movejournal import journal_path, load_journal, locked_journal, new_journal
from mnic_ops.engines.moveplace import (
    MoveError,
    MoveResult,
    Place,
    Progress,
    open_dir,
    rmtree,
    what,
)
from mnic_ops.engines.movesteps import (
    CrossDevice,
    back_finish,
    back_rename,
    copy_to_staging,
    out_copy,
    out_finish,
    out_rename,
    swap_back_finish,
)

log = logging.getLogger(__name__)


@contextmanager
def _begin(public: Place, dest: Place, journal_dir: str | os.PathLike[str]
           ) -> Iterator[tuple[Path, int, int]]:
    """What every move starts with: its journal locked (a recorded interrupted move is
    finished first, never started over), and both parent folders open."""
    jpath = journal_path(journal_dir, public)
    with locked_journal(jpath):
        if load_journal(jpath) is not None:
            raise MoveError(f"{public.path}: an interrupted move is recorded in {jpath}; "
                            "run again to finish it first")
        pdir = public.open_parent()
        try:
            ddir = dest.open_parent()
        except BaseException:
            os.close(pdir)
            raise
        try:
            yield jpath, pdir, ddir
        finally:
            os.close(pdir)
            os.close(ddir)


def link_out(public: Place, dest: Place, link_text: str, journal_dir: str | os.PathLike[str],
             *, owner: tuple[int, int] | None = None, progress: Progress | None = None,
             verify_from_disk: bool = True, meta: dict[str, Any] | None = None,
             source_owner: int | None = None) -> MoveResult:
    """Move the folder ``public`` to ``dest`` (whose parent must exist; ``dest`` must
    not) and leave at ``public`` a symlink whose text is ``link_text``, owned by
    ``owner``. With ``source_owner`` the folder must belong to that uid, checked on its
    own descriptor (and it must still be that folder when it moves). Resumable with
    :func:`recover` after a crash; ``meta`` is kept in the journal for the caller (what
    to record once a recovery completes the move)."""
    with _begin(public, dest, journal_dir) as (jpath, pdir, ddir):
        kind, _ = what(pdir, public.name)
        if kind != "dir":
            raise MoveError(f"{public.path}: not a folder ({kind})")
        source = _source_ident(pdir, public, source_owner)
        if what(ddir, dest.name)[0] != "absent":
            raise MoveError(f"{dest.path}: already exists; refusing to overwrite it")
        j = new_journal(jpath, "out", public, dest, link_text, owner, meta)
        j.data["source"] = list(source)
        same = os.fstat(pdir).st_dev == os.fstat(ddir).st_dev
        t0 = time.monotonic()
        if same:
            j.save(phase="swap", method="rename")
            try:
                res = out_rename(j, pdir, ddir)
                res.seconds = time.monotonic() - t0
                return res
            except CrossDevice:
                log.info("%s and %s are on different mounts of one filesystem; copying",
                         public.path, dest.path)
        j.save(phase="copy", method="copy")
        res = out_copy(j, pdir, ddir, progress, verify_from_disk)
        res.seconds = time.monotonic() - t0
        return res


def _source_ident(pdir: int, public: Place, owner: int | None) -> tuple[int, int]:
    """(device, inode) of the folder about to move, checked on its own descriptor to
    belong to ``owner``: a folder of someone else is never moved into a place the
    install's owner controls, whatever its path led to when the move was planned."""
    sfd = open_dir(public.name, pdir)
    try:
        st = os.fstat(sfd)
    finally:
        os.close(sfd)
    if owner is not None and st.st_uid != owner:
        raise MoveError(f"{public.path}: owned by uid {st.st_uid}, not by the install's "
                        f"owner (uid {owner}); not moved")
    return st.st_dev, st.st_ino


def link_back(public: Place, dest: Place, link_text: str,
              journal_dir: str | os.PathLike[str], *, progress: Progress | None = None,
              verify_from_disk: bool = True, meta: dict[str, Any] | None = None
              ) -> MoveResult:
    """``public`` is a symlink (text ``link_text``) to the folder ``dest``: bring the
    data back into a folder at ``public`` and remove ``dest``."""
    with _begin(public, dest, journal_dir) as (jpath, pdir, ddir):
        kind, text = what(pdir, public.name)
        if kind != "link" or text != link_text:
            raise MoveError(f"{public.path}: not the link to {link_text} any more")
        if what(ddir, dest.name)[0] != "dir":
            raise MoveError(f"{dest.path}: not a folder; cannot bring it back")
        j = new_journal(jpath, "back", public, dest, link_text, None, meta)
        t0 = time.monotonic()
        if os.fstat(pdir).st_dev == os.fstat(ddir).st_dev:
            j.save(phase="swap", method="rename")
            try:
                res = back_rename(j, pdir, ddir)
                res.seconds = time.monotonic() - t0
                return res
            except CrossDevice:
                pass
        j.save(phase="copy", method="copy")
        cp = copy_to_staging(j, ddir, dest.name, pdir, progress, verify_from_disk)
        res = back_finish(j, pdir, ddir)
        res.files, res.bytes, res.dirs = cp.size.files, cp.size.bytes, cp.size.dirs
        res.others, res.hardlinked = cp.size.others, cp.size.hardlinked
        res.seconds = time.monotonic() - t0
        return res


# --- recovery ---------------------------------------------------------------------------

@dataclass
class Recovered:
    outcome: str  # "completed" | "rolled_back" (before the swap) | "reverted" | "nothing"
    message: str
    op: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def recover(jpath: str | os.PathLike[str]) -> Recovered:
    """Finish or roll back the move a journal describes. Before the swap the staging
    copy is removed (rolled back: the data never left); from the swap on the move is
    completed (or, when the old tree changed meanwhile, swapped back)."""
    path = Path(jpath)
    with locked_journal(path):
        j = load_journal(path)
        if j is None:
            return Recovered("nothing", "nothing to recover")
        op, phase, method = j.data["op"], j.data["phase"], j.data["method"]
        meta = j.data.get("meta") or {}
        pub, dst = j.public, j.dest
        pdir = pub.open_parent()
        try:
            ddir = dst.open_parent()
        except BaseException:
            os.close(pdir)
            raise
        try:
            if phase in ("start", "copy"):
                stg_dir = pdir if op == "back" else ddir
                rmtree(stg_dir, j.data["staging"])
                os.fsync(stg_dir)
                j.remove()
                return Recovered("rolled_back", f"{pub.path}: interrupted copy rolled back "
                                 "(the data never left)", op, meta)
            if method == "rename":
                res = out_rename(j, pdir, ddir) if op == "out" else back_rename(j, pdir, ddir)
            elif op == "out":
                if phase == "swapback":
                    swap_back_finish(j, pdir, ddir)
                res = out_finish(j, pdir, ddir)
            else:
                res = back_finish(j, pdir, ddir)
            return Recovered("completed", f"{pub.path}: interrupted move completed "
                             f"({res.message})", op, meta)
        except MoveError as exc:
            return Recovered("reverted", f"{pub.path}: interrupted move reverted: "
                             f"{exc.message}", op, meta)
        except CrossDevice:  # a rename between two mounts of one filesystem
            j.remove()
            return Recovered("rolled_back", f"{pub.path}: interrupted rename rolled back "
                             "(the data never left)", op, meta)
        finally:
            os.close(pdir)
            os.close(ddir)


def recover_all(journal_dir: str | os.PathLike[str]) -> list[Recovered]:
    """Recover every interrupted move recorded in ``journal_dir``."""
    d = Path(journal_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("move-")
                       and n.endswith(".json"))
    except FileNotFoundError:
        return []
    for n in os.listdir(d):  # journal temp files from a crash inside atomic_write
        if safefs.is_tmp_name(n) and not _pid_alive(n.rsplit(".", 2)[-2]):
            with suppress(OSError):
                os.unlink(d / n)
    return [recover(d / n) for n in names]


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
