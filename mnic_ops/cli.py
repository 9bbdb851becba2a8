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
from mnic_ops.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_USAGE, OpsError
from mnic_ops.output import AppContext

# command name -> "module:attribute" of a click command
LAZY_COMMANDS: dict[str, str] = {
    "facts": "mnic_ops.cmd_host:facts_cmd",
    "detect": "mnic_ops.cmd_host:detect_cmd",
    "undo": "mnic_ops.cmd_host:undo_cmd",
    "config": "mnic_ops.cmd_host:config_cmd",
    "projects": "mnic_ops.projects:projects_cmd",
    "render": "mnic_ops.render:render_cmd",
    "relocate": "mnic_ops.relocate:relocate_cmd",
    "fstab": "mnic_ops.fstab:fstab_cmd",
    "clean": "mnic_ops.clean:clean_cmd",
    "cron": "mnic_ops.cron:cron_cmd",
    "watch": "mnic_ops.watch:watch_cmd",
    "provision": "mnic_ops.provision:provision_cmd",
    "verify": "mnic_ops.provision:verify_cmd",
    "doctor": "mnic_ops.doctor:doctor_cmd",
}


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
        return cmd


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
@click.version_option(__version__, "--version", prog_name="mnic-ops")
@click.pass_context
def cli(ctx: click.Context, root: str, config_path: str | None, config_from: str | None,
        as_json: bool, verbose: int) -> None:
    """Provision and maintain hosts that run the My Name Is Claude framework.

    Every change can be previewed with --check (and --diff), is logged, and is recorded
    for `mnic-ops undo`.
    """
    from mnic_ops.hostroot import HostRoot

    # The terminal gets warnings (-v: info, -vv: debug); the root logger passes
    # everything on so that the apply log file can take INFO whatever the terminal shows.
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose
                     else logging.WARNING)
    handler.setFormatter(logging.Formatter("mnic-ops: %(levelname)s: %(message)s"))
    top = logging.getLogger()
    top.handlers[:] = [handler]
    top.setLevel(logging.DEBUG)
    ctx.obj = AppContext(root=HostRoot.open(root), config_path=config_path, json=as_json,
                         verbose=verbose, config_from=config_from)


def main(argv: list[str] | None = None) -> None:
    """Entry point: turn every error into a message and a documented exit code."""
    debug = bool(os.environ.get("MNIC_OPS_DEBUG"))
    try:
        rv: Any = cli.main(args=argv, prog_name="mnic-ops", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except click.exceptions.Abort:
        click.echo("mnic-ops: aborted", err=True)
        sys.exit(EXIT_FAILURE)
    except OpsError as exc:
        click.echo(f"mnic-ops: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("mnic-ops: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"mnic-ops: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"mnic-ops: internal error: {type(exc).__name__}: {exc} "
                   "(set MNIC_OPS_DEBUG=1 for a traceback)", err=True)
        sys.exit(EXIT_FAILURE)
    sys.exit(rv if isinstance(rv, int) else 0)
