"""The ``mnic-ops`` command line: a thin layer over the capability modules.

Subcommands are imported only when run, so ``--help``, ``--version`` and ``detect``
start fast and never import jinja2, watchdog or python-crontab.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from mnic_ops import __version__
from mnic_ops.core.app import AppContext
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_USAGE, OpsError

# command name -> "module:attribute" of a click command
LAZY_COMMANDS: dict[str, str] = {
    "facts": "mnic_ops.capabilities.host:facts_cmd",
    "detect": "mnic_ops.capabilities.host:detect_cmd",
    "undo": "mnic_ops.capabilities.host:undo_cmd",
    "config": "mnic_ops.capabilities.host:config_cmd",
    "projects": "mnic_ops.capabilities.projects:projects_cmd",
    "render": "mnic_ops.capabilities.render:render_cmd",
    "relocate": "mnic_ops.capabilities.relocate:relocate_cmd",
    "fstab": "mnic_ops.capabilities.fstab:fstab_cmd",
    "clean": "mnic_ops.capabilities.clean:clean_cmd",
    "cron": "mnic_ops.capabilities.cron:cron_cmd",
    "watch": "mnic_ops.capabilities.watch:watch_cmd",
    "provision": "mnic_ops.capabilities.provision:provision_cmd",
    "verify": "mnic_ops.capabilities.provision:verify_cmd",
    "doctor": "mnic_ops.capabilities.doctor:doctor_cmd",
    "status": "mnic_ops.capabilities.status:status_cmd",
    "completion": "mnic_ops.capabilities.completion:completion_cmd",
    "manpage": "mnic_ops.capabilities.completion:manpage_cmd",
}


def _json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        app = ctx.find_object(AppContext)
        if app is not None:
            app.json = True


def with_json_option(cmd: click.Command) -> click.Command:
    """``CMD --json`` works for every command (and subcommand), as ``--json CMD`` does."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            with_json_option(sub)
        return cmd
    if not any("--json" in getattr(p, "opts", ()) for p in cmd.params):
        cmd.params.append(click.Option(
            ["--json"], is_flag=True, expose_value=False, callback=_json_flag,
            help="Print one JSON document (same as the global --json)."))
    return cmd


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(LAZY_COMMANDS) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        ref = LAZY_COMMANDS.get(cmd_name)
        if ref is None:
            return super().get_command(ctx, cmd_name)
        mod_name, _, attr = ref.partition(":")
        cmd = getattr(importlib.import_module(mod_name), attr)
        assert isinstance(cmd, click.Command)
        return with_json_option(cmd)


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "MNIC_OPS",
                    "max_content_width": 100}


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.option("--root", "root", default="/", show_default=True, envvar="MNIC_OPS_ROOT",
              type=click.Path(file_okay=False), metavar="DIR",
              help="Work on the host whose / is DIR (host paths resolve under it).")
@click.option("--config", "config_path", default=None, envvar="MNIC_OPS_CONFIG",
              metavar="FILE", help="Config file [default: <root>/etc/mnic-ops/config.toml].")
@click.option("--config-from", "config_from", default=None, metavar="FILE",
              allow_from_autoenv=False,
              help="Read the settings from FILE instead, as if it were the config file "
                   "(preview a config before it is installed, with --check); what is "
                   "written, such as cron jobs, still names the config file.")
@click.option("--json", "as_json", is_flag=True, envvar="MNIC_OPS_JSON",
              help="Print one JSON document for scripts.")
@click.option("-v", "--verbose", count=True, help="More detail; -vv for debug logging.")
@click.option("--color", "color", type=click.Choice(["auto", "always", "never"]),
              default="auto", show_default=True, envvar="MNIC_OPS_COLOR",
              help="Colour the text output: auto = only on a terminal, and never with "
                   "NO_COLOR set or TERM=dumb.")
@click.version_option(__version__, "--version", prog_name="mnic-ops")
@click.pass_context
def cli(ctx: click.Context, root: str, config_path: str | None, config_from: str | None,
        as_json: bool, verbose: int, color: str) -> None:
    """Provision and maintain hosts that run the My Name Is Claude framework.

    Every change can be previewed with --check (and --diff), is logged, and is recorded
    for `mnic-ops undo`.
    """
    from mnic_ops.core.hostroot import HostRoot

    # The terminal gets warnings (-v: info, -vv: debug); the root logger passes
    # everything on so that the apply log file can take INFO whatever the terminal shows.
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose
                     else logging.WARNING)
    handler.setFormatter(logging.Formatter("mnic-ops: %(levelname)s: %(message)s"))
    top = logging.getLogger()
    top.handlers[:] = [handler]
    top.setLevel(logging.DEBUG)
    # --root is checked before any command runs: an error here is still reported as a
    # JSON document when --json was asked for (see main()).
    ctx.obj = AppContext(root=HostRoot.open(root), config_path=config_path, json=as_json,
                         verbose=verbose, color_mode=color, config_from=config_from)


