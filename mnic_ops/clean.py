"""``mnic-ops clean``: the maintenance pass (compress aged data in place, expire archives).

It replaces the guide's ``find -exec gzip {} \\;`` and ``find -delete`` cron lines. Run
as root over folders users can write, it walks with directory descriptors (never
following a symlink, never leaving the data folder's filesystem), leaves alone the
names the framework reads back, and hands batches of files to worker processes that
use the crash-safe engine in :mod:`mnic_ops.compress`. The walk is streamed: memory
does not grow with the tree. One pass per project at a time (a lock shared with
``watch``); a second one says it skipped and exits 0.
"""

from __future__ import annotations

import fnmatch
import logging
import multiprocessing
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from mnic_ops import compress as cz
from mnic_ops import installfail, linkrecords, userjson
from mnic_ops.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, EXIT_PENDING, InputError
from mnic_ops.hostroot import HostRoot
from mnic_ops.projects import DATA_KINDS, PROTECTED_NAMES, Project, human, select_projects

if TYPE_CHECKING:
    from mnic_ops.config import Config
    from mnic_ops.output import AppContext

log = logging.getLogger(__name__)

DAY = 86400.0
# Built-in policy (issue 6 / the guide): patterns, compress after, delete archives after.
DEFAULTS: dict[str, tuple[tuple[str, ...], float, float]] = {
    "sessions": (("*.json", "*.md"), 7, 30),
    "checkpoints": (("*.json",), 7, 30),
    # the store's own checkpoints/<id>.dat.gz are the framework's, listed in its index:
    # only our *.json.gz archives expire there
    "checkpoint_store": (("*.json",), 7, 30),
    "thinking_logs": (("*.json",), 7, 90),
    "cost_records": (("daily/*.json",), 7, 90),
    "logs": ((), 0, 0),  # not in the guide's policy: off unless configured
    "task_results": ((), 0, 0),  # the framework deletes these itself after 7 days
}
THINKING_CONFIG = ".claude/config/extended-thinking-config.json"
COST_CONFIG = ".claude/config/cost-optimization.json"
MAX_EXAMPLES = 10  # skipped paths kept per reason and kind (memory stays flat)


# --- policy ----------------------------------------------------------------------------

@dataclass
class Policy:
    kind: str
    patterns: tuple[str, ...]
    compress_after_days: float
    expire_patterns: tuple[str, ...]
    delete_after_days: float
    sources: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"patterns": list(self.patterns),
                "compress_after_days": self.compress_after_days,
                "expire_patterns": list(self.expire_patterns),
                "delete_after_days": self.delete_after_days, "sources": self.sources}


def _read_json_beneath(project: Project, rel: str) -> Any:
    from mnic_ops import safefs

    try:
        fd = safefs.open_beneath(project.path, rel)
    except (OSError, cz.Skip, Exception):  # absent, a symlink in the way: no value
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        # Bounded: a user's file that is not usable JSON fails this install (UserDataError
        # naming file:line:col, turned into the install's failure by the caller).
        return userjson.parse(fh.read(userjson.MAX_BYTES + 1), f"{project.host_path}/{rel}")


def framework_values(project: Project) -> dict[str, dict[str, float]]:
    """Retention the framework's own configs declare (and nothing in it implements):
    extended-thinking-config.json ``logging.retention_days`` and ``compression:
    gzip_after_N_days``; cost-optimization.json ``costTracking.retentionDays``."""
    out: dict[str, dict[str, float]] = {}
    th = _read_json_beneath(project, THINKING_CONFIG)
    lg = th.get("logging") if isinstance(th, dict) else None
    if isinstance(lg, dict):
        vals: dict[str, float] = {}
        rd = lg.get("retention_days")
        if isinstance(rd, int | float) and not isinstance(rd, bool) and rd >= 0:
            vals["delete_after_days"] = float(rd)
        comp = lg.get("compression")
        if isinstance(comp, str):
            m = re.fullmatch(r"gzip_after_(\d+(?:\.\d+)?)_days?", comp.strip())
            if m:
                vals["compress_after_days"] = float(m.group(1))
            elif comp.strip().lower() in ("none", "off", "disabled", "false"):
                vals["compress_after_days"] = 0.0
        elif comp is False:
            vals["compress_after_days"] = 0.0
        if vals:
            out["thinking_logs"] = vals
    co = _read_json_beneath(project, COST_CONFIG)
    ct = co.get("costTracking") if isinstance(co, dict) else None
    if isinstance(ct, dict):
        rd = ct.get("retentionDays")
        if isinstance(rd, int | float) and not isinstance(rd, bool) and rd >= 0:
            out["cost_records"] = {"delete_after_days": float(rd)}
    return out


