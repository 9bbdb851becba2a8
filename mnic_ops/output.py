"""Output for people and for machines, and the shared plan/apply command flow.

Every command prints readable text by default and one JSON document with ``--json``.
:func:`run_plan` is the single place where ``--check`` stops after the plan, where
apply is logged to ``<root>/var/log/mnic-ops.log`` and where exit codes are chosen.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.errors import EXIT_FAILURE, EXIT_OK, EXIT_PENDING

if TYPE_CHECKING:
    from mnic_ops.changes import Plan
    from mnic_ops.config import Config
    from mnic_ops.hostroot import HostRoot


@dataclass
class AppContext:
    """What every command gets: the host root, the config (loaded on first use, so that
    ``--help`` works even with a broken config file), and output switches."""

    root: HostRoot
    config_path: str | None
    json: bool = False
    verbose: int = 0
    # --config-from: read the settings from this file instead of config_path's, which
    # is still the path written into cron jobs and the watcher unit (a preview of a
    # config about to be installed there).
    config_from: str | None = None
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            from mnic_ops import config

            self._config = config.load(self.root, self.config_from or self.config_path)
        return self._config


def emit(app: AppContext, data: Any, text: Callable[[], str] | str) -> None:
    """Print ``data`` as JSON with ``--json``, else the text."""
    if app.json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        out = text() if callable(text) else text
        if out:
            click.echo(out.rstrip("\n"))


_STATE_COLOURS = {"ok": "green", "changed": "yellow", "pending": "yellow", "failed": "red",
                  "skipped": "cyan"}


def plan_text(plan: Plan, *, diff: bool, title: str = "") -> str:
    lines: list[str] = []
    if title:
        lines.append(title)
    colour = sys.stdout.isatty()
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
    from mnic_ops.changes import apply_plan

    if not check and plan.pending:
        handler = _apply_log_handler(app)
        try:
            apply_plan(plan, app.root, command=command)
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
    counts = plan.counts()
    data = {"command": command, "check": check, **plan.to_json(texts=diff),
            **(extra or {})}
    emit(app, data, lambda: plan_text(plan, diff=diff or (check and app.verbose > 0),
                                      title=title))
    if check:
        return EXIT_PENDING if counts["pending"] else EXIT_OK
    return EXIT_FAILURE if counts["failed"] else EXIT_OK


def _apply_log_handler(app: AppContext) -> logging.Handler | None:
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
