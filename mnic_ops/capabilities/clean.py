"""``mnic-ops clean``: the maintenance pass (compress aged data in place, expire archives).

It replaces the guide's ``find -exec gzip {} \\;`` and ``find -delete`` cron lines. Run
as root over folders users can write, it walks with directory descriptors (never
following a symlink, never leaving the data folder's filesystem), leaves alone the
names the framework reads back, and hands batches of files to worker processes that
use the crash-safe engine in :mod:`mnic_ops.engines.compress`. The walk is streamed: memory
does not grow with the tree. One pass per project at a time (a lock shared with
``watch``); a second one says it skipped and exits 0.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import posixpath
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.core import installfail, installroot, metrics, patterns, progress
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, EXIT_PENDING, InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import archives, compress, datatree, dirlock, inplace, retention, tempfiles
from mnic_ops.engines.gzipformat import codec
from mnic_ops.facts import linkrecords, policy
from mnic_ops.facts.policy import DAY, DEFAULTS, Policy, resolve_policy
from mnic_ops.facts.projects import DATA_KINDS, Project, human, select_projects

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.config import Config

__all__ = ["DAY", "DEFAULTS", "Pass", "Policy", "clean_cmd", "resolve_policy"]

log = logging.getLogger(__name__)

MAX_EXAMPLES = 10  # skipped paths kept per reason and kind (memory stays flat)
MAX_COLLISIONS = 1000  # collision resolutions listed per kind (all are counted and logged)


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
    codec(compressor)  # fail early (input error) when not installed
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
    copts: inplace.Options
    eopts: inplace.Options
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


def _worker_init(parent: int) -> None:
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


# --- the report ---------------------------------------------------------------------

@dataclass
class KindReport:
    path: str
    policy: Policy
    note: str = ""
    compressed: int = 0
    finished: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    expired: int = 0
    expired_bytes: int = 0
    recovered: int = 0
    failed: int = 0
    would_compress: int = 0
    would_compress_bytes: int = 0
    would_expire: int = 0
    would_expire_bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    collisions: int = 0  # NAME.gz with other content kept as NAME.N.gz, NAME compressed
    collision_files: list[dict[str, str]] = field(default_factory=list)
    retention: retention.Report | None = None

    def skip(self, reason: str, rel: str, error: OSError | None = None) -> None:
        """A file or folder left out (``error``: why, when the walk met one; a
        :data:`mnic_ops.engines.datatree.Skip`)."""
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(printable(rel))

    def add(self, o: inplace.Outcome, rel: str) -> None:
        if o.kept_as:
            self.collisions += 1
            kept = posixpath.join(posixpath.dirname(rel), o.kept_as)
            log.info("%s: %s.gz had other content: kept as %s, %s compressed",
                     printable(self.path), printable(rel), printable(kept), printable(rel))
            if len(self.collision_files) < MAX_COLLISIONS:
                self.collision_files.append({"file": printable(rel),
                                             "kept_as": printable(kept)})
        if o.state == inplace.COMPRESSED:
            self.compressed += 1
            self.bytes_before += o.before
            self.bytes_after += o.after
        elif o.state == inplace.FINISHED:
            self.finished += 1
            self.bytes_before += o.before
            self.bytes_after += o.after
        elif o.state == inplace.EXPIRED:
            self.expired += 1
            self.expired_bytes += o.before
        elif o.state == inplace.RECOVERED:
            self.recovered += 1
        elif o.state == inplace.FAILED:
            self.failed += 1
            self.skip(o.reason, rel + (f" ({o.detail})" if o.detail else ""))
        else:
            self.skip(o.reason, rel)

    def to_json(self, check: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "policy": self.policy.to_json()}
        if self.note:
            d["note"] = self.note
        if check:
            d.update(would_compress=self.would_compress,
                     would_compress_bytes=self.would_compress_bytes,
                     would_expire=self.would_expire, would_expire_bytes=self.would_expire_bytes)
        else:
            d.update(compressed=self.compressed, finished=self.finished,
                     bytes_before=self.bytes_before, bytes_after=self.bytes_after,
                     expired=self.expired, expired_bytes=self.expired_bytes,
                     recovered=self.recovered, failed=self.failed)
        d["skipped"] = dict(sorted(self.skipped.items()))
        d["skipped_examples"] = {k: v for k, v in sorted(self.examples.items())}
        if not check:
            d["collisions"] = self.collisions
            d["collision_files"] = self.collision_files
        if self.retention is not None:
            d["retention"] = self.retention.to_json(check)
        return d

    @property
    def retention_count(self) -> int:
        r = self.retention
        return r.count if r is not None and r.status == "done" else 0

    @property
    def retention_bytes(self) -> int:
        r = self.retention
        return r.bytes if r is not None and r.status == "done" else 0

    @property
    def retention_failed(self) -> int:
        r = self.retention
        return 1 if r is not None and r.status == "failed" else 0


@dataclass
class ProjectReport:
    project: str
    status: str = "done"  # done | locked
    kinds: dict[str, KindReport] = field(default_factory=dict)


# --- the walk ------------------------------------------------------------------------

class Pass:
    """One maintenance pass over some projects."""

    def __init__(self, app: AppContext, *, check: bool, only: str | None) -> None:
        self.app, self.root, self.check, self.only = app, app.root, check, only
        cfg = app.config
        eng = engine(cfg)
        self.level, self.compressor, self.batch = eng.level, eng.compressor, eng.batch
        # auto: two per CPU, so that one compresses while the other waits for its
        # batch's filesystem sync or the journal
        n = int(cfg.get("clean.workers", 0)) or min(8, 2 * len(os.sched_getaffinity(0)))
        self.workers = max(1, n)
        self.pool: ProcessPoolExecutor | None = None
        self.inflight: dict[Future[list[inplace.Outcome]], tuple[KindReport, str]] = {}
        self.now = time.time()
        self.wait = 0.0  # seconds to wait for a project's lock (clean --wait)
        # progress: files handed over (found) and done, bytes in and out
        self.bar: progress.Bar | None = None
        self.found = self.done = self.bytes_in = self.bytes_out = 0
        self._children: dict[int, bool] = {}

    # parallel plumbing
    def submit(self, job: Job, rep: KindReport, reldir: str) -> None:
        if self.workers == 1:
            self._collect(run_job(job), rep, reldir)
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"),
                initializer=_worker_init, initargs=(os.getpid(),))
        while len(self.inflight) >= 2 * self.workers:
            self._drain(FIRST_COMPLETED)
        fut = self.pool.submit(run_job, job)
        self.inflight[fut] = (rep, reldir)

    def _drain(self, how: str = "ALL_COMPLETED") -> None:
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), return_when=how)
        for fut in done:
            rep, reldir = self.inflight.pop(fut)
            self._collect(fut.result(), rep, reldir)

    def _collect(self, outcomes: list[inplace.Outcome], rep: KindReport, reldir: str) -> None:
        for o in outcomes:
            if o.reason == "vanished" and tempfiles.is_ours(o.name):
                continue  # a temporary its own pass finished meanwhile: no news
            if not tempfiles.is_ours(o.name) and o.state != inplace.RECOVERED:
                self.done += 1
                self.bytes_in += o.before
                self.bytes_out += o.after
            rep.add(o, f"{reldir}/{o.name}" if reldir else o.name)
        if self.bar is not None:
            self.bar.advance(done=self.done, total=self.found)

    def progress_text(self) -> str:
        if self.check:
            return f"{self.done}/{self.found} files checked"
        return (f"{self.done}/{self.found} files, {human(self.bytes_in)} -> "
                f"{human(self.bytes_out)}")

    def own_temporary(self, name: str) -> bool:
        """A temporary of this pass (its own process or one of its workers): it is
        being worked on right now, neither stale nor anything to report."""
        parsed = tempfiles.parse_stale(name)
        if parsed is None:
            return False
        pid = parsed[2]
        if pid == os.getpid():
            return True
        if pid not in self._children:
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    raw = fh.read()
                ppid = int(raw[raw.rfind(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                ppid = -1
            self._children[pid] = ppid == os.getpid()
        return self._children[pid]

    def close(self) -> None:
        try:
            self._drain()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None

    # opening a data folder
    def _data_root(self, project: Project, kind: str, rep: KindReport
                   ) -> linkrecords.Location | None:
        """Where a data folder's files are (the folder, or the target of a link
        relocate made for this install, see :mod:`mnic_ops.facts.linkrecords`), or None with
        the reason noted: absent, or a link that is not mnic-ops's own."""
        loc = linkrecords.locate(self.root, project, kind)
        if loc.state == linkrecords.ABSENT:
            rep.note = loc.note or "absent"
            return None
        if loc.state == linkrecords.REFUSED:
            rep.note = printable(loc.note)
            rep.skip("symlink", ".")
            return None
        return loc

    def run_project(self, project: Project, tier: dict[str, Any] | None) -> ProjectReport:
        rep = ProjectReport(project.host_path)
        decl = policy.declared(project)
        policies = resolve_policy(self.app.config, project, tier, decl=decl)
        keep = retention.Retention(
            self.root, project, decl, check=self.check, now=self.now,
            restore_max_bytes=int(self.app.config.get("clean.restore_max_mib", 256)) << 20) \
            if self.only != "compress" else None
        with dirlock.project_lock(self.root, project.host_path, self.wait,
                            probe=self.check) as got:
            if not got:
                rep.status = "locked"
                return rep
            try:
                for kind in DATA_KINDS:
                    pol = policies[kind]
                    kr = KindReport(project.data[kind].host_path, pol)
                    rep.kinds[kind] = kr
                    ret = keep if keep is not None and kind in patterns.RETENTION_KINDS \
                        else None
                    if not self._active(pol) and ret is None:
                        kr.note = pol.note or "no policy (compression and expiry off)"
                        continue
                    if kind in decl.errors and ret is not None:
                        kr.retention = ret.run(kind, None)  # left untouched, file:line
                        ret = None
                        if not self._active(pol):
                            kr.note = kr.retention.reason
                            continue
                    where = self._data_root(project, kind, kr)
                    if where is not None:
                        self._walk_kind(where, pol, kr, ret)
                    if pol.note and not kr.note:
                        kr.note = pol.note
            finally:
                self.close()  # every batch finished before the lock is released
        return rep

    def _active(self, pol: Policy) -> bool:
        comp = policy.compresses(pol) and self.only != "expire"
        exp = policy.expires(pol) and self.only != "compress"
        return bool(comp or exp)

    def _walk_kind(self, where: linkrecords.Location, pol: Policy,
                   rep: KindReport, keep: retention.Retention | None = None) -> None:
        prefix, parts = where.prefix or "/", where.parts
        try:
            top = linkrecords.open_location(self.root, where)
        except installroot.Replaced:
            raise  # the install's path leads elsewhere now: the install fails, reported
        except OSError as exc:
            if exc.errno in (40, 20):  # ELOOP, ENOTDIR: a link in the way
                rep.note = "a symlink is in the way: not followed"
                rep.skip("symlink", ".")
            elif exc.errno == 2:
                rep.note = "absent"
            elif exc.errno == 1:  # EPERM: a relocated folder of someone else
                rep.note = printable(exc.strerror or "not followed")
                rep.skip("symlink", ".")
            else:
                rep.note = f"cannot open: {exc.strerror}"
                rep.skip("unreadable_dir", ".")
            return
        try:
            dev = os.fstat(top).st_dev
            if keep is not None:
                # the framework's declared retention first (it keeps the indexes
                # consistent), then compression of what is left
                host = posixpath.join(prefix, *parts)
                rep.retention = keep.run(pol.kind, retention.Store(
                    pol.kind, top, host, str(self.root.path(host)), dev))
            if not self._active(pol):
                return
            only = self.only
            cut_c = self.now - pol.compress_after_days * DAY
            cut_e = self.now - pol.delete_after_days * DAY
            copts = inplace.Options(level=self.level, compressor=self.compressor, dev=dev,
                              max_mtime=cut_c)
            eopts = inplace.Options(dev=dev, max_mtime=cut_e)
            for reldir, dparts, ident, entries in datatree.walk(top, dev, rep.skip):
                batch = Job(self.root, prefix, parts + dparts, ident, [], [], [], copts, eopts,
                            where.base_ident)
                for name, st in entries:
                    rel = f"{reldir}/{name}" if reldir else name
                    if tempfiles.is_ours(name):
                        if not self.own_temporary(name):
                            batch.stale.append(name)
                        continue
                    d = policy.due(pol, name, rel, st, self.now, only)
                    if d is None:
                        continue
                    if d.action in ("protected", "hard_links"):
                        rep.skip(d.action, rel)
                        continue
                    if d.action == "compress":
                        if not self.check:  # --check: counted once checked (_flush)
                            rep.would_compress += 1
                            rep.would_compress_bytes += st.st_size
                        batch.compress.append(name)
                    else:
                        rep.would_expire += 1
                        rep.would_expire_bytes += st.st_size
                        batch.expire.append(name)
                    if len(batch.compress) + len(batch.expire) >= self.batch:
                        self._flush(batch, rep, reldir)
                self._flush(batch, rep, reldir)
        finally:
            os.close(top)

    def _flush(self, batch: Job, rep: KindReport, reldir: str) -> None:
        """Hand the batch to a worker and start a new one; with --check, check its files
        as the worker would (nothing written)."""
        self.found += len(batch.compress) + len(batch.expire)
        if self.check:
            for o in check_job(batch) if batch.compress else []:
                rel = f"{reldir}/{o.name}" if reldir else o.name
                if o.state == compress.WOULD_COMPRESS:
                    rep.would_compress += 1
                    rep.would_compress_bytes += o.before
                else:
                    rep.add(o, rel)
            self.done += len(batch.compress) + len(batch.expire)
            if self.bar is not None:
                self.bar.advance(done=self.done, total=self.found)
        elif batch.compress or batch.expire or batch.stale:
            job = Job(**{**batch.__dict__, "compress": batch.compress[:],
                         "expire": batch.expire[:], "stale": batch.stale[:]})
            self.submit(job, rep, reldir)
        batch.compress.clear()
        batch.expire.clear()
        batch.stale.clear()


