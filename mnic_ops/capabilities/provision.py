"""``provision``, ``verify``: every capability for every install, as one plan.

``provision`` detects the class and asks each capability for its part of one plan
(render, relocate, fstab, cron, watcher unit, system files), prints it like Ansible's
recap and applies it. ``verify`` builds the same plan without applying it: every item
that would change is drift, named with what was expected and what is there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from mnic_ops.changes.model import FAILED, OK, PENDING, SKIPPED, Item, Plan
from mnic_ops.changes.run import run_plan
from mnic_ops.core import installfail, userjson
from mnic_ops.core.app import AppContext, emit
from mnic_ops.core.config import HOST_CLASSES
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, OpsError

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every step gets: the decision, the installs, the switches."""

    app: AppContext
    host_class: str
    source: str
    projects: list[Any]
    apply_fstab: bool
    verifying: bool = False
    notes: list[str] = field(default_factory=list)
    ssd_mount: str | None = None  # mount point of the relocation target, once planned
    ssd_target: str | None = None  # the relocation target folder, once planned


Step = Callable[[Context], list[Item]]


def _step_render(ctx: Context) -> list[Item]:
    from mnic_ops.capabilities import render

    plan, _rctx, _selected = render.build(ctx.app, ctx.host_class, ())
    return plan.items


def _step_relocate(ctx: Context) -> list[Item]:
    """Sessions and checkpoints onto the SSD, when a target that passes relocate's
    checks exists; otherwise a skipped item saying why."""
    from mnic_ops.capabilities import relocate
    from mnic_ops.core.config import SCHEMA, Key
    from mnic_ops.core.errors import InputError
    from mnic_ops.facts import hostfacts

    app = ctx.app
    jdir = app.root.path(relocate.JOURNAL_DIR)
    recovery, busy = relocate.plan_recovery(app, jdir, ctx.projects)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    default = SCHEMA["ssd_path"]
    assert isinstance(default, Key)
    try:
        target = relocate.choose_target(app.root, app.config.get("ssd_path"),
                                        default.default, None, mounts)
        relocate.check_target(target, mounts, False)
    except InputError as exc:
        return [*recovery.items,
                Item(id="relocate", description="move sessions and checkpoints to an SSD",
                     state=SKIPPED, reason=exc.message)]
    if target.mount is not None and target.mount.mount_point != "/":
        ctx.ssd_mount = target.mount.mount_point
    ctx.ssd_target = target.host_path
    plan = relocate.plan_out(app, ctx.projects, target, False, jdir, mounts, busy)
    return [*recovery.items, *plan.items]


def _no_installs(ctx: Context, name: str, what: str) -> list[Item]:
    """Cron jobs and a watcher with nothing to work on: not planned, and said."""
    if ctx.projects or ctx.app.failures:
        return []
    return [Item(id=name, description=what, state=SKIPPED,
                 reason="no framework install found: nothing for it to do (provision "
                        "again once there is one; see projects and search_paths)")]


def _missing(ctx: Context, name: str, what: str, needs: str, fix: str,
             evidence: str) -> list[Item]:
    """A service the step relies on is not on the host: a failed item naming the fix
    (the rest of the plan still applies, exit 1), or skipped when
    ``provision.missing_<needs>`` says so."""
    key = f"provision.missing_{needs}"
    why = f"{evidence}, so it would never run"
    if ctx.app.config.get(key, "fail") == "skip":
        return [Item(id=name, description=what, state=SKIPPED,
                     reason=f"{why}; {key} = \"skip\" (fix: {fix})")]
    return [Item(id=name, description=what, state=FAILED, contained=True,
                 error=f"{why}; fix: {fix} (or set {key} = \"skip\" or "
                       f"provision.{name} = false)")]


def _step_cron(ctx: Context) -> list[Item]:
    from mnic_ops.capabilities import cron
    from mnic_ops.facts import hostservices

    what = f"cleanup jobs in {cron.SYSTEM_FILE}"
    skip = _no_installs(ctx, "cron", what)
    if skip:
        return skip
    daemon = hostservices.cron_daemon(ctx.app.root)
    if not daemon.present:
        return _missing(ctx, "cron", what, "cron",
                        "apt install cron (or your distribution's cronie)",
                        f"no cron daemon on this host ({daemon.evidence})")
    return cron.plan_install(ctx.app, cron.Target(True, "root")).items


