"""The data map: where the framework's installs are and where each keeps its data.

One module that render, relocate, fstab, clean, watch and doctor share, so that they all
agree on what an install is (``.claude/agents/`` plus ``.ai-tools/``, or the enterprise
``/opt/my-name-is-claude`` layout) and where its sessions, checkpoints, thinking logs,
cost records, logs and task results live (field notes section 1).

The search runs as root over user-writable trees, so it never follows a symlink, stays
on the search path's filesystem, and skips folders that cannot hold an install
(``.git``, ``node_modules``, virtualenvs) and the framework's own folders inside one.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.core import framework_map, safefs
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK, InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.core.installfail import INSTALL_ERRORS, reason, usable
from mnic_ops.facts import fwconfig

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
OPT_ROOT = "/opt/my-name-is-claude"
CHECKPOINT_CONFIG = framework_map.CHECKPOINT_CONFIG

# Folders the search never enters: they cannot hold an install and can be huge.
SKIP_NAMES = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv",
                        ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                        ".cache", "site-packages", "lost+found"})
# The framework's own folders inside an install: no nested install lives there.
INSTALL_OWN = frozenset({".claude", ".ai-tools", "project_archive"})


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
    ident: safefs.Ident | None = None
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

                loc = linkrecords.locate(_root_of(self), self, kind)
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

def _is_dir_nofollow(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def layout_of(root: HostRoot, host_path: str) -> str | None:
    """``"project"``, ``"opt"`` or None when ``host_path`` is no install."""
    real = root.path(host_path)
    if _is_dir_nofollow(real / ".claude") and _is_dir_nofollow(real / ".claude" / "agents") \
            and _is_dir_nofollow(real / ".ai-tools"):
        return "project"
    if os.path.normpath(host_path) == OPT_ROOT and any(
            _is_dir_nofollow(real / d) for d in ("sessions", "checkpoints", "logs", ".claude")):
        return "opt"
    return None


# --- reading small facts from an install (never through a symlink) ------------------

def _read_beneath(base: Path, rel: str, limit: int = 1 << 20,
                  ident: safefs.Ident | None = None) -> bytes | None:
    try:
        fd = safefs.open_beneath(base, rel, base_ident=ident)
    except (OSError, OpsError):
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(limit)


_VERSION_RE = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.]+)?")
# FRAMEWORK_README.md: "**Current Version:** 3.10.0" and the "Version-3.10.0" badge.
_README_VERSION_RE = re.compile(
    r"(?:Current Version:?\**:?\s*|badge/Version-|framework_version\W+|"
    r"FRAMEWORK_VERSION\W+)v?(\d+\.\d+\.\d+)")
# FRAMEWORK_CHANGELOG.md (Keep a Changelog): the first "## [3.10.0] - date".
_CHANGELOG_RE = re.compile(r"^##\s*\[v?(\d+\.\d+\.\d+)\]", re.M)
# Config files whose "framework_version" names the release (3.10.0 writes it).
_VERSIONED_CONFIGS = ("extended-thinking-config.json", "diagnostic-framework-integration.json",
                      "skills-conversion-mapping.json")
# Component versions in config files: the release that introduced the component, so
# the install is at least that release.
_COMPONENT_CONFIGS = ("parallel-agents-config.json", "checkpoint-config.json",
                      "background-tasks.json")


def _newest(versions: list[str]) -> str | None:
    keyed = [(k, v) for v in versions if (k := framework_map.version_key(v)) is not None]
    return max(keyed)[1] if keyed else None


def read_versions(path: Path, ident: safefs.Ident | None = None
                  ) -> tuple[str | None, dict[str, str]]:
    """The framework version of an install and what each source says.

    The framework ships a stale ``VERSION`` file (3.2.1 in 3.3.0 and 3.10.0), so the
    release comes from ``FRAMEWORK_README.md`` and ``FRAMEWORK_CHANGELOG.md`` (the copy
    script installs both), then the configs' ``framework_version``, then their component
    versions (a lower bound), and only last from ``VERSION``."""
    sources: dict[str, str] = {}
    for rel, rx in (("FRAMEWORK_README.md", _README_VERSION_RE),
                    ("FRAMEWORK_CHANGELOG.md", _CHANGELOG_RE),
                    ("CHANGELOG.md", _CHANGELOG_RE)):
        raw = _read_beneath(path, rel, 64 * 1024, ident)
        if raw:
            m = rx.search(raw.decode(errors="replace"))
            if m:
                sources[rel] = m.group(1)
    for rel in ("VERSION", ".claude/VERSION"):
        raw = _read_beneath(path, rel, 256, ident)
        if raw:
            m = _VERSION_RE.search(raw.decode(errors="replace"))
            if m:
                sources[rel] = m.group(0)
    docs = [v for k, v in sources.items() if k.endswith(".md")]
    if docs:
        return _newest(docs), sources
    found: list[str] = []
    for name, key in ([(n, "framework_version") for n in _VERSIONED_CONFIGS]
                      + [(n, "version") for n in _COMPONENT_CONFIGS]):
        raw = _read_beneath(path, f"{framework_map.CONFIG_DIR}/{name}", 256 * 1024, ident)
        if not raw:
            continue
        m = re.search(rf'"{key}"\s*:\s*"v?(\d+\.\d+\.\d+)"', raw.decode(errors="replace"))
        if m and (framework_map.version_key(m.group(1)) or (0,)) >= (3,):
            sources[f"{framework_map.CONFIG_DIR}/{name} {key}"] = m.group(1)
            found.append(m.group(1))
    if found:
        return _newest(found), sources
    return next((sources[k] for k in ("VERSION", ".claude/VERSION") if k in sources),
                None), sources


def read_version(path: Path) -> str | None:
    """The framework version of the install at ``path`` (see :func:`read_versions`)."""
    return read_versions(path)[0]


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
    ident = safefs.ident_of(st)
    version, sources = read_versions(real, ident)
    p = Project(host_path=host_path, path=real, uid=st.st_uid, gid=st.st_gid,
                user=names.user(st.st_uid), group=names.group(st.st_gid),
                version=version, layout=layout, version_sources=sources, ident=ident,
                has_config=_is_dir_nofollow(real / ".claude") and os.path.lexists(
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

def _expand(root: HostRoot, pattern: str) -> list[str]:
    """Host paths matching a search path (globs allowed), symlinks left out."""
    if not pattern.startswith("/"):
        raise InputError(f"search_paths: {pattern!r} is not an absolute path")
    real_pattern = str(root.path(pattern))
    if glob.has_magic(pattern):
        matches = sorted(glob.glob(glob.escape(str(root.root)).rstrip("/") + "/"
                                   + os.path.normpath(pattern).lstrip("/")))
    else:
        matches = [real_pattern]
    return [root.host(m) for m in matches if _is_dir_nofollow(Path(m))]


def search(root: HostRoot, start_host: str, depth: int) -> Iterator[tuple[str, str]]:
    """(host path, layout) of installs at or below ``start_host``, at most ``depth``
    levels down, without following symlinks or leaving the start's filesystem."""
    start = root.path(start_host)
    try:
        dev = os.lstat(start).st_dev
    except OSError:
        return
    start_layout = layout_of(root, start_host)
    if start_layout:
        yield start_host, start_layout
    stack: list[tuple[str, int, bool]] = [(str(start), 0, start_layout is not None)]
    while stack:
        real, level, is_install = stack.pop()
        if level >= depth:
            continue
        try:
            it = os.scandir(real)
        except OSError:
            continue
        subdirs: list[os.DirEntry[str]] = []
        with it:
            for e in it:
                if e.name == "pyvenv.cfg":
                    subdirs = []  # a virtualenv: nothing below it is an install
                    break
                try:
                    if not e.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                if e.name in SKIP_NAMES or (is_install and e.name in INSTALL_OWN):
                    continue
                subdirs.append(e)
        for e in subdirs:
            try:
                if e.stat(follow_symlinks=False).st_dev != dev:
                    continue  # another filesystem (like find -xdev)
            except OSError:
                continue
            host = root.host(e.path)
            lay = _layout_from_scan(e.path)
            if lay is None and host == OPT_ROOT:
                lay = layout_of(root, host)
            if lay:
                yield host, lay
            stack.append((e.path, level + 1, lay is not None))