# --- output -----------------------------------------------------------------------

_TOTAL_FIELDS = ("compressed", "finished", "bytes_before", "bytes_after", "expired",
                 "expired_bytes", "recovered", "failed", "would_compress",
                 "would_compress_bytes", "would_expire", "would_expire_bytes")


def _totals(reports: list[ProjectReport], check: bool = False) -> dict[str, Any]:
    t: Counter[str] = Counter({f: 0 for f in _TOTAL_FIELDS})
    t["projects_locked"] = 0
    t["collisions"] = 0
    t["retention_failed"] = 0
    ret, ret_bytes, restored, kept = 0, 0, 0, 0
    skipped: Counter[str] = Counter()
    for r in reports:
        t["projects_locked"] += r.status == "locked"
        for k in r.kinds.values():
            for f in _TOTAL_FIELDS:
                t[f] += getattr(k, f)
            skipped.update(k.skipped)
            t["collisions"] += k.collisions
            t["retention_failed"] += k.retention_failed
            ret += k.retention_count
            ret_bytes += k.retention_bytes
            restored += len(k.retention.restored) if k.retention is not None else 0
            kept += len(k.retention.kept) if k.retention is not None else 0
    out: dict[str, Any] = dict(t)
    key = "retention_would_expire" if check else "retention_expired"
    out[key], out[key + "_bytes"] = ret, ret_bytes
    out["retention_would_restore" if check else "retention_restored"] = restored
    out["retention_would_keep" if check else "retention_kept"] = kept
    out["bytes_saved"] = t["bytes_before"] - t["bytes_after"] + t["expired_bytes"] + (
        0 if check else ret_bytes)
    out["skipped"] = dict(sorted(skipped.items()))
    return out


