"""The watcher's data folders: which ones it watches (every class whose clean policy
compresses, where the link records put it), each opened from a trusted prefix without
following links, their folder count, and which names in them it compresses."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mnic_ops.core import installfail, safefs
from mnic_ops.engines import cleanjobs, datatree, tempfiles
from mnic_ops.facts import linkrecords, policy
from mnic_ops.facts.projects import DATA_KINDS, Project

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.facts.hostfacts import Mount

# Root states
READY, WATCHING, ABSENT, REFUSED, READ_ONLY = "ready", "watching", "absent", "refused", \
    "read-only"


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


def lident(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """(device, inode, file type) of ``path`` itself (a link not followed), or None."""
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
                          link_ident=lident(d.path))
            loc = linkrecords.locate(app.root, p, kind, records)
            if loc.state == linkrecords.REFUSED:
                r.state, r.note = REFUSED, cleanjobs.printable(loc.note)
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
            r.state, r.note = REFUSED, cleanjobs.printable(exc.strerror or "not followed")
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
        top = cleanjobs.open_tree(app.root, r.prefix or "/", r.parts, r.base_ident)
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


def dur(seconds: float) -> str:
    """A settle time or delay as the watcher's messages show it (``90 s``, ``5 min``)."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
