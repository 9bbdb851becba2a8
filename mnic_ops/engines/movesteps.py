"""The journaled steps of a move (:mod:`mnic_ops.engines.treemove`), out (the folder
becomes a link) and back, by rename on one filesystem and by a verified copy across
filesystems. Each step starts from the phase its journal records and is idempotent, so
the first run and a recovery after a crash go through the same code.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from contextlib import suppress
from dataclasses import asdict
from typing import NoReturn

from mnic_ops.core import safefs
from mnic_ops.engines import moveplace
from mnic_ops.engines.movejournal import Journal
from mnic_ops.engines.moveplace import (
    MoveError,
    MoveResult,
    NoExchange,
    Progress,
    exchange,
    finish_gap,
    open_dir,
    rmtree,
    swap_in,
    unlink_link,
    what,
)
from mnic_ops.engines.treecopy import Changed, Copier
from mnic_ops.engines.treestat import digest, digest_at

log = logging.getLogger(__name__)


class CrossDevice(Exception):
    """A rename between two mounts of one filesystem (EXDEV): the move copies instead."""


class _Timer:
    """Phase durations at debug level (-vv), to see where a slow move spends its time."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.cpu = time.process_time()

    def lap(self, what: str) -> None:
        now, cpu = time.monotonic(), time.process_time()
        log.debug("%s: %.3fs (cpu %.3fs)", what, now - self.t, cpu - self.cpu)
        self.t, self.cpu = now, cpu


def _check_moved(j: Journal, dfd: int, name: str) -> bool:
    """Is the folder now at ``name`` the one checked before the move (or was none
    recorded)?"""
    want = j.data.get("source")
    if not want:
        return True
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return [st.st_dev, st.st_ino] == list(want)


def _make_link(dfd: int, name: str, text: str, owner: list[int] | None) -> None:
    """Create (or keep) the symlink ``name`` -> ``text``, owned by ``owner``."""
    kind, t = what(dfd, name)
    if kind == "absent":
        os.symlink(text, name, dir_fd=dfd)
    elif kind != "link" or t != text:
        raise MoveError(f"{name}: unexpected {kind} in the way of the link")
    if owner:
        os.chown(name, owner[0], owner[1], dir_fd=dfd, follow_symlinks=False)


# --- renaming (one filesystem) ----------------------------------------------------------

def out_rename(j: Journal, pdir: int, ddir: int) -> MoveResult:
    """Same filesystem: a link at ``dest`` pointing to itself, then one exchange with
    ``public`` (``dest`` becomes the folder, ``public`` the link)."""
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    pk, pt = what(pdir, pub.name)
    dk, _ = what(ddir, dst.name)
    if pk == "dir" and dk in ("absent", "link"):
        _make_link(ddir, dst.name, text, j.data["owner"])
        os.fsync(ddir)
        moveplace.crashpoint("out-rename-linked")
        try:
            exchange(pdir, pub.name, ddir, dst.name)
            if not _check_moved(j, ddir, dst.name):  # swapped for another folder meanwhile
                exchange(pdir, pub.name, ddir, dst.name)
                unlink_link(ddir, dst.name, text)
                j.remove()
                raise MoveError(f"{pub.path}: replaced by another folder while it was being "
                                "moved; put back, nothing moved")
        except NoExchange:
            unlink_link(ddir, dst.name, text)
            os.rename(pub.name, dst.name, src_dir_fd=pdir, dst_dir_fd=ddir)
            moveplace.crashpoint("swap-gap")
            if not _check_moved(j, ddir, dst.name):
                os.rename(dst.name, pub.name, src_dir_fd=ddir, dst_dir_fd=pdir)
                j.remove()
                raise MoveError(f"{pub.path}: replaced by another folder while it was being "
                                "moved; put back, nothing moved") from None
            _make_link(pdir, pub.name, text, j.data["owner"])
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            unlink_link(ddir, dst.name, text)
            raise CrossDevice from None
        os.fsync(pdir)
        os.fsync(ddir)
    elif pk == "absent" and dk == "dir":
        _make_link(pdir, pub.name, text, j.data["owner"])  # crashed in the fallback gap
        os.fsync(pdir)
    elif not (pk == "link" and pt == text and dk == "dir"):
        raise MoveError(f"{pub.path}: unexpected state ({pk}, {dst.path}: {dk}); "
                        f"journal {j.path} kept for inspection")
    j.remove()
    return MoveResult("rename", message=f"renamed to {dst.path}")


