"""The watcher's observers: inotify (:class:`mnic_ops.engines.treewatch.TreeWatch`) or
watchdog's polling observer, whose listings go through the same no-follow opens; the
fall-back to polling when the inotify limits are reached, a data folder that storms
polled on its own, and observers whose thread dies or stalls restarted (with a growing
delay when that repeats)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from mnic_ops.capabilities.watchcandidates import Candidates
from mnic_ops.capabilities.watchroots import ABSENT, READY, REFUSED, WATCHING, WatchRoot, dur
from mnic_ops.engines import cleanjobs
from mnic_ops.facts.watchlimits import read_limits

log = logging.getLogger(__name__)

STORM_OVERFLOWS = 2  # a folder behind this many queue overflows ...
STORM_WINDOW = 600.0  # ... within this many seconds is polled from then on
RESTART_WINDOW = 600.0  # observer restarts counted over this many seconds;
RESTART_FREE = 3  # this many restart at once, later ones wait 2, 4, 8 ... s
RESTART_MAX_DELAY = 300.0
READER_STALL = 60.0  # an inotify reader silent this long is restarted


class Observers(Candidates):
    """The watcher with its observers: they queue hints, this schedules, unschedules,
    falls back and restarts them."""

    def _observer(self, poll: bool) -> Any:
        if poll:
            if self.poller is None:
                from watchdog.observers.polling import PollingObserverVFS

                self.poller = PollingObserverVFS(os.lstat, self._listdir,
                                                 polling_interval=self.poll_seconds)
                self.poller.start()
            return self.poller
        if self.inotify is None:
            from mnic_ops.engines.treewatch import TreeWatch

            tw = TreeWatch(self.q)
            tw.start()
            self.inotify = tw
        return self.inotify

    def _filter(self) -> list[Any]:
        from watchdog import events as ev

        # No deletions: a vanished file needs nothing, and a data folder that goes away
        # ends its emitter (checked in check_roots). Fewer event kinds, less CPU per file.
        return [ev.FileMovedEvent, ev.DirCreatedEvent, ev.DirMovedEvent,
                ev.FileCreatedEvent, ev.FileModifiedEvent]

    def _opener(self, r: WatchRoot) -> Any:
        """Opens a folder below a root from its trusted prefix, never following links."""
        root, prefix, parts, base = self.app.root, r.prefix or "/", r.parts, r.base_ident

        def opener(below: tuple[str, ...]) -> int:
            return cleanjobs.open_tree(root, prefix, parts + below, base)

        return opener

    def _listdir(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        """The polling observer's listing: the folder is opened from its root's trusted
        prefix without following links (ENOTDIR where a link is in the way, which the
        snapshot takes as an empty folder), so a swapped-in link is never listed."""
        p, rel = path or "", ""
        r = self.poll_roots.get(p)
        while r is None:
            parent = os.path.dirname(p)
            if parent == p:
                raise FileNotFoundError(errno.ENOENT, "not a watched folder", path)
            rel = os.path.basename(p) + ("/" + rel if rel else "")
            p = parent
            r = self.poll_roots.get(p)
        try:
            fd = cleanjobs.open_tree(self.app.root, r.prefix or "/",
                              r.parts + (tuple(rel.split("/")) if rel else ()), r.base_ident)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotADirectoryError(errno.ENOTDIR, "a symlink is in the way") from None
            if exc.errno == errno.ESTALE:  # the install root was replaced: check_roots
                raise NotADirectoryError(errno.ENOTDIR, "the install was replaced") from None
            raise
        try:
            if os.fstat(fd).st_dev != r.dev:
                return iter(())
            with os.scandir(fd) as it:
                return iter(list(it))
        finally:
            os.close(fd)

    def _schedule(self, r: WatchRoot) -> None:
        """Watch one ready root; ENOSPC/EMFILE (or no /proc) switch everything to
        polling."""
        try:
            obs = self._observer(r.poll)  # inotify_init itself can fail (EMFILE)
            if r.poll:
                self.poll_roots[r.real] = r
                r.watch = obs.schedule(self.handler, r.real, recursive=True,
                                       event_filter=self._filter())
            else:
                r.watch = obs.add_tree(r.real, self._opener(r), r.dev, key=r)
                r.dirs = len(r.watch.nodes)
        except OSError as exc:
            self.poll_roots.pop(r.real, None)
            if not r.poll and exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENOSYS):
                self._fall_back_to_polling(f"inotify: {exc.strerror or exc}",
                                           limits=exc.errno != errno.ENOSYS)
                return
            r.state = ABSENT if exc.errno == errno.ENOENT else REFUSED
            r.note = "" if r.state == ABSENT else f"cannot watch: {exc.strerror or exc}"
            return
        r.state, r.observer = WATCHING, "polling" if r.poll else "inotify"

    def _unschedule(self, r: WatchRoot) -> None:
        if r.watch is not None:
            if r.observer == "polling":
                self.poll_roots.pop(r.real, None)
                if self.poller is not None:
                    with contextlib.suppress(KeyError, RuntimeError, OSError):
                        self.poller.unschedule(r.watch)
            elif self.inotify is not None:
                self.inotify.remove_tree(r.watch)
            r.watch = None
        if r.state == WATCHING:
            r.state = READY

    def _observed(self, r: WatchRoot) -> bool:
        """Is this watching root's observer still delivering its events?"""
        if r.observer == "inotify":
            return self.inotify is not None and r.watch is not None and \
                self.inotify.watching(r.watch)
        return self.poller is not None and any(
            em.watch is r.watch and em.is_alive() for em in list(self.poller.emitters))

    def _fall_back_to_polling(self, why: str, *, limits: bool = True) -> None:
        """Every folder to polling: the inotify limits are reached (or inotify cannot
        be used here at all)."""
        fix = ""
        if limits:
            need = sum(r.dirs for r in self.roots if not r.network)
            fix = (f" To use inotify, {read_limits(self.app.root).fix(need)}; then restart "
                   "the watcher.")
        self.notice("polling", logging.WARNING,
                    f"{why}: falling back to polling every {self.poll_seconds:g}s.{fix}",
                    path=None, reason=why)
        self.force_poll = True
        if self.inotify is not None:
            tw, self.inotify = self.inotify, None
            for r in self.roots:
                if r.observer == "inotify":
                    r.watch, r.state, r.observer = None, READY, ""
            tw.stop()
        for r in self.roots:
            if r.state == READY:
                r.poll = True
                self._schedule(r)
        self._index()
        self.full_rescan("since_start")

    def _poll_root(self, r: WatchRoot, why: str) -> None:
        """One data folder leaves inotify for polling (it storms): the others stay."""
        self._unschedule(r)
        r.poll = True
        self._schedule(r)
        self._index()
        self.storm_polled += 1
        self.stormers.pop(r.real, None)
        self.notice("polling", logging.WARNING,
                    f"{cleanjobs.printable(r.host_path)}: {why}; polling it every "
                    f"{self.poll_seconds:g}s from now on (until the watcher restarts or "
                    "reloads)", path=cleanjobs.printable(r.host_path), kind=r.kind, reason=why)
        if r.state == WATCHING:
            self.rescan(r, "", "since_start")

    def _overflowed(self, stormer: str, backlog: bool) -> None:
        """Events were lost (the kernel's queue, or our own backlog): list the folders
        again soon; a folder behind repeated overflows is polled from then on."""
        self.overflows += 1
        self.overflow = True
        r = self.by_real.get(stormer) if stormer else None
        if r is None or r.observer != "inotify":
            return
        now = time.time()
        seen = self.stormers.setdefault(r.real, deque())
        seen.append(now)
        while seen and seen[0] < now - STORM_WINDOW:
            seen.popleft()
        if len(seen) >= STORM_OVERFLOWS:
            self._poll_root(r, f"{len(seen)} inotify queue overflows within "
                               f"{dur(STORM_WINDOW)}, most events from this folder "
                               "(a storm of renames?)")

    def _stop_observers(self) -> None:
        if self.inotify is not None:  # a stuck reader is not waited for long
            self.inotify.stop(10.0 if self.inotify.alive(READER_STALL) else 1.0)
        if self.poller is not None:
            try:
                self.poller.stop()
                self.poller.join(timeout=10)
            except Exception as exc:
                log.debug("stopping an observer: %s", exc)
        self.inotify = self.poller = None
        self.poll_roots = {}
        for r in self.roots:
            r.watch = None
            if r.state == WATCHING:
                r.state = READY

    def _observer_trouble(self) -> str | None:
        """Why the observers need a restart (a thread died or stalled), or None."""
        if self.thread_error is not None:
            exc, self.thread_error = self.thread_error, None
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EMFILE) \
                    and self.inotify is not None:
                self._fall_back_to_polling(f"inotify: {exc.strerror or exc}")
                return None
            return f"an observer thread died ({type(exc).__name__}: {exc})"
        tw = self.inotify
        if tw is not None and not tw.alive(READER_STALL):
            if tw.alive(float("inf")):
                return f"the inotify reader has not moved for {READER_STALL:g}s"
            return "the inotify reader died" + (f" ({type(tw.error).__name__}: "
                                                f"{tw.error})" if tw.error else "")
        if self.poller is not None and not self.poller.is_alive():
            return "the polling observer's thread died"
        return None

    def _restart_observers(self, why: str) -> None:
        """Stop every observer and watch again from scratch, then list the folders for
        what was missed. Repeated restarts wait longer and longer (2 s doubling to
        5 min) so that a cause that persists does not spin."""
        now = time.time()
        if self.restart_at is None:
            while self.restarts and self.restarts[0] < now - RESTART_WINDOW:
                self.restarts.popleft()
            n = len(self.restarts)
            delay = 0.0 if n < RESTART_FREE else \
                min(RESTART_MAX_DELAY, 2.0 ** (n - RESTART_FREE + 1))
            self.restart_at, self.restart_why = now + delay, why
            self._stop_observers()
            self.notice("observer_restart", logging.ERROR,
                        f"{why}; restarting the observers"
                        + (f" in {delay:g}s ({n} restarts in the last "
                           f"{dur(RESTART_WINDOW)})" if delay else ""),
                        reason=why, delay_seconds=delay, restarts=self.restart_count)
        if now < self.restart_at:
            return
        self.restart_at = None
        self.restarts.append(now)
        self.restart_count += 1
        for r in self.roots:
            if r.state == READY:
                self._schedule(r)
        self._index()
        self.full_rescan("since_start")
