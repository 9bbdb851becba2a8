"""``provision``, ``verify``: every capability for every install, as one plan.

``provision`` detects the class and asks each capability for its part of one plan
(render, relocate, fstab, cron, watcher unit, system files), prints it like Ansible's
recap and applies it. ``verify`` builds the same plan without applying it: every item
that would change is drift, named with what was expected and what is there.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from mnic_ops.capabilities import protocol
from mnic_ops.changes.model import FAILED, OK, PENDING, SKIPPED, Item, Plan
from mnic_ops.changes.run import run_plan
from mnic_ops.core import installfail, userjson
from mnic_ops.core.app import AppContext, emit
from mnic_ops.core.configschema import HOST_CLASSES
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, OpsError

log = logging.getLogger(__name__)


def build(app: AppContext, host_class: str | None, apply_fstab: bool | None,
          *, verifying: bool = False) -> tuple[Plan, protocol.ProvisionContext]:
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
    ctx = protocol.ProvisionContext(app=app, host_class=decision.host_class, source=decision.source,
                  projects=found, apply_fstab=apply_fstab, verifying=verifying)
    plan = Plan()
    for step in protocol.provision_steps():
        name, switch = step.name, step.switch
        if switch and not cfg.get(f"provision.{switch}", True):
            plan.add(Item(id=name, description=name, state=SKIPPED,
                          reason=f"provision.{switch} = false"))
            continue
        try:
            plan.extend(step.plan(ctx))
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