def back_rename(j: Journal, pdir: int, ddir: int) -> MoveResult:
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    pk, pt = what(pdir, pub.name)
    dk, _ = what(ddir, dst.name)
    if pk == "link" and pt == text and dk == "dir":
        try:
            exchange(pdir, pub.name, ddir, dst.name)
        except NoExchange:
            os.unlink(pub.name, dir_fd=pdir)
            moveplace.crashpoint("swap-gap")
            os.rename(dst.name, pub.name, src_dir_fd=ddir, dst_dir_fd=pdir)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            raise CrossDevice from None
        os.fsync(pdir)
        moveplace.crashpoint("back-rename-swapped")
        unlink_link(ddir, dst.name, text)
        os.fsync(ddir)
    elif pk == "absent" and dk == "dir":
        os.rename(dst.name, pub.name, src_dir_fd=ddir, dst_dir_fd=pdir)
        os.fsync(pdir)
        os.fsync(ddir)
    elif pk == "dir" and dk in ("link", "absent"):
        unlink_link(ddir, dst.name, text)
        os.fsync(ddir)
    else:
        raise MoveError(f"{pub.path}: unexpected state ({pk}, {dst.path}: {dk}); "
                        f"journal {j.path} kept for inspection")
    j.remove()
    return MoveResult("rename", message=f"renamed back from {dst.path}")


# --- copying (across filesystems) -------------------------------------------------------

def copy_to_staging(j: Journal, src_dir: int, src_name: str, stg_dir: int,
                     progress: Progress | None, from_disk: bool) -> Copier:
    """Copy, flush, verify; the staging folder is removed again on any failure."""
    stg = j.data["staging"]
    cp = Copier(progress, from_disk)
    try:
        sfd = open_dir(src_name, src_dir)
        try:
            want = j.data.get("source")
            sst = os.fstat(sfd)
            if want and [sst.st_dev, sst.st_ino] != list(want):
                raise Changed(".", "replaced by another folder since it was checked")
            os.mkdir(stg, 0o700, dir_fd=stg_dir)
            dfd = open_dir(stg, stg_dir)
            try:
                moveplace.crashpoint("copy-started")
                t = _Timer()
                cp.copy(sfd, dfd)
                t.lap("copy")
                moveplace.crashpoint("copy-copied")
                safefs.syncfs(dfd)
                t.lap("syncfs")
                cp.verify(sfd, dfd)
                t.lap("verify")
                os.fsync(dfd)
                safefs.syncfs(dfd)
                copy_digest = digest(iter(cp.copy_stats.items()))
                t.lap("finish")
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except BaseException as exc:
        cp.close()
        with suppress(OSError):
            rmtree(stg_dir, stg)
            os.fsync(stg_dir)
        j.remove()
        if isinstance(exc, Changed):
            raise MoveError(f"{exc.rel}: {exc.why} (is the framework writing there? stop "
                            "it or retry); the partial copy was removed, nothing was "
                            "moved") from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MoveError(f"no space left on the target while copying ({exc.strerror}); "
                            "the partial copy was removed, the source is untouched") from None
        if isinstance(exc, OSError):
            raise MoveError(f"copy failed: {exc.filename or ''}: {exc.strerror or exc}; the "
                            "partial copy was removed, the source is untouched") from None
        raise
    j.save(phase="swap", src_digest=digest(iter(cp.stats.items())),
           copy_digest=copy_digest, size=asdict(cp.size))
    moveplace.crashpoint("copy-verified")
    return cp


def out_copy(j: Journal, pdir: int, ddir: int, progress: Progress | None,
              from_disk: bool) -> MoveResult:
    cp = copy_to_staging(j, pdir, j.public.name, ddir, progress, from_disk)
    res = out_finish(j, pdir, ddir)
    res.files, res.bytes, res.dirs = cp.size.files, cp.size.bytes, cp.size.dirs
    res.others, res.hardlinked = cp.size.others, cp.size.hardlinked
    return res


def out_finish(j: Journal, pdir: int, ddir: int) -> MoveResult:
    """From phase swap on: idempotent, used by the first run and by recovery."""
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    stg, ltmp, aside = j.data["staging"], j.data["linktmp"], j.data["aside"]
    if j.data["phase"] == "swap":
        pk, pt = what(pdir, pub.name)
        if pk == "absent":
            finish_gap(pdir, pub.name, ltmp)
            pk, pt = what(pdir, pub.name)
        if pk == "dir":
            dk = what(ddir, dst.name)[0]
            if dk == "absent":
                safefs.renameat2(ddir, stg, ddir, dst.name, safefs.RENAME_NOREPLACE)
                os.fsync(ddir)
                moveplace.crashpoint("out-staged")
            elif dk != "dir":
                raise MoveError(f"{dst.path}: unexpected {dk}; journal {j.path} kept")
            _make_link(pdir, ltmp, text, j.data["owner"])
            os.fsync(pdir)
            moveplace.crashpoint("out-linked")
            swap_in(pdir, pub.name, ltmp, aside)
            moveplace.crashpoint("out-swapped")
            pk, pt = what(pdir, pub.name)
        if not (pk == "link" and pt == text):
            raise MoveError(f"{pub.path}: unexpected state {pk}; journal {j.path} kept")
        old = ltmp if what(pdir, ltmp)[0] == "dir" else aside
        if digest_at(pdir, old) != j.data["src_digest"]:
            return _out_swap_back(j, pdir, ddir, old)
        j.save(phase="remove", old=old)
        moveplace.crashpoint("out-checked")
    if j.data["phase"] == "remove":
        t = _Timer()
        rmtree(pdir, j.data["old"])
        t.lap("remove old tree")
        moveplace.crashpoint("out-removing")
        os.fsync(pdir)
        unlink_link(pdir, ltmp, text)
    j.remove()
    return MoveResult("copy", message=f"copied to {dst.path}, verified, linked")


