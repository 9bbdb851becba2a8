"""The data map: where the framework's installs are and where each keeps its data.

One module that render, relocate, fstab, clean, watch and doctor share, so that they all
agree on what an install is (``.claude/agents/`` plus ``.ai-tools/``, or the enterprise
``/opt/my-name-is-claude`` layout) and where its sessions, checkpoints, thinking logs,
cost records, logs and task results live (field notes section 1).

The search for installs is :mod:`mnic_ops.facts.installsearch`, their release
:mod:`mnic_ops.facts.fwversion`, PROJECT arguments :mod:`mnic_ops.facts.projectargs`, and
the size of a data folder :mod:`mnic_ops.facts.datameasure`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnic_ops.core import beneathfs, framework_map
from mnic_ops.core.errors import InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.core.installfail import INSTALL_ERRORS, reason, usable
from mnic_ops.facts import fwconfig
from mnic_ops.facts.datameasure import measure, root_of
from mnic_ops.facts.fwversion import read_versions
from mnic_ops.facts.installsearch import expand, is_dir_nofollow, layout_of, search
from mnic_ops.facts.projectargs import enclosing_install, folder_hint, resolve_args

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.config import Config

log = logging.getLogger(__name__)

# The data map itself (folders, and which files the framework reads back) is derived
# from the framework's code in mnic_ops.core.framework_map; this module finds the installs
# and resolves the folders of each.
DATA_KINDS = framework_map.DATA_KINDS
# Names the framework (or the assistant) reads back by exact name, in any data folder:
# never compressed or moved apart. The full, per-folder rules are fmap.FOLDERS.
PROTECTED_NAMES = frozenset(framework_map.EXACT_NAMES)

# Data folders relative to the install root, per layout.
PROJECT_PATHS = {k: f.default for k, f in framework_map.FOLDERS.items()}
OPT_PATHS = {k: f.opt_default for k, f in framework_map.FOLDERS.items()}
CHECKPOINT_CONFIG = framework_map.CHECKPOINT_CONFIG



@dataclass
class DataDir:
    kind: str              # one of DATA_KINDS
    host_path: str         # host path, e.g. /home/alice/p/project_archive/sessions
    path: Path             # real path under --root: root.path(host_path); may be a symlink
    exists: bool           # lexists
    is_link: bool
    link_target: str | None  # host path the link points to (absolute, clamped at the root)


@dataclass
class Project:
    host_path: str         # install root as a host path
    path: Path             # real path under --root
    uid: int
    gid: int
    user: str
    group: str
    version: str | None    # framework version where readable
    layout: str            # "project" (per-project install) or "opt" (/opt enterprise layout)
    data: dict[str, DataDir] = field(default_factory=dict)
    # Why the data map of this install could not be built (a user's file that cannot be
    # used); such an install has no data folders and is reported, not worked on
    # (mnic_ops.core.installfail.usable).
    failure: str | None = None
    version_sources: dict[str, str] = field(default_factory=dict)  # file -> version it says
    has_config: bool = True  # .claude/config/ is there (the copy script does not make it)
    notes: list[str] = field(default_factory=list)
    # The install root as found: (device, inode, owner). Every later open of the install
    # checks it (mnic_ops.core.installroot): its path may lead elsewhere by then.
    ident: beneathfs.Ident | None = None
    _configs: dict[str, fwconfig.FrameworkConfig] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.host_path.rstrip("/")) or "/"

    def framework_config(self, rel: str) -> fwconfig.FrameworkConfig:
        """A framework config file of this install, read once, bounded, never through a
        symlink below the install."""
        if rel not in self._configs:
            self._configs[rel] = fwconfig.read(self.path, self.host_path, rel,
                                               base_ident=self.ident)
        return self._configs[rel]

    def to_json(self, sizes: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "root": self.host_path, "user": self.user, "group": self.group,
            "uid": self.uid, "gid": self.gid, "version": self.version,
            "version_sources": self.version_sources, "has_config": self.has_config,
            "layout": self.layout, "notes": self.notes, "data": {}}
        for kind, d in self.data.items():
            dd: dict[str, Any] = {"path": d.host_path, "exists": d.exists,
                                  "is_link": d.is_link, "link_target": d.link_target}
            if sizes:
                dd["bytes"], dd["files"] = measure(d, self) if d.exists else (0, 0)
            if sizes and d.is_link:
                from mnic_ops.facts import linkrecords

                loc = linkrecords.locate(root_of(self), self, kind)
                # relocated (a link mnic-ops made: followed), absent (its target is
                # missing) or refused (not mnic-ops's own: never followed)
                dd["link_state"] = loc.state
                if loc.note:
                    dd["link_note"] = loc.note
            out["data"][kind] = dd
        return out


NO_CONFIG_NOTE = (
    "no .claude/config/: the framework's copy_framework_to_project.sh does not install it, "
    "so the framework runs on its built-in defaults; mnic-ops render leaves this install "
    "alone until the config is there (copy the framework's .claude/config/ into the "
    "install, then run mnic-ops render)")


# --- recognising an install ----------------------------------------------------------



def _config_rel(project: Project, kind: str) -> str:
    """A data folder's path relative to the install: the default, or what the framework
    config that moves it says (``storage.base_path``, ``logging.storage_path``,
    ``storage.task_results_dir``...). A value that leaves the install (absolute
    elsewhere, ``..``) or does not parse is ignored with a warning: a user-writable file
    must not point a root process at other folders, and the framework itself falls back
    to its default when its config does not load."""
    folder = framework_map.FOLDERS[kind]
    default = (OPT_PATHS if project.layout == "opt" else PROJECT_PATHS)[kind]
    if folder.config is None:
        return default
    rel, dotted = folder.config
    cfg = project.framework_config(rel)
    if cfg.error:
        # A file that locates data and cannot be read: the install fails (reported,
        # exit 1, the others go on) instead of mnic-ops guessing where its data is.
        raise InputError(cfg.error)
    try:
        value = fwconfig.relpath(cfg, dotted)
    except fwconfig.BadValue as exc:
        # where the framework keeps this data is unknown: nothing is done for the
        # install (mnic_ops.core.installfail), rather than guessing at a folder
        raise InputError(exc.message) from None
        return default
    if value is None:
        return default
    host_path = project.host_path
    joined = os.path.normpath(os.path.join(host_path, value))
    if not (joined == host_path or joined.startswith(host_path.rstrip("/") + "/")):
        log.warning("%s: %s %r is outside the install; ignored (using %s)",
                    cfg.where(dotted), dotted, value, default)
        return default
    return os.path.relpath(joined, host_path) if joined != host_path else default


def data_dir(root: HostRoot, kind: str, host_path: str) -> DataDir:
    """One data folder as it is now. The user may be swapping it with a link while this
    runs: ``readlink`` decides (a link at that instant or not), never lstat-then-readlink,
    which raised when the link went in between."""
    real = root.path(host_path)
    target = None
    try:
        raw = os.readlink(real)
        is_link = exists = True
        # normpath of an absolute path clamps "..": the target never leaves the root.
        target = os.path.normpath(os.path.join(os.path.dirname(host_path), raw))
    except OSError:
        is_link = False
        exists = os.path.lexists(real)
    return DataDir(kind=kind, host_path=host_path, path=real, exists=exists,
                   is_link=is_link, link_target=target)


# --- owner names from the host's own files (the --root may be another system) --------

def _id_names(root: HostRoot, file: str) -> dict[int, str]:
    names: dict[int, str] = {}
    try:
        text = root.path(file).read_text(errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


class _Names:
    def __init__(self, root: HostRoot) -> None:
        self.root = root
        self._users: dict[int, str] | None = None
        self._groups: dict[int, str] | None = None

    def user(self, uid: int) -> str:
        if self.root.live:
            import pwd

            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return str(uid)
        if self._users is None:
            self._users = _id_names(self.root, "/etc/passwd")
        return self._users.get(uid, str(uid))

    def group(self, gid: int) -> str:
        if self.root.live:
            import grp

            try:
                return grp.getgrgid(gid).gr_name
            except KeyError:
                return str(gid)
        if self._groups is None:
            self._groups = _id_names(self.root, "/etc/group")
        return self._groups.get(gid, str(gid))


def load_project(root: HostRoot, host_path: str, layout: str,
                 names: _Names | None = None) -> Project:
    """Build the data map of one install (read-only)."""
    names = names or _Names(root)
    host_path = os.path.normpath(host_path)
    real = root.path(host_path)
    st = os.lstat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise OpsError(f"{host_path}: not a folder (a symlink?) any more; not an install")
    ident = beneathfs.ident_of(st)
    version, sources = read_versions(real, ident)
    p = Project(host_path=host_path, path=real, uid=st.st_uid, gid=st.st_gid,
                user=names.user(st.st_uid), group=names.group(st.st_gid),
                version=version, layout=layout, version_sources=sources, ident=ident,
                has_config=is_dir_nofollow(real / ".claude") and os.path.lexists(
                    real / framework_map.CONFIG_DIR))  # a link there is there (and refused later)
    stale = sources.get("VERSION")
    if stale and version and stale != version:
        p.notes.append(f"VERSION says {stale}, a file the framework ships stale; the "
                       f"release is {version} ("
                       + ", ".join(k for k, v in sources.items() if v == version) + ")")
    if not p.has_config:
        p.notes.append(NO_CONFIG_NOTE)
    p.data = {kind: data_dir(root, kind, os.path.normpath(
        f"{host_path}/{_config_rel(p, kind)}")) for kind in DATA_KINDS}
    return p


def load_project_or_failure(root: HostRoot, host_path: str, layout: str,
                            names: _Names | None = None) -> Project:
    """:func:`load_project`, or when one of the install's own files makes that fail
    (bad JSON, a link in the way), the install with ``failure`` set and no data map:
    one user's file fails that install only."""
    try:
        return load_project(root, host_path, layout, names)
    except INSTALL_ERRORS as exc:
        names = names or _Names(root)
        host_path = os.path.normpath(host_path)
        real = root.path(host_path)
        try:
            st: os.stat_result | None = os.lstat(real)
        except OSError:
            st = None
        uid, gid = (st.st_uid, st.st_gid) if st is not None else (-1, -1)
        return Project(host_path=host_path, path=real, uid=uid, gid=gid,
                       user=names.user(uid), group=names.group(gid), version=None,
                       layout=layout, failure=reason(exc))


