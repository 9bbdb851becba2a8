"""The walk of a data folder, and the one way its folders are counted.

``clean`` acts on what :func:`walk` yields, ``watch`` sizes its inotify watches with
:func:`count_folders`, ``doctor`` and ``render`` count with it too, so that the number
of folders each of them reports or sizes for is the number the watcher watches: the
folder itself and every folder below it on the same filesystem, reached without
following a symlink (:class:`mnic_ops.engines.treewatch.TreeWatch` does not cross into other
filesystems nor follow links either).

The walk holds one descriptor per level it is in (the stack holds paths, not open
folders), so a folder with many subfolders does not run out of descriptors.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator

from mnic_ops.engines.dirlock import open_dir_nofollow

# skip(reason, rel, error): reason is "symlink", "unreadable_dir", "other_filesystem" or
# "not_regular"; rel the path below the top ("." for the top, a folder ends in "/" when
# it was left out for being on another filesystem); error the OSError, when there was one
Skip = Callable[[str, str, "OSError | None"], None]
Folder = tuple[str, tuple[str, ...], tuple[int, int], Iterator[tuple[str, os.stat_result]]]


def _ignore(reason: str, rel: str, error: OSError | None) -> None:
    return None


def walk(top: int, dev: int | None = None, skip: Skip | None = None) -> Iterator[Folder]:
    """Depth-first over the tree below the open folder ``top``: for each folder, its
    relative path, components, identity (dev, ino) and a lazy stream of its regular
    files with their lstat. A folder's subfolders are learnt while its stream is read,
    so read each stream before the next folder. Symlinks, other file types, other
    filesystems (than ``dev``, default ``top``'s) and unreadable folders are passed to
    ``skip`` and not entered."""
    skip = skip or _ignore
    if dev is None:
        dev = os.fstat(top).st_dev
    stack: list[tuple[str, ...]] = [()]
    while stack:
        parts = stack.pop()
        reldir = "/".join(parts)
        fd = _open_child(top, parts, dev, reldir, skip) if parts else os.dup(top)
        if fd < 0:
            continue
        subdirs: list[str] = []
        try:
            st = os.fstat(fd)
            yield reldir, parts, (st.st_dev, st.st_ino), _entries(
                fd, reldir, dev, skip, subdirs)
        finally:
            os.close(fd)
        stack.extend((*parts, n) for n in reversed(subdirs))


def count_folders(top: int, dev: int | None = None) -> int:
    """Folders below (and including) the open folder ``top`` that the watcher would
    watch: one inotify watch each (see the module's docstring)."""
    n = 0
    for _reldir, _parts, _ident, entries in walk(top, dev):
        n += 1
        for _ in entries:  # the walk learns the subfolders while listing
            pass
    return n


def _open_child(top: int, parts: tuple[str, ...], dev: int, rel: str, skip: Skip) -> int:
    try:
        fd = open_dir_nofollow(top, parts)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or a file
            skip("symlink", rel, exc)
        elif exc.errno != errno.ENOENT:
            skip("unreadable_dir", rel, exc)
        return -1
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        skip("other_filesystem", rel + "/", None)
        return -1
    return fd


def _entries(fd: int, reldir: str, dev: int, skip: Skip, subdirs: list[str]
             ) -> Iterator[tuple[str, os.stat_result]]:
    try:
        it = os.scandir(fd)
    except OSError as exc:
        skip("unreadable_dir", reldir or ".", exc)
        return
    with it:
        for e in it:
            name = e.name
            rel = f"{reldir}/{name}" if reldir else name
            try:
                if e.is_symlink():
                    skip("symlink", rel, None)
                    continue
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(name)
                    continue
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished
            if not stat.S_ISREG(st.st_mode):
                skip("not_regular", rel, None)
                continue
            if st.st_dev != dev:
                skip("other_filesystem", rel, None)
                continue
            yield name, st
