"""``/etc/logrotate.d/mnic-ops``: rotation for the logs mnic-ops writes.

``/var/log/mnic-ops.log`` (every applied change) and the cron jobs' log
(``cron.log``, default ``/var/log/mnic-ops-cron.log``) grew forever. mnic-ops opens
them anew for each run (appending), so logrotate may simply rename them: no
``copytruncate``, no ``postrotate`` signal; ``delaycompress`` leaves the newest rotated
file plain for a run that was still writing into it. ``provision`` ships the file
through :func:`mnic_ops.changes.filechange.file_item` (diff, backup, journal, undo) when
logrotate is installed (``/etc/logrotate.d`` exists), else says how to install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnic_ops.capabilities.protocol import ProvisionContext, ProvisionStep
from mnic_ops.changes.model import SKIPPED, Item
from mnic_ops.core import quoting

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

PATH = "/etc/logrotate.d/mnic-ops"
APPLY_LOG = "/var/log/mnic-ops.log"


def logs(app: AppContext) -> list[str]:
    """The log files mnic-ops writes on this host: the apply log and, unless the cron
    jobs log to syslog, their log file."""
    from mnic_ops.capabilities.cron import DEFAULT_LOG

    out = [APPLY_LOG]
    cron_log = str(app.config.get("cron.log") or DEFAULT_LOG)
    if cron_log != "syslog" and cron_log not in out:
        out.append(quoting.logrotate_path(cron_log, "cron.log"))
    return out


def render(paths: list[str]) -> str:
    names = " ".join(quoting.logrotate_path(p) for p in paths)
    return (
        "# Managed by mnic-ops (provision); `mnic-ops undo` removes it.\n"
        "# mnic-ops opens these logs anew (appending) for every run: a rename is all\n"
        "# rotation needs.\n"
        f"{names} {{\n"
        "\tweekly\n"
        "\tmaxsize 50M\n"
        "\trotate 8\n"
        "\tmissingok\n"
        "\tnotifempty\n"
        "\tcompress\n"
        "\tdelaycompress\n"
        "\tsu root root\n"
        "}\n")


def plan(app: AppContext) -> list[Item]:
    """The logrotate file as one item (skipped, with the fix, without logrotate)."""
    from mnic_ops.changes.filechange import file_item

    if not app.root.path("/etc/logrotate.d").is_dir():
        return [Item(id=f"file:{PATH}", description=f"log rotation in {PATH}",
                     state=SKIPPED, reason="logrotate is not installed (no "
                     "/etc/logrotate.d): apt install logrotate, then provision again")]
    return [file_item(app.root, PATH, render(logs(app)), mode=0o644, uid=0, gid=0,
                      description=f"log rotation for {', '.join(logs(app))} in {PATH}")]


PROVISION = ProvisionStep(60, "logrotate", "logrotate")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    return plan(ctx.app)
