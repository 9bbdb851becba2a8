"""``mnic-ops relocate``: move sessions and checkpoints to an SSD behind symlinks.

Replaces the guide's ``mkdir`` + ``ln -sf`` recipe (which, run on an existing folder,
puts the link inside it and moves nothing). Each data folder of an install moves to
``<target>/<install>-<hash>/<kind>`` through :mod:`mnic_ops.engines.treemove` (verified copy,
atomic swap, crash journal), and the old path becomes a symlink. ``--undo`` brings the
data back the same way; ``mnic-ops undo`` reverts a recorded move. The target is
:mod:`mnic_ops.capabilities.relocatetarget`'s, the plans (out, back, recovery)
:mod:`mnic_ops.capabilities.relocateplan`'s, and a move from its record (with the undo
handler) :mod:`mnic_ops.engines.relocation`'s.

Target: ``--to``, else ``ssd_path`` (when set in the config, or when the default's
folder or its parent exists), else the writable local mount on non-rotational disks
with the most free space. A target on rotational disks (unless ``--force``), tmpfs, a
network or pseudo filesystem, or read-only is refused with the reason.
"""

from __future__ import annotations

from typing import Any

import click

from mnic_ops.capabilities.protocol import ProvisionContext, ProvisionStep
from mnic_ops.capabilities.relocateplan import plan_back, plan_out, plan_recovery, relocate_kinds
from mnic_ops.capabilities.relocatetarget import check_target, choose_target
from mnic_ops.changes.model import SKIPPED, Item, Plan
from mnic_ops.changes.run import run_plan
from mnic_ops.core.app import AppContext, emit
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK, InputError
from mnic_ops.engines import movejournal, pendingmoves
from mnic_ops.facts import hostfacts
from mnic_ops.facts.projects import select_projects

JOURNAL_DIR = pendingmoves.JOURNAL_DIR


# --- the command -------------------------------------------------------------------

@click.command("relocate", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Show what would move; change nothing.")
@click.option("--diff", is_flag=True, help="Show each change as a before/after.")
@click.option("--to", "to", metavar="DIR", help="Target folder (default: ssd_path, else "
              "the SSD mount with most free space).")
@click.option("--undo", is_flag=True, help="Bring relocated data back and remove the links.")
@click.option("--force", is_flag=True, help="Accept a rotational or unknown target, move "
              "data already on an SSD, and move data mnic-ops relocated elsewhere to this "
              "target. Never moves a folder the install's owner does not own, nor follows "
              "a link mnic-ops did not make.")
@click.option("--list-pending", is_flag=True, help="List the journals of interrupted moves "
              "(with --json: one document) and what each left on disk; change nothing.")
@click.option("--forget", "forget_id", metavar="ID", help="Discard the journal of an "
              "interrupted move (ID from --list-pending) whose install or target is gone, "
              "once nothing of it is left on disk; recorded for `mnic-ops undo`.")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def relocate_cmd(app: AppContext, check: bool, diff: bool, to: str | None, undo: bool,
                 force: bool, list_pending: bool, forget_id: str | None,
                 names: tuple[str, ...]) -> int:
    """Move sessions and checkpoints to an SSD behind symlinks (verified copy, atomic
    swap, resumable after a crash, recorded for `mnic-ops undo`).

    PROJECT is an install's path or folder name; all found installs when none is given.
    An interrupted move is finished first, for the installs of this run only.
    """
    from mnic_ops.core.configschema import SCHEMA, Key

    jdir = app.root.path(JOURNAL_DIR)
    if list_pending or forget_id:
        if list_pending and forget_id:
            raise InputError("--list-pending and --forget: give one of them")
        if undo or to or force or names:
            raise InputError(f"{'--list-pending' if list_pending else '--forget'} takes "
                             "no PROJECT, --to, --undo or --force")
        if list_pending:
            rows = [pm.to_json() for pm in movejournal.pending_moves(jdir)]
            emit(app, {"command": "relocate", "journal_dir": JOURNAL_DIR,
                       "pending": rows}, lambda: pendingmoves.text(rows, JOURNAL_DIR))
            return EXIT_OK
        assert forget_id is not None
        return run_plan(app, pendingmoves.forget_plan(jdir, forget_id), check=check,
                        diff=diff, command="relocate", title="relocate --forget")
    relocate_kinds(app)  # a config error first, before anything is looked at
    projects = select_projects(app, names)
    recovery, busy = plan_recovery(app, jdir, projects)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    extra: dict[str, Any] = {}
    if undo:
        plan = plan_back(app, projects, force, jdir, busy)
        title = "relocate --undo"
    else:
        default = SCHEMA["ssd_path"]
        assert isinstance(default, Key)
        target = choose_target(app.root, app.config.get("ssd_path"), default.default, to,
                               mounts)
        for pr in projects:  # the most specific complaint first
            for kind in relocate_kinds(app):
                d = pr.data[kind]
                if d.exists and not d.is_link and hostfacts.path_is_within(target.host_path,
                                                                       d.host_path):
                    raise InputError(f"target {target.host_path} is inside the source "
                                     f"{d.host_path}")
        check_target(target, mounts, force)
        extra["target"] = target.to_json()
        plan = plan_out(app, projects, target, force, jdir, mounts, busy)
        title = f"relocate to {target.host_path} ({target.why})"
    full = Plan()
    full.extend(recovery)
    full.extend(plan)
    if not full.items:
        title += "\nno framework installs found (see projects and search_paths in the config)"
    return run_plan(app, full, check=check, diff=diff, command="relocate", title=title,
                    extra=extra)


PROVISION = ProvisionStep(20, "relocate", "relocate")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    """Sessions and checkpoints onto the SSD, when a target that passes relocate's
    checks exists; otherwise a skipped item saying why."""
    from mnic_ops.core.configschema import SCHEMA, Key
    from mnic_ops.core.errors import InputError
    from mnic_ops.facts import hostfacts

    app = ctx.app
    jdir = app.root.path(JOURNAL_DIR)
    recovery, busy = plan_recovery(app, jdir, ctx.projects)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    default = SCHEMA["ssd_path"]
    assert isinstance(default, Key)
    try:
        target = choose_target(app.root, app.config.get("ssd_path"),
                               default.default, None, mounts)
        check_target(target, mounts, False)
    except InputError as exc:
        return [*recovery.items,
                Item(id="relocate", description="move sessions and checkpoints to an SSD",
                     state=SKIPPED, reason=exc.message)]
    if target.mount is not None and target.mount.mount_point != "/":
        ctx.ssd_mount = target.mount.mount_point
    ctx.ssd_target = target.host_path
    plan = plan_out(app, ctx.projects, target, False, jdir, mounts, busy)
    return [*recovery.items, *plan.items]
