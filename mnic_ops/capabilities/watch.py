"""``mnic-ops watch``: gzip the framework's finished files as they settle, in the foreground.

Cron passes leave a day of uncompressed data behind on busy servers; the watcher keeps
the data folders compact continuously at near-zero cost while idle. It is a thin event
loop around the same pieces as ``clean``: the data map, clean's per-class policy (which
names, which classes), the protected names, the fd-based walk, the crash-safe engine in
:mod:`mnic_ops.engines.compress` and the per-project lock, so that the two never work on the
same file at once.

How a file gets compressed:

- Each data folder is watched recursively with inotify (the real folder when the data
  folder is a symlink to an SSD) by :mod:`mnic_ops.engines.treewatch`, which opens every folder
  from the data folder down without following links and anchors the watch on that
  descriptor: a link a user swaps in is never followed, not even for an instant.
  Network filesystems, ``--poll`` and an inotify limit that is too small use watchdog's
  polling observer instead, whose listings go through the same no-follow opens.
- A writer closing a file it wrote (``IN_CLOSE_WRITE``) or a file moved in (atomic
  writers) makes it a candidate; it is compressed once it has been quiet for its class's
  settle time (``[watch.settle_seconds]``). Our own ``.gz`` output and temporaries never
  are candidates. Files already there at start are left to ``clean`` unless
  ``--once-settled`` asks for a catch-up.
- Events are only hints: every file is opened again from the data folder down with
  ``O_NOFOLLOW``, checked and compressed by the engine (regular, one link, not open for
  writing, same filesystem, old enough), so a hostile event path cannot steer root.
- Safety nets for lost events: new folders are listed when they appear, and after an
  inotify queue overflow (and every ``rescan_minutes``) the folders are listed again for
  files written since start that no event announced. A data folder that overflows the
  queue again and again (a storm of renames) is polled from then on; an observer whose
  thread dies or stalls is restarted (with a growing delay when that repeats).
- The service records its liveness in :mod:`mnic_ops.facts.watchstate` (a heartbeat and
  counters, no names), so that "running but stalled" can be told from "running".

Signals: SIGTERM/SIGINT finish (or, while an archive is still being written, roll back)
the file in hand and exit 0; files still settling are saved and picked up by the next
start. SIGHUP reloads the config and the data map.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import json
import logging
import os
import posixpath
import queue
import re
import shutil
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities import clean
from mnic_ops.capabilities.protocol import (
    ProvisionContext,
    ProvisionStep,
    missing_service,
    no_installs,
)
from mnic_ops.changes.model import OK, ApplyContext, Item, Undo, undo_handler, unified_diff
from mnic_ops.core import installfail, quoting, safefs
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, InputError, OpsError
from mnic_ops.engines import compress, datatree, dirlock, inplace, tempfiles
from mnic_ops.facts import inotify, linkrecords, policy, watchstate
from mnic_ops.facts.projects import DATA_KINDS, Project, human

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot
    from mnic_ops.engines.treewatch import TreeWatch
    from mnic_ops.facts.hostfacts import Mount

log = logging.getLogger(__name__)

unit_path = "/etc/systemd/system/mnic-ops-watch.service"
UNIT_NAME = "mnic-ops-watch.service"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/mnic-ops-watch.service"
SYSCTL_FILE = inotify.SYSCTL_FILE
PENDING_FILE = "/var/lib/mnic-ops/watch-pending.json"
GUIDE_WATCHES = inotify.GUIDE_WATCHES
EXIT_RESTART = 75  # --service: ask systemd (Restart=on-failure) for a fresh sandbox

LOCK_RETRY = 2.0  # seconds before retrying a batch whose project lock `clean` holds
BATCH_WINDOW = 0.2  # wait this long after the first due file to batch its neighbours
OVERFLOW_GAP = 2.0  # at most one overflow rescan (and report) this often
STORM_OVERFLOWS = 2  # a folder behind this many queue overflows ...
STORM_WINDOW = 600.0  # ... within this many seconds is polled from then on
RESTART_WINDOW = 600.0  # observer restarts counted over this many seconds;
RESTART_FREE = 3  # this many restart at once, later ones wait 2, 4, 8 ... s
RESTART_MAX_DELAY = 300.0
READER_STALL = 60.0  # an inotify reader silent this long is restarted
HEARTBEAT_MAX = 30.0  # the service's liveness record is rewritten at least this often

# Root states
READY, WATCHING, ABSENT, REFUSED, READ_ONLY = "ready", "watching", "absent", "refused", \
    "read-only"


class Interrupted(BaseException):
    """Raised by the SIGTERM/SIGINT handler while an archive is being written: the engine
    removes its temporary and leaves the original in place."""


# --- what to watch ---------------------------------------------------------------------

@dataclass(eq=False)
class WatchRoot:
    """One data folder of one install, as watched."""

    project: Project
    kind: str
    policy: policy.Policy
    settle: float
    host_path: str  # the data folder as the framework names it
    prefix: str | None = None  # trusted host prefix (install, recorded relocation base) ...
    parts: tuple[str, ...] = ()  # ... and the components below it, opened with O_NOFOLLOW
    owner: int | None = None  # uid the folder must belong to (the install's owner)
    base_ident: tuple[int, int, int] | None = None  # the install root, when that is prefix
    real: str = ""  # real path of the folder watched (under --root)
    state: str = READY
    note: str = ""
    link_ident: tuple[int, int, int] | None = None  # lstat of the data folder path
    ident: tuple[int, int] | None = None  # the watched folder
    dev: int = 0
    network: bool = False
    poll: bool = False
    dirs: int = 0
    watch: Any = None  # watchdog ObservedWatch
    observer: str = ""

    @property
    def target_host(self) -> str:
        """Host path of the folder actually watched (a link's target for relocated data)."""
        assert self.prefix is not None
        return posixpath.join(self.prefix, *self.parts)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"project": self.project.host_path, "kind": self.kind,
                             "path": self.host_path, "state": self.state,
                             "settle_seconds": self.settle}
        if self.prefix is not None:
            d["watched"] = self.target_host
        if self.state in (READY, WATCHING):
            d.update(folders=self.dirs, observer=self.observer or
                     ("polling" if self.poll else "inotify"), network=self.network)
        if self.note:
            d["note"] = self.note
        return d


