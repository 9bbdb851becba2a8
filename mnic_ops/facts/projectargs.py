"""PROJECT arguments on the command line: a path (absolute, relative to the current
directory, under ``--root`` mapped to the host path) or an install's folder name, and
the hints given when a name is no install (:func:`mnic_ops.facts.projects.select_projects`
reads them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts.installsearch import is_dir_nofollow, layout_of

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext


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


def enclosing_install(root: HostRoot, host_path: str) -> str | None:
    """The install a path lies inside (for a hint when a subfolder is named)."""
    p = os.path.dirname(host_path)
    while p not in ("/", ""):
        if layout_of(root, p):
            return p
        p = os.path.dirname(p)
    return None


def folder_hint(root: HostRoot, name: str) -> str:
    """For a bare name that is also a folder here: say why it was not taken."""
    try:
        here = host_path_of(root, name)
    except InputError:
        return ""
    if not is_dir_nofollow(root.path(here)):
        return ""
    inside = enclosing_install(root, here)
    return (f"; ./{name} is a folder inside the install {inside}, not an install"
            if inside else f"; ./{name} is a folder but not a framework install")