def _step_watcher(ctx: Context) -> list[Item]:
    from mnic_ops.capabilities.watch import UNIT_NAME, plan_unit
    from mnic_ops.facts import hostservices

    what = f"the watcher unit {UNIT_NAME}"
    skip = _no_installs(ctx, "watcher", what)
    if skip:
        return skip
    init = hostservices.systemd(ctx.app.root)
    if not init.present:
        return _missing(ctx, "watcher", what, "systemd",
                        "boot the host with systemd (apt install systemd-sysv), or run "
                        "`mnic-ops watch` under the host's own supervisor",
                        f"systemd is not this host's init ({init.evidence})")
    return plan_unit(ctx.app, ctx.projects,
                     extra_paths=[ctx.ssd_target] if ctx.ssd_target else [])


def _step_logrotate(ctx: Context) -> list[Item]:
    from mnic_ops.capabilities import logrotate

    return logrotate.plan(ctx.app)


def _step_fstab(ctx: Context) -> list[Item]:
    """noatime for the filesystems holding framework data: applied (and remounted) only
    with --apply-fstab / provision.apply_fstab, else shown as a proposal."""
    from mnic_ops.capabilities import fstab

    root = ctx.app.root
    if not root.path("/etc/fstab").exists():
        return [Item(id="fstab", description="noatime in /etc/fstab", state=SKIPPED,
                     reason="no /etc/fstab on this host")]
    # The SSD the data is about to move to holds framework data once this plan is
    # applied: name it now so that one run suffices.
    mps = [ctx.ssd_mount] if ctx.ssd_mount else []
    plan, _title, _extra = fstab.build(ctx.app, also=mps,
                                       apply_=ctx.apply_fstab and not ctx.verifying,
                                       remount=ctx.apply_fstab)
    if not ctx.apply_fstab:
        for it in plan.items:
            if it.state == PENDING:
                it.state, it.action = SKIPPED, None
                it.reason = "proposal only: apply with --apply-fstab (diff with --diff)"
    return plan.items


# (name, provision.<switch> that turns it off, step), in the order they apply.
STEPS: list[tuple[str, str, Step]] = [
    ("render", "", _step_render),
    ("relocate", "relocate", _step_relocate),
    ("fstab", "", _step_fstab),
    ("cron", "cron", _step_cron),
    ("watcher", "watcher", _step_watcher),
    ("logrotate", "logrotate", _step_logrotate),
]


def build(app: AppContext, host_class: str | None, apply_fstab: bool | None,
          *, verifying: bool = False) -> tuple[Plan, Context]:
    """One plan from every enabled step. A step that cannot plan (bad input in one
    install, say) becomes a failed item; nothing is applied when any step failed."""
    from mnic_ops.facts import projects
    from mnic_ops.facts.hostclass import detect

    cfg = app.config
    decision, _facts = detect(app, host_class)
    # An install whose own files cannot be read is reported (app.failures), not worked
    # on; the others are provisioned.
    found = installfail.usable(app, projects.find_projects(app.root, cfg))
    if apply_fstab is None:
        apply_fstab = bool(cfg.get("provision.apply_fstab", False))
    ctx = Context(app=app, host_class=decision.host_class, source=decision.source,
                  projects=found, apply_fstab=apply_fstab, verifying=verifying)
    plan = Plan()
    for name, switch, step in STEPS:
        if switch and not cfg.get(f"provision.{switch}", True):
            plan.add(Item(id=name, description=name, state=SKIPPED,
                          reason=f"provision.{switch} = false"))
            continue
        try:
            plan.extend(step(ctx))
        except OpsError as exc:
            plan.add(Item(id=name, description=f"plan {name}", state=FAILED,
                          error=exc.message))
    return plan, ctx


