"""Recursive inotify watches anchored on directory descriptors, for the watcher.

Why not watchdog's inotify observer: it finds the folders to watch, and lists new ones,
by path (``os.walk``), after the event that announced them. A data owner who swaps a
subfolder with a symlink (``renameat2(RENAME_EXCHANGE)``) in a loop makes root walk,
watch and report whatever the link points to (a root-only folder, ``/usr``, ``/``):
names from folders the owner cannot read reach the log, root's inotify watches are
spent on trees that are not hers, and the walks stall the watcher for minutes.

Here every folder is opened one component at a time with ``O_NOFOLLOW`` from the data
folder's trusted prefix (the opener the caller gives), checked to be on the data
folder's filesystem, and the watch is added through ``/proc/self/fd/N``: the kernel
watches exactly the inode that was opened, never what a path resolves to a moment
later. Nothing below the data folder is ever reached by path.

The reader thread turns kernel events into the watcher's hints, ``(code, src, dest,
time)`` put on a queue: ``fclosed`` (a writer closed a file), ``fmoved`` (a file
moved in), ``dcreated``/``dmoved`` (a folder appeared: it is watched before the hint is
sent, so listing it afterwards misses nothing), ``ddeleted`` (a data folder itself
went away), ``overflow`` (events were lost: every tree is re-walked and its watches
reconciled before the hint is sent; ``src`` is the folder that caused most of the
events since the last overflow, when one did) and ``limit`` (the watch limit is
reached: ``src`` is the error text).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF
        | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_EVENT = struct.Struct("iIII")

READ_SIZE = 256 * 1024
MAX_DEPTH = 128  # deeper folders are not watched (the periodic rescan still lists them)
MAX_BACKLOG = 200_000  # hints not yet taken by the main thread: beyond, drop and rescan
TICK = 1.0  # the reader wakes at least this often (its liveness tick)

Opener = Callable[[tuple[str, ...]], int]

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return _libc


def _error(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


@dataclass(eq=False)
class Node:
    """One watched folder: the watch descriptor of its inode and where it is now (its
    parent's node and its name there). A move changes only the moved folder's node;
    the paths below it follow."""

    wd: int
    name: str
    parent: Node | None
    children: dict[str, Node] = field(default_factory=dict)
    gen: int = 0

    def rel(self) -> str:
        parts: list[str] = []
        n: Node | None = self
        for _ in range(4 * MAX_DEPTH):
            if n is None or n.parent is None:
                break
            parts.append(n.name)
            n = n.parent
        return "/".join(reversed(parts))

    def within(self, other: Node) -> bool:
        """Is this node ``other`` or below it?"""
        n: Node | None = self
        for _ in range(4 * MAX_DEPTH):
            if n is None:
                return False
            if n is other:
                return True
            n = n.parent
        return True  # a chain that long is a loop: treat it as inside


@dataclass(eq=False)
class Tree:
    """One watched data folder: its real path (for the hints), how to open a folder
    below it without following links, and its filesystem."""

    real: str
    opener: Opener
    dev: int
    key: Any = None  # the caller's object for this tree
    top: Node | None = None
    nodes: dict[int, Node] = field(default_factory=dict)  # wd -> node
    events: int = 0  # since the last overflow
    overflows: int = 0  # overflows in which this tree caused most of the events

    def parts(self, node: Node) -> tuple[str, ...]:
        rel = node.rel()
        return tuple(rel.split("/")) if rel else ()


class TreeWatch:
    """One inotify instance and its reader thread, watching any number of trees."""

    def __init__(self, sink: queue.SimpleQueue[tuple[str, str, str, float]]) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise OSError(errno.ENOSYS, "/proc is not mounted: cannot anchor inotify "
                          "watches on folder descriptors")
        fd = _lib().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd = fd
        self.sink = sink
        self.lock = threading.RLock()
        self.trees: list[Tree] = []
        self.wds: dict[int, set[Tree]] = {}
        # IN_MOVED_FROM of a folder waiting for its IN_MOVED_TO: (node, parent, name)
        self.moved_from: dict[tuple[int, Tree], tuple[Node, Node | None, str]] = {}
        self.overflows = 0  # kernel queue overflows (and backlog drops)
        self.events = 0
        self.error: BaseException | None = None
        self.tick = time.monotonic()
        self.gen = 0
        self._stopping = False
        self._dropping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="mnic-ops-inotify",
                                        daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 10.0) -> None:
        """Stop the reader and close the instance (which drops every watch). A reader
        that does not finish within ``wait`` seconds (stuck) is left behind: its
        descriptors are closed under it."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait)
        got = self.lock.acquire(timeout=max(wait, 1.0))
        try:
            if got and not self._thread.is_alive() and self.error is None and self.fd >= 0:
                # what the kernel queued before the stop: hand it over too
                with contextlib.suppress(OSError):
                    self._parse(self._read())
            for fd in (self.fd, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fd = -1
            self.trees, self.wds = [], {}
        finally:
            if got:
                self.lock.release()

    def alive(self, stall: float = 60.0) -> bool:
        """The reader runs and has ticked within ``stall`` seconds."""
        return self._thread.is_alive() and time.monotonic() - self.tick < stall

    def watching(self, tree: Tree) -> bool:
        return tree.top is not None and tree in self.trees

    @property
    def watches(self) -> int:
        return len(self.wds)

    # -- trees --------------------------------------------------------------------------

    def add_tree(self, real: str, opener: Opener, dev: int, key: Any = None) -> Tree:
        """Watch every folder of a tree. Raises OSError when its top cannot be opened
        or watched (ENOSPC at the watch limit, EXDEV when it is on another filesystem
        than ``dev``) or the limit is reached below it."""
        tree = Tree(real, opener, dev, key)
        with self.lock:
            self.trees.append(tree)
            try:
                self._walk(tree, None, "", tree.opener(()))
            except BaseException:
                self.remove_tree(tree)
                raise
            if tree.top is None:
                self.remove_tree(tree)
                raise OSError(errno.ENOENT, "the data folder went away")
        return tree

    def remove_tree(self, tree: Tree) -> None:
        with self.lock:
            if tree in self.trees:
                self.trees.remove(tree)
            for wd in list(tree.nodes):
                self._release(wd, tree)
            tree.nodes.clear()
            tree.top = None
            for k in [k for k in self.moved_from if k[1] is tree]:
                del self.moved_from[k]

    def _release(self, wd: int, tree: Tree) -> None:
        users = self.wds.get(wd)
        if users is None:
            return
        users.discard(tree)
        if not users:
            del self.wds[wd]
            if self.fd >= 0:
                _lib().inotify_rm_watch(self.fd, wd)

    def _attach(self, tree: Tree, parent: Node | None, name: str, wd: int) -> Node | None:
        """The node of ``wd`` in ``tree``, now at ``parent``/``name`` (a folder seen
        elsewhere before has moved here). None where that would make a loop (the same
        folder met below itself, through a bind mount)."""
        node = tree.nodes.get(wd)
        if node is None:
            node = Node(wd, name, parent)
            tree.nodes[wd] = node
            self.wds.setdefault(wd, set()).add(tree)
        elif node.parent is not parent or node.name != name:
            if parent is not None and (node is tree.top or parent.within(node)):
                return None
            old = node.parent
            if old is not None and old.children.get(node.name) is node:
                del old.children[node.name]
            node.parent, node.name = parent, name
        if parent is None:
            tree.top = node
        else:
            parent.children[name] = node
        node.gen = self.gen
        return node

    def _drop(self, tree: Tree, node: Node) -> None:
        """Stop watching ``node`` and everything below it (it left the tree)."""
        for n in [n for n in tree.nodes.values() if n.within(node)]:
            del tree.nodes[n.wd]
            if n.parent is not None and n.parent.children.get(n.name) is n:
                del n.parent.children[n.name]
            self._release(n.wd, tree)
        if node is tree.top:
            tree.top = None

    def _walk(self, tree: Tree, parent: Node | None, name: str, fd: int) -> None:
        """Watch the folder open as ``fd`` (``name`` in ``parent``; takes ``fd``) and
        every folder below it, each opened from its parent's descriptor with
        ``O_NOFOLLOW`` and on the tree's filesystem. Errors about the folder itself
        propagate (EXDEV: another filesystem); folders below that vanished or turned
        into links are skipped; ENOSPC/EMFILE always propagate."""
        stack: list[tuple[int, Node, list[str]]] = []
        try:
            self._enter(tree, parent, name, fd, stack, first=True)
            while stack:
                self.tick = time.monotonic()
                dfd, node, names = stack[-1]
                if not names:
                    os.close(dfd)
                    stack.pop()
                    continue
                child = names.pop()
                try:
                    cfd = os.open(child, _DIR_FLAGS, dir_fd=dfd)
                except OSError:
                    continue  # gone, or a link now: not followed
                self._enter(tree, node, child, cfd, stack)
        finally:
            for dfd, _, _ in stack:
                os.close(dfd)

    def _enter(self, tree: Tree, parent: Node | None, name: str, fd: int,
               stack: list[tuple[int, Node, list[str]]], *, first: bool = False) -> None:
        """Watch one opened folder and push it with its subfolders' names (takes
        ``fd``: it is closed here unless pushed)."""
        pushed = False
        try:
            if os.fstat(fd).st_dev != tree.dev:
                if first:
                    raise OSError(errno.EXDEV, "on another filesystem than the data folder")
                return
            wd = _lib().inotify_add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), MASK)
            if wd < 0:
                raise _error("inotify_add_watch")
            node = self._attach(tree, parent, name, wd)
            if node is None:
                return
            names: list[str] = []
            if len(stack) < MAX_DEPTH:
                with os.scandir(fd) as it:
                    names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
            stack.append((fd, node, names))
            pushed = True
        except OSError as exc:
            if first or exc.errno in (errno.ENOSPC, errno.EMFILE):
                raise
        finally:
            if not pushed:
                os.close(fd)

    def _open_in(self, tree: Tree, parent: Node, name: str) -> int:
        """Open ``name`` in the folder of ``parent``, from the tree's trusted top down,
        without following links."""
        pfd = tree.opener(tree.parts(parent))
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        finally:
            os.close(pfd)

    def _appeared(self, tree: Tree, parent: Node, name: str) -> None:
        """A folder was created or moved in (or within the tree): watch what is at that
        name now (re-placing its node when it is a folder seen elsewhere before) and
        every folder below it."""
        try:
            fd = self._open_in(tree, parent, name)
        except OSError:
            return  # gone again, or a symlink: not followed
        try:
            self._walk(tree, parent, name, fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                self._emit("limit", exc.strerror or str(exc))

    def reconcile(self, tree: Tree) -> None:
        """Walk the tree again after lost events: watch what is there now, under the
        names it has now; drop the watches of folders that left it."""
        self.gen += 1
        for n in tree.nodes.values():
            n.children = {}
        try:
            self._walk(tree, None, "", tree.opener(()))
        finally:
            for n in [n for n in tree.nodes.values() if n.gen != self.gen]:
                del tree.nodes[n.wd]
                self._release(n.wd, tree)
                if n is tree.top:
                    tree.top = None

    # -- the reader ---------------------------------------------------------------------

    def _emit(self, code: str, src: str, dest: str = "") -> None:
        if self.sink.qsize() > MAX_BACKLOG:
            if not self._dropping:
                self._dropping = True
                self.overflows += 1
                self.sink.put(("overflow", "", "backlog", time.time()))
            return
        self._dropping = False
        self.sink.put((code, src, dest, time.time()))

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while not self._stopping:
                self.tick = time.monotonic()
                ready = {fd for fd, _ in poller.poll(TICK * 1000)}
                if self._stopping:
                    break
                if self.fd not in ready:
                    if self.moved_from:
                        with self.lock:
                            self._unpaired()
                    continue
                try:
                    data = self._read()
                except BlockingIOError:
                    continue
                with self.lock:
                    self._parse(data)
                    if self.moved_from and not poller.poll(0):
                        self._unpaired()
        except BaseException as exc:  # reported: the caller restarts the observer
            if not self._stopping:
                self.error = exc
                self.sink.put(("died", f"{type(exc).__name__}: {exc}", "", time.time()))

    def _read(self) -> bytes:
        return os.read(self.fd, READ_SIZE)

    def _parse(self, data: bytes) -> None:
        off, n = 0, len(data)
        while off + 16 <= n:
            wd, mask, cookie, length = _EVENT.unpack_from(data, off)
            raw = data[off + 16:off + 16 + length]
            off += 16 + length
            nul = raw.find(b"\0")
            self._event(wd, mask, cookie, os.fsdecode(raw if nul < 0 else raw[:nul]))

    def _event(self, wd: int, mask: int, cookie: int, name: str) -> None:
        self.events += 1
        if mask & IN_Q_OVERFLOW:
            self._overflow()
            return
        if mask & IN_IGNORED:
            for tree in self.wds.pop(wd, ()):
                node = tree.nodes.pop(wd, None)
                if node is None:
                    continue
                if node.parent is not None and node.parent.children.get(node.name) is node:
                    del node.parent.children[node.name]
                if node is tree.top:
                    tree.top = None
                    self._emit("ddeleted", tree.real)
            return
        for tree in list(self.wds.get(wd, ())):
            node = tree.nodes.get(wd)
            if node is None:
                continue
            tree.events += 1
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                if node is tree.top:
                    self._emit("ddeleted", tree.real)
                continue
            rel = node.rel()
            path = f"{tree.real}/{rel}/{name}" if rel else f"{tree.real}/{name}"
            if not mask & IN_ISDIR:
                if mask & IN_CLOSE_WRITE:
                    self._emit("fclosed", path)
                elif mask & IN_MOVED_TO:
                    self._emit("fmoved", "", path)
                continue
            if mask & IN_MOVED_FROM:
                child = node.children.get(name)
                if child is not None:
                    self.moved_from[(cookie, tree)] = (child, child.parent, child.name)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                # Inode-based: whatever folder is at that name now is (re)placed there.
                # A RENAME_EXCHANGE reports both halves by name, so names alone cannot
                # tell which folder went where.
                self.moved_from.pop((cookie, tree), None)
                self._appeared(tree, node, name)
                if mask & IN_CREATE:
                    self._emit("dcreated", path)
                else:
                    self._emit("dmoved", "", path)

    def _unpaired(self) -> None:
        """Folders moved out of their tree (no IN_MOVED_TO came): unwatch them, unless
        they were seen somewhere in the tree since."""
        for (_, tree), (node, parent, name) in self.moved_from.items():
            if tree.nodes.get(node.wd) is node and node.parent is parent \
                    and node.name == name:
                self._drop(tree, node)
        self.moved_from.clear()

    def _overflow(self) -> None:
        """The kernel dropped events: re-walk every tree (moves were lost, so places may
        be stale), then say which tree caused most of the events since the last one."""
        self.overflows += 1
        self.moved_from.clear()
        total = sum(t.events for t in self.trees)
        top = max(self.trees, key=lambda t: t.events, default=None)
        stormer = top if top is not None and total and 2 * top.events >= total else None
        if stormer is not None:
            stormer.overflows += 1
        for t in self.trees:
            t.events = 0
        for t in list(self.trees):
            try:
                self.reconcile(t)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    self._emit("limit", exc.strerror or str(exc))
                    break
                self._emit("ddeleted", t.real)  # its top is gone or replaced
        self.sink.put(("overflow", stormer.real if stormer else "", "", time.time()))