def settle_of(app: AppContext, kind: str) -> float:
    v = app.config.get(f"watch.settle_seconds.{kind}")
    return float(v) if v is not None else 3600.0


def _lident(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)


def build_roots(app: AppContext, projects: Sequence[Project],
                tier: dict[str, Any] | None) -> list[WatchRoot]:
    """The data folders to watch: every class whose clean policy compresses, where
    :func:`mnic_ops.facts.linkrecords.locate` puts it (the folder, or the target of a link
    relocate made for the install; any other link is refused). Pure apart from reading
    the data map and the link records."""
    out: list[WatchRoot] = []
    seen: dict[str, WatchRoot] = {}
    records = linkrecords.load(app.root)
    for p in projects:
        try:
            pols = policy.resolve_policy(app.config, p, tier)
        except installfail.INSTALL_ERRORS as exc:  # the owner's bad file: not watched
            app.failures.add(p.host_path, exc, "watch")
            continue
        for kind in DATA_KINDS:
            pol = pols[kind]
            if not policy.compresses(pol):
                continue
            d = p.data[kind]
            r = WatchRoot(p, kind, pol, settle_of(app, kind), d.host_path,
                          link_ident=_lident(d.path))
            loc = linkrecords.locate(app.root, p, kind, records)
            if loc.state == linkrecords.REFUSED:
                r.state, r.note = REFUSED, clean.printable(loc.note)
            else:
                r.prefix, r.parts, r.owner = loc.prefix, loc.parts, loc.owner
                r.base_ident = loc.base_ident
                if loc.state == linkrecords.ABSENT:
                    r.state = ABSENT
            if r.prefix is not None:
                r.real = os.path.join(str(app.root.path(r.prefix)), *r.parts)
                other = seen.get(r.real)
                if other is not None:
                    r.state = REFUSED
                    r.note = f"same folder as {other.kind} of {other.project.host_path}"
                else:
                    seen[r.real] = r
            out.append(r)
    return out


def prepare_root(app: AppContext, r: WatchRoot, mounts: list[Mount], force_poll: bool
                 ) -> None:
    """Open the folder from its trusted prefix without following links (a relocated
    one must still belong to the install's owner) and check that the path watchdog will
    watch is that same folder; note its filesystem."""
    from mnic_ops.facts import hostfacts

    if r.prefix is None or r.state == REFUSED:
        return
    try:
        fd = linkrecords.open_folder(app.root, r.prefix, r.parts, r.owner, r.base_ident)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            r.state = ABSENT
        elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
            r.state, r.note = REFUSED, "a symlink is in the way: not followed"
        elif exc.errno == errno.EPERM:
            r.state, r.note = REFUSED, clean.printable(exc.strerror or "not followed")
        else:
            r.state, r.note = REFUSED, f"cannot open: {exc.strerror}"
        return
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        st2 = os.stat(r.real)
    except OSError:
        r.state = ABSENT
        return
    if (st.st_dev, st.st_ino) != (st2.st_dev, st2.st_ino):
        r.state, r.note = REFUSED, "a symlink is in the way: not followed"
        return
    r.ident, r.dev = (st.st_dev, st.st_ino), st.st_dev
    m = hostfacts.mount_for(r.target_host, mounts)
    r.network = bool(m is not None and m.network)
    r.poll = force_poll or r.network
    r.state = READY


def count_dirs(app: AppContext, r: WatchRoot) -> int:
    """Folders below (and including) a data folder: one inotify watch each
    (:func:`mnic_ops.engines.datatree.count_folders`, the one count doctor and render use)."""
    try:
        top = clean.open_tree(app.root, r.prefix or "/", r.parts, r.base_ident)
    except OSError:
        return 0
    try:
        return datatree.count_folders(top, r.dev)
    finally:
        os.close(top)