def resolve_policy(cfg: Config, project: Project, tier: dict[str, Any] | None = None
                   ) -> dict[str, Policy]:
    """Per kind: built-in default < tier < the framework's own config < mnic-ops config."""
    fw = framework_values(project)
    out: dict[str, Policy] = {}
    for kind in DATA_KINDS:
        pats, comp, dele = DEFAULTS[kind]
        vals: dict[str, Any] = {"patterns": pats, "compress_after_days": comp,
                                "expire_patterns": None, "delete_after_days": dele}
        src = {k: "default" for k in vals}
        layers: list[tuple[str, dict[str, Any]]] = [
            ("tier", (tier or {}).get(kind) or {}),
            ("framework", fw.get(kind, {})),
            ("config", cfg.get(f"clean.{kind}") or {}),
        ]
        for name, layer in layers:
            for k, v in layer.items():
                if k in vals and v is not None:
                    vals[k] = tuple(v) if isinstance(v, list) else v
                    src[k] = name
        patterns = tuple(vals["patterns"])
        expire = vals["expire_patterns"]
        if expire is None:
            expire = tuple(p + ".gz" for p in patterns)
            src["expire_patterns"] = src["patterns"]
        out[kind] = Policy(kind, patterns, float(vals["compress_after_days"]), tuple(expire),
                           float(vals["delete_after_days"]), src)
    return out


def _tier_clean(app: AppContext) -> dict[str, Any] | None:
    """``[tiers.<class>.clean]`` from the config, when one is set for this host's class
    (host-class detection only runs when such a table exists)."""
    tiers = app.config.get("tiers") or {}
    if not any(isinstance(t, dict) and "clean" in t for t in tiers.values()):
        return None
    from mnic_ops.cmd_host import detect

    decision, _ = detect(app)
    t = tiers.get(decision.host_class) or {}
    c = t.get("clean") if isinstance(t, dict) else None
    return c if isinstance(c, dict) else None


# --- matching --------------------------------------------------------------------------

def _match(patterns: tuple[str, ...], name: str, rel: str) -> bool:
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


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
    mnic-ops made them (:mod:`mnic_ops.linkrecords`). Said once per process."""
    global _DEPRECATION_SHOWN
    if cfg.get("clean.follow_links_under") and not _DEPRECATION_SHOWN:
        _DEPRECATION_SHOWN = True
        log.warning("clean.follow_links_under is deprecated and has no effect: a data "
                    "folder's symlink is followed only when mnic-ops relocate made it "
                    "(recorded in /var/lib/mnic-ops/links.json); remove the key from the "
                    "config")


# --- jobs (run in worker processes) --------------------------------------------------

@dataclass
class Job:
    """One directory's batch, re-opened by the worker from a trusted prefix one
    component at a time without following links, and checked to be the same folder."""

    root: HostRoot
    prefix: str  # host path opened normally (configured, admin-trusted)
    parts: tuple[str, ...]  # components below it, opened with O_NOFOLLOW
    ident: tuple[int, int]
    compress: list[str]
    expire: list[str]
    stale: list[str]
    copts: cz.Options
    eopts: cz.Options


_worker_dir: dict[tuple[str, tuple[str, ...], tuple[int, int]], int] = {}


def open_tree(root: HostRoot, prefix: str, parts: tuple[str, ...] = ()) -> int:
    fd = os.open(root.path(prefix), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
    try:
        return cz.open_dir_nofollow(fd, parts)
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
    fd = open_tree(job.root, job.prefix, job.parts)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != job.ident:
        os.close(fd)
        raise OSError(2, "folder was replaced during the pass")
    _worker_dir[key] = fd
    return fd


def run_job(job: Job) -> list[cz.Outcome]:
    """Compress, expire and recover one directory's names; outcome per name."""
    try:
        dfd = _job_dir(job)
    except OSError as exc:
        reason = "changed" if exc.errno in (2, 20, 40) else "unreadable_dir"
        return [cz.Outcome(n, cz.SKIPPED, reason, exc.strerror or "")
                for n in [*job.stale, *job.compress, *job.expire]]
    out = [cz.recover_stale(dfd, n, job.copts) for n in job.stale]
    if job.compress:
        out.extend(cz.compress_batch(dfd, job.compress, job.copts))
    out.extend(cz.expire_at(dfd, n, job.eopts) for n in job.expire)
    return out


