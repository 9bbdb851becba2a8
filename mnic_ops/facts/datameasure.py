"""How much a data folder holds, for ``projects``: bytes and files below it, following
no symlink inside it; a folder that is a link is measured at the target ``relocate``
made for the install (:mod:`mnic_ops.facts.linkrecords`), any other link counts as empty."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from mnic_ops.core import beneathfs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot

if TYPE_CHECKING:
    from mnic_ops.facts.projects import DataDir, Project


def root_of(project: Project) -> HostRoot:
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
    root = root_of(project)
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
        root = root_of(project)
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
                fd = beneathfs.open_beneath(project.path, rel, os.O_RDONLY | os.O_DIRECTORY,
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

