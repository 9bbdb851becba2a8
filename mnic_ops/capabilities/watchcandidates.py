"""The watcher's state and its candidates: the config it runs with, its output, the
files waiting to settle (a heap of due times) and the rescans that find candidates no
event announced (a new folder, lost events, ``--once-settled``, a killed run's
temporaries).

The daemon is one object built in layers, each a module: :class:`Candidates` here,
the observers that feed it (:mod:`mnic_ops.capabilities.watchobservers`), the
compressing of due files (:mod:`mnic_ops.capabilities.watchcompress`) and the loop
that runs them (:mod:`mnic_ops.capabilities.watchdaemon`)."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import queue
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mnic_ops.capabilities.watchroots import WATCHING, WatchRoot, dur, wanted
from mnic_ops.core.errors import EXIT_OK, InputError
from mnic_ops.engines import cleanjobs, datatree, dirlock, inplace, tempfiles
from mnic_ops.facts import policy
from mnic_ops.facts.projects import Project

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.engines.treewatch import TreeWatch

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (watched folder real path, folder below it, name)


class _Handler:
    """Runs on the polling observer's dispatcher thread: only queues (code, path, dest,
    time), the same hints :class:`mnic_ops.engines.treewatch.TreeWatch` sends."""

    def __init__(self, q: queue.SimpleQueue[tuple[str, str, str, float]]) -> None:
        self.q = q

    def dispatch(self, event: Any) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        code = ("d" if event.is_directory else "f") + str(event.event_type)
        self.q.put((code, src, dest, time.time()))


_WAKE = ("wake", "", "", 0.0)


class Candidates:
    """The watcher's state (everything but the observers' own threads runs on the main
    thread, which is also where signals arrive), its candidates and rescans."""

    def __init__(self, app: AppContext, names: Sequence[str], *, poll: bool,
                 once_settled: bool, service: bool, started: float | None = None) -> None:
        self.app, self.names = app, tuple(names)
        self.poll_flag, self.once_settled, self.service = poll, once_settled, service
        self.q: queue.SimpleQueue[tuple[str, str, str, float]] = queue.SimpleQueue()
        self.handler = _Handler(self.q)
        self.roots: list[WatchRoot] = []
        self.by_real: dict[str, WatchRoot] = {}
        self.pending: dict[Key, float] = {}  # key -> due time
        self.heap: list[tuple[float, int, Key]] = []
        self.seq = itertools.count()
        self.given_up: dict[Key, tuple[int, int]] = {}  # until the file changes
        self.new_dirs: dict[str, WatchRoot] = {}
        self.started = time.time() if started is None else started
        # ctime at or after it: written (or moved here) since start; the margin covers
        # the kernel's coarse file timestamps
        self.watermark = self.started - 0.05
        self.stopping = False
        self.reload_requested = False
        self.interruptible = False
        self.overflow = False
        self.thread_error: BaseException | None = None
        self.exit_code = EXIT_OK
        self.inotify: TreeWatch | None = None
        self.poller: Any = None
        self.poll_roots: dict[str, WatchRoot] = {}  # real path -> root, for _listdir
        self.next_root_check = 0.0
        self.next_overflow_scan = 0.0
        self.next_periodic = 0.0
        self.compressed = 0
        self.saved = 0
        # what the liveness record counts (and the reports on stderr/stdout)
        self.events = 0
        self.last_event: float | None = None
        self.last_compressed: float | None = None
        self.overflows = 0
        self.overflows_reported = 0
        self.stormers: dict[str, deque[float]] = {}  # real path -> overflow times
        self.storm_polled = 0
        self.restarts: deque[float] = deque()
        self.restart_count = 0
        self.restart_at: float | None = None  # a restart waiting for its delay
        self.restart_why = ""
        self.next_heartbeat = 0.0
        self.last_problem: dict[str, Any] | None = None
        self.timestamps = "JOURNAL_STREAM" not in os.environ
        self._configure()

    # -- configuration ----------------------------------------------------------------

    def _configure(self, app: AppContext | None = None) -> None:
        """(Re)read everything that comes from the config and the data map; on bad input
        nothing is changed (the InputError propagates)."""
        from mnic_ops.facts import hostfacts

        app = app or self.app
        cfg = app.config
        eng = cleanjobs.engine(cfg)
        tier = policy.tier_clean(app)
        poll_seconds = float(cfg.get("watch.poll_seconds", 30.0))
        rescan_every = float(cfg.get("watch.rescan_minutes", 60.0)) * 60.0
        projects = self._select(app)
        mounts = hostfacts.mounts(app.root, hostfacts.Absent())
        self.app, self.engine, self.tier, self.projects, self.mounts = \
            app, eng, tier, projects, mounts
        self.poll_seconds, self.rescan_every = poll_seconds, rescan_every
        self.check_every = float(cfg.get("watch.check_seconds", 5.0))
        self.force_poll = self.poll_flag or bool(cfg.get("watch.poll", False))
        self.verbose = app.verbose > 0

    def _select(self, app: AppContext) -> list[Project]:
        from mnic_ops.facts.projects import select_projects

        if not self.service:
            return select_projects(app, self.names)
        out: list[Project] = []  # a service must not die because one install went away
        for name in self.names or ("",):
            try:
                got = select_projects(app, [name] if name else [])
            except InputError as exc:
                log.warning("%s; not watched", exc.message)
                continue
            out.extend(p for p in got if all(p.host_path != q.host_path for q in out))
        return out

    # -- output ------------------------------------------------------------------------

    def say(self, event: str, text: str, **data: Any) -> None:
        """One line on stdout (JSON with --json): what the admin wants in the log."""
        if self.app.json:  # one object per line, versioned like every document
            from mnic_ops.core.app import SCHEMA_VERSION

            line = json.dumps({"schema_version": SCHEMA_VERSION, "command": "watch",
                               "event": event, "time": round(time.time(), 3), **data},
                              default=str)
        else:
            line = (time.strftime("%Y-%m-%d %H:%M:%S ") if self.timestamps else "") + text
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:  # nobody reads stdout any more: the work goes on regardless
            pass

    def wake(self) -> None:
        self.q.put(_WAKE)

    def notice(self, event: str, level: int, text: str, **data: Any) -> None:
        """Something the admin should know about the watcher itself (an overflow, a
        restart, a folder moved to polling): logged, and with --json also one event
        on stdout for scripts. Never a file name: only data folders the admin named."""
        log.log(level, "%s", text)
        self.last_problem = {"event": event, "time": round(time.time(), 3)}
        if self.app.json:
            self.say(event, text, **data)
        self.next_heartbeat = 0.0  # the liveness record says so at once

    # -- candidates ---------------------------------------------------------------------

    def _index(self) -> None:
        self.by_real = {r.real: r for r in self.roots if r.state == WATCHING}

    def _root_of(self, path: str) -> WatchRoot | None:
        p = path
        while True:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            r = self.by_real.get(parent)
            if r is not None:
                return r
            p = parent

    def candidate(self, path: str, t: float, why: str) -> None:
        r = self._root_of(path)
        if r is None:
            return
        rel = path[len(r.real) + 1:]
        reldir, name = os.path.split(rel)
        self.consider(r, reldir, name, t, why)

    def consider(self, r: WatchRoot, reldir: str, name: str, t: float, why: str) -> None:
        rel = f"{reldir}/{name}" if reldir else name
        if not wanted(r, name, rel):
            return
        key = (r.real, reldir, name)
        due = t + r.settle
        old = self.pending.get(key)
        if old is not None and old >= due:
            return
        self.pending[key] = due
        heapq.heappush(self.heap, (due, next(self.seq), key))
        if self.verbose:
            log.info("%s: %s; compress after %s quiet", why,
                     cleanjobs.printable(f"{r.host_path}/{rel}"), dur(r.settle))

    def _reschedule(self, key: Key, due: float) -> None:
        self.pending[key] = due
        heapq.heappush(self.heap, (due, next(self.seq), key))

    # -- rescans (safety nets) ------------------------------------------------------------

    def rescan(self, r: WatchRoot, sub: str, mode: str, *, recover: bool = False) -> None:
        """List a watched folder (or ``sub`` below it) for candidates. ``mode``: ``new``
        (a folder that appeared: every file is new), ``since_start`` (files whose
        ctime says they were written or moved here since start), ``all``
        (--once-settled). ``recover`` also finishes temporaries a killed run left."""
        parts = r.parts + tuple(sub.split("/")) if sub else r.parts
        try:
            top = cleanjobs.open_tree(self.app.root, r.prefix or "/", parts, r.base_ident)
        except OSError:
            return
        stale: dict[str, list[str]] = {}
        now = time.time()
        try:
            if os.fstat(top).st_dev != r.dev:
                return
            for reldir, _dparts, _ident, entries in datatree.walk(top, r.dev):
                rd = f"{sub}/{reldir}".strip("/") if sub else reldir
                for name, st in entries:
                    if tempfiles.is_ours(name):
                        if recover:
                            stale.setdefault(rd, []).append(name)
                        continue
                    key = (r.real, rd, name)
                    if key in self.pending:
                        continue
                    if self.given_up.get(key) == (st.st_mtime_ns, st.st_ctime_ns):
                        continue
                    if mode == "new":
                        t = now
                    elif mode == "all":
                        t = st.st_mtime
                    elif st.st_ctime >= self.watermark:
                        t = max(st.st_mtime, st.st_ctime)
                    else:
                        continue
                    self.consider(r, rd, name, t, "found")
                if self.stopping:
                    return
        finally:
            os.close(top)
        if stale:
            self._recover(r, stale)

    def _recover(self, r: WatchRoot, stale: dict[str, list[str]]) -> None:
        with dirlock.project_lock(self.app.root, r.project.host_path) as got:
            if not got:
                return  # clean holds the lock: it recovers them itself
            for rd, names in stale.items():
                parts = r.parts + tuple(rd.split("/")) if rd else r.parts
                try:
                    dfd = cleanjobs.open_tree(self.app.root, r.prefix or "/", parts, r.base_ident)
                except OSError:
                    continue
                try:
                    for n in names:
                        o = tempfiles.recover_stale(dfd, n, inplace.Options(dev=r.dev))
                        if o.state in (inplace.RECOVERED, inplace.FINISHED):
                            log.info("%s: %s", cleanjobs.printable(f"{r.host_path}/{rd}/{n}"),
                                     o.detail)
                finally:
                    os.close(dfd)

    def full_rescan(self, mode: str) -> None:
        for r in self.roots:
            if r.state == WATCHING:
                self.rescan(r, "", mode)

    def _scan_new_dirs(self) -> None:
        dirs, self.new_dirs = self.new_dirs, {}
        for path in sorted(dirs):
            r = dirs[path]
            if r.state != WATCHING or self.by_real.get(r.real) is not r:
                continue
            p = os.path.dirname(path)
            if any(a in dirs for a in _ancestors(p, r.real)):
                continue  # its new parent's listing covers it
            self.rescan(r, path[len(r.real) + 1:], "new")


def _ancestors(path: str, top: str) -> Iterable[str]:
    while len(path) > len(top):
        yield path
        path = os.path.dirname(path)
