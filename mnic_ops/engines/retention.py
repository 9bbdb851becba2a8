"""The retention the framework declares and never enforces, made real and consistent
with the framework's own indexes.

Per data class of one install (run by ``clean``, usable by ``status``):

- **checkpoint store**: per level ``retention_days`` counted from the checkpoint's own
  recorded timestamp (index, and the metadata file when it says later), at most
  ``retention_count`` per level (newest kept), ``storage.max_total_storage_gb`` oldest
  first (the newest checkpoint always stays). An expired checkpoint goes with its
  metadata file, its ``.dat.gz`` and every mention in ``checkpoint_index.json``
  (``checkpoints``, ``categories``, ``tags``, ``timeline``; mentions of ids the framework
  itself deleted go too). The index is rewritten atomically, keeping its owner and mode,
  in the framework's own format, *before* any file goes; the ids are journalled in
  mnic-ops's root-owned state first, so that after a ``kill -9`` the next run deletes
  exactly the files of ids the index no longer lists.
- **thinking logs** (``logging.retention_days``), by the time in their name
  (``YYYY-MM-DD-HHMMSS-decision.json``, else the file's mtime), with ``index.json``'s
  references to them removed first.
- **cost records** (``costTracking.retentionDays``): ``daily/<date>.json`` by its date.
- **background-task results** (``storage.retention_days``), by their recorded
  ``end_time`` (else ``start_time``), with their entries in ``state.json`` removed first.

A framework process working in the install (its working directory, an open file or a
mapping there) makes the classes with an index skip, with the reason: there must be no
second writer of a file the framework rewrites with a plain ``open('w')``. An index or
history that does not parse is never rewritten and nothing of that class is deleted. A
declared value out of bounds leaves the class untouched (:func:`mnic_ops.facts.policy.declared`).

This module is the entry (:class:`Retention`, its :class:`Report` and :class:`Store`);
the classes are in :mod:`~mnic_ops.engines.checkpointstore` and
:mod:`~mnic_ops.engines.agedclasses`, what they share in :mod:`~mnic_ops.engines.expiry`,
the check for framework processes in :mod:`~mnic_ops.engines.fwholders`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mnic_ops.core import userjson
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import agedclasses, checkpointstore, restore
from mnic_ops.engines.expiry import Gone
from mnic_ops.engines.fwholders import framework_holders
from mnic_ops.facts.policy import Declared

# --- reports -----------------------------------------------------------------------------

@dataclass
class Report:
    """What retention did (or would do) to one class of one install."""

    kind: str
    status: str = "off"  # off | done | skipped | failed
    reason: str = ""
    rules: dict[str, Any] = field(default_factory=dict)
    items: list[Gone] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    recovered: int = 0  # files of an interrupted pass deleted
    # files the framework reads by name that an earlier pass had gzipped, made again
    restored: list[str] = field(default_factory=list)
    # an older NAME.gz beside a current NAME (a collision), kept once as NAME.N.gz
    kept: list[dict[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.items)

    def to_json(self, check: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status}
        if self.reason:
            d["reason"] = self.reason
        d["rules"] = self.rules
        key = "would_expire" if check else "expired"
        d[key] = self.count
        d[key + "_bytes"] = self.bytes
        d["items"] = [g.to_json() for g in self.items]
        if self.index:
            d["index"] = self.index
        if self.recovered:
            d["recovered"] = self.recovered
        if self.restored:
            d["would_restore" if check else "restored"] = self.restored
        if self.kept:
            d["would_keep_archives" if check else "kept_archives"] = self.kept
        d["errors"] = self.errors
        return d


# --- context ---------------------------------------------------------------------------

@dataclass
class Store:
    """The data folder of one class, opened from its trusted place down."""

    kind: str
    fd: int  # the folder (no symlink followed on the way)
    host: str  # its host path (a relocated folder: the link's target)
    real: str  # its path on this machine
    dev: int


class Retention:
    """Retention for one install: ``run(kind, store)`` per class."""

    def __init__(self, root: HostRoot, project: Any, decl: Declared, *, check: bool,
                 now: float | None = None,
                 restore_max_bytes: int = restore.DEFAULT_MAX_MIB << 20) -> None:
        self.root, self.project, self.decl, self.check = root, project, decl, check
        self.now = time.time() if now is None else now
        self._holders: list[str] | None = None
        self.kept: dict[str, list[str]] | None = None  # metadata NAME.N.gz, by NAME
        # what an earlier pass gzipped and the framework reads by name, made again
        # within bounds (mnic_ops.engines.restore), shared by this install's classes
        self.restorer = restore.Restorer(root, check=check, max_bytes=restore_max_bytes,
                                         now=self.now)

    def busy(self, store: Store) -> list[str]:
        """Framework processes working in the install or in the (relocated) folder."""
        owner = self.project.uid
        if self._holders is None:
            self._holders = framework_holders([str(self.project.path)], owner)
        extra = [] if store.real.startswith(str(self.project.path).rstrip("/") + "/") \
            else framework_holders([store.real], owner)
        return self._holders + extra

    def run(self, kind: str, store: Store | None) -> Report:
        rep = Report(kind)
        if kind in self.decl.errors:
            rep.status, rep.reason = "failed", ("left untouched: " + self.decl.errors[kind])
            rep.errors.append(self.decl.errors[kind])
            return rep
        handler = {"checkpoint_store": checkpointstore.expire_checkpoints,
                   "thinking_logs": agedclasses.expire_thinking_logs,
                   "cost_records": agedclasses.expire_cost_records,
                   "task_results": agedclasses.expire_task_results}.get(kind)
        if handler is None:
            return rep
        if store is None:
            rep.reason = "absent"
            return rep
        try:
            handler(self, store, rep)
        except userjson.UserDataError as exc:
            rep.status, rep.reason = "failed", f"{exc.message}; not rewritten, nothing " \
                                               "of it expired"
            rep.errors.append(exc.message)
        except (OSError, OpsError) as exc:
            msg = exc.message if isinstance(exc, OpsError) else (exc.strerror or str(exc))
            rep.status, rep.reason = "failed", str(msg)
            rep.errors.append(str(msg))
        return rep

    def skip_if_busy(self, store: Store, rep: Report, what: str) -> bool:
        busy = self.busy(store)
        if not busy:
            return False
        more = f"; and {len(busy) - 5} more" if len(busy) > 5 else ""
        rep.status = "skipped"
        rep.reason = (f"a framework process works in the install (it rewrites {what} "
                      f"itself): {'; '.join(busy[:5])}{more}; run again when it has stopped")
        return True
