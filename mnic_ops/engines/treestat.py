"""A tree's metadata, read on open folder descriptors without following symlinks: its
digest (every entry's inode, size, owner, mode, mtime and ctime), which proves a tree
unchanged since it was copied, and its size (files, folders, bytes, blocks, inodes), which
says whether it fits on the target before a move.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from mnic_ops.engines.moveplace import open_dir

# --- snapshots --------------------------------------------------------------------------

def stat_key(st: os.stat_result, top: bool) -> tuple[int, ...]:
    """What must not change for a tree to count as unchanged. A folder's ctime moves
    when it is renamed, so the top folder's is left out; a directory's size is left out
    (its mtime covers its entries)."""
    isdir = stat.S_ISDIR(st.st_mode)
    return (st.st_mode, st.st_uid, st.st_gid, 0 if isdir else st.st_size,
            st.st_mtime_ns, 0 if top else st.st_ctime_ns, st.st_ino)


def digest(items: Iterator[tuple[str, os.stat_result]]) -> str:
    h = hashlib.sha256()
    for rel, st in sorted(items, key=lambda x: x[0]):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0"
                 + repr(stat_key(st, rel == "")).encode() + b"\n")
    return h.hexdigest()


def walk_stats(dfd: int, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    if rel == "":
        yield "", os.fstat(dfd)
    for name in os.listdir(dfd):
        crel = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        yield crel, st
        if stat.S_ISDIR(st.st_mode):
            cfd = open_dir(name, dfd)
            try:
                yield from walk_stats(cfd, crel)
            finally:
                os.close(cfd)


def tree_digest(dir_fd: int) -> str:
    """A digest of every entry's identity and metadata below an open folder."""
    return digest(walk_stats(dir_fd))


def digest_at(parent_fd: int, name: str) -> str | None:
    try:
        fd = open_dir(name, parent_fd)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    try:
        return tree_digest(fd)
    finally:
        os.close(fd)


# --- sizes ------------------------------------------------------------------------------

@dataclass
class TreeSize:
    files: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, fifos, devices
    bytes: int = 0
    hardlinked: int = 0  # extra names of multiply-linked files (no extra space)
    blocks: int = 0  # bytes the tree needs on a filesystem with ``block`` sized blocks
    unsupported: list[str] = field(default_factory=list)

    @property
    def inodes(self) -> int:
        return self.files + self.dirs + self.others


def measure_tree(path: str | os.PathLike[str], block: int = 4096) -> TreeSize:
    """Count a tree without following symlinks; a hardlinked file is counted once."""
    size = TreeSize()
    seen: set[tuple[int, int]] = set()
    fd = open_dir(os.fspath(path), None)
    try:
        for rel, st in walk_stats(fd):
            m = st.st_mode
            if stat.S_ISDIR(m):
                size.dirs += 1
                size.blocks += block
            elif stat.S_ISREG(m):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        size.hardlinked += 1
                        continue
                    seen.add((st.st_dev, st.st_ino))
                size.files += 1
                size.bytes += st.st_size
                size.blocks += -(-st.st_size // block) * block
            elif stat.S_ISSOCK(m):
                size.unsupported.append(rel)
            else:
                size.others += 1
    finally:
        os.close(fd)
    return size