def _out_swap_back(j: Journal, pdir: int, ddir: int, old: str) -> NoReturn:
    """The source changed between copy and swap: put the folder back, drop the copy if
    nobody wrote to it, and say so. Nothing is deleted that was not proven a copy."""
    j.save(phase="swapback", old=old)
    swap_back_finish(j, pdir, ddir)


def swap_back_finish(j: Journal, pdir: int, ddir: int) -> NoReturn:
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    old = j.data["old"]
    pk, pt = what(pdir, pub.name)
    if pk == "absent":
        finish_gap(pdir, pub.name, old)
        pk, pt = what(pdir, pub.name)
    if pk == "link" and pt == text:
        back = swap_in(pdir, pub.name, old, j.data["aside"] + "b")
        unlink_link(pdir, back, text)
    unlink_link(pdir, j.data["linktmp"], text)
    unlink_link(pdir, j.data["aside"], text)
    kept = ""
    if digest_at(ddir, dst.name) == j.data["copy_digest"]:
        rmtree(ddir, dst.name)
        os.fsync(ddir)
    elif what(ddir, dst.name)[0] != "absent":
        kept = f"; the copy at {dst.path} was written to meanwhile and is kept for you"
    j.remove()
    raise MoveError(f"{pub.path}: changed while it was being moved (is the framework "
                    f"writing there? stop it or retry); it is back in place as a folder"
                    f"{kept}")


def back_finish(j: Journal, pdir: int, ddir: int) -> MoveResult:
    pub, dst, text = j.public, j.dest, j.data["link_text"]
    stg, aside = j.data["staging"], j.data["aside"]
    if j.data["phase"] == "swap":
        pk, pt = what(pdir, pub.name)
        if pk == "absent":
            finish_gap(pdir, pub.name, stg)
            pk, pt = what(pdir, pub.name)
        if pk == "link" and pt == text:
            if what(pdir, stg)[0] != "dir":
                raise MoveError(f"{pub.path}: the verified copy vanished; journal {j.path} "
                                "kept")
            swap_in(pdir, pub.name, stg, aside)
            moveplace.crashpoint("back-swapped")
            pk, pt = what(pdir, pub.name)
        if pk != "dir":
            raise MoveError(f"{pub.path}: unexpected state {pk}; journal {j.path} kept")
        if digest_at(ddir, dst.name) != j.data["src_digest"]:
            # Written to through the link before the swap: undo the swap.
            j.save(phase="backswapback")
        else:
            unlink_link(pdir, stg, text)
            unlink_link(pdir, aside, text)
            os.fsync(pdir)
            j.save(phase="remove")
            moveplace.crashpoint("back-checked")
    if j.data["phase"] == "backswapback":
        pk, pt = what(pdir, pub.name)
        link_at = stg if what(pdir, stg)[0] == "link" else aside
        if pk == "absent":
            finish_gap(pdir, pub.name, link_at)
        elif pk == "dir" and what(pdir, link_at)[0] == "link":
            swap_in(pdir, pub.name, link_at, aside + "b")
        # public is the link again; the copy sits at stg (exchange) or aside+"b"
        copy_at = stg if what(pdir, stg)[0] == "dir" else aside + "b"
        kept = ""
        if digest_at(pdir, copy_at) == j.data["copy_digest"]:
            rmtree(pdir, copy_at)
        elif what(pdir, copy_at)[0] != "absent":
            kept = f"; a copy written to meanwhile is kept at {pub.path.parent / copy_at}"
        os.fsync(pdir)
        j.remove()
        raise MoveError(f"{dst.path}: changed while it was being moved back (is the "
                        f"framework writing there? stop it or retry); {pub.path} is the "
                        f"link again{kept}")
    if j.data["phase"] == "remove":
        moveplace.crashpoint("back-removing")
        rmtree(ddir, dst.name)
        os.fsync(ddir)
    j.remove()
    return MoveResult("copy", message=f"copied back from {dst.path}, verified")