def _worker_init(parent: int) -> None:
    """Workers die with the pass: an orphaned worker would hold the project lock (an
    inherited descriptor) and block every later pass."""
    import ctypes
    import signal

    cz.prepare_process()
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

    def skip(self, reason: str, rel: str) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(printable(rel))

    def add(self, o: cz.Outcome, rel: str) -> None:
        if o.state == cz.COMPRESSED:
            self.compressed += 1
            self.bytes_before += o.before
            self.bytes_after += o.after
        elif o.state == cz.FINISHED:
            self.finished += 1
            self.bytes_before += o.before
            self.bytes_after += o.after
        elif o.state == cz.EXPIRED:
            self.expired += 1
            self.expired_bytes += o.before
        elif o.state == cz.RECOVERED:
            self.recovered += 1
        elif o.state == cz.FAILED:
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
        return d


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
        self.level = int(cfg.get("clean.level", 5))
        if not 1 <= self.level <= 9:
            raise InputError(f"clean.level: expected 1-9, got {self.level}")
        self.compressor = str(cfg.get("clean.compressor", "auto"))
        cz.codec(self.compressor)  # fail early (input error) when not installed
        self.batch = int(cfg.get("clean.batch_files", 256))
        # auto: two per CPU, so that one compresses while the other waits for its
        # batch's filesystem sync or the journal
        n = int(cfg.get("clean.workers", 0)) or min(8, 2 * len(os.sched_getaffinity(0)))
        self.workers = max(1, n)
        warn_follow_links_under(cfg)
        self.pool: ProcessPoolExecutor | None = None
        self.inflight: dict[Future[list[cz.Outcome]], tuple[KindReport, str]] = {}
        self.now = time.time()

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

    def _collect(self, outcomes: list[cz.Outcome], rep: KindReport, reldir: str) -> None:
        for o in outcomes:
            rep.add(o, f"{reldir}/{o.name}" if reldir else o.name)

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
        relocate made for this install, see :mod:`mnic_ops.linkrecords`), or None with
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
        policies = resolve_policy(self.app.config, project, tier)
        with cz.project_lock(self.root, project.host_path) as got:
            if not got:
                rep.status = "locked"
                return rep
            try:
                for kind in DATA_KINDS:
                    pol = policies[kind]
                    kr = KindReport(project.data[kind].host_path, pol)
                    rep.kinds[kind] = kr
                    if not self._active(pol):
                        kr.note = "no policy (compression and expiry off)"
                        continue
                    where = self._data_root(project, kind, kr)
                    if where is not None:
                        self._walk_kind(where, pol, kr)
            finally:
                self.close()  # every batch finished before the lock is released
        return rep

    def _active(self, pol: Policy) -> bool:
        comp = pol.compress_after_days > 0 and pol.patterns and self.only != "expire"
        exp = pol.delete_after_days > 0 and pol.expire_patterns and self.only != "compress"
        return bool(comp or exp)

    def _walk_kind(self, where: linkrecords.Location, pol: Policy,
                   rep: KindReport) -> None:
        prefix, parts = where.prefix or "/", where.parts
        try:
            top = linkrecords.open_location(self.root, where)
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
            do_comp = pol.compress_after_days > 0 and self.only != "expire"
            do_exp = pol.delete_after_days > 0 and self.only != "compress"
            cut_c = self.now - pol.compress_after_days * DAY
            cut_e = self.now - pol.delete_after_days * DAY
            copts = cz.Options(level=self.level, compressor=self.compressor, dev=dev,
                               max_mtime=cut_c)
            eopts = cz.Options(dev=dev, max_mtime=cut_e)
            for reldir, dparts, ident, entries in self._walk(top, dev, rep):
                batch = Job(self.root, prefix, parts + dparts, ident, [], [], [], copts, eopts)
                for name, st in entries:
                    rel = f"{reldir}/{name}" if reldir else name
                    if cz.is_ours(name):
                        batch.stale.append(name)
                        continue
                    want_c = do_comp and _match(pol.patterns, name, rel)
                    want_e = do_exp and _match(pol.expire_patterns, name, rel)
                    if not (want_c or want_e):
                        continue
                    if name in PROTECTED_NAMES:
                        rep.skip("protected", rel)
                        continue
                    old_c = want_c and st.st_mtime < cut_c
                    old_e = not old_c and want_e and st.st_mtime < cut_e
                    if not (old_c or old_e):
                        continue
                    if st.st_nlink != 1:
                        rep.skip("hard_links", rel)
                        continue
                    if old_c:
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
        """Hand the batch to a worker (nothing in --check) and start a new one."""
        if not self.check and (batch.compress or batch.expire or batch.stale):
            job = Job(**{**batch.__dict__, "compress": batch.compress[:],
                         "expire": batch.expire[:], "stale": batch.stale[:]})
            self.submit(job, rep, reldir)
        batch.compress.clear()
        batch.expire.clear()
        batch.stale.clear()

    def _walk(self, top: int, dev: int, rep: KindReport
              ) -> Iterator[tuple[str, tuple[str, ...], tuple[int, int],
                                  Iterator[tuple[str, os.stat_result]]]]:
        """Depth-first over the tree below ``top``: for each folder, its relative path,
        components, identity and a lazy stream of its regular files with their lstat.
        Symlinks, other file types, other filesystems and unreadable folders are
        reported and not entered."""
        stack: list[tuple[str, ...]] = [()]
        while stack:
            parts = stack.pop()
            reldir = "/".join(parts)
            fd = self._open_child(top, parts, dev, reldir, rep) if parts else os.dup(top)
            if fd < 0:
                continue
            subdirs: list[str] = []
            try:
                st = os.fstat(fd)
                yield reldir, parts, (st.st_dev, st.st_ino), self._entries(
                    fd, reldir, dev, rep, subdirs)
            finally:
                os.close(fd)
            stack.extend((*parts, n) for n in reversed(subdirs))

    def _open_child(self, top: int, parts: tuple[str, ...], dev: int, rel: str,
                    rep: KindReport) -> int:
        try:
            fd = cz.open_dir_nofollow(top, parts)
        except OSError as exc:
            if exc.errno in (40, 20):  # swapped for a symlink or a file meanwhile
                rep.skip("symlink", rel)
            elif exc.errno != 2:
                rep.skip("unreadable_dir", rel)
            return -1
        if os.fstat(fd).st_dev != dev:
            os.close(fd)
            rep.skip("other_filesystem", rel + "/")
            return -1
        return fd

    def _entries(self, fd: int, reldir: str, dev: int, rep: KindReport,
                 subdirs: list[str]) -> Iterator[tuple[str, os.stat_result]]:
        try:
            it = os.scandir(fd)
        except OSError:
            rep.skip("unreadable_dir", reldir or ".")
            return
        with it:
            for e in it:
                name = e.name
                rel = f"{reldir}/{name}" if reldir else name
                try:
                    if e.is_symlink():
                        rep.skip("symlink", rel)
                        continue
                    if e.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished
                if not stat.S_ISREG(st.st_mode):
                    rep.skip("not_regular", rel)
                    continue
                if st.st_dev != dev:
                    rep.skip("other_filesystem", rel)
                    continue
                yield name, st


