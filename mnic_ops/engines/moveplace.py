"""The places a move works on and the name operations on them, for
:mod:`mnic_ops.engines.treemove`: a :class:`Place` (a base folder and a path below it
walked without following symlinks), what is at a name of an open folder, opening
folders and files with ``O_NOFOLLOW``, swapping two names (``RENAME_EXCHANGE``, or two
renames where the filesystem lacks it), removing what a move left. Also what every part
of a move shares: :class:`MoveError`, :class:`MoveResult`, the :data:`Progress`
callback, and :func:`crashpoint`, the test seam every step of a move passes through.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnic_ops.core import beneathfs, safefs
from mnic_ops.core.errors import OpsError

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)


class MoveError(OpsError):
    """A move that could not be done; the message says what state was left."""


@dataclass
class MoveResult:
    method: str  # "rename" | "copy" | "none"
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    others: int = 0
    hardlinked: int = 0
    seconds: float = 0.0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# progress(stage, bytes, files): increments, stage "copy" or "verify"
Progress = Callable[[str, int, int], None]


# --- test seam: die at a named step -----------------------------------------------------

def crashpoint(name: str) -> None:
    """A test seam: every step of a move that a crash could interrupt calls this with
    the step's name (``copy-verified``, ``out-swapped``, ``swap-gap``...); it does
    nothing in normal use.

    ``MNIC_OPS_TEST_CRASH_AT=name`` kills the process with SIGKILL at that step, so
    tests can reach every journal state deterministically (random kills reach the rest).
    In-process tests replace it (``monkeypatch.setattr(moveplace, "crashpoint", hook)``)
    to act at a step, e.g. write into the source between verification and swap: every
    caller looks it up on this module when it runs, so one patch reaches them all.
    """
    if os.environ.get("MNIC_OPS_TEST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# --- places -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """A path as a ``base`` folder (followed as given) and a ``rel`` path below it that
    is walked without following any symlink. With ``ident`` (device, inode, owner: an
    install root as the data map found it) the opened ``base`` must still be that folder:
    its path may lead elsewhere by now (a user renamed a folder above it)."""

    base: str
    rel: str
    ident: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        parts = self.rel.split("/")
        if not self.rel or self.rel.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"bad relative path {self.rel!r}")
        if self.ident is not None:  # a list when read back from a journal
            v = tuple(self.ident)
            if len(v) != 3 or not all(type(x) is int for x in v):
                raise ValueError(f"bad folder identity {self.ident!r}")
            object.__setattr__(self, "ident", v)

    @property
    def path(self) -> Path:
        return Path(self.base) / self.rel

    @property
    def name(self) -> str:
        return posixpath.basename(self.rel)

    def open_parent(self) -> int:
        """A descriptor of the parent folder, reached without following symlinks from
        the base (checked against ``ident``: :class:`~mnic_ops.core.safefs.BaseReplaced`)."""
        return beneathfs.open_beneath(self.base, posixpath.dirname(self.rel),
                                   os.O_RDONLY | os.O_DIRECTORY, base_ident=self.ident)

    def state(self) -> tuple[str, str | None, int | None]:
        """(``absent`` | ``dir`` | ``link`` | ``other``, link text, owner uid) of the
        place as it is now, reached like :meth:`open_parent` (a missing parent folder:
        absent)."""
        try:
            pdir = self.open_parent()
        except FileNotFoundError:
            return "absent", None, None
        try:
            try:
                st = os.stat(self.name, dir_fd=pdir, follow_symlinks=False)
            except FileNotFoundError:
                return "absent", None, None
            kind, text = what(pdir, self.name)
            return kind, text, st.st_uid
        finally:
            os.close(pdir)


def what(dfd: int, name: str) -> tuple[str, str | None]:
    """("absent" | "dir" | "link" | "other", link text)."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "absent", None
    if stat.S_ISLNK(st.st_mode):
        return "link", os.readlink(name, dir_fd=dfd)
    if stat.S_ISDIR(st.st_mode):
        return "dir", None
    return "other", None


def open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _O_DIR | _NOATIME, dir_fd=dir_fd)
    except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
        return os.open(name, _O_DIR, dir_fd=dir_fd)


def open_read(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _O_READ | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, _O_READ, dir_fd=dir_fd)


# --- swapping names ---------------------------------------------------------------------

class NoExchange(Exception):
    """The filesystem has no RENAME_EXCHANGE."""


def _no_exchange() -> bool:
    return bool(os.environ.get("MNIC_OPS_TEST_NO_EXCHANGE"))


def exchange(fd1: int, n1: str, fd2: int, n2: str) -> None:
    if _no_exchange():
        raise NoExchange
    try:
        safefs.renameat2(fd1, n1, fd2, n2, safefs.RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise NoExchange from None
        raise


def swap_in(pdir: int, public: str, new: str, aside: str) -> str:
    """Put the entry named ``new`` at ``public`` (same folder); return the name the old
    entry of ``public`` now has. One atomic exchange where the filesystem can; else
    ``public`` -> ``aside``, then ``new`` -> ``public`` (``public`` briefly absent)."""
    try:
        exchange(pdir, public, pdir, new)
        os.fsync(pdir)
        return new
    except NoExchange:
        pass
    os.rename(public, aside, src_dir_fd=pdir, dst_dir_fd=pdir)
    crashpoint("swap-gap")
    os.rename(new, public, src_dir_fd=pdir, dst_dir_fd=pdir)
    os.fsync(pdir)
    return aside


def finish_gap(pdir: int, public: str, new: str) -> bool:
    """After a crash inside :func:`swap_in`'s two-rename fallback: complete it."""
    if what(pdir, public)[0] == "absent" and what(pdir, new)[0] != "absent":
        os.rename(new, public, src_dir_fd=pdir, dst_dir_fd=pdir)
        os.fsync(pdir)
        return True
    return False


def rmtree(parent: int, name: str) -> None:
    kind = what(parent, name)[0]
    if kind == "dir":
        shutil.rmtree(name, dir_fd=parent)
    elif kind != "absent":
        os.unlink(name, dir_fd=parent)


def unlink_link(parent: int, name: str, text: str) -> None:
    kind, t = what(parent, name)
    if kind == "link" and t == text:
        os.unlink(name, dir_fd=parent)