def _counts(reports: list[ProjectReport], check: bool, failed_installs: int
            ) -> dict[str, int]:
    """Installs by outcome, in the words of every plan's ``counts`` (a script reads
    ``counts.pending``/``counts.failed`` the same way for clean as for provision):
    locked -> skipped; a file or class that failed -> failed; --check with work to do
    -> pending; something compressed, expired or restored -> changed; else ok.
    ``failed_installs``: those that failed before their pass (data map)."""
    c = {"ok": 0, "changed": 0, "failed": failed_installs, "skipped": 0, "pending": 0}
    for r in reports:
        t = _totals([r], check)
        if r.status == "locked":
            state = "skipped"
        elif t["failed"] or t["retention_failed"]:
            state = "failed"
        elif check:
            state = "pending" if (t["would_compress"] or t["would_expire"]
                                  or t["retention_would_expire"]
                                  or t["retention_would_restore"]) else "ok"
        else:
            state = "changed" if (t["compressed"] + t["finished"] + t["expired"]
                                  + t["recovered"] + t["retention_expired"]
                                  + t["retention_restored"]) else "ok"
        c[state] += 1
    return c


def _retention_lines(k: KindReport, check: bool, verbose: int) -> list[str]:
    r = k.retention
    if r is None or (r.status == "off" and not verbose and not r.restored and not r.kept):
        return []
    if r.status in ("skipped", "failed") or (r.status == "off" and verbose):
        return [f"    retention: {r.status}: {r.reason}"]
    verb = "would expire" if check else "expired"
    lines = [f"    retention: {verb} {r.count} ({human(r.bytes)})"
             + (f", finished {r.recovered} files of an interrupted pass" if r.recovered
                else "")]
    show = r.items if (check or verbose) else r.items[:3]
    for g in show:
        if g.level is not None:
            lines.append(f"      {g.what}  {g.level}, recorded {g.recorded}, "
                         f"{g.age_days:.1f} days old: {g.rule}")
        else:
            age = "" if g.age_days is None else f"{g.age_days:.1f} days old: "
            lines.append(f"      {printable(g.what)}  {age}{g.rule}")
    if len(show) < len(r.items):
        lines.append(f"      ... and {len(r.items) - len(show)} more (-v lists them)")
    if r.restored:
        shown_r = ", ".join(printable(x) for x in r.restored[: (len(r.restored) if verbose
                                                                  else 3)])
        more = "" if verbose or len(r.restored) <= 3 else ", ..."
        lines.append(f"      {'would restore' if check else 'restored'} {len(r.restored)} "
                     f"files the framework reads by name from the .gz an earlier pass "
                     f"made: {shown_r}{more}")
    for kp in r.kept[: (len(r.kept) if verbose else 3)]:
        lines.append(f"      {printable(kp['file'])}: an older archive beside the current "
                     f"file (other content): {'would be kept' if check else 'kept'} as "
                     f"{printable(kp['kept_as'])}, once; nothing reads it")
    ix = r.index
    if ix.get("dangling_removed") or ix.get("references_removed") or \
            ix.get("entries_removed"):
        n = ix.get("dangling_removed") or ix.get("references_removed") or \
            ix.get("entries_removed")
        state = "rewritten" if ix.get("rewritten") else ("would be rewritten" if check
                                                         else "not rewritten")
        lines.append(f"      index {ix['file']}: {state} ({n} stale mentions)")
    for e in r.errors[: (len(r.errors) if verbose else 3)]:
        lines.append(f"      note: {e}")
    return lines


