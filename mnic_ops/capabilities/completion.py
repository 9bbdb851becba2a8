"""``mnic-ops completion bash|zsh|fish`` and ``mnic-ops manpage``: what an admin's shell
and ``man`` need, generated from the click commands themselves so they never drift."""

from __future__ import annotations

import inspect
import re

import click

from mnic_ops import __version__
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK

PROG = "mnic-ops"
COMPLETE_VAR = "_MNIC_OPS_COMPLETE"


@click.command("completion", epilog=EXIT_CODES_HELP)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion_cmd(ctx: click.Context, shell: str) -> int:
    """Print the shell completion script for SHELL (click's own completion).

    \b
    bash: mnic-ops completion bash > /etc/bash_completion.d/mnic-ops
    zsh:  mnic-ops completion zsh > "${fpath[1]}/_mnic-ops"
    fish: mnic-ops completion fish > ~/.config/fish/completions/mnic-ops.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice above admits only shells click knows
    top = ctx.find_root().command
    _print(ctx, {"shell": shell, "script": cls(top, {}, PROG, COMPLETE_VAR).source()},
           "script")
    return EXIT_OK


def _print(ctx: click.Context, data: dict[str, str], key: str) -> None:
    """The text as it is (no colour, no change of its last newline); with --json the
    one document, the text under ``key``."""
    from mnic_ops.core.app import AppContext, emit

    app = ctx.find_object(AppContext)
    if app is not None and app.json:
        emit(app, data, "")
    else:
        click.echo(data[key], nl=False)


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote on a line."""
    text = text.replace("\\", "\\e")
    return re.sub(r"(?m)^([.'])", r"\\&\1", text)


def _help_text(cmd: click.Command) -> str:
    """The help as roff paragraphs; click's ``\\b`` blocks stay as they are written."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(cmd.help or "")):
        if para.startswith("\b"):
            out += [".PP", ".nf", _roff(para[1:].strip("\n")), ".fi"]
        elif para.strip():
            out += [".PP", _roff(" ".join(para.split()))]
    return "\n".join(out)


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    out: list[str] = []
    for p in cmd.get_params(ctx):
        rec = p.get_help_record(ctx)
        if rec is None:
            continue
        names, help_ = rec
        out += [".TP", f"\\fB{_roff(names)}\\fR", _roff(help_)]
    return out


def render(top: click.Group, ctx: click.Context) -> str:
    """The man page (section 1) of ``top`` and every subcommand, in roff."""
    # No date: the page depends only on the installed version, so reinstalling it (the
    # role does, on every run) changes nothing until mnic-ops itself changes.
    lines = [f'.TH MNIC-OPS 1 "" "mnic-ops {__version__}" "System Administration"',
             ".SH NAME", f"{PROG} \\- {_roff((top.help or '').splitlines()[0])}",
             ".SH SYNOPSIS", f"\\fB{PROG}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
             ".SH DESCRIPTION", _help_text(top), ".SH OPTIONS", *_options(top, ctx),
             ".SH COMMANDS"]

    def walk(group: click.Group, gctx: click.Context, prefix: str) -> None:
        for name in group.list_commands(gctx):
            cmd = group.get_command(gctx, name)
            if cmd is None or cmd.hidden:
                continue
            sub = click.Context(cmd, info_name=name, parent=gctx)
            usage = " ".join(cmd.collect_usage_pieces(sub))
            lines.extend([".SS", f"\\fB{_roff(prefix + name)}\\fR {_roff(usage)}",
                          _help_text(cmd), *_options(cmd, sub)])
            if isinstance(cmd, click.Group):
                walk(cmd, sub, f"{prefix}{name} ")

    walk(top, ctx, "")
    lines += [".SH EXIT STATUS", _roff(EXIT_CODES_HELP.removeprefix("Exit codes: ")),
              ".SH ENVIRONMENT",
              ".TP", "\\fBMNIC_OPS_ROOT\\fR, \\fBMNIC_OPS_CONFIG\\fR, \\fBMNIC_OPS_JSON\\fR",
              "The global options --root, --config and --json.",
              ".TP", "\\fBMNIC_OPS_\\fR\\fIKEY\\fR, \\fBMNIC_OPS_\\fR\\fISECTION\\fR"
              "\\fB__\\fR\\fIKEY\\fR", "Any config key (see mnic-ops config --schema).",
              ".TP", "\\fBNO_COLOR\\fR", "Set: no colour, whatever --color says (auto).",
              ".SH FILES",
              ".TP", "/etc/mnic-ops/config.toml", "The configuration (TOML).",
              ".TP", "/var/lib/mnic-ops/", "Journal of changes (undo), relocate journals, "
              "locks.", ".TP", "/var/log/mnic-ops.log", "Log of applied changes.",
              ".TP", "/var/log/mnic-ops-cron.log", "Output of the cron jobs (cron.log).",
              ".TP", "/etc/logrotate.d/mnic-ops", "Rotation of those logs (provision).",
              ".SH SEE ALSO", "crontab(5), fstab(5), systemd.unit(5), logrotate(8)"]
    return "\n".join(lines) + "\n"


@click.command("manpage", epilog=EXIT_CODES_HELP)
@click.pass_context
def manpage_cmd(ctx: click.Context) -> int:
    """Print the mnic-ops(1) man page (roff), generated from the commands' own help.

    \b
    mnic-ops manpage > /usr/local/share/man/man1/mnic-ops.1 && mandb -q
    """
    root = ctx.find_root()
    assert isinstance(root.command, click.Group)
    _print(ctx, {"manpage": render(root.command, root)}, "manpage")
    return EXIT_OK