def wanted(r: WatchRoot, name: str, rel: str) -> bool:
    """Is this name, ``rel`` below the data folder, one the watcher compresses (the
    clean policy's own rule, :func:`mnic_ops.facts.policy.compress_wanted`)?"""
    if tempfiles.is_ours(name) or safefs.is_tmp_name(name):
        return False
    return policy.compress_wanted(r.policy, name, rel)


# --- inotify limits --------------------------------------------------------------------

@dataclass
class Limits:
    max_watches: int | None
    max_instances: int | None
    used_watches: int = 0
    used_instances: int = 0
    sysctl_file_value: int | None = None

    def problem(self, need: int) -> str | None:
        """Why ``need`` more watches (and one instance) do not fit, or None."""
        if self.max_instances is not None and self.used_instances + 1 > self.max_instances:
            return (f"fs.inotify.max_user_instances is {self.max_instances} and "
                    f"{self.used_instances} are in use")
        if self.max_watches is not None and \
                not inotify.fits(self.max_watches, need, self.used_watches):
            return (f"{need} folders to watch, but fs.inotify.max_user_watches is "
                    f"{self.max_watches} and {self.used_watches} are in use by this user")
        return None

    def fix(self, need: int) -> str:
        if self.max_instances is not None and self.used_instances + 1 > self.max_instances:
            want_i = inotify.instances_fix(self.used_instances)
            return (f"add `fs.inotify.max_user_instances = {want_i}` to a file in "
                    f"/etc/sysctl.d/ and run `sysctl --system`")
        want = inotify.suggested(need, self.used_watches)
        if self.sysctl_file_value is not None and \
                inotify.fits(self.sysctl_file_value, need, self.used_watches):
            return (f"{SYSCTL_FILE} already sets {self.sysctl_file_value}: run "
                    "`sysctl --system` to apply it")
        return (f"set `fs.inotify.max_user_watches = {want}` in {SYSCTL_FILE} (`mnic-ops "
                "render` writes that file from the tier), then run `sysctl --system`")


def _read_int(root: HostRoot, host_path: str) -> int | None:
    try:
        return int(root.path(host_path).read_text().strip())
    except (OSError, ValueError):
        return None


def inotify_usage(uid: int) -> tuple[int, int]:
    """(watches, instances) held by processes of ``uid`` (this machine's /proc)."""
    watches = instances = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0, 0
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    watches += sum(1 for line in fh if line.startswith("inotify wd:"))
                instances += 1
            except OSError:
                continue
    return watches, instances


def read_limits(root: HostRoot) -> Limits:
    lim = Limits(_read_int(root, "/proc/sys/fs/inotify/max_user_watches"),
                 _read_int(root, "/proc/sys/fs/inotify/max_user_instances"))
    if root.live:
        lim.used_watches, lim.used_instances = inotify_usage(os.geteuid())
    try:
        text = root.path(SYSCTL_FILE).read_text(errors="replace")
        lim.sysctl_file_value = inotify.configured(text)
    except OSError:
        pass
    return lim


# --- the daemon ------------------------------------------------------------------------

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