def _text(reports: list[ProjectReport], totals: dict[str, Any], check: bool,
          verbose: int, wait: float = 0.0) -> str:
    lines: list[str] = []
    for r in reports:
        if r.status == "locked":
            waited = f" (waited {wait:g} s for it)" if wait else " (--wait SECONDS waits)"
            lines.append(f"{r.project}: skipped: another pass holds its lock{waited}")
            continue
        lines.append(f"{r.project}:")
        for kind, k in r.kinds.items():
            busy = k.retention is not None and (k.retention.count or k.retention.restored
                                                or k.retention.status in ("skipped",
                                                                          "failed"))
            if k.note and not (k.compressed or k.expired or k.skipped or k.would_compress
                               or busy):
                if verbose or k.note not in ("absent", "no policy (compression and expiry "
                                                       "off)"):
                    lines.append(f"  {kind:<17} {k.note}")
                lines.extend(_retention_lines(k, check, verbose))
                continue
            if not (policy.compresses(k.policy) or policy.expires(k.policy) or k.skipped
                    or k.collisions):
                lines.append(f"  {kind:<17} " + (k.note or "no compression or expiry "
                                                          "policy"))
                lines.extend(_retention_lines(k, check, verbose))
                continue
            if check:
                head = (f"would compress {k.would_compress} ({human(k.would_compress_bytes)})"
                        f", would expire {k.would_expire} ({human(k.would_expire_bytes)})")
            else:
                head = (f"compressed {k.compressed + k.finished} "
                        f"({human(k.bytes_before)} -> {human(k.bytes_after)}), "
                        f"expired {k.expired} ({human(k.expired_bytes)})")
                if k.recovered:
                    head += f", recovered {k.recovered} temporaries"
                if k.failed:
                    head += f", FAILED {k.failed}"
            lines.append(f"  {kind:<17} {head}")
            if k.note:
                lines.append(f"    note: {k.note}")
            for reason, n in sorted(k.skipped.items()):
                ex = k.examples.get(reason, [])
                shown = ", ".join(ex[: (MAX_EXAMPLES if verbose else 3)])
                more = "" if n <= len(ex[: (MAX_EXAMPLES if verbose else 3)]) else ", ..."
                lines.append(f"    skipped {n}: {inplace.REASONS.get(reason, reason)}: "
                             f"{shown}{more}")
            for c in k.collision_files[: (MAX_COLLISIONS if verbose else 3)]:
                lines.append(f"    {c['file']}.gz had other content: kept as "
                             f"{c['kept_as']}, {c['file']} compressed")
            if k.collisions > 3 and not verbose:
                lines.append(f"    ... {k.collisions} collisions resolved (-v lists them)")
            lines.extend(_retention_lines(k, check, verbose))
    if check:
        lines.append(f"would compress {totals['would_compress']} files "
                     f"({human(totals['would_compress_bytes'])}), would expire "
                     f"{totals['would_expire']} archives and "
                     f"{totals['retention_would_expire']} items by the framework's "
                     "declared retention")
    else:
        lines.append(f"compressed {totals['compressed'] + totals['finished']} files "
                     f"({human(totals['bytes_before'])} -> {human(totals['bytes_after'])}), "
                     f"expired {totals['expired']} archives "
                     f"({human(totals['expired_bytes'])}) and "
                     f"{totals['retention_expired']} items by declared retention "
                     f"({human(totals['retention_expired_bytes'])}), saved "
                     f"{human(totals['bytes_saved'])}, skipped "
                     f"{sum(totals['skipped'].values())}, failed {totals['failed']}"
                     + (f", retention failed for {totals['retention_failed']} classes"
                        if totals["retention_failed"] else ""))
    return "\n".join(lines)


