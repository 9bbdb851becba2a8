"""The record of the last maintenance pass: ``/var/lib/mnic-ops/clean-last.json``.

A cron run that did nothing prints nothing, so the admin (and ``mnic-ops status``) needs
another place to see when the pass last ran and how it ended. ``clean`` writes one small
JSON document after every real pass (not ``--check``), atomically, root-owned 0644;
readers get None when there is none or it cannot be used.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import Any

from mnic_ops.changes.model import STATE_DIR
from mnic_ops.core import safefs, userjson
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot

log = logging.getLogger(__name__)

NAME = "clean-last.json"
PATH = f"{STATE_DIR}/{NAME}"
SCHEMA_VERSION = 1


def record(root: HostRoot, data: dict[str, Any]) -> str | None:
    """Write the record (best effort: a pass is not failed for its log); the host path
    written, or None."""
    doc = {"schema_version": SCHEMA_VERSION, "written": round(time.time(), 3), **data}
    real = root.path(PATH)
    try:
        real.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        safefs.atomic_write(real, json.dumps(doc, indent=2, default=str) + "\n", mode=0o644)
    except (OSError, OpsError) as exc:
        log.warning("%s: the record of this pass was not written: %s", PATH,
                    getattr(exc, "strerror", None) or exc)
        return None
    return PATH


def last(root: HostRoot) -> dict[str, Any] | None:
    """The last pass's record, or None when absent, not mnic-ops's own (not a root-owned
    regular file that only root can write) or not usable JSON."""
    real = root.path(PATH)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return None
    own = os.geteuid()
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, own) or st.st_mode & 0o022:
        log.warning("%s: not a file only mnic-ops can write; ignored", PATH)
        return None
    try:
        doc = userjson.read_beneath(root.path(STATE_DIR), NAME, PATH)
    except (OSError, OpsError) as exc:
        log.warning("%s: %s", PATH, getattr(exc, "message", None) or exc)
        return None
    return doc if isinstance(doc, dict) else None
