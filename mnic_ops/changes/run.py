"""The shared plan/apply command flow: print a plan, apply it unless ``--check``.

:func:`run_plan` is the single place where ``--check`` stops after the plan, where
apply is logged to ``<root>/var/log/mnic-ops.log`` and where exit codes are chosen.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from mnic_ops.changes.model import Plan, apply_plan
from mnic_ops.core.app import AppContext, emit
from mnic_ops.core.errors import EXIT_FAILURE, EXIT_OK, EXIT_PENDING

_STATE_COLOURS = {"ok": "green", "changed": "yellow", "pending": "yellow", "failed": "red",
                  "skipped": "cyan"}


def plan_text(plan: Plan, *, diff: bool, title: str = "", colour: bool = False) -> str:
    lines: list[str] = []
    if title:
        lines.append(title)
    for item in plan.items:
        state = "would change" if item.state == "pending" else item.state
        tag = click.style(f"{state}:", fg=_STATE_COLOURS.get(item.state)) if colour \
            else f"{state}:"
        line = f"{tag} [{item.id}] {item.description}"
        if item.reason:
            line += f" ({item.reason})"
        if item.error:
            line += f": {item.error}"
        lines.append(line)
        if diff and item.diff:
            lines.append(item.diff.rstrip("\n"))
    c = plan.counts()
    recap = (f"ok={c['ok']} changed={c['changed']} failed={c['failed']} "
             f"skipped={c['skipped']}")
    if c["pending"]:
        recap += f" pending={c['pending']}"
    lines.append(recap)
    return "\n".join(lines)


def run_plan(app: AppContext, plan: Plan, *, check: bool, diff: bool, command: str,
             title: str = "", extra: dict[str, Any] | None = None) -> int:
    """Print the plan; unless ``check``, apply it. Returns the exit code:
    check: 3 when changes are pending, else 0; apply: 1 when anything failed, else 0."""
    if not check and plan.pending:
        handler = apply_log_handler(app)
        try:
            apply_plan(plan, app.root, command=command)
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
    counts = plan.counts()
    data = {"check": check, **plan.to_json(texts=diff), **(extra or {}),
            "errors": [{"message": f"{i.id}: {i.error}"} for i in plan.items
                       if i.state == "failed" and i.error]}
    emit(app, data, lambda: plan_text(plan, diff=diff or (check and app.verbose > 0),
                                      title=title, colour=app.color))
    if check:
        return EXIT_PENDING if counts["pending"] else EXIT_OK
    return EXIT_FAILURE if counts["failed"] else EXIT_OK


def apply_log_handler(app: AppContext) -> logging.Handler | None:
    """Log applied changes to ``<root>/var/log/mnic-ops.log`` (best effort)."""
    try:
        path = app.root.path("/var/log/mnic-ops.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        h = logging.FileHandler(path)
    except OSError:
        return None
    h.setLevel(logging.INFO)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    lg = logging.getLogger()
    lg.addHandler(h)
    if lg.getEffectiveLevel() > logging.INFO:
        lg.setLevel(logging.INFO)
    return h