@cli.result_callback()
@click.pass_context
def _finish(ctx: click.Context, /, rv: Any, **_: Any) -> Any:
    """After every command: installs that failed in this run (one user's bad file) turn
    exit 0 or 3 into 1 and get one ``error:`` line each on stderr; under --json the
    command's data becomes the one document, now that its exit code (and so ``ok``) is
    known, with those installs in ``failed_installs`` and ``errors``."""
    app = ctx.find_object(AppContext)
    if app is None:
        return rv
    code = rv if isinstance(rv, int) else 0
    if app.failures:
        for f in app.failures:
            click.echo(f"mnic-ops: error: {f.text()}", err=True)
        code = rv = app.failures.exit_code(code)
    if app.json and app.result is not None:
        from mnic_ops.core.app import document, error_entry, print_document

        data = dict(app.result)
        if app.failures.active:
            data["failed_installs"] = app.failures.to_json()
        errors = [error_entry(f.error) | {"message": f.text(), "install": f.install}
                  for f in app.failures]
        print_document(document(app.command, code, data, errors))
        app.result = None
    return rv


# Global options that take a value: skipped when finding the command name in argv.
_VALUE_OPTIONS = frozenset({"--root", "--config", "--config-from", "--color"})


def _command_name(argv: list[str]) -> str:
    """``cron install``, ``clean``...: the (sub)command named in ``argv``, for the
    document of an error raised before the command ran."""
    words: list[str] = []
    it = iter(argv)
    for a in it:
        if a in _VALUE_OPTIONS:
            next(it, None)
        elif not a.startswith("-"):
            words.append(a)
            if a != "cron" or len(words) == 2:
                break
    return " ".join(words)


def _json_wanted(argv: list[str]) -> bool:
    if os.environ.get("MNIC_OPS_JSON", "").lower() in ("1", "true", "yes", "on"):
        return True
    args = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in args


def main(argv: list[str] | None = None) -> None:
    """Entry point: turn every error into a message and a documented exit code (with
    --json: the same document as on success, ``ok: false``, on stdout)."""
    debug = bool(os.environ.get("MNIC_OPS_DEBUG"))
    args = sys.argv[1:] if argv is None else argv
    as_json = _json_wanted(args)

    def fail(code: int, exc: BaseException, text: str) -> None:
        if as_json:
            from mnic_ops.core.app import error_document

            error_document(_command_name(args), code, exc, text)
        else:
            first, *more = text.splitlines() or [""]
            click.echo(f"mnic-ops: {first}", err=True)
            for line in more:  # several errors (a config with many): one line each
                click.echo(f"mnic-ops: error: {line}", err=True)
        sys.exit(code)

    try:
        rv: Any = cli.main(args=argv, prog_name="mnic-ops", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if not as_json:
            exc.show()
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
        if as_json:
            message = exc.format_message()
            if isinstance(exc, click.exceptions.NoArgsIsHelpError) and exc.ctx is not None \
                    and isinstance(exc.ctx.command, click.Group):
                # a group with no subcommand: name the choices, not the whole help page
                subs = ", ".join(exc.ctx.command.list_commands(exc.ctx))
                message = f"{exc.ctx.command_path}: a subcommand is needed: one of {subs}"
            fail(code, exc, message)
        sys.exit(code)
    except click.exceptions.Abort as exc:
        fail(EXIT_FAILURE, exc, "aborted")
    except OpsError as exc:
        fail(exc.exit_code, exc, f"error: {exc.message}")
    except KeyboardInterrupt as exc:
        fail(130, exc, "interrupted")
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        fail(EXIT_FAILURE, exc, f"error: {where}{exc.strerror or exc}")
    except Exception as exc:
        if debug:
            raise
        fail(EXIT_FAILURE, exc, f"internal error: {type(exc).__name__}: {exc} "
             "(set MNIC_OPS_DEBUG=1 for a traceback)")
    sys.exit(rv if isinstance(rv, int) else 0)
