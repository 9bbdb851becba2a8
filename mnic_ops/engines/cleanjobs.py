"""The work of a ``clean`` pass done in worker processes, and what it shares with ``watch``.

A :class:`Job` is one directory's batch: the worker re-opens the folder from a trusted
prefix one component at a time without following links (:func:`open_tree`, also how
``watch`` enters a data folder), checks it is the same folder, and runs the crash-safe
engine of :mod:`mnic_ops.engines.compress` on its names. :func:`engine` reads and checks
the compression settings of the config, the same for clean and watch; :func:`printable`
is how every path of theirs is shown.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnic_ops.core import installroot
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import archives, compress, dirlock, gzipformat, inplace, tempfiles
from mnic_ops.engines.inplace import Options

if TYPE_CHECKING:
    from mnic_ops.core.config import Config

log = logging.getLogger(__name__)


# --- matching --------------------------------------------------------------------------

def printable(path: str) -> str:
    """A path safe to print on one line: newlines, control characters and bytes that are
    not UTF-8 shown as escapes."""
    raw = os.fsencode(path)
    out = []
    for ch in raw.decode("utf-8", "backslashreplace"):
        if ch == "\\" or ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode())
    return "".join(out)


_DEPRECATION_SHOWN = False


def warn_follow_links_under(cfg: Config) -> None:
    """``clean.follow_links_under`` used to let ``clean`` and ``watch`` follow any link
    into the folders it named, including links a user made into a shared folder (one
    user's policy then deleted another user's data). It is still accepted, so that an
    existing config stays valid, but has no effect: links are followed only when
    mnic-ops made them (:mod:`mnic_ops.facts.linkrecords`). Said once per process."""
    global _DEPRECATION_SHOWN
    if cfg.get("clean.follow_links_under") and not _DEPRECATION_SHOWN:
        _DEPRECATION_SHOWN = True
        log.warning("clean.follow_links_under is deprecated and has no effect: a data "
                    "folder's symlink is followed only when mnic-ops relocate made it "
                    "(recorded in /var/lib/mnic-ops/links.json); remove the key from the "
                    "config")


@dataclass(frozen=True)
class Engine:
    """How files are compressed, from the config: ``clean.level``, ``clean.compressor``
    and ``clean.batch_files`` (files handed to one job), the same for clean and watch."""

    level: int
    compressor: str
    batch: int


def engine(cfg: Config) -> Engine:
    """The compression settings of the config, checked (InputError: a level out of
    1-9, a compressor that is not installed)."""
    level = int(cfg.get("clean.level", 5))
    if not 1 <= level <= 9:
        raise InputError(f"clean.level: expected 1-9, got {level}")
    compressor = str(cfg.get("clean.compressor", "auto"))
    gzipformat.codec(compressor)  # fail early (input error) when not installed
    warn_follow_links_under(cfg)
    return Engine(level, compressor, int(cfg.get("clean.batch_files", 256)))


# --- jobs (run in worker processes) --------------------------------------------------

@dataclass
class Job:
    """One directory's batch, re-opened by the worker from a trusted prefix one
    component at a time without following links, and checked to be the same folder."""

    root: HostRoot
    prefix: str  # host path opened as given (the install root, or a recorded target base)
    parts: tuple[str, ...]  # components below it, opened with O_NOFOLLOW
    ident: tuple[int, int]
    compress: list[str]
    expire: list[str]
    stale: list[str]
    copts: Options  # a bare name: the field "compress" shadows the module here
    eopts: Options
    base_ident: installroot.Ident | None = None  # what ``prefix`` must be (install root)


_worker_dir: dict[tuple[str, tuple[str, ...], tuple[int, int]], int] = {}


def open_tree(root: HostRoot, prefix: str, parts: tuple[str, ...] = (),
              base_ident: installroot.Ident | None = None) -> int:
    """Open ``prefix`` (a final symlink refused; with ``base_ident``, checked to be the
    install root the data map found) and each of ``parts`` with ``O_NOFOLLOW``."""
    fd = os.open(root.path(prefix), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
    try:
        installroot.check(fd, base_ident, prefix)
        return dirlock.open_dir_nofollow(fd, parts)
    finally:
        os.close(fd)


def _job_dir(job: Job) -> int:
    key = (job.prefix, job.parts, job.ident)
    fd = _worker_dir.get(key)
    if fd is not None:
        return fd
    for old in _worker_dir.values():
        os.close(old)
    _worker_dir.clear()
    fd = open_tree(job.root, job.prefix, job.parts, job.base_ident)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != job.ident:
        os.close(fd)
        raise OSError(2, "folder was replaced during the pass")
    _worker_dir[key] = fd
    return fd


def run_job(job: Job) -> list[inplace.Outcome]:
    """Compress, expire and recover one directory's names; outcome per name."""
    try:
        dfd = _job_dir(job)
    except OSError as exc:
        reason = "changed" if exc.errno in (2, 20, 40, errno.ESTALE) else "unreadable_dir"
        return [inplace.Outcome(n, inplace.SKIPPED, reason, exc.strerror or "")
                for n in [*job.stale, *job.compress, *job.expire]]
    out = [tempfiles.recover_stale(dfd, n, job.copts) for n in job.stale]
    if job.compress:
        out.extend(compress.compress_batch(dfd, job.compress, job.copts))
    out.extend(archives.expire_at(dfd, n, job.eopts) for n in job.expire)
    return out


def check_job(job: Job) -> list[inplace.Outcome]:
    """``--check``: what :func:`run_job` would do with the batch's files to compress,
    from the same per-file checks (open files included), with nothing written."""
    try:
        dfd = _job_dir(job)
    except OSError as exc:
        reason = "changed" if exc.errno in (2, 20, 40) else "unreadable_dir"
        return [inplace.Outcome(n, inplace.SKIPPED, reason, exc.strerror or "")
                for n in job.compress]
    return compress.check_batch(dfd, job.compress, job.copts)


def worker_init(parent: int) -> None:
    """Workers die with the pass: an orphaned worker would hold the project lock (an
    inherited descriptor) and block every later pass."""
    import ctypes
    import signal

    compress.prepare_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
