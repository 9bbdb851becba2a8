"""Recognising a framework install, and searching for installs below a search path.

The search runs as root over user-writable trees, so it never follows a symlink, stays
on the search path's filesystem, and skips folders that cannot hold an install
(``.git``, ``node_modules``, virtualenvs) and the framework's own folders inside one.
:func:`mnic_ops.facts.projects.find_projects` builds the data map of what it finds.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot

OPT_ROOT = "/opt/my-name-is-claude"

# Folders the search never enters: they cannot hold an install and can be huge.
SKIP_NAMES = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv",
                        ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                        ".cache", "site-packages", "lost+found"})
# The framework's own folders inside an install: no nested install lives there.
INSTALL_OWN = frozenset({".claude", ".ai-tools", "project_archive"})


def is_dir_nofollow(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def layout_of(root: HostRoot, host_path: str) -> str | None:
    """``"project"``, ``"opt"`` or None when ``host_path`` is no install."""
    real = root.path(host_path)
    if is_dir_nofollow(real / ".claude") and is_dir_nofollow(real / ".claude" / "agents") \
            and is_dir_nofollow(real / ".ai-tools"):
        return "project"
    if os.path.normpath(host_path) == OPT_ROOT and any(
            is_dir_nofollow(real / d) for d in ("sessions", "checkpoints", "logs", ".claude")):
        return "opt"
    return None



def expand(root: HostRoot, pattern: str) -> list[str]:
    """Host paths matching a search path (globs allowed), symlinks left out."""
    if not pattern.startswith("/"):
        raise InputError(f"search_paths: {pattern!r} is not an absolute path")
    real_pattern = str(root.path(pattern))
    if glob.has_magic(pattern):
        matches = sorted(glob.glob(glob.escape(str(root.root)).rstrip("/") + "/"
                                   + os.path.normpath(pattern).lstrip("/")))
    else:
        matches = [real_pattern]
    return [root.host(m) for m in matches if is_dir_nofollow(Path(m))]


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