def _layout_from_scan(real: str) -> str | None:
    """Cheap test for the per-project layout: two lstat calls, no directory listing."""
    try:
        if not stat.S_ISDIR(os.lstat(os.path.join(real, ".ai-tools")).st_mode):
            return None
        if not stat.S_ISDIR(os.lstat(os.path.join(real, ".claude", "agents")).st_mode):
            return None
        if not stat.S_ISDIR(os.lstat(os.path.join(real, ".claude")).st_mode):
            return None
    except OSError:
        return None
    return "project"


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
        for start in _expand(root, pattern):
            searched.extend(search(root, start, depth))
    for host, lay in sorted(searched):
        add(host, lay)
    return [load_project_or_failure(root, h, lay, names) for h, lay in found]


def is_path_arg(name: str) -> bool:
    """A PROJECT argument that is a path (absolute, ``.``, ``..``, or with a ``/``),
    not an install's folder name."""
    return name in (".", "..") or "/" in name


def host_path_of(root: HostRoot, name: str, cwd: str | None = None) -> str:
    """The host path a PROJECT path stands for: absolute ones as given (normalised);
    relative ones resolved against the current directory, which under ``--root`` must
    lie inside the root (its real path is mapped back to the host path)."""
    if name.startswith("/"):
        return os.path.normpath(name)
    here = cwd if cwd is not None else os.getcwd()
    real = os.path.normpath(os.path.join(here, name))
    if root.root == Path("/"):
        return real
    for base in dict.fromkeys((str(root.root), os.path.realpath(root.root))):
        if real == base or real.startswith(base.rstrip("/") + "/"):
            rel = os.path.relpath(real, base)
            return "/" if rel == "." else "/" + rel
    raise InputError(f"{name}: resolves to {real}, which is outside --root {root.root}; "
                     "give the install's host path (absolute) instead")