def textfile_body(reports: list[ProjectReport], totals: dict[str, Any], started: float,
                  duration: float) -> metrics.Textfile:
    """The node_exporter textfile of a pass (``mnic_ops_clean_*`` gauges)."""
    m = metrics.Textfile()

    def metric(name: str, help_: str, rows: list[tuple[dict[str, str], float]]) -> None:
        m.family(f"mnic_ops_clean_{name}", help_)
        for labels, value in rows:
            m.add(f"mnic_ops_clean_{name}", help_, value, labels)

    def per_project(fn: Any) -> list[tuple[dict[str, str], float]]:
        return [({"project": printable(r.project)}, fn(r)) for r in reports
                if r.status == "done"]

    metric("last_run_timestamp_seconds", "When the last pass started (Unix time).",
           [({}, round(started, 3))])
    metric("duration_seconds", "How long the last pass took.", [({}, round(duration, 3))])
    metric("bytes_saved", "Bytes freed by the last pass (compression and expiry).",
           [({}, totals["bytes_saved"]), *per_project(
               lambda r: sum(k.bytes_before - k.bytes_after + k.expired_bytes
                             for k in r.kinds.values()))])
    metric("files_compressed", "Files compressed by the last pass.",
           [({}, totals["compressed"] + totals["finished"])])
    metric("archives_expired", "Archives deleted by the last pass.",
           [({}, totals["expired"])])
    metric("errors", "Files the last pass failed on (I/O errors, no space).",
           [({}, totals["failed"]), *per_project(
               lambda r: sum(k.failed for k in r.kinds.values()))])
    metric("skipped", "Files the last pass skipped, by reason.",
           [({"reason": printable(k)}, v) for k, v in totals["skipped"].items()])
    metric("projects_locked", "Projects skipped because another pass held their lock.",
           [({}, totals["projects_locked"])])
    return m


