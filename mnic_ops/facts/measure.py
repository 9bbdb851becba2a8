"""doctor's measurements of an install, taken in a fresh interpreter as the install's
owner: :mod:`mnic_ops.facts._probe` (the measuring child) run with ``-I``, the times taken
inside the child; the requests for agent activation and context loading, and how the
child reaches a data folder (below the install, or a relocated one from its recorded
base, following no link)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnic_ops.core import execute, userjson
from mnic_ops.core.errors import OpsError
from mnic_ops.facts import linkrecords
from mnic_ops.facts.projects import Project

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot


# --- the measurement child ------------------------------------------------------------

_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from mnic_ops.facts._probe import main; sys.exit(main(sys.argv))")


def run_probe(req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :mod:`mnic_ops.facts._probe` in a fresh interpreter (``-I``: no PYTHON* variables,
    no user site, no cwd on the path) and return its answer; failures become
    ``{"fatal": reason}``."""
    pkg_parent = str(Path(__file__).resolve().parents[2])  # holds mnic_ops/
    argv = [sys.executable, "-I", "-c", _BOOT, pkg_parent, json.dumps(req)]
    try:
        proc = execute.run(argv, check=False, timeout=timeout, cwd="/")
    except OpsError as exc:
        return {"fatal": exc.message, "seconds": None}
    try:
        # bounded like any user file: the child ran as the install's owner
        res = userjson.parse(proc.stdout, "measurement output")
        if not isinstance(res, dict):
            raise ValueError("not an object")
    except (ValueError, userjson.UserDataError):
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        return {"fatal": f"measurement process exited {proc.returncode}"
                         + (f": {tail}" if tail else ""), "seconds": None}
    return res


def _owner(root: HostRoot, p: Project) -> dict[str, Any]:
    groups: list[int] = []
    if root.live and p.uid != 0 and p.user != str(p.uid):
        try:
            groups = os.getgrouplist(p.user, p.gid)
        except OSError:
            groups = []
    return {"uid": p.uid, "gid": p.gid, "groups": groups}


def _dir_spec(root: HostRoot, p: Project, kind: str) -> dict[str, Any] | None:
    """How the measurement child reaches a data folder: below the install root, or for
    data relocated by mnic-ops from the recorded base, every component below it without
    following links. None for a link mnic-ops did not make (never followed)."""
    loc = linkrecords.locate(root, p, kind)
    label = os.path.relpath(loc.host_path, p.host_path)
    if loc.state == linkrecords.REFUSED or loc.prefix is None:
        return None
    if loc.state == linkrecords.RELOCATED or (
            loc.state == linkrecords.ABSENT and loc.record is not None):
        return {"abs": str(root.path(loc.prefix)), "below": "/".join(loc.parts),
                "label": label, "owner": loc.owner}
    return {"rel": label, "label": label}


def probe_agents(app: AppContext, p: Project, limit: int, timeout: float
                 ) -> dict[str, Any]:
    req = {"mode": "agents", "base": str(p.path), "label": p.host_path,
           "ident": list(p.ident) if p.ident else None,
           "rel": ".claude/agents", "big": limit, **_owner(app.root, p)}
    return run_probe(req, timeout)


def probe_context(app: AppContext, p: Project, newest: int, timeout: float
                  ) -> dict[str, Any]:
    req: dict[str, Any] = {"mode": "context", "base": str(p.path), "label": p.host_path,
                           "ident": list(p.ident) if p.ident else None,
                           "newest": newest, **_owner(app.root, p)}
    for kind in ("sessions", "checkpoint_store"):
        if p.data[kind].exists:
            spec = _dir_spec(app.root, p, kind)
            if spec is not None:
                req[kind] = spec
    return run_probe(req, timeout)