class Daemon:
    """The watcher's state and event loop (everything but the observers' own threads
    runs on the main thread, which is also where signals arrive)."""

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
        eng = clean.engine(cfg)
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

    # -- observers ------------------------------------------------------------------------

    def notice(self, event: str, level: int, text: str, **data: Any) -> None:
        """Something the admin should know about the watcher itself (an overflow, a
        restart, a folder moved to polling): logged, and with --json also one event
        on stdout for scripts. Never a file name: only data folders the admin named."""
        log.log(level, "%s", text)
        self.last_problem = {"event": event, "time": round(time.time(), 3)}
        if self.app.json:
            self.say(event, text, **data)
        self.next_heartbeat = 0.0  # the liveness record says so at once

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
            return clean.open_tree(root, prefix, parts + below, base)

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
            fd = clean.open_tree(self.app.root, r.prefix or "/",
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
                    f"{clean.printable(r.host_path)}: {why}; polling it every "
                    f"{self.poll_seconds:g}s from now on (until the watcher restarts or "
                    "reloads)", path=clean.printable(r.host_path), kind=r.kind, reason=why)
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
                               f"{_dur(STORM_WINDOW)}, most events from this folder "
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
                           f"{_dur(RESTART_WINDOW)})" if delay else ""),
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
                log.warning("%s: not watched: %s", clean.printable(r.host_path), r.note)
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

    def _index(self) -> None:
        self.by_real = {r.real: r for r in self.roots if r.state == WATCHING}

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
                + (", ".join(f"{k} {_dur(v)}" for k, v in settle.items()) or "-"))
        if not self.projects:
            text += ("; no framework installs found: send SIGHUP (systemctl reload "
                     f"{UNIT_NAME}) after adding one")
        self.say("watching", text, folders=folders, observers=modes,
                 roots=[r.to_json() for r in self.roots], pending=len(self.pending))

    # -- candidates ---------------------------------------------------------------------

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
                     clean.printable(f"{r.host_path}/{rel}"), _dur(r.settle))

    def _reschedule(self, key: Key, due: float) -> None:
        self.pending[key] = due
        heapq.heappush(self.heap, (due, next(self.seq), key))

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

    # -- rescans (safety nets) ------------------------------------------------------------

    def rescan(self, r: WatchRoot, sub: str, mode: str, *, recover: bool = False) -> None:
        """List a watched folder (or ``sub`` below it) for candidates. ``mode``: ``new``
        (a folder that appeared: every file is new), ``since_start`` (files whose
        ctime says they were written or moved here since start), ``all``
        (--once-settled). ``recover`` also finishes temporaries a killed run left."""
        parts = r.parts + tuple(sub.split("/")) if sub else r.parts
        try:
            top = clean.open_tree(self.app.root, r.prefix or "/", parts, r.base_ident)
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
                    dfd = clean.open_tree(self.app.root, r.prefix or "/", parts, r.base_ident)
                except OSError:
                    continue
                try:
                    for n in names:
                        o = tempfiles.recover_stale(dfd, n, inplace.Options(dev=r.dev))
                        if o.state in (inplace.RECOVERED, inplace.FINISHED):
                            log.info("%s: %s", clean.printable(f"{r.host_path}/{rd}/{n}"),
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
                log.warning("%s: %s; retrying in %s", clean.printable(f"{r.host_path}/{reldir}"),
                            exc.strerror or exc, _dur(max(r.settle, 60)))
                for n in names:
                    self._reschedule((real, reldir, n), time.time() + max(r.settle, 60))
        if len(self.heap) > 2 * len(self.pending) + 1024:
            self.heap = [(d, s, k) for d, s, k in self.heap if self.pending.get(k) == d]
            heapq.heapify(self.heap)

    def _compress_group(self, r: WatchRoot, reldir: str, names: list[str]) -> None:
        with dirlock.project_lock(self.app.root, r.project.host_path) as got:
            if not got:
                log.info("%s: another pass holds the lock; retrying in %gs",
                         clean.printable(r.project.host_path), LOCK_RETRY)
                for n in names:
                    self._reschedule((r.real, reldir, n), time.time() + LOCK_RETRY)
                return
            parts = r.parts + tuple(reldir.split("/")) if reldir else r.parts
            try:
                dfd = clean.open_tree(self.app.root, r.prefix or "/", parts, r.base_ident)
            except OSError as exc:
                if exc.errno == errno.ESTALE:
                    self.next_root_check = 0.0  # the install was replaced: rebuild it
                if exc.errno != errno.ENOENT:
                    log.info("%s: not entered: %s", clean.printable(f"{r.host_path}/{reldir}"),
                             "a symlink is in the way" if exc.errno in
                             (errno.ELOOP, errno.ENOTDIR) else exc.strerror)
                return
            try:
                if os.fstat(dfd).st_dev != r.dev:
                    log.info("%s: on another filesystem; not entered",
                             clean.printable(f"{r.host_path}/{reldir}"))
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
                        ", ".join(clean.printable(f"{r.host_path}/{reldir}/{n}".replace("//", "/"))
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
        shown = clean.printable(f"{r.host_path}/{rel}")
        key = (r.real, reldir, o.name)
        now = time.time()
        if o.state in (inplace.COMPRESSED, inplace.FINISHED):
            self.compressed += 1
            self.last_compressed = round(now, 3)
            saved = o.before - o.after
            self.saved += saved
            extra: dict[str, Any] = {}
            note = ""
            if o.kept_as:  # a collision resolved (see mnic_ops.engines.archives.keep_numbered)
                kept = clean.printable(posixpath.join(posixpath.dirname(
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
            log.info("%s: written again; compress after %s quiet", shown, _dur(r.settle))
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
                  clean.printable(r.host_path), hint)
        self._unschedule(r)
        r.state, r.note = READ_ONLY, hint
        self._index()
        for key in [k for k in self.pending if k[0] == r.real]:
            del self.pending[key]

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
            lid = _lident(r.project.data[r.kind].path)
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
            log.warning("%s: cannot re-read the install: %s", clean.printable(host), exc)
            return
        fresh = [r for r in new if r.state == READY and before.get(r.kind) != (r.real, r.ident)]
        if fresh and self.service:
            log.warning("%s: data folder(s) %s appeared or were re-created; restarting so "
                        "that the service's sandbox lets it write there",
                        clean.printable(host), ", ".join(r.kind for r in fresh))
            self.exit_code, self.stopping = EXIT_RESTART, True
            return
        for r in old:
            self._unschedule(r)
        self.roots = [r for r in self.roots if r.project.host_path != host] + new
        for r in new:
            if r.state == READY:
                self._schedule(r)
            if r.state == REFUSED:
                log.warning("%s: not watched: %s", clean.printable(r.host_path), r.note)
        self._index()
        live = set(self.by_real)
        for key in [k for k in self.pending if k[0] not in live]:
            del self.pending[key]
        for r in new:
            if r.state == WATCHING and any(r is f for f in fresh):
                log.info("%s: watching again", clean.printable(r.host_path))
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
            "running" if self.inotify.alive(READER_STALL) else "stalled"
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


def _ancestors(path: str, top: str) -> Iterable[str]:
    while len(path) > len(top):
        yield path
        path = os.path.dirname(path)


def _dur(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# --- preflight (--check without unit flags) --------------------------------------------

def preflight(app: AppContext, names: Sequence[str], poll: bool) -> int:
    from mnic_ops.core.app import emit
    from mnic_ops.facts import hostfacts
    from mnic_ops.facts.projects import select_projects

    projects = select_projects(app, names)
    clean.engine(app.config)  # the config is checked as the watcher checks it
    tier = policy.tier_clean(app)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    force = poll or bool(app.config.get("watch.poll", False))
    roots = build_roots(app, projects, tier)
    for r in roots:
        prepare_root(app, r, mounts, force)
        if r.state == READY:
            r.dirs = count_dirs(app, r)
    need = sum(r.dirs for r in roots if r.state == READY and not r.poll)
    limits = read_limits(app.root)
    problem = limits.problem(need) if need and not force else None
    if problem:
        for r in roots:
            r.poll = r.poll or r.state == READY
    data = {"command": "watch", "check": True, "folders": sum(r.dirs for r in roots),
            "inotify_watches_needed": need,
            "limits": {"max_user_watches": limits.max_watches,
                       "max_user_instances": limits.max_instances,
                       "watches_in_use": limits.used_watches,
                       "instances_in_use": limits.used_instances},
            "fits": problem is None, "problem": problem,
            "fix": limits.fix(need) if problem else None,
            "roots": [r.to_json() for r in roots]}

    def text() -> str:
        lines = []
        for r in roots:
            what = (f"{r.dirs} folders, {'polling' if r.poll else 'inotify'}"
                    + (", network filesystem" if r.network else "")) \
                if r.state == READY else r.state + (f": {r.note}" if r.note else "")
            lines.append(f"{clean.printable(r.host_path)} ({r.kind}, settle "
                         f"{_dur(r.settle)}): {what}")
        if problem:
            lines.append(f"{problem}: the watcher would fall back to polling. To use "
                         f"inotify, {limits.fix(need)}.")
        else:
            lines.append(f"{need} inotify watches needed; max_user_watches "
                         f"{limits.max_watches}, {limits.used_watches} in use: fits")
        if not projects:
            lines.append("no framework installs found (see search_paths and projects)")
        return "\n".join(lines)

    emit(app, data, text)
    return EXIT_OK


# --- the systemd unit ------------------------------------------------------------------

_UNIT_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")


def unit_word(s: str, *, exec_line: bool = False) -> str | None:
    """``s`` as one word of a unit-file setting (:func:`quoting.unit_word`), or None when
    it cannot be written there (control characters, bytes that are not UTF-8)."""
    try:
        return quoting.unit_word(s, exec_line=exec_line)
    except quoting.UnsafeValue:
        return None


def _under(path: str, tops: Iterable[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)


def service_argv(app: AppContext, extra: Sequence[str] = ()) -> list[str]:
    """The absolute command line of this mnic-ops running the watcher as a service."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "mnic-ops" and os.path.isfile(argv0):
        cmd = [os.path.abspath(argv0)]
    elif found := shutil.which("mnic-ops"):
        cmd = [os.path.abspath(found)]
    else:
        cmd = [os.path.abspath(sys.executable), "-m", "mnic_ops"]
    if app.config_path:
        cmd += ["--config", os.path.abspath(app.config_path)]
    return [*cmd, "watch", "--service", *extra]


def writable_paths(app: AppContext, projects: Sequence[Project],
                   extra: Sequence[str] = ()) -> list[str]:
    """Host paths of the folders the watcher writes: every data folder it would watch,
    under its own name and, for relocated data, its link's target (absent ones too, they
    may appear), plus ``extra`` (the relocation target when provision is about to move
    data there, so that the unit is the same before and after the move)."""
    clean.engine(app.config)  # a bad config is refused here as where the watcher starts
    roots = build_roots(app, projects, policy.tier_clean(app))
    ok = [r for r in roots if r.prefix is not None and r.state != REFUSED]
    paths = sorted({r.target_host for r in ok} | {r.host_path for r in ok}
                   | {os.path.normpath(p) for p in extra})
    out: list[str] = []
    for p in paths:  # sorted: a parent comes before its children
        if not _under(p, out):
            out.append(p)
    return out


def render_unit(app: AppContext, paths: Sequence[str], argv: Sequence[str]) -> str:
    """The unit file text: restart on failure, and a sandbox in which the whole system
    is read-only except the data folders and mnic-ops's state folder."""
    exec_start = quoting.unit_exec(argv, "the command that runs the watcher")
    kill = quoting.unit_exec([shutil.which("kill") or "/bin/kill"], "kill")
    rw: list[str] = []
    left_out = 0
    for p in paths:
        w = unit_word("-" + p)
        if w is None:
            left_out += 1
        else:
            rw.append(w)
    considered = [*paths, argv[0], *([os.path.abspath(app.config_path)]
                                     if app.config_path else [])]
    lines = [
        "# Managed by mnic-ops (`mnic-ops watch --install-unit`, `mnic-ops provision`);",
        "# local changes are overwritten: put them in a drop-in "
        "(systemctl edit mnic-ops-watch).",
        "[Unit]",
        "Description=mnic-ops watcher: gzip finished My Name Is Claude data as it settles",
        "After=local-fs.target remote-fs.target",
    ]
    lines += [f"RequiresMountsFor={p}" for p in paths if _UNIT_SAFE.fullmatch(p)
              and "%" not in p]
    lines += [
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + exec_start,
        f"ExecReload={kill} -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5s",
        "# SIGTERM finishes or rolls back the file in hand; files still settling are saved",
        "TimeoutStopSec=90s",
        "Nice=10",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
        "",
        "# Sandbox: everything read-only but the data folders it compresses in place and",
        "# /var/lib/mnic-ops (locks shared with `clean`, files still settling). A missing",
        "# folder (-) does not stop the start; one that appears later makes the watcher",
        "# exit for a restart, which gives the new sandbox write access to it.",
        "ProtectSystem=strict",
        *(f"ReadWritePaths={w}" for w in rw),
        *([f"# {left_out} data folder(s) left out: their names cannot be written here"]
          if left_out else []),
        "StateDirectory=mnic-ops",
        "StateDirectoryMode=0700",
        "# /run/mnic-ops/watch-state.json: its heartbeat (counters, no names), for doctor",
        "RuntimeDirectory=mnic-ops",
        "RuntimeDirectoryMode=0755",
    ]
    if _under_any(considered, HOME_DIRS):
        lines += ["# No ProtectHome=: data folders (or mnic-ops) live under /home or /root,",
                  "# and ReadWritePaths= cannot reopen a hidden home; ProtectSystem=strict",
                  "# already keeps the rest of it read-only."]
    else:
        lines.append("ProtectHome=yes")
    if _under_any(considered, TMP_DIRS):
        lines.append("# No PrivateTmp=: a data folder lives under /tmp or /var/tmp.")
    else:
        lines.append("PrivateTmp=yes")
    lines += [
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "IPAddressDeny=any",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "# Give archives the owner, mode and times of the original (CHOWN, FOWNER, FSETID),",
        "# read and write users' folders (DAC_*), take leases that prove no writer has a",
        "# file open (LEASE) and, where leases do not work, look for writers in /proc",
        "# (SYS_PTRACE; for the same reason ProtectProc= is not set).",
        "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER "
        "CAP_FSETID CAP_LEASE CAP_SYS_PTRACE",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _under_any(paths: Iterable[str], tops: Iterable[str]) -> bool:
    tops = tuple(tops)
    return any(_under(p, tops) for p in paths)


def systemd_running(root: HostRoot) -> bool:
    return root.live and os.path.isdir("/run/systemd/system")


def _service_active() -> bool:
    from mnic_ops.core import execute

    return execute.run(["systemctl", "is-active", "--quiet", UNIT_NAME],
                       check=False).returncode == 0


def _link_item(root: HostRoot, want: str | None) -> Item:
    """The multi-user.target.wants link that enables the unit at boot (``want`` is the
    target to set, or None to remove it)."""
    real = root.path(WANTS_LINK)
    try:
        cur: str | None = os.readlink(real)
    except FileNotFoundError:
        cur = None
    except OSError:
        if os.path.lexists(real):
            return Item(id=f"link:{WANTS_LINK}", description=f"enable {UNIT_NAME}",
                        state="failed", error=f"{WANTS_LINK} exists and is not a symlink")
        cur = None
    desc = f"enable {UNIT_NAME} at boot" if want else f"disable {UNIT_NAME}"
    if cur == want or (want is None and cur != unit_path):
        return Item(id=f"link:{WANTS_LINK}", description=desc, state=OK,
                    reason="already as wanted" if cur == want else "not ours")

    def action(ctx: ApplyContext) -> Undo:
        rec = {"path": WANTS_LINK, "real": str(real), "before": cur, "after": want}
        _set_link(real, want, rec)
        return Undo("watch-link", rec)

    diff = f"{WANTS_LINK}: {cur or '(none)'} -> {want or '(removed)'}\n"
    return Item(id=f"link:{WANTS_LINK}", description=desc, diff=diff, action=action,
                data={"path": WANTS_LINK, "expected": want, "actual": cur})


def _set_link(real: Any, target: str | None, rec: dict[str, Any], *,
              restore: bool = False) -> None:
    """Set (or remove) the link; the times of its folder go into ``rec`` (restored when
    undoing), and a folder made for it (``made_dir``) goes again on undo."""
    from mnic_ops.changes.filechange import FolderTimes

    folder = os.path.dirname(real)
    if target is None:
        if os.path.islink(real):
            if not restore:  # an undo makes it again: with its own times too
                st = os.lstat(real)
                rec["link_times"] = [st.st_atime_ns, st.st_mtime_ns]
            with FolderTimes(rec, folder, restore=restore, key="link_folder"):
                os.unlink(real)
                safefs.fsync_dir(folder)
        made = rec.get("made_dir")
        if restore and made and folder == made:
            with contextlib.suppress(OSError), FolderTimes(rec, os.path.dirname(made),
                                                          restore=True,
                                                          key="made_dir_parent"):
                os.rmdir(made)  # only when empty: someone else's link keeps it
        return
    if not os.path.isdir(folder):
        with FolderTimes(rec, os.path.dirname(folder), key="made_dir_parent"):
            os.makedirs(folder, mode=0o755, exist_ok=True)
        rec["made_dir"] = folder
    with FolderTimes(rec, folder, restore=restore, key="link_folder"):
        tmp = os.path.join(folder, safefs.tmp_name(os.path.basename(real)))
        os.symlink(target, tmp)
        try:
            if restore and rec.get("link_times"):
                os.utime(tmp, ns=tuple(rec["link_times"]), follow_symlinks=False)
            os.rename(tmp, real)
        except BaseException:
            os.unlink(tmp)
            raise
        safefs.fsync_dir(folder)


@undo_handler("watch-link")
def _undo_link(root: HostRoot, rec: dict[str, Any]) -> str:
    try:
        cur: str | None = os.readlink(rec["real"])
    except OSError:
        cur = None
    if cur != rec["after"]:
        raise OpsError(f"{rec['path']}: changed since mnic-ops set it; not reverting")
    _set_link(rec["real"], rec["before"], rec, restore=True)
    return f"restored {rec['path']}" if rec["before"] else f"removed {rec['path']}"


def _service_item(start: bool, changed: bool) -> Item | None:
    """Live hosts with systemd running: (re)start after an install, stop before a
    removal."""
    from mnic_ops.core import execute

    active = _service_active()
    if start:
        desc = f"reload systemd and (re)start {UNIT_NAME}"
        if active and not changed:
            return Item(id=f"service:{UNIT_NAME}", description=desc, state=OK,
                        reason="running with this unit")
    else:
        desc = f"stop {UNIT_NAME}"
        if not active:
            return None

    def action(ctx: ApplyContext) -> Undo:
        execute.run(["systemctl", "daemon-reload"])
        execute.run(["systemctl", "restart" if start else "stop", UNIT_NAME])
        return Undo("watch-service", {"did": "start" if start else "stop"})

    return Item(id=f"service:{UNIT_NAME}", description=desc, action=action)


@undo_handler("watch-service")
def _undo_service(root: HostRoot, rec: dict[str, Any]) -> str:
    from mnic_ops.core import execute

    if not systemd_running(root):
        return "systemd is not running here: nothing to stop or start"
    verb = "stop" if rec.get("did") == "start" else "start"
    execute.run(["systemctl", "daemon-reload"])
    execute.run(["systemctl", verb, UNIT_NAME], check=False)
    return f"{verb} {UNIT_NAME}"


def _remove_file_item(root: HostRoot, old: bytes) -> Item:
    real = root.path(unit_path)

    def action(ctx: ApplyContext) -> Undo:
        from mnic_ops.changes.filechange import FolderTimes

        bak = ctx.backup_dir() / real.name
        safefs.backup(real, bak)
        rec = {"path": unit_path, "real": str(real), "backup": str(bak)}
        with FolderTimes(rec, real.parent):
            os.unlink(real)
            safefs.fsync_dir(real.parent)
        if systemd_running(root):
            from mnic_ops.core import execute

            execute.run(["systemctl", "daemon-reload"], check=False)
        return Undo("watch-file-removed", rec)

    return Item(id=f"file:{unit_path}", description=f"remove {unit_path}",
                diff=unified_diff(old.decode(errors="replace"), "", unit_path),
                action=action, data={"path": unit_path})


@undo_handler("watch-file-removed")
def _undo_removed(root: HostRoot, rec: dict[str, Any]) -> str:
    from mnic_ops.changes.filechange import FolderTimes

    if os.path.lexists(rec["real"]):
        raise OpsError(f"{rec['path']}: exists again; not restoring (backup: "
                       f"{rec['backup']})")
    with FolderTimes(rec, os.path.dirname(rec["real"]), restore=True):
        safefs.copy_verified(rec["backup"], rec["real"])
    return f"restored {rec['path']}"


def plan_unit(app: AppContext, projects: Sequence[Project],
              extra_args: Sequence[str] = (), extra_paths: Sequence[str] = ()) -> list[Item]:
    """Items that install the watcher's unit for these installs: the unit file (atomic,
    journalled), its enable link, and on a live host with systemd running a
    daemon-reload and (re)start. Pure: nothing is written until the plan is applied."""
    from mnic_ops.changes.filechange import file_item

    text = render_unit(app, writable_paths(app, projects, extra_paths),
                       service_argv(app, extra_args))
    unit = file_item(app.root, unit_path, text, mode=0o644, uid=0, gid=0,
                     item_id=f"file:{unit_path}", make_parents=True,  # a bare --root
                     description=f"write the watcher unit {unit_path}")
    items = [unit]
    items.append(_link_item(app.root, unit_path))
    if systemd_running(app.root):
        changed = any(i.state != OK for i in items)
        svc = _service_item(True, changed)
        if svc is not None:
            items.append(svc)
    return items


def plan_remove_unit(app: AppContext) -> list[Item]:
    """Items that stop (live), disable and remove the watcher's unit, journalled."""
    items: list[Item] = []
    if systemd_running(app.root):
        svc = _service_item(False, True)
        if svc is not None:
            items.append(svc)
    items.append(_link_item(app.root, None))
    real = app.root.path(unit_path)
    try:
        old = safefs.read_bytes_nofollow(real)
    except FileNotFoundError:
        items.append(Item(id=f"file:{unit_path}", description=f"remove {unit_path}",
                          state=OK, reason="not installed"))
    else:
        items.append(_remove_file_item(app.root, old))
    return items


# --- the command -------------------------------------------------------------------------

@click.command("watch", epilog=EXIT_CODES_HELP)
@click.option("--poll", is_flag=True, help="Use the polling observer everywhere (it is "
              "used anyway for network filesystems and when inotify limits are too low).")
@click.option("--once-settled", is_flag=True, help="Also compress, once settled, the "
              "files already there at start (otherwise left to `clean`).")
@click.option("--install-unit", is_flag=True, help=f"Install, enable and (on a running "
              f"systemd) start {unit_path} instead of watching.")
@click.option("--remove-unit", is_flag=True, help="Stop, disable and remove that unit.")
@click.option("--check", is_flag=True, help="With --install-unit/--remove-unit: show the "
              "diff, change nothing. Alone: list what would be watched and whether the "
              "inotify limits fit.")
@click.option("--service", is_flag=True, help="Run as the systemd service (the unit's "
              "ExecStart): a data folder that appears or is re-created makes it exit 75 "
              "for a restart that gives the sandbox access to it; missing installs only "
              "warn.")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def watch_cmd(app: AppContext, poll: bool, once_settled: bool, install_unit: bool,
              remove_unit: bool, check: bool, service: bool, names: tuple[str, ...]) -> int:
    """Watch the data folders and gzip each finished file once it has settled.

    Runs in the foreground (the unit runs it as a service). A file is a candidate when a
    writer closes it after writing or when it is moved in, and is compressed after its
    class's settle time ([watch.settle_seconds]) under the same rules as `clean`: names
    the framework reads back never, regular single-link files only, not open for
    writing, no symlink followed, crash-safe gzip, the same per-install lock. One line
    per compressed file; -v also shows events. SIGTERM/SIGINT stop (exit 0), SIGHUP
    reloads the config.
    """
    from mnic_ops.changes.model import Plan
    from mnic_ops.changes.run import run_plan
    from mnic_ops.facts.projects import resolve_args, select_projects

    if install_unit and remove_unit:
        raise InputError("give --install-unit or --remove-unit, not both")
    if install_unit or remove_unit:
        if once_settled or service:
            raise InputError("--once-settled and --service apply to the watcher itself, "
                             "not to --install-unit/--remove-unit")
        if install_unit:
            # the unit runs from /, not from here: relative paths become host paths
            args = resolve_args(app, names)
            extra = [*(["--poll"] if poll else []), *(["--", *args] if args else [])]
            items = plan_unit(app, select_projects(app, names), extra)
            cmd = "watch --install-unit"
        else:
            items = plan_remove_unit(app)
            cmd = "watch --remove-unit"
        return run_plan(app, Plan(items), check=check, diff=check or app.verbose > 0,
                        command=cmd)
    if check:
        return preflight(app, names, poll)
    # "Since start" counts from the exec, not from here: files closed while Python was
    # still importing (seconds on a loaded or emulated host, right after boot) are ours.
    daemon = Daemon(app, names, poll=poll, once_settled=once_settled, service=service,
                    started=process_start_time())
    try:
        return daemon.run()
    except OSError as exc:
        log.error("watcher failed: %s", exc)
        return EXIT_FAILURE


PROVISION = ProvisionStep(50, "watcher", "watcher")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    from mnic_ops.facts import hostservices

    what = f"the watcher unit {UNIT_NAME}"
    skip = no_installs(ctx, "watcher", what)
    if skip:
        return skip
    init = hostservices.systemd(ctx.app.root)
    if not init.present:
        return missing_service(ctx, "watcher", what, "systemd",
                               "boot the host with systemd (apt install systemd-sysv), or run "
                        "`mnic-ops watch` under the host's own supervisor",
                        f"systemd is not this host's init ({init.evidence})")
    return plan_unit(ctx.app, ctx.projects,
                     extra_paths=[ctx.ssd_target] if ctx.ssd_target else [])