# --- the search --------------------------------------------------------------------

def find_projects(root: HostRoot, cfg: Config) -> list[Project]:
    """Installs from the config's ``projects`` list (in that order), then those found
    below ``search_paths`` (sorted); each install once."""
    names = _Names(root)
    found: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()

    def add(host: str, layout: str) -> None:
        try:
            st = os.lstat(root.path(host))
        except OSError:
            return
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append((os.path.normpath(host), layout))

    for p in cfg.get("projects") or []:
        if not p.startswith("/"):
            raise InputError(f"projects: {p!r} is not an absolute path")
        real = root.path(p)
        if os.path.islink(real):
            log.warning("projects: %s is a symlink; list the folder it points to", p)
            continue
        lay = layout_of(root, p)
        if lay is None:
            log.warning("projects: %s is not a framework install (no .claude/agents/ and "
                        ".ai-tools/)", p)
            continue
        add(p, lay)
    depth = int(cfg.get("search_depth", 3))
    searched: list[tuple[str, str]] = []
    for pattern in cfg.get("search_paths") or []:
        for start in expand(root, pattern):
            searched.extend(search(root, start, depth))
    for host, lay in sorted(searched):
        add(host, lay)
    return [load_project_or_failure(root, h, lay, names) for h, lay in found]


def select_projects(app: AppContext, names: Sequence[str]) -> list[Project]:
    """The installs named on the command line; all found ones when none is named.

    A PROJECT is a host path (absolute), a path relative to the current directory
    (``.``, ``..`` or anything with a ``/``; under ``--root`` it must lie inside the
    root), or a bare name: when ``./NAME`` is a framework install, that install,
    else the found install whose folder is named NAME (unique). An unknown or
    ambiguous name is an input error. An install whose data map failed is recorded
    on ``app.failures`` and left out."""
    found = find_projects(app.root, app.config)
    if not names:
        return usable(app, found)
    out: list[Project] = []
    for given, name in zip(names, resolve_args(app, names), strict=True):
        if name.startswith("/"):
            norm = os.path.normpath(name)
            shown = given if given == norm else f"{given} ({norm})"
            match = [p for p in found if p.host_path == norm]
            if not match:
                if os.path.islink(app.root.path(norm)):
                    raise InputError(f"{shown}: is a symlink; name the install folder "
                                     "itself")
                lay = layout_of(app.root, norm)
                if lay is None:
                    inside = enclosing_install(app.root, norm)
                    hint = f"; it is inside the install {inside}" if inside else ""
                    raise InputError(f"{shown}: not a framework install (expected "
                                     f".claude/agents/ and .ai-tools/ in it){hint}")
                match = [load_project_or_failure(app.root, norm, lay)]
        else:
            match = [p for p in found if p.name == name]
            if not match:
                known = ", ".join(p.host_path for p in found) or "none found"
                raise InputError(f"{name}: no such framework install (known: {known})"
                                 + folder_hint(app.root, name))
            if len(match) > 1:
                raise InputError(f"{name}: ambiguous, matches "
                                 + ", ".join(p.host_path for p in match)
                                 + "; give the full path")
        for p in match:
            if all(p.host_path != q.host_path for q in out):
                out.append(p)
    return usable(app, out)


# --- sizes for people ---------------------------------------------------------------

def human(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    raise AssertionError


