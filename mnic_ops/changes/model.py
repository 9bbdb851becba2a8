"""The change model shared by every capability: plan, apply, journal, undo.

A capability reads facts and returns a :class:`Plan`: an ordered list of
:class:`Item` s. An item is either already ``ok``, ``skipped`` (with the reason), or a
pending change with a description, an optional diff and an ``action``. ``--check`` stops
after printing the plan. :func:`apply_plan` runs the actions in order, stops at the
first failure and records each applied change in the journal under
``<root>/var/lib/mnic-ops/`` as plain data: an undo *kind* plus a record. Undo looks the
kind up in a registry of handlers, so old journals stay readable by new code.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnic_ops.core import installfail, safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

log = logging.getLogger(__name__)

STATE_DIR = "/var/lib/mnic-ops"
JOURNAL = "journal.jsonl"

OK = "ok"
CHANGED = "changed"
PENDING = "pending"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass
class Undo:
    """What an applied change leaves behind so that it can be reverted: a handler kind
    registered with :func:`undo_handler` and the JSON-able data it needs."""

    kind: str
    record: dict[str, Any]


Action = Callable[["ApplyContext"], Undo | None]


@dataclass
class Item:
    """One line of a plan."""

    id: str
    description: str
    state: str = PENDING  # ok | skipped | pending (-> changed | failed once applied)
    reason: str = ""
    diff: str = ""
    action: Action | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # (current bytes or None, wanted bytes) of a file change: lets `verify` name the
    # mismatching values instead of only showing a diff. Serialised only as the
    # bounded ``before``/``after`` texts of ``to_json(texts=True)``.
    payload: tuple[bytes | None, bytes] | None = field(default=None, repr=False)
    # A failure known when planning that concerns this item only (a missing cron daemon,
    # an ambiguous fstab entry): the rest of a plan still applies; the run exits 1.
    contained: bool = field(default=False, repr=False)

    def to_json(self, *, texts: bool = False) -> dict[str, Any]:
        """The item for ``--json``; ``texts`` (``--diff``) adds the whole file before and
        after a file change, for tools that diff it themselves (Ansible's ``--diff``)."""
        out: dict[str, Any] = {"id": self.id, "description": self.description,
                               "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        if self.diff:
            out["diff"] = self.diff
            if texts and self.payload is not None:
                out["before"] = shown_text(self.payload[0])
                out["after"] = shown_text(self.payload[1])
        if self.error:
            out["error"] = self.error
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class Plan:
    """An ordered list of items, produced without side effects."""

    items: list[Item] = field(default_factory=list)

    def add(self, item: Item) -> Item:
        self.items.append(item)
        return item

    def extend(self, other: Plan | Iterable[Item]) -> None:
        self.items.extend(other.items if isinstance(other, Plan) else other)

    @property
    def pending(self) -> list[Item]:
        return [i for i in self.items if i.state == PENDING]

    def counts(self) -> dict[str, int]:
        c = {OK: 0, CHANGED: 0, FAILED: 0, SKIPPED: 0, PENDING: 0}
        for i in self.items:
            c[i.state] = c.get(i.state, 0) + 1
        return c

    def to_json(self, *, texts: bool = False) -> dict[str, Any]:
        return {"items": [i.to_json(texts=texts) for i in self.items],
                "counts": self.counts()}


@dataclass
class ApplyContext:
    """Handed to every action: the host root and a per-entry backup folder."""

    root: HostRoot
    entry_id: str
    command: str

    @property
    def state_dir(self) -> Path:
        return self.root.path(STATE_DIR)

    def backup_dir(self) -> Path:
        d = self.state_dir / "backups" / self.entry_id
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff of two texts, labelled with the host path."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"a{path}" if path.startswith("/") else f"a/{path}",
        tofile=f"b{path}" if path.startswith("/") else f"b/{path}",
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


# Largest file content put whole into ``before``/``after`` (the diff is always there).
TEXT_LIMIT = 64 * 1024


def shown_text(data: bytes | None) -> str:
    """File content for ``before``/``after``: the text itself ("" for an absent file),
    or a one-line note for binary content and content over TEXT_LIMIT."""
    if data is None:
        return ""
    digest = hashlib.sha256(data).hexdigest()[:16]
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return f"(binary content, {len(data)} bytes, sha256 {digest}...)\n"
    if len(data) > TEXT_LIMIT or "\0" in text:
        kind = "binary content" if "\0" in text else "text too large to show"
        return f"({kind}, {len(data)} bytes, sha256 {digest}...)\n"
    return text


# --- journal -----------------------------------------------------------------------

def _journal_path(root: HostRoot) -> Path:
    return root.path(STATE_DIR) / JOURNAL


def _new_entry_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{os.urandom(3).hex()}"


def read_journal(root: HostRoot) -> list[dict[str, Any]]:
    """All journal entries, oldest first, with ``undone`` set on reverted ones."""
    path = _journal_path(root)
    try:
        raw = safefs.read_bytes_nofollow(path).decode()
    except FileNotFoundError:
        return []
    entries: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable journal line skipped", path, n)
            continue
        if rec.get("type") == "undo":
            if rec.get("entry") in entries:
                entries[rec["entry"]]["undone"] = True
            continue
        entries[rec["entry"]] = rec
        order.append(rec["entry"])
    return [entries[e] for e in order]


def _append_journal(root: HostRoot, rec: dict[str, Any]) -> None:
    path = _journal_path(root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = (json.dumps(rec, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- apply ---------------------------------------------------------------------------

def apply_plan(plan: Plan, root: HostRoot, *, command: str = "") -> Plan:
    """Run the pending items in order; stop at the first failure (later items are left
    pending and reported as skipped). Each applied change is journalled for undo."""
    failed = False
    with safefs.locked(root.path(STATE_DIR) / "lock"):
        for item in plan.items:
            if item.state != PENDING:
                continue
            if failed:
                item.state = SKIPPED
                item.reason = "not run: an earlier change failed"
                continue
            entry_id = _new_entry_id()
            ctx = ApplyContext(root=root, entry_id=entry_id, command=command)
            assert item.action is not None
            log.info("apply %s: %s", item.id, item.description)
            try:
                undo = item.action(ctx)
            except OpsError as exc:
                item.state, item.error, failed = FAILED, exc.message, True
                log.error("failed %s: %s", item.id, exc.message)
                continue
            except OSError as exc:
                item.state, failed = FAILED, True
                item.error = f"{exc.filename or item.id}: {exc.strerror or exc}"
                log.error("failed %s: %s", item.id, item.error)
                continue
            item.state = CHANGED
            if undo is not None:
                _append_journal(root, {
                    "entry": entry_id, "change": item.id, "description": item.description,
                    "command": command, "time": time.time(), "kind": undo.kind,
                    "record": undo.record,
                })
    return plan


# --- undo ----------------------------------------------------------------------------

UndoHandler = Callable[[HostRoot, dict[str, Any]], str]
_UNDO: dict[str, UndoHandler] = {}


def undo_handler(kind: str) -> Callable[[UndoHandler], UndoHandler]:
    """Register the function that reverts changes of ``kind``; it returns a message."""
    def deco(fn: UndoHandler) -> UndoHandler:
        _UNDO[kind] = fn
        return fn
    return deco


def undo_entries(root: HostRoot, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Revert journal entries newest first; stop at the first that cannot be reverted.
    The handlers are those registered by the modules imported so far (the ``undo``
    command imports them all: :func:`mnic_ops.capabilities.load_undo_handlers`)."""
    results = []
    with safefs.locked(root.path(STATE_DIR) / "lock"):
        for e in sorted(entries, key=lambda r: r["time"], reverse=True):
            handler = _UNDO.get(e["kind"])
            if handler is None:
                raise OpsError(f"{e['entry']}: no undo handler for kind {e['kind']!r}")
            msg = handler(root, e["record"])
            _append_journal(root, {"type": "undo", "entry": e["entry"], "time": time.time()})
            results.append({"entry": e["entry"], "change": e["change"], "result": msg})
    return results


def failed_item(app: AppContext, install: str, error: BaseException | str, stage: str,
                description: str | None = None) -> Item:
    """Record the failure and return the plan item that shows it (state ``failed``, id
    ``install:<path>``); :func:`mnic_ops.core.installfail.is_failed_install` tells it
    from a failed change."""
    f = app.failures.add(install, error, stage)
    return Item(id=f"{installfail.ITEM_PREFIX}{install}", description=description or
                f"{stage} {install}", state=FAILED,
                error=f"{f.error}; nothing done for this install")
