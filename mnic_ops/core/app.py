"""The app context every command gets, and output for people and for machines.

Every command prints readable text by default and one JSON document with ``--json``:
``{"schema_version": 1, "command", "ok", ...its own keys..., "errors": [...]}``, built
here (:func:`document`) once the exit code is known, and by the CLI for errors, so
that scripts and the Ansible module read one shape whatever happened.
The plan/apply command flow built on it is :mod:`mnic_ops.changes.run`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.core.errors import EXIT_OK, EXIT_PENDING, OpsError
from mnic_ops.core.installfail import InstallFailures

if TYPE_CHECKING:
    from mnic_ops.core.config import Config
    from mnic_ops.core.hostroot import HostRoot


@dataclass
class AppContext:
    """What every command gets: the host root, the config (loaded on first use, so that
    ``--help`` works even with a broken config file), and output switches."""

    root: HostRoot
    config_path: str | None
    json: bool = False
    verbose: int = 0
    color_mode: str = "auto"  # --color: auto | always | never
    # --config-from: read the settings from this file instead of config_path's, which
    # is still the path written into cron jobs and the watcher unit (a preview of a
    # config about to be installed there).
    config_from: str | None = None
    _config: Config | None = field(default=None, repr=False)
    # The command's JSON data, printed by the CLI once its exit code is known.
    result: dict[str, Any] | None = field(default=None, repr=False)
    command: str = ""

    @property
    def color(self) -> bool:
        """Colour on stdout: ``always``/``never`` as asked; ``auto`` only on a terminal,
        and never with ``NO_COLOR`` set (https://no-color.org) or ``TERM=dumb``."""
        return want_color(self.color_mode, sys.stdout)
    # Installs that failed in this run (one user's bad file): reported in the JSON
    # document and by the CLI, which exits 1 for them; see mnic_ops.core.installfail.
    failures: InstallFailures = field(default_factory=InstallFailures)

    @property
    def config(self) -> Config:
        if self._config is None:
            from mnic_ops.core import config

            self._config = config.load(self.root, self.config_from or self.config_path)
        return self._config


def want_color(mode: str, stream: Any) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR", "") != "":
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


SCHEMA_VERSION = 1
_WHERE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+)(?::\d+)?: ")


def emit(app: AppContext, data: dict[str, Any], text: Callable[[], str] | str) -> None:
    """With ``--json`` keep ``data`` for the one document the CLI prints when the
    command returns (see :func:`document`); else print the text now."""
    if app.json:
        app.result = data
        ctx = click.get_current_context(silent=True)
        if ctx is not None:  # "mnic-ops cron install" -> "cron install"
            app.command = " ".join(ctx.command_path.split()[1:])
    else:
        out = text() if callable(text) else text
        if out:
            click.echo(out.rstrip("\n"), color=app.color)


def error_entry(message: str, exc: BaseException | None = None) -> dict[str, Any]:
    """One ``errors`` entry: the message, plus ``file`` and ``line`` where the error
    names them (``file:line: ...``, as every input error does)."""
    out: dict[str, Any] = {"message": message}
    src, line = getattr(exc, "source", None), getattr(exc, "line", None)
    if isinstance(src, str) and isinstance(line, int):
        out.update(file=src, line=line)
        return out
    m = _WHERE.match(message)
    if m:
        out.update(file=m.group("file"), line=int(m.group("line")))
    return out


def document(command: str, exit_code: int, data: dict[str, Any] | None = None,
             errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON contract: schema version, command, ``ok`` (exit 0, or 3 in --check),
    the command's own keys, then every error."""
    data = dict(data or {})
    errs = [*data.pop("errors", []), *(errors or [])]
    own_ok = bool(data.pop("ok", True))  # popped first: the key must not survive below
    ok = exit_code in (EXIT_OK, EXIT_PENDING) and own_ok
    data.pop("command", None)
    data.pop("schema_version", None)
    return {"schema_version": SCHEMA_VERSION, "command": command, "ok": ok, **data,
            "errors": errs}


def print_document(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def error_document(command: str, exit_code: int, exc: BaseException, message: str) -> None:
    """Under ``--json`` a failure is the same document on stdout, ``ok: false``."""
    if isinstance(exc, OpsError):
        lines = exc.message.splitlines() or [""]
        errors = ([error_entry(lines[0], exc)] if len(lines) == 1
                  else [error_entry(line) for line in lines])
    else:
        errors = [error_entry(message, exc)]
    print_document(document(command, exit_code, None, errors))