def write_textfile(app: AppContext, body: metrics.Textfile) -> str | None:
    """Write the textfile atomically when its folder exists; the path written or None."""
    path = str(app.config.get("clean.textfile") or "")
    if not path:
        return None
    if not path.startswith("/"):
        raise InputError(f"clean.textfile: {path!r} is not an absolute path")
    real = app.root.path(path)
    if not real.parent.is_dir():
        log.debug("%s: folder absent (node_exporter not installed?); textfile not written",
                  real.parent)
        return None
    body.write(real)
    return path


# --- the command -----------------------------------------------------------------------

@click.command("clean", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Say what would be compressed and expired; "
              "change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (same as "
              "the global --json).")
@click.option("--only", type=click.Choice(["compress", "expire"]), default=None,
              help="Only compress, or only expire archives (the frequent cron job).")
@click.option("--wait", "wait", type=click.FloatRange(0, 86400), default=0.0,
              metavar="SECONDS", help="When another pass (the other cron job, the "
              "watcher) holds an install's lock, wait for it up to SECONDS (default 0: skip "
              "that install at once and say so); the cron jobs use cron.lock_wait_seconds. "
              "An install still locked after the wait fails the run (exit 1).")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def clean_cmd(app: AppContext, check: bool, as_json: bool, only: str | None, wait: float,
              names: tuple[str, ...]) -> int:
    """Compress aged framework data in place (standard gzip) and delete old archives.

    Policy per data class: checkpoints and sessions gzip after 7 days and expire after
    30; thinking logs after 7 and 90 (or what the project's
    extended-thinking-config.json says); cost records after 7 and 90. Names the
    framework reads back are never touched. Symlinks are never followed; files with
    several links or open for writing are skipped and reported.

    Off a terminal (cron), a pass that changed nothing and found nothing wrong prints
    nothing (its state file and textfile still record it); -v prints it anyway.
    """
    if as_json:
        app.json = True
    from mnic_ops.changes.run import apply_log_handler
    from mnic_ops.core.app import emit

    projects = select_projects(app, names)
    tier = policy.tier_clean(app)
    started = time.time()
    t0 = time.monotonic()
    p = Pass(app, check=check, only=only)
    p.wait = wait
    handler = None if check else apply_log_handler(app)
    reports: list[ProjectReport] = []
    try:
        with progress.bar(app, "clean --check" if check else "clean", 0, p.progress_text
                          ) if projects else nullcontext() as p.bar:
            try:
                for proj in projects:
                    # One install's unusable file fails that install; the others go on.
                    with installfail.guard(app, proj.host_path, "clean"):
                        r = p.run_project(proj, tier)
                        reports.append(r)
                        if not check:
                            _log_project(r)
                        for kind, k in r.kinds.items():  # a class left untouched
                            if k.retention is not None and k.retention.status == "failed":
                                app.failures.add(proj.host_path, k.retention.reason,
                                                 f"clean {kind}")
            finally:
                p.close()  # every batch finished before the bar draws its last state
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    duration = time.monotonic() - t0
    totals = _totals(reports, check)
    textfile = None
    if not check and any(r.status == "done" for r in reports):
        textfile = write_textfile(app, textfile_body(reports, totals, started, duration))
    data = {"command": "clean", "check": check, "only": only, "started": started,
            "duration_seconds": round(duration, 3), "textfile": textfile,
            "projects": [{"project": r.project, "status": r.status,
                          "kinds": {k: v.to_json(check) for k, v in r.kinds.items()}}
                         for r in reports], "totals": totals,
            "counts": _counts(reports, check, len({f.install for f in app.failures}
                                                  - {r.project for r in reports}))}
    if wait > 0:  # asked to wait, and the lock never came: the work was not done
        data["errors"] = [{"message": f"{printable(r.project)}: another pass held its lock "
                                      f"for the {wait:g} s waited; not cleaned"}
                          for r in reports if r.status == "locked"]
    if totals["retention_failed"]:
        rc = EXIT_FAILURE  # a class left untouched: bad declared value, unparsable index
    elif check:
        rc = EXIT_PENDING if (totals["would_compress"] or totals["would_expire"]
                              or totals["retention_would_expire"]
                              or totals["retention_would_restore"]
                              or totals["retention_would_keep"]) else EXIT_OK
    elif totals["failed"] or (wait > 0 and totals["projects_locked"]):
        rc = EXIT_FAILURE  # asked to wait for a lock and it never came: work not done
    else:
        rc = EXIT_OK
    if not check:  # when it last ran and how it ended, for status and the admin
        from mnic_ops.facts import passstate

        rc_all = app.failures.exit_code(rc)
        data["state_file"] = passstate.record(app.root, {
            "started": started, "finished": round(time.time(), 3), "only": only,
            "duration_seconds": data["duration_seconds"], "exit_code": rc_all,
            "ok": rc_all == EXIT_OK, "totals": totals,
            "projects": [{"project": r.project, "status": r.status} for r in reports],
            "failed_installs": app.failures.to_json()})
    if quiet(app, check, rc, totals):
        return rc  # cron: nothing done, nothing wrong, nothing to say
    emit(app, data, lambda: _text(reports, totals, check, app.verbose, wait)
         if projects else "no framework installs found (see search_paths and projects)")
    return rc


