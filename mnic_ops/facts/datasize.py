"""How much data a data folder holds, and how much of it is gzip, within a budget.

``status`` must answer in seconds on a host with millions of session files, so the walk
that sizes the data folders shares one budget (files and seconds) for the whole run:
once it is spent, the folders not yet walked, and the one being walked, report what was
counted so far with ``complete`` false (a lower bound), never a guess. The walk is the
one every reader uses (:mod:`mnic_ops.facts.linkrecords` locations, directory descriptors,
no symlink followed), and it is read-only.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnic_ops.facts import linkrecords

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot

MAX_FILES = 500_000  # entries looked at in one run, over every folder
MAX_SECONDS = 2.0    # seconds of walking in one run, over every folder
_CHECK_EVERY = 256   # entries between two looks at the clock


@dataclass
class Budget:
    """What is left of the run's budget (shared by every :func:`measure` call)."""

    files: int = MAX_FILES
    seconds: float = MAX_SECONDS
    _deadline: float | None = field(default=None, repr=False)

    def start(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.seconds

    @property
    def spent(self) -> bool:
        return self.files <= 0 or (self._deadline is not None
                                   and time.monotonic() >= self._deadline)

    def to_json(self) -> dict[str, Any]:
        return {"max_files": MAX_FILES, "max_seconds": MAX_SECONDS, "spent": self.spent}


@dataclass
class Size:
    """Regular files below a folder: all of them, and those that are gzip archives."""

    bytes: int = 0
    files: int = 0
    compressed_bytes: int = 0
    compressed_files: int = 0
    complete: bool = True

    def add(self, other: Size) -> None:
        self.bytes += other.bytes
        self.files += other.files
        self.compressed_bytes += other.compressed_bytes
        self.compressed_files += other.compressed_files
        self.complete = self.complete and other.complete

    @property
    def compressed_share(self) -> float | None:
        """The share of files that are gzip archives (None without files)."""
        return round(self.compressed_files / self.files, 4) if self.files else None

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "files": self.files,
                "compressed_bytes": self.compressed_bytes,
                "compressed_files": self.compressed_files,
                "compressed_share": self.compressed_share, "complete": self.complete}


def measure_fd(dfd: int, budget: Budget) -> Size:
    """Size of the tree below the folder ``dfd`` (not closed here), within ``budget``."""
    size = Size()
    budget.start()
    if budget.spent:
        size.complete = False
        return size
    seen = 0
    walk = os.fwalk(".", dir_fd=dfd, follow_symlinks=False)
    try:
        for _dirpath, dirs, files, dirfd in walk:
            for name in files:
                seen += 1
                budget.files -= 1
                if (seen % _CHECK_EVERY == 0 or budget.files <= 0) and budget.spent:
                    size.complete = False
                    return size
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                if not stat.S_ISREG(st.st_mode):
                    continue
                size.bytes += st.st_size
                size.files += 1
                if name.endswith(".gz"):
                    size.compressed_bytes += st.st_size
                    size.compressed_files += 1
            budget.files -= len(dirs)
    finally:
        # a generator: closing it (now, not when collected) closes the descriptors
        getattr(walk, "close", lambda: None)()
    return size


def measure(root: HostRoot, loc: linkrecords.Location, budget: Budget) -> Size:
    """Size of the folder a location names: the data folder itself, or the target
    ``relocate`` recorded for it (opened as every reader opens it). OSError when it
    cannot be opened (refused, absent, a link in the way)."""
    fd = linkrecords.open_location(root, loc)
    try:
        return measure_fd(fd, budget)
    finally:
        os.close(fd)
