"""The watcher compressing what is due: the settled files of a folder in batches under
the install's lock (the crash-safe engine of :mod:`mnic_ops.engines.compress`, as
``clean``), a stop that rolls back the archive being written, and what each outcome
means for the file (compressed, written again, given up until it changes, a
read-only folder no longer watched)."""

from __future__ import annotations

import errno
import heapq
import logging
import os
import posixpath
import time
from typing import Any

from mnic_ops.capabilities.watchobservers import Observers
from mnic_ops.capabilities.watchroots import READ_ONLY, WatchRoot, dur
from mnic_ops.capabilities.watchunit import UNIT_NAME
from mnic_ops.engines import cleanjobs, compress, dirlock, inplace
from mnic_ops.engines.cleanjobs import printable
from mnic_ops.facts.projects import human

log = logging.getLogger(__name__)

LOCK_RETRY = 2.0  # seconds before retrying a batch whose project lock `clean` holds
BATCH_WINDOW = 0.2  # wait this long after the first due file to batch its neighbours


class Interrupted(BaseException):
    """Raised by the SIGTERM/SIGINT handler while an archive is being written: the engine
    removes its temporary and leaves the original in place."""


class Compressing(Observers):
    """The watcher compressing its due files."""

    # -- compressing ---------------------------------------------------------------------

    def _commit_phase(self) -> None:
        """The engine's hook between writing the archives and committing them: from
        here on a stop finishes the batch (short) instead of rolling it back."""
        self.interruptible = False

    def process_due(self) -> None:
        now = time.time()
        if not self.heap or self.heap[0][0] + BATCH_WINDOW > now:
            return
        groups: dict[tuple[str, str], list[str]] = {}
        while self.heap and self.heap[0][0] <= now:
            due, _, key = heapq.heappop(self.heap)
            if self.pending.get(key) != due:
                continue  # superseded by a later event
            del self.pending[key]
            groups.setdefault((key[0], key[1]), []).append(key[2])
        for (real, reldir), names in groups.items():
            r = self.by_real.get(real)
            if r is None:
                continue
            if self.stopping:
                for n in names:
                    self._reschedule((real, reldir, n), now)
                continue
            try:
                self._compress_group(r, reldir, names)
            except OSError as exc:  # the folder itself (EIO, ...): try again later
                log.warning("%s: %s; retrying in %s", printable(f"{r.host_path}/{reldir}"),
                            exc.strerror or exc, dur(max(r.settle, 60)))
                for n in names:
                    self._reschedule((real, reldir, n), time.time() + max(r.settle, 60))
        if len(self.heap) > 2 * len(self.pending) + 1024:
            self.heap = [(d, s, k) for d, s, k in self.heap if self.pending.get(k) == d]
            heapq.heapify(self.heap)

    def _compress_group(self, r: WatchRoot, reldir: str, names: list[str]) -> None:
        with dirlock.project_lock(self.app.root, r.project.host_path) as got:
            if not got:
                log.info("%s: another pass holds the lock; retrying in %gs",
                         printable(r.project.host_path), LOCK_RETRY)
                for n in names:
                    self._reschedule((r.real, reldir, n), time.time() + LOCK_RETRY)
                return
            parts = r.parts + tuple(reldir.split("/")) if reldir else r.parts
            try:
                dfd = cleanjobs.open_tree(self.app.root, r.prefix or "/", parts, r.base_ident)
            except OSError as exc:
                if exc.errno == errno.ESTALE:
                    self.next_root_check = 0.0  # the install was replaced: rebuild it
                if exc.errno != errno.ENOENT:
                    log.info("%s: not entered: %s", printable(f"{r.host_path}/{reldir}"),
                             "a symlink is in the way" if exc.errno in
                             (errno.ELOOP, errno.ENOTDIR) else exc.strerror)
                return
            try:
                if os.fstat(dfd).st_dev != r.dev:
                    log.info("%s: on another filesystem; not entered",
                             printable(f"{r.host_path}/{reldir}"))
                    return
                for i in range(0, len(names), self.engine.batch):
                    if self.stopping:
                        for n in names[i:]:
                            self._reschedule((r.real, reldir, n), time.time())
                        return
                    self._batch(r, reldir, dfd, names[i:i + self.engine.batch])
            finally:
                os.close(dfd)

    def _batch(self, r: WatchRoot, reldir: str, dfd: int, names: list[str]) -> None:
        now = time.time()
        opts = inplace.Options(level=self.engine.level, compressor=self.engine.compressor,
                          dev=r.dev, max_mtime=now - r.settle if r.settle > 0 else None)
        try:
            self.interruptible = True
            outcomes = compress.compress_batch(dfd, names, opts, on_prepared=self._commit_phase)
        except Interrupted:
            self.interruptible = False
            log.warning("stopping: rolled back the archive(s) being written for %s",
                        ", ".join(printable(f"{r.host_path}/{reldir}/{n}".replace("//", "/"))
                                  for n in names[:3]) + (" ..." if len(names) > 3 else ""))
            for n in names:
                self._reschedule((r.real, reldir, n), time.time())
            return
        finally:
            self.interruptible = False
        for o in outcomes:
            self._outcome(r, reldir, dfd, o)

    def _outcome(self, r: WatchRoot, reldir: str, dfd: int, o: inplace.Outcome) -> None:
        rel = f"{reldir}/{o.name}" if reldir else o.name
        shown = printable(f"{r.host_path}/{rel}")
        key = (r.real, reldir, o.name)
        now = time.time()
        if o.state in (inplace.COMPRESSED, inplace.FINISHED):
            self.compressed += 1
            self.last_compressed = round(now, 3)
            saved = o.before - o.after
            self.saved += saved
            extra: dict[str, Any] = {}
            note = ""
            if o.kept_as:  # a collision resolved (see mnic_ops.engines.compress.keep_numbered)
                kept = printable(posixpath.join(posixpath.dirname(
                    f"{r.host_path}/{rel}"), o.kept_as))
                extra["kept_as"] = kept
                note = f"; the older {shown}.gz had other content: kept as {kept}"
            self.say("compressed", f"compressed {shown} ({human(o.before)} -> "
                     f"{human(o.after)}, saved {human(saved)}){note}", path=shown,
                     kind=r.kind, bytes_before=o.before, bytes_after=o.after,
                     bytes_saved=saved, **extra)
            return
        try:
            st: os.stat_result | None = os.stat(o.name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            st = None
        reason = inplace.REASONS.get(o.reason, o.reason) + (f" ({o.detail})" if o.detail else "")
        if o.state == inplace.FAILED:
            if o.reason == "read_only":
                self._read_only(r)
                return
            if st is not None:
                self.given_up[key] = (st.st_mtime_ns, st.st_ctime_ns)
            log.warning("failed %s: %s", shown, reason)
            return
        if st is None or o.reason == "vanished":
            log.debug("%s: gone before it was compressed", shown)
            return
        if o.reason in ("too_young", "changed"):
            due = min(max(st.st_mtime + r.settle, now + 0.05), now + r.settle + 3600)
            self._reschedule(key, due)
            log.info("%s: written again; compress after %s quiet", shown, dur(r.settle))
        elif o.reason == "open_for_writing":
            if r.poll:  # no close event will announce it
                self._reschedule(key, now + max(r.settle, self.poll_seconds))
            log.info("skipped %s: %s (its writer's close brings it back)", shown, reason)
        else:
            self.given_up[key] = (st.st_mtime_ns, st.st_ctime_ns)
            if len(self.given_up) > 100_000:
                self.given_up.clear()
            if o.reason == "archive_exists":
                log.warning("skipped %s: %s", shown, reason)
            else:
                log.info("skipped %s: %s", shown, reason)

    def _read_only(self, r: WatchRoot) -> None:
        if r.state == READ_ONLY:
            return
        hint = ("the service's sandbox does not let it write there (ReadWritePaths= of "
                f"{UNIT_NAME}): run `mnic-ops watch --install-unit` (or provision) and "
                "restart the service") if self.service else "the filesystem is read-only"
        log.error("%s: read-only here; no longer compressed there: %s",
                  printable(r.host_path), hint)
        self._unschedule(r)
        r.state, r.note = READ_ONLY, hint
        self._index()
        for key in [k for k in self.pending if k[0] == r.real]:
            del self.pending[key]