def did_nothing(totals: dict[str, Any]) -> bool:
    """A pass that changed nothing and met nothing wrong: nothing compressed, expired,
    recovered or restored, no failure, no install skipped for its lock."""
    return not any(totals.get(k) for k in (
        "compressed", "finished", "expired", "recovered", "failed", "collisions",
        "projects_locked", "retention_expired", "retention_restored", "retention_failed"))


def quiet(app: AppContext, check: bool, rc: int, totals: dict[str, Any]) -> bool:
    """Say nothing: a real pass (not --check) run off a terminal (cron) without --json
    or -v that did nothing (:func:`did_nothing`) and failed nothing, no install
    included. Errors and real work always print; a person at a terminal always gets the
    report; a script that asked for --json always gets its document."""
    if check or app.json or app.verbose or rc != EXIT_OK or app.failures:
        return False
    try:
        if sys.stdout.isatty():
            return False
    except (AttributeError, ValueError):
        pass
    return did_nothing(totals)


def _log_project(r: ProjectReport) -> None:
    if r.status == "locked":
        log.info("clean %s: skipped, another pass holds the lock", r.project)
        return
    c = sum(k.compressed + k.finished for k in r.kinds.values())
    e = sum(k.expired for k in r.kinds.values())
    f = sum(k.failed for k in r.kinds.values())
    s = sum(sum(k.skipped.values()) for k in r.kinds.values())
    if c or e or f:
        log.info("clean %s: compressed %d, expired %d, skipped %d, failed %d",
                 printable(r.project), c, e, s, f)
    for kind, k in r.kinds.items():
        ret = k.retention
        if ret is None:
            continue
        if ret.status in ("skipped", "failed"):
            log.warning("clean %s: %s retention %s: %s", printable(r.project), kind,
                        ret.status, ret.reason)
        for g in ret.items if ret.status == "done" else ():
            log.info("clean %s: %s: expired %s (%s%s)", printable(r.project), kind,
                     printable(g.what), f"{g.level}, " if g.level else "", g.rule)
        for x in ret.restored if ret.status == "done" else ():
            log.info("clean %s: %s: restored %s from its .gz (read back by name)",
                     printable(r.project), kind, printable(x))
        if ret.index.get("rewritten"):
            log.info("clean %s: %s: rewrote %s", printable(r.project), kind,
                     printable(ret.index["file"]))