# --- output -----------------------------------------------------------------------

_TOTAL_FIELDS = ("compressed", "finished", "bytes_before", "bytes_after", "expired",
                 "expired_bytes", "recovered", "failed", "would_compress",
                 "would_compress_bytes", "would_expire", "would_expire_bytes")


def _totals(reports: list[ProjectReport]) -> dict[str, Any]:
    t: Counter[str] = Counter({f: 0 for f in _TOTAL_FIELDS})
    t["projects_locked"] = 0
    skipped: Counter[str] = Counter()
    for r in reports:
        t["projects_locked"] += r.status == "locked"
        for k in r.kinds.values():
            for f in _TOTAL_FIELDS:
                t[f] += getattr(k, f)
            skipped.update(k.skipped)
    out: dict[str, Any] = dict(t)
    out["bytes_saved"] = t["bytes_before"] - t["bytes_after"] + t["expired_bytes"]
    out["skipped"] = dict(sorted(skipped.items()))
    return out


def _text(reports: list[ProjectReport], totals: dict[str, Any], check: bool,
          verbose: int) -> str:
    lines: list[str] = []
    for r in reports:
        if r.status == "locked":
            lines.append(f"{r.project}: skipped: another pass holds its lock")
            continue
        lines.append(f"{r.project}:")
        for kind, k in r.kinds.items():
            if k.note and not (k.compressed or k.expired or k.skipped or k.would_compress):
                if verbose or k.note not in ("absent", "no policy (compression and expiry "
                                                       "off)"):
                    lines.append(f"  {kind:<17} {k.note}")
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
                lines.append(f"    skipped {n}: {cz.REASONS.get(reason, reason)}: "
                             f"{shown}{more}")
    if check:
        lines.append(f"would compress {totals['would_compress']} files "
                     f"({human(totals['would_compress_bytes'])}), would expire "
                     f"{totals['would_expire']} archives")
    else:
        lines.append(f"compressed {totals['compressed'] + totals['finished']} files "
                     f"({human(totals['bytes_before'])} -> {human(totals['bytes_after'])}), "
                     f"expired {totals['expired']} archives "
                     f"({human(totals['expired_bytes'])}), saved "
                     f"{human(totals['bytes_saved'])}, skipped "
                     f"{sum(totals['skipped'].values())}, failed {totals['failed']}")
    return "\n".join(lines)


