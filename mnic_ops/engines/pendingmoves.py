"""Journals of interrupted moves, beyond finishing them: which install a journal
belongs to, whether it is in this run, listing (``relocate --list-pending``) and
discarding one that can no longer be finished (``relocate --forget ID``, undoable).

The journals themselves, and what each left on disk, are :mod:`mnic_ops.engines.movejournal`'s;
finishing them is ``relocate``'s (``plan_recovery``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnic_ops.changes.model import ApplyContext, Item, Plan, Undo, undo_handler
from mnic_ops.core.errors import InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import movejournal
from mnic_ops.facts import hostfacts

if TYPE_CHECKING:
    from mnic_ops.facts.projects import Project

JOURNAL_DIR = "/var/lib/mnic-ops/relocate"


def journal_host(pm: movejournal.PendingMove) -> tuple[str, str | None]:
    """(host path of the moved folder, host path of its install or None) of a journal."""
    assert pm.data is not None
    meta = pm.data.get("meta") or {}
    host = meta.get("public") or str(pm.public.path)
    project = meta.get("project")
    return str(host), (str(project) if isinstance(project, str) else None)


def in_run(pm: movejournal.PendingMove, projects: list[Project]) -> bool:
    """Does the journal belong to one of this run's installs (recovery runs only then)?"""
    host, project = journal_host(pm)
    if project is not None:
        return any(p.host_path == project for p in projects)
    return any(hostfacts.path_is_within(host, p.host_path) for p in projects)


NOTHING_TO_FINISH = {
    "install_missing": "the folder that held {host} no longer exists",
    "target_missing": "the target folder {dest} no longer exists",
}


def text(rows: list[dict[str, Any]], jdir_host: str) -> str:
    """``relocate --list-pending`` for people: each journal, its state, what it left on
    disk and the command that clears it."""
    if not rows:
        return f"no interrupted moves (no journals in {jdir_host})"
    lines = [f"interrupted moves ({len(rows)}, journals in {jdir_host}):"]
    for r in rows:
        if r["status"] == "unreadable":
            lines.append(f"  {r['id']}: unreadable journal {r['journal']}: {r['error']}")
            continue
        lines.append(f"  {r['id']}: {r['op']} of {r.get('public_host') or r['public']} "
                     f"(to {r['dest']}), stopped in phase {r['phase']}")
        if r.get("project"):
            lines.append(f"      install: {r['project']}")
        lines.append(f"      status: {r['status'].replace('_', ' ')}")
        left = r.get("leftovers") or []
        lines.append("      left on disk: " + (", ".join(left) if left else "nothing"))
        if r["status"] == "recoverable":
            lines.append(f"      next: mnic-ops relocate {r.get('project') or 'INSTALL'} "
                         "finishes it")
        elif not left:
            lines.append(f"      next: mnic-ops relocate --forget {r['id']} discards it")
        else:
            lines.append("      next: move what is left on disk away, then mnic-ops "
                         f"relocate --forget {r['id']}")
    return "\n".join(lines)


def forget_plan(jdir: Path, move_id: str) -> Plan:
    """One item: discard a journal whose move left nothing on disk (undoable)."""
    plan = Plan()
    match = [pm for pm in movejournal.pending_moves(jdir)
             if move_id in (pm.id, f"{pm.id}.json")
             or (pm.data is not None and move_id in journal_host(pm)[:1])]
    if not match:
        raise InputError(f"{move_id}: no such interrupted move (relocate --list-pending "
                         "lists them)")
    pm = match[0]
    left = pm.leftovers()
    desc = f"forget the interrupted move {pm.id}" + (
        f" of {journal_host(pm)[0]}" if pm.data is not None else " (unreadable journal)")
    if left:
        raise OpsError(f"{pm.id}: not forgotten: still on disk: {', '.join(left)}; finish "
                       "the move (mnic-ops relocate INSTALL) or move these away first")
    item = Item(f"forget:{pm.id}", desc, diff=f"--- {pm.path}\n+++ (removed)\n",
                data={"id": pm.id, "journal": str(pm.path), "status": pm.status()})

    def action(ctx: ApplyContext) -> Undo | None:
        data = movejournal.forget(jdir, pm.id)
        return Undo("relocate-forget", {"id": pm.id, "journal": data})

    item.action = action
    plan.add(item)
    return plan


@undo_handler("relocate-forget")
def _undo_forget(root: HostRoot, rec: dict[str, Any]) -> str:
    """Put a forgotten journal back: the next relocate of its install finishes it."""
    movejournal.restore_journal(root.path(JOURNAL_DIR), rec["id"], rec["journal"])
    return f"journal {rec['id']} restored"
