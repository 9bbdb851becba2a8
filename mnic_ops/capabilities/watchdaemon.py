"""The watcher daemon: its start (the data folders found, checked against the inotify
limits and watched), the events it handles, the data folders themselves checked for
being deleted, re-created or relinked, SIGHUP's reload, the files still settling kept
across restarts, the loop, and the service's liveness record
(:mod:`mnic_ops.facts.watchstate`)."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from mnic_ops.capabilities import watchobservers
from mnic_ops.capabilities.watchcandidates import Key
from mnic_ops.capabilities.watchcompress import BATCH_WINDOW, Compressing, Interrupted
from mnic_ops.capabilities.watchroots import (
    ABSENT,
    READ_ONLY,
    READY,
    REFUSED,
    WATCHING,
    WatchRoot,
    build_roots,
    count_dirs,
    dur,
    lident,
    prepare_root,
)
from mnic_ops.capabilities.watchunit import UNIT_NAME
from mnic_ops.core import safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.engines import cleanjobs, compress
from mnic_ops.facts import watchstate
from mnic_ops.facts.projects import Project, human
from mnic_ops.facts.watchlimits import read_limits

log = logging.getLogger(__name__)

PENDING_FILE = "/var/lib/mnic-ops/watch-pending.json"
EXIT_RESTART = 75  # --service: ask systemd (Restart=on-failure) for a fresh sandbox
OVERFLOW_GAP = 2.0  # at most one overflow rescan (and report) this often
HEARTBEAT_MAX = 30.0  # the service's liveness record is rewritten at least this often


def process_start_time() -> float:
    """Wall-clock time this process was exec'ed: its start in clock ticks on the boot
    clock (/proc/self/stat), turned into wall time through CLOCK_BOOTTIME. Falls back
    to now."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.time()