def _esc(v: str) -> str:
    return printable(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def textfile_body(reports: list[ProjectReport], totals: dict[str, Any], started: float,
                  duration: float) -> str:
    """node_exporter textfile collector format."""
    m: list[str] = []

    def metric(name: str, help_: str, rows: list[tuple[str, float]]) -> None:
        m.append(f"# HELP mnic_ops_clean_{name} {help_}")
        m.append(f"# TYPE mnic_ops_clean_{name} gauge")
        m.extend(f"mnic_ops_clean_{name}{labels} {_num(value)}" for labels, value in rows)

    def per_project(fn: Any) -> list[tuple[str, float]]:
        return [(f'{{project="{_esc(r.project)}"}}', fn(r)) for r in reports
                if r.status == "done"]

    metric("last_run_timestamp_seconds", "When the last pass started (Unix time).",
           [("", round(started, 3))])
    metric("duration_seconds", "How long the last pass took.", [("", round(duration, 3))])
    metric("bytes_saved", "Bytes freed by the last pass (compression and expiry).",
           [("", totals["bytes_saved"]), *per_project(
               lambda r: sum(k.bytes_before - k.bytes_after + k.expired_bytes
                             for k in r.kinds.values()))])
    metric("files_compressed", "Files compressed by the last pass.",
           [("", totals["compressed"] + totals["finished"])])
    metric("archives_expired", "Archives deleted by the last pass.", [("", totals["expired"])])
    metric("errors", "Files the last pass failed on (I/O errors, no space).",
           [("", totals["failed"]), *per_project(
               lambda r: sum(k.failed for k in r.kinds.values()))])
    metric("skipped", "Files the last pass skipped, by reason.",
           [(f'{{reason="{_esc(k)}"}}', v) for k, v in totals["skipped"].items()])
    metric("projects_locked", "Projects skipped because another pass held their lock.",
           [("", totals["projects_locked"])])
    return "\n".join(m) + "\n"


def write_textfile(app: AppContext, body: str) -> str | None:
    """Write the textfile atomically when its folder exists; the path written or None."""
    from mnic_ops import safefs

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
    safefs.atomic_write(real, body, mode=0o644)
    return path


# --- the command -----------------------------------------------------------------------

@click.command("clean", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Say what would be compressed and expired; "
              "change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (same as "
              "the global --json).")
@click.option("--only", type=click.Choice(["compress", "expire"]), default=None,
              help="Only compress, or only expire archives (the frequent cron job).")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def clean_cmd(app: AppContext, check: bool, as_json: bool, only: str | None,
              names: tuple[str, ...]) -> int:
    """Compress aged framework data in place (standard gzip) and delete old archives.

    Policy per data class: checkpoints and sessions gzip after 7 days and expire after
    30; thinking logs after 7 and 90 (or what the project's
    extended-thinking-config.json says); cost records after 7 and 90. Names the
    framework reads back are never touched. Symlinks are never followed; files with
    several links or open for writing are skipped and reported.
    """
    if as_json:
        app.json = True
    from mnic_ops.output import _apply_log_handler, emit

    projects = select_projects(app, names)
    tier = _tier_clean(app)
    started = time.time()
    t0 = time.monotonic()
    p = Pass(app, check=check, only=only)
    handler = None if check else _apply_log_handler(app)
    reports: list[ProjectReport] = []
    try:
        for proj in projects:
            # One install's unusable file fails that install; the others are cleaned.
            with installfail.guard(app, proj.host_path, "clean"):
                r = p.run_project(proj, tier)
                reports.append(r)
                if not check:
                    _log_project(r)
    finally:
        p.close()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    duration = time.monotonic() - t0
    totals = _totals(reports)
    textfile = None
    if not check and any(r.status == "done" for r in reports):
        textfile = write_textfile(app, textfile_body(reports, totals, started, duration))
    data = {"command": "clean", "check": check, "only": only, "started": started,
            "duration_seconds": round(duration, 3), "textfile": textfile,
            "projects": [{"project": r.project, "status": r.status,
                          "kinds": {k: v.to_json(check) for k, v in r.kinds.items()}}
                         for r in reports], "totals": totals}
    emit(app, data, lambda: _text(reports, totals, check, app.verbose)
         if projects else "no framework installs found (see search_paths and projects)")
    if check:
        return EXIT_PENDING if totals["would_compress"] or totals["would_expire"] else EXIT_OK
    return EXIT_FAILURE if totals["failed"] else EXIT_OK


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