def resolve_args(app: AppContext, names: Sequence[str], cwd: str | None = None
                 ) -> list[str]:
    """PROJECT arguments as :func:`select_projects` reads them: a path becomes the host
    path it stands for; a bare name stays a name unless ``./NAME`` is itself a framework
    install, which then wins (the folder in front of the admin). For a unit or cron line
    that runs elsewhere, whose working directory is not the admin's."""
    out: list[str] = []
    for name in names:
        if is_path_arg(name):
            out.append(host_path_of(app.root, name, cwd))
            continue
        try:
            here = host_path_of(app.root, name, cwd)
        except InputError:
            out.append(name)  # the cwd is outside --root: the name is an install name
            continue
        real = app.root.path(here)
        out.append(here if not os.path.islink(real) and layout_of(app.root, here)
                   else name)
    return out


def _enclosing_install(root: HostRoot, host_path: str) -> str | None:
    """The install a path lies inside (for a hint when a subfolder is named)."""
    p = os.path.dirname(host_path)
    while p not in ("/", ""):
        if layout_of(root, p):
            return p
        p = os.path.dirname(p)
    return None


def _folder_hint(root: HostRoot, name: str) -> str:
    """For a bare name that is also a folder here: say why it was not taken."""
    try:
        here = host_path_of(root, name)
    except InputError:
        return ""
    if not _is_dir_nofollow(root.path(here)):
        return ""
    inside = _enclosing_install(root, here)
    return (f"; ./{name} is a folder inside the install {inside}, not an install"
            if inside else f"; ./{name} is a folder but not a framework install")


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
                    inside = _enclosing_install(app.root, norm)
                    hint = f"; it is inside the install {inside}" if inside else ""
                    raise InputError(f"{shown}: not a framework install (expected "
                                     f".claude/agents/ and .ai-tools/ in it){hint}")
                match = [load_project_or_failure(app.root, norm, lay)]
        else:
            match = [p for p in found if p.name == name]
            if not match:
                known = ", ".join(p.host_path for p in found) or "none found"
                raise InputError(f"{name}: no such framework install (known: {known})"
                                 + _folder_hint(app.root, name))
            if len(match) > 1:
                raise InputError(f"{name}: ambiguous, matches "
                                 + ", ".join(p.host_path for p in match)
                                 + "; give the full path")
        for p in match:
            if all(p.host_path != q.host_path for q in out):
                out.append(p)
    return usable(app, out)