@click.command("provision", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Print the plan; change nothing.")
@click.option("--diff", is_flag=True, help="Show the diff of every change.")
@click.option("--apply-fstab", is_flag=True, default=None,
              help="Write noatime into fstab and remount (default: propose only).")
@click.option("--host-class", type=click.Choice(HOST_CLASSES), default=None,
              help="Override the detected host class.")
@click.pass_obj
def provision_cmd(app: AppContext, check: bool, diff: bool, apply_fstab: bool | None,
                  host_class: str | None) -> int:
    """Detect the class and bring every install and the host to it, in one plan."""
    plan, ctx = build(app, host_class, apply_fstab)
    # A step that could not be planned stops everything; a failed install (one user's
    # bad file) fails that install only: its item is failed, the others go on.
    if any(i.state == FAILED and not installfail.is_failed_install(i) and not i.contained
           for i in plan.items):
        for i in plan.items:
            if i.state == PENDING:
                i.state, i.reason = SKIPPED, "not run: planning failed elsewhere"
        check = True  # nothing is applied when any part could not be planned
        rc_fail = True
    else:
        rc_fail = False
    title = (f"host class {ctx.host_class} ({ctx.source}); "
             f"{len(ctx.projects)} framework install(s)")
    extra = {"class": ctx.host_class, "source": ctx.source,
             "projects": [p.host_path for p in ctx.projects]}
    rc = run_plan(app, plan, check=check, diff=diff, command="provision", title=title,
                  extra=extra)
    # a failure that concerns one item only (no cron daemon, an ambiguous fstab entry):
    # the rest was applied, and the run still fails
    if any(i.state == FAILED and i.contained for i in plan.items):
        rc_fail = True
    return EXIT_FAILURE if rc_fail else rc


# --- verify ------------------------------------------------------------------------

def _leaves(v: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(v, dict):
        out: dict[str, Any] = {}
        for k, x in v.items():
            out.update(_leaves(x, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: v}


def mismatches(item: Item) -> list[dict[str, Any]]:
    """Expected/actual pairs for a pending item: per JSON key for JSON files, the
    item's own data where a capability gives it, else the file as a whole."""
    if item.data.get("expected") is not None or item.data.get("actual") is not None:
        return [{"what": item.description, "expected": item.data.get("expected"),
                 "actual": item.data.get("actual")}]
    if item.payload is not None:
        old, new = item.payload
        if old is None:
            return [{"what": item.data.get("path", item.id), "expected": "present",
                     "actual": "missing"}]
        try:
            a = _leaves(userjson.parse(old, item.data.get("path", item.id)))
            b = _leaves(json.loads(new))
        except (ValueError, userjson.UserDataError):
            return [{"what": item.data.get("path", item.id),
                     "expected": "content as rendered", "actual": "differs (see diff)"}]
        out = []
        for k in b:
            if a.get(k, "<missing>") != b[k]:
                out.append({"what": f"{item.data.get('path', item.id)}: {k}",
                            "expected": b[k], "actual": a.get(k, "<missing>")})
        if out:
            return out
        return [{"what": item.data.get("path", item.id), "expected": "as rendered",
                 "actual": "formatting or mode/owner differs"}]
    return [{"what": item.description, "expected": "as provisioned", "actual": "differs"}]


def verify_report(app: AppContext, host_class: str | None = None) -> dict[str, Any]:
    """What ``verify`` reports, for ``verify`` and ``status``: provision's plan built
    without applying it, each item ``ok``, ``skipped``, ``failed`` or ``drift`` (with
    expected and actual), ``drift`` the number of items that are not as provisioned
    (drift or failed), and ``counts`` per state."""
    plan, ctx = build(app, host_class, None, verifying=True)
    rows: list[dict[str, Any]] = []
    counts = {"ok": 0, "drift": 0, "failed": 0, "skipped": 0}
    for item in plan.items:
        row: dict[str, Any] = {"id": item.id, "description": item.description}
        if item.state == OK:
            row["state"] = "ok"
        elif item.state == SKIPPED:
            row["state"], row["reason"] = "skipped", item.reason
        elif item.state == FAILED:
            row["state"], row["error"] = "failed", item.error
        else:
            row["state"] = "drift"
            row["mismatches"] = mismatches(item)
        counts[row["state"]] += 1
        rows.append(row)
    return {"class": ctx.host_class, "source": ctx.source, "check": True,
            "drift": counts["drift"] + counts["failed"], "items": rows, "counts": counts}


@click.command("verify", epilog=EXIT_CODES_HELP)
@click.option("--host-class", type=click.Choice(HOST_CLASSES), default=None,
              help="Verify against this class instead of the detected one.")
@click.pass_obj
def verify_cmd(app: AppContext, host_class: str | None) -> int:
    """Check that the host still matches what provision set; exit 1 on drift."""
    data = verify_report(app, host_class)
    drift, rows = data["drift"], data["items"]

    def text() -> str:
        lines = [f"host class {data['class']} ({data['source']})"]
        for r in rows:
            extra = f" ({r['reason']})" if r.get("reason") else ""
            extra += f": {r['error']}" if r.get("error") else ""
            lines.append(f"{r['state']}: [{r['id']}] {r['description']}{extra}")
            for m in r.get("mismatches", []):
                lines.append(f"    {m['what']}: expected {m['expected']!r}, "
                             f"actual {m['actual']!r}")
        lines.append(f"{drift} item(s) drifted" if drift else "no drift")
        return "\n".join(lines)

    emit(app, data, text)
    return EXIT_FAILURE if drift else EXIT_OK
