"""One ``clean`` pass over some installs: the walk, the per-class report, the worker pool.

Run as root over folders users can write, it walks with directory descriptors (never
following a symlink, never leaving the data folder's filesystem, see
:mod:`mnic_ops.engines.datatree`), leaves alone the names the framework reads back
(:func:`mnic_ops.facts.policy.due`), runs the framework's declared retention first
(:mod:`mnic_ops.engines.retention`), and hands batches of files to worker processes
(:mod:`mnic_ops.engines.cleanjobs`). The walk is streamed: memory does not grow with the
tree. One pass per install at a time (a lock shared with ``watch``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import posixpath
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnic_ops.core import installroot, patterns, progress
from mnic_ops.engines import compress, datatree, dirlock, inplace, retention, tempfiles
from mnic_ops.engines.cleanjobs import Job, check_job, engine, printable, run_job, worker_init
from mnic_ops.facts import linkrecords, policy
from mnic_ops.facts.policy import DAY, Policy, resolve_policy
from mnic_ops.facts.projects import DATA_KINDS, Project, human

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

log = logging.getLogger(__name__)

MAX_EXAMPLES = 10  # skipped paths kept per reason and kind (memory stays flat)
MAX_COLLISIONS = 1000  # collision resolutions listed per kind (all are counted and logged)


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
                initializer=worker_init, initargs=(os.getpid(),))
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