def _root_of(project: Project) -> HostRoot:
    """The host root a project was loaded under (its real path minus its host path)."""
    real, host = str(project.path), project.host_path
    return HostRoot(Path(real[: len(real) - len(host)] or "/"))


def data_top(d: DataDir, project: Project | None = None) -> str | None:
    """The real folder holding a data kind's files: the folder itself; for a folder
    that is a link, the target ``relocate`` made for ``project`` when mnic-ops's own
    record matches (:mod:`mnic_ops.facts.linkrecords`); None when there is nothing to look
    at or the link is not followed (always, without ``project``)."""
    from mnic_ops.facts import linkrecords

    if not d.exists:
        return None
    if not d.is_link:
        return str(d.path)
    if project is None:
        return None
    root = _root_of(project)
    loc = linkrecords.locate(root, project, d.kind)
    if loc.state != linkrecords.RELOCATED or loc.target is None:
        return None
    return str(root.path(loc.target))


def _count_files(dfd: int) -> tuple[int, int]:
    total = files = 0
    for _dirpath, _dirs, filenames, dirfd in os.fwalk(".", dir_fd=dfd, follow_symlinks=False):
        for fn in filenames:
            try:
                fst = os.stat(fn, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(fst.st_mode):
                total += fst.st_size
                files += 1
    return total, files


def measure(d: DataDir, project: Project | None = None) -> tuple[int, int]:
    """(bytes, files) of the regular files below a data folder, following no symlink
    inside it. For a folder that is itself a link, the relocated data at its target is
    measured when ``relocate`` made that link for ``project`` (see :func:`data_top`);
    any other link counts as empty."""
    from mnic_ops.facts import linkrecords

    if not d.exists:
        return 0, 0
    if d.is_link:
        if project is None:
            return 0, 0
        root = _root_of(project)
        loc = linkrecords.locate(root, project, d.kind)
        if loc.state != linkrecords.RELOCATED:
            return 0, 0
        try:
            fd = linkrecords.open_location(root, loc)
        except OSError:
            return 0, 0
    else:
        try:
            st = os.lstat(d.path)
        except OSError:
            return 0, 0
        if stat.S_ISREG(st.st_mode):
            return st.st_size, 1
        if not stat.S_ISDIR(st.st_mode):
            return 0, 0
        try:
            if project is not None:  # below the install root it found, checked to be it
                rel = os.path.relpath(d.host_path, project.host_path)
                fd = safefs.open_beneath(project.path, rel, os.O_RDONLY | os.O_DIRECTORY,
                                         base_ident=project.ident)
            else:
                fd = os.open(d.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC)
        except (OSError, OpsError):
            return 0, 0
    try:
        return _count_files(fd)
    finally:
        os.close(fd)


# --- the command ---------------------------------------------------------------------

def human(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    raise AssertionError


def _text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no framework installs found (see search_paths and projects in the config)"
    lines: list[str] = []
    for r in rows:
        lines.append(f"{r['root']}  owner {r['user']}:{r['group']}  "
                     f"version {r['version'] or 'unknown'}  layout {r['layout']}"
                     + ("" if r["has_config"] else "  (no .claude/config/)"))
        lines.extend(f"  note: {n}" for n in r["notes"])
        for kind, d in r["data"].items():
            if not d["exists"]:
                state = "absent"
            else:
                state = f"{human(d['bytes'])} in {d['files']} files"
                if d["is_link"]:
                    state += f" (link -> {d['link_target']}"
                    state += ", not followed: not made by mnic-ops)" \
                        if d.get("link_state") == "refused" else ")"
            lines.append(f"  {kind:<17} {d['path']}: {state}")
    return "\n".join(lines)


@click.command("projects", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (same as "
              "the global --json).")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def projects_cmd(app: AppContext, as_json: bool, names: tuple[str, ...]) -> int:
    """List framework installs: root, owner, version, data folders with size and file
    count (read-only). PROJECT narrows the list to installs named by path or folder name.
    """
    from mnic_ops.core.app import emit

    if as_json:
        app.json = True

    rows = [p.to_json(sizes=True) for p in select_projects(app, names)]
    emit(app, {"projects": rows}, lambda: _text(rows))
    return EXIT_OK