class Daemon(Compressing):
    """The watcher's event loop, and what starts, reloads and stops it."""

    # -- signals --------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.wake()
        if self.interruptible:
            self.interruptible = False
            raise Interrupted()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake()

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        self.thread_error = args.exc_value or RuntimeError("observer thread died")
        self.wake()

    # -- start ------------------------------------------------------------------------

    def _setup_roots(self, projects: Sequence[Project]) -> list[WatchRoot]:
        roots = build_roots(self.app, projects, self.tier)
        for f in self.app.failures.drain():  # a long-running watcher logs them and goes on
            log.warning("%s", f.text())
        for r in roots:
            prepare_root(self.app, r, self.mounts, self.force_poll)
            if r.state == READY:
                r.dirs = count_dirs(self.app, r)
        return roots

    def _watch_all(self) -> None:
        """Check that the folders fit the inotify limits (else poll, saying how to fix
        them), then watch every ready root."""
        for r in self.roots:
            if r.state == REFUSED:
                log.warning("%s: not watched: %s", cleanjobs.printable(r.host_path), r.note)
        need = sum(r.dirs for r in self.roots if r.state == READY and not r.poll)
        if need and not self.force_poll:
            limits = read_limits(self.app.root)
            problem = limits.problem(need)
            if problem:
                log.warning("%s: falling back to polling every %gs instead. To use "
                            "inotify, %s; then restart the watcher.", problem,
                            self.poll_seconds, limits.fix(need))
                self.force_poll = True
                for r in self.roots:
                    r.poll = True
        for r in self.roots:
            if r.state == READY:
                self._schedule(r)
        self._index()

    def start(self) -> None:
        """Find the folders, check the inotify limits, watch, and pick up what was
        written while starting (and what the last run left settling)."""
        self.roots = self._setup_roots(self.projects)
        self._watch_all()
        now = time.time()
        self.next_root_check = now + self.check_every
        self.next_periodic = now + self.rescan_every if self.rescan_every else float("inf")
        for r in self.roots:
            if r.state == WATCHING:
                self.rescan(r, "", "all" if self.once_settled else "since_start",
                            recover=True)
        self._load_pending()
        if self.service:
            self.heartbeat()  # on record before it says it is watching
        self._announce()

    def _announce(self) -> None:
        watching = [r for r in self.roots if r.state == WATCHING]
        folders = sum(r.dirs for r in watching)
        modes = sorted({r.observer for r in watching})
        settle: dict[str, float] = {}
        for r in watching:
            settle.setdefault(r.kind, r.settle)
        nproj = len({r.project.host_path for r in watching})
        text = (f"watching {folders} folders in {len(watching)} data folders of {nproj} "
                f"install(s) ({', '.join(modes) or 'nothing to watch'}); settle: "
                + (", ".join(f"{k} {dur(v)}" for k, v in settle.items()) or "-"))
        if not self.projects:
            text += ("; no framework installs found: send SIGHUP (systemctl reload "
                     f"{UNIT_NAME}) after adding one")
        self.say("watching", text, folders=folders, observers=modes,
                 roots=[r.to_json() for r in self.roots], pending=len(self.pending))

    # -- events -----------------------------------------------------------------------

    def handle(self, code: str, src: str, dest: str, t: float) -> None:
        if code != "wake":
            self.events += 1
            self.last_event = t
        if code == "fclosed":
            self.candidate(src, t, "closed")
        elif code == "fmoved":
            if dest:
                self.candidate(dest, t, "moved in")
        elif code in ("fcreated", "fmodified"):
            r = self._root_of(src)
            if r is not None and r.poll:
                self.candidate(src, t, code[1:])
        elif code in ("dcreated", "dmoved"):
            path = dest if code == "dmoved" else src
            r = self._root_of(path) if path else None
            if r is not None:
                self.new_dirs[path] = r
        elif code == "ddeleted" and src in self.by_real:
            self.next_root_check = 0.0
        elif code == "overflow":
            self._overflowed(src, dest == "backlog")
        elif code == "limit" and self.inotify is not None:
            self._fall_back_to_polling(f"inotify: {src}")
        elif code == "died" and self.inotify is not None and self.inotify.error is not None:
            self.thread_error = self.inotify.error

    # -- the data folders themselves ---------------------------------------------------

    def check_roots(self) -> None:
        """Notice a data folder that was deleted, re-created (even with the same inode
        number), appeared, or became (or stopped being) a symlink, and rebuild that
        install's roots."""
        changed: dict[str, set[str]] = {}
        for r in self.roots:
            host = r.project.host_path
            if r.state == READ_ONLY:
                continue
            lid = lident(r.project.data[r.kind].path)
            if lid != r.link_ident or (
                    r.state == ABSENT and r.real and os.path.lexists(r.real)):
                # gone, re-created or relinked: whatever is there now is new, even when
                # a re-created folder got the old inode number back
                changed.setdefault(host, set()).add(r.kind)
                continue
            if r.state == WATCHING:
                if lid is not None and lid[:2] == r.ident:
                    ok = True  # not a link: the lstat above was of the watched folder
                else:
                    try:
                        st = os.stat(r.real)
                        ok = (st.st_dev, st.st_ino) == r.ident
                    except OSError:
                        ok = False
                if not ok or not self._observed(r):
                    changed.setdefault(host, set()).add(r.kind)
        for host, dead in changed.items():
            self._rebuild_project(host, dead)
            if self.stopping:
                return

    def _rebuild_project(self, host: str, dead: set[str] | None = None) -> None:
        from mnic_ops.facts.projects import load_project

        old = [r for r in self.roots if r.project.host_path == host]
        before = {r.kind: (r.real, r.ident) for r in old
                  if r.state == WATCHING and r.kind not in (dead or ())}
        try:
            proj = load_project(self.app.root, host, old[0].project.layout)
            new = self._setup_roots([proj])
        except (OSError, OpsError) as exc:
            log.warning("%s: cannot re-read the install: %s", cleanjobs.printable(host), exc)
            return
        fresh = [r for r in new if r.state == READY and before.get(r.kind) != (r.real, r.ident)]
        if fresh and self.service:
            log.warning("%s: data folder(s) %s appeared or were re-created; restarting so "
                        "that the service's sandbox lets it write there",
                        cleanjobs.printable(host), ", ".join(r.kind for r in fresh))
            self.exit_code, self.stopping = EXIT_RESTART, True
            return
        for r in old:
            self._unschedule(r)
        self.roots = [r for r in self.roots if r.project.host_path != host] + new
        for r in new:
            if r.state == READY:
                self._schedule(r)
            if r.state == REFUSED:
                log.warning("%s: not watched: %s", cleanjobs.printable(r.host_path), r.note)
        self._index()
        live = set(self.by_real)
        for key in [k for k in self.pending if k[0] not in live]:
            del self.pending[key]
        for r in new:
            if r.state == WATCHING and any(r is f for f in fresh):
                log.info("%s: watching again", cleanjobs.printable(r.host_path))
                self.rescan(r, "", "new")

    # -- reload, pending across restarts --------------------------------------------------

    def reload(self) -> None:
        from mnic_ops.core.app import AppContext

        self.reload_requested = False
        old = self.app
        state = (self.app, self.engine, self.tier, self.projects, self.mounts,
                 self.poll_seconds, self.rescan_every, self.force_poll, self.verbose)
        try:
            self._configure(AppContext(root=old.root, config_path=old.config_path,
                                       json=old.json, verbose=old.verbose))
            roots = self._setup_roots(self.projects)
        except OpsError as exc:
            (self.app, self.engine, self.tier, self.projects, self.mounts, self.poll_seconds,
             self.rescan_every, self.force_poll, self.verbose) = state
            log.error("reload failed: %s; keeping the previous configuration", exc.message)
            return
        carried: list[tuple[Key, float]] = []
        for key, due in self.pending.items():
            r = self.by_real.get(key[0])
            if r is not None:
                carried.append((key, due - r.settle))  # back to the event time
        self._stop_observers()
        self.roots = roots
        self._watch_all()
        self.pending, self.heap = {}, []
        for (real, reldir, name), t in carried:
            nr = self.by_real.get(real)
            if nr is not None:
                self.consider(nr, reldir, name, t, "carried over")
        self.next_periodic = time.time() + self.rescan_every if self.rescan_every \
            else float("inf")
        log.warning("reloaded the configuration")
        self._announce()

    def _take_last_hints(self) -> None:
        """Files announced before the stop but not handled yet are saved as settling
        too (other hints no longer matter)."""
        while True:
            try:
                code, src, dest, t = self.q.get_nowait()
            except queue.Empty:
                return
            if code in ("fclosed", "fmoved", "fcreated", "fmodified"):
                self.handle(code, src, dest, t)

    def _pending_path(self) -> Any:
        return self.app.root.path(PENDING_FILE)

    def _save_pending(self) -> None:
        path = self._pending_path()
        entries = []
        for (real, reldir, name), due in self.pending.items():
            r = self.by_real.get(real)
            if r is None:
                continue
            full = os.path.join(real, reldir, name) if reldir else os.path.join(real, name)
            entries.append([self.app.root.host(full), due - r.settle])
        try:
            if entries:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                safefs.atomic_write(path, json.dumps({"files": entries}), mode=0o600)
                log.info("%d file(s) still settling saved for the next start",
                         len(entries))
            elif os.path.lexists(path):
                os.unlink(path)
        except (OSError, OpsError) as exc:
            log.warning("%s: cannot save the files still settling: %s", PENDING_FILE, exc)

    def _load_pending(self) -> None:
        path = self._pending_path()
        try:
            raw = safefs.read_bytes_nofollow(path)
            os.unlink(path)
            files = json.loads(raw).get("files", [])
        except FileNotFoundError:
            return
        except (OSError, OpsError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable, ignored: %s", PENDING_FILE, exc)
            return
        for entry in files:
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) \
                    and isinstance(entry[1], int | float) and entry[0].startswith("/"):
                self.candidate(str(self.app.root.path(entry[0])), float(entry[1]),
                               "carried over")

    # -- the loop -------------------------------------------------------------------------

    def _next_wakeup(self) -> float:
        t = min(self.next_root_check, self.next_periodic)
        if self.heap:
            t = min(t, self.heap[0][0] + BATCH_WINDOW)
        if self.new_dirs:
            t = 0.0
        if self.overflow:
            t = min(t, self.next_overflow_scan)
        if self.restart_at is not None:
            t = min(t, self.restart_at)
        if self.service:
            t = min(t, self.next_heartbeat)
        return t

    def step(self) -> None:
        timeout = min(max(self._next_wakeup() - time.time(), 0.0), self.check_every)
        try:
            item = self.q.get(timeout=timeout) if timeout > 0 else self.q.get_nowait()
            self.handle(*item)
            for _ in range(100_000):
                self.handle(*self.q.get_nowait())
        except queue.Empty:
            pass
        if self.stopping:
            return
        if self.reload_requested:
            self.reload()
        now = time.time()
        if self.restart_at is not None:
            self._restart_observers(self.restart_why)
        elif self.thread_error is not None or now >= self.next_root_check:
            why = self._observer_trouble()
            if why is not None:
                self._restart_observers(why)
        if now >= self.next_root_check:
            self.check_roots()
            self.next_root_check = time.time() + self.check_every
            if self.stopping:
                return
        if self.new_dirs:
            self._scan_new_dirs()
        if self.overflow and now >= self.next_overflow_scan:
            self.overflow = False
            self.next_overflow_scan = now + OVERFLOW_GAP
            lost, self.overflows_reported = self.overflows - self.overflows_reported, \
                self.overflows
            self.notice("overflow", logging.WARNING,
                        "inotify queue overflowed" + (f" ({lost} times)" if lost > 1 else "")
                        + ": listing the watched folders for files whose events were lost",
                        overflows=self.overflows, since_last_report=lost)
            self.full_rescan("since_start")
        if now >= self.next_periodic:
            self.next_periodic = now + self.rescan_every
            self.full_rescan("since_start")
        self.process_due()
        if self.service and time.time() >= self.next_heartbeat:
            self.heartbeat()

    # -- liveness ---------------------------------------------------------------------------

    def liveness(self, state: str = "running") -> dict[str, Any]:
        """The service's liveness record: counters only, no names (see watchstate)."""
        now = time.time()
        watching = [r for r in self.roots if r.state == WATCHING]
        inotify = None if self.inotify is None else (
            "running" if self.inotify.alive(watchobservers.READER_STALL) else "stalled"
            if self.inotify.alive(float("inf")) else "dead")
        polling = None if self.poller is None else (
            "running" if self.poller.is_alive() else "dead")
        if self.restart_at is not None:
            inotify = inotify or "restarting"
        return {
            "pid": os.getpid(), "state": state, "started": round(self.started, 3),
            "heartbeat": round(now, 3), "heartbeat_seconds": self.heartbeat_every,
            "observers": {"inotify": inotify, "polling": polling},
            "folders": {"inotify": sum(r.observer == "inotify" for r in watching),
                        "polling": sum(r.observer == "polling" for r in watching),
                        "not_watched": len(self.roots) - len(watching)},
            "inotify_watches": self.inotify.watches if self.inotify is not None else 0,
            "pending": len(self.pending), "compressed": self.compressed,
            "bytes_saved": self.saved, "last_compressed": self.last_compressed,
            "events": self.events, "last_event": self.last_event,
            "overflows": self.overflows, "observer_restarts": self.restart_count,
            "polled_after_storm": self.storm_polled, "last_problem": self.last_problem,
        }

    @property
    def heartbeat_every(self) -> float:
        return min(HEARTBEAT_MAX, max(1.0, 6 * self.check_every))

    def heartbeat(self, state: str = "running") -> None:
        """Rewrite the service's liveness record (best effort: a full /run must not
        stop the compressing)."""
        self.next_heartbeat = time.time() + self.heartbeat_every
        try:
            watchstate.write(self.app.root, self.liveness(state))
        except (OSError, OpsError) as exc:
            log.debug("%s: cannot write: %s", watchstate.STATE_FILE, exc)

    def run(self) -> int:
        prev_hook = threading.excepthook
        prev = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        wd_log = logging.getLogger("watchdog")
        if self.app.verbose < 2:
            wd_log.setLevel(logging.WARNING)  # its per-event debug lines cost time
        compress.prepare_process()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        threading.excepthook = self._thread_died
        try:
            try:
                self.start()
                while not self.stopping:
                    self.step()
            except Interrupted:
                pass
        finally:
            threading.excepthook = prev_hook
            self._stop_observers()
            self._take_last_hints()
            self._save_pending()
            if self.service:
                self.heartbeat("stopped")
            for s, h in prev.items():
                signal.signal(s, h)
        self.say("stopped", f"stopped: compressed {self.compressed} file(s), saved "
                 f"{human(self.saved)}", compressed=self.compressed, bytes_saved=self.saved,
                 exit_code=self.exit_code)
        return self.exit_code
