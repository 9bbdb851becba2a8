"""noatime for the filesystems that hold framework data: a diff of /etc/fstab, an
atomic verified apply, and a live remount (``mnic-ops fstab`` and its provision step).

A wrong fstab can keep a server from booting, so this command changes as little as it
can: the options field of the one entry that governs a mount point, nothing else (not
even the blanks around it). The file format is :mod:`mnic_ops.facts.fstabfile`'s, which
entry changes and why :mod:`mnic_ops.capabilities.fstabplan`'s, the write and the
remount :mod:`mnic_ops.capabilities.fstabapply`'s. The candidate file is checked with
``findmnt --verify`` before it replaces the original and may not add an error the
current file does not have.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities.fstabapply import (
    Target,
    fstab_write_item,
    locate,
    mounted_over,
    remount_item,
    remove_stale_temporaries,
)
from mnic_ops.capabilities.fstabplan import Decision, Resolver, data_mount_points, plan_noatime
from mnic_ops.capabilities.protocol import ProvisionContext, ProvisionStep
from mnic_ops.changes.model import FAILED, OK, PENDING, SKIPPED, Item, Plan
from mnic_ops.core import execute, safefs
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, InputError
from mnic_ops.facts import hostfacts
from mnic_ops.facts.fstabfile import (
    decode,
    encode,
    findmnt_verify,
    new_errors,
    norm_target,
    parse,
    quoted,
    shown,
    verify_text,
)

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

# --- the command -------------------------------------------------------------------------

def report_text(target: Target, decisions: Sequence[Decision], extra: Sequence[str]) -> str:
    lines = [f"fstab: {target.display}" + (f" (-> {target.host})" if target.host
                                            and target.host != target.display else "")]
    for d in decisions:
        data = [h for h in d.holds if not h.startswith("(")]
        asked = [h[1:-1] for h in d.holds if h.startswith("(")]
        lines.append(f"{d.mount_point}:" + (f" holds {', '.join(data)}" if data else "")
                     + (f" (asked for by {', '.join(asked)})" if asked else ""))
        if d.line is not None:
            lines.append(f"  line {d.line}: {d.entry}")
        if d.live is not None:
            lines.append(f"  live: {d.live['source']} {d.live['fstype']} {d.live['options']}")
        lines.extend(f"  note: {n}" for n in d.notes)
        tag = {"change": "eligible", "ok": "ok", "skip": "not eligible"}[d.state]
        lines.append(f"  {tag}: {d.reason}")
    lines.extend(extra)
    return shown("\n".join(lines))


@click.command("fstab", epilog=EXIT_CODES_HELP)
@click.option("--mount-point", "mount_points", multiple=True, metavar="MP",
              help="Work on this mount point (repeatable); the ones given are the whole "
                   "set. Default: the mount points that hold framework data, plus "
                   "fstab.mount_points from the config.")
@click.option("--fstab", "fstab_file", metavar="FILE", default=None,
              help="Work on FILE instead of <root>/etc/fstab.")
@click.option("--apply", "apply_", is_flag=True,
              help="Write the change (verified with findmnt --verify, backed up, atomic, "
                   "recorded for `mnic-ops undo`). Without it: propose only.")
@click.option("--remount", is_flag=True,
              help="Remount each changed mount point with noatime and confirm it is live.")
@click.option("--check", is_flag=True,
              help="Propose only (the default without --apply); exit 3 when a change is "
                   "pending.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def fstab_cmd(app: AppContext, mount_points: tuple[str, ...], fstab_file: str | None,
              apply_: bool, remount: bool, check: bool, as_json: bool) -> int:
    """Propose noatime in /etc/fstab for the filesystems that hold framework data.

    For each mount point it prints the governing fstab entry and why it is or is not
    eligible, then a unified diff of the whole file. Only the options field of that
    entry changes: noatime is added, relatime/strictatime/atime are removed. Exit 3
    when a change is proposed and not applied, 0 when nothing would change, 1 when a
    mount point of the set has several entries (ambiguous: nothing guessed).
    """
    from mnic_ops.changes.run import run_plan

    if as_json:
        app.json = True
    if check and apply_:
        raise InputError("--check and --apply exclude each other")
    plan, title, extra = build(app, mount_points, fstab_file, apply_=apply_,
                               remount=remount)
    code = run_plan(app, plan, check=not apply_, diff=True, command="fstab",
                    title=title, extra=extra)
    if any(i.state == FAILED for i in plan.items):
        return EXIT_FAILURE
    return code


def build(app: AppContext, mount_points: Sequence[str] = (), fstab_file: str | None = None,
          *, apply_: bool = False, remount: bool = False, also: Sequence[str] = ()
          ) -> tuple[Plan, str, dict[str, Any]]:
    """The fstab plan (the file change, remounts), the report text and the JSON extras.
    ``mount_points`` (``--mount-point``) is the whole set when given; ``also`` adds to
    the automatic one (provision: the SSD the data is about to move to). Pure apart
    from reading, and removing a killed run's temporaries when ``apply_``."""
    cfg = app.config
    nodiratime = bool(cfg.get("fstab.nodiratime", False))
    include_network = bool(cfg.get("fstab.include_network", False))
    for mp in mount_points:
        if not mp.startswith("/"):
            raise InputError(f"--mount-point {shown(mp)}: not an absolute path")
    target = locate(app.root, fstab_file)
    stale = remove_stale_temporaries(target.real) if apply_ else []
    old = safefs.read_bytes_nofollow(target.real)
    fstab = parse(decode(old), target.display)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())

    # --mount-point names the whole set; without it: the mount points that hold
    # framework data, plus fstab.mount_points
    data = data_mount_points(app.root, cfg, mounts, fstab)
    wanted: dict[str, list[str]] = {}
    if mount_points:
        for mp in mount_points:
            holds = wanted.setdefault(norm_target(mp), [])
            if not holds:
                holds.extend(data.get(norm_target(mp), []))
            holds.append("(--mount-point)")
    else:
        for mp, holds in data.items():
            wanted.setdefault(mp, []).extend(holds)
        for mp in cfg.get("fstab.mount_points") or []:
            if not mp.startswith("/"):
                raise InputError(f"fstab.mount_points: {quoted(mp)} is not an absolute "
                                 "path")
            wanted.setdefault(norm_target(mp), []).append("(fstab.mount_points)")
        for mp in also:
            holds = wanted.setdefault(norm_target(mp), [])
            if not holds:
                holds.append("(relocation target)")

    decisions, new_fstab = plan_noatime(fstab, wanted, mounts, Resolver(app.root),
                                        nodiratime=nodiratime,
                                        include_network=include_network)
    new = encode(new_fstab.render())
    plan = Plan()
    extra = [f"removed {n}: a temporary file an interrupted run left behind" for n in stale]
    verify: dict[str, Any] = {}
    if not wanted:
        extra.append("no framework data found and no --mount-point given: nothing to do")
    changed = [d.mount_point for d in decisions if d.state == "change"]
    if new != old:
        item = plan.add(fstab_write_item(target, old, new, changed))
        over = mounted_over(target, app.root, mounts)
        if over:
            item.state, item.action = FAILED, None
            item.error = (f"a file is mounted over {target.display} (from {over}): it cannot "
                          "be replaced atomically; edit the file behind it instead")
        elif execute.which("findmnt"):
            cur, cand = findmnt_verify(str(target.real)), verify_text(decode(new))
            added = new_errors(cur, cand)
            verify = {"current": cur.to_json(), "candidate": cand.to_json(),
                      "new_errors": [shown(e) for e in added]}
            if added:
                item.state, item.action = FAILED, None
                item.error = ("findmnt --verify finds new errors in the candidate: "
                              + shown("; ".join(added)))
            else:
                extra.append(f"findmnt --verify: the candidate adds no error "
                             f"({sum(cur.errors.values())} already in the current file)")
        else:
            extra.append("findmnt not found: the candidate is not verified (--apply refuses)")
    else:
        plan.add(Item(f"fstab:{target.display}", f"{target.display}", state=OK,
                      reason="nothing to change"))
    # Two entries for one mount point that holds data or was asked for: which one
    # governs it is not guessed, and that is a failure, not a quiet "not eligible".
    for d in decisions:
        if d.ambiguous:
            plan.add(Item(f"fstab:{shown(d.mount_point)}",
                          f"noatime for {shown(d.mount_point)}", state=FAILED,
                          error=f"{shown(d.reason)}; keep one entry for it in "
                                f"{target.display}", contained=True))
    # An explicit set is all or nothing: the admin asked for these mount points, and
    # writing the others while one of them cannot be done would be a surprise.
    ambiguous = [shown(d.mount_point) for d in decisions if d.ambiguous]
    if mount_points and ambiguous:
        for item in plan.items[:1]:  # the file's change comes first
            if item.action is not None:
                item.state, item.action = SKIPPED, None
                item.reason = (f"not written: {', '.join(ambiguous)} asked for with "
                               "--mount-point but ambiguous")
    if remount:
        for d in decisions:
            if d.state == "change" or (d.state == "ok" and d.live_noatime is False):
                plan.add(remount_item(app.root, d, nodiratime=nodiratime))
    if changed and app.root.live and os.path.isdir("/run/systemd/system"):
        extra.append("systemd: after applying, `systemctl daemon-reload` lets the mount "
                     "units pick the change up")

    title = report_text(target, decisions, extra)
    return plan, title, {"fstab": target.display, "fstab_real": shown(str(target.real)),
                         "mount_points": [d.to_json() for d in decisions],
                         "verify": verify}


PROVISION = ProvisionStep(30, "fstab")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    """noatime for the filesystems holding framework data: applied (and remounted) only
    with --apply-fstab / provision.apply_fstab, else shown as a proposal."""
    root = ctx.app.root
    if not root.path("/etc/fstab").exists():
        return [Item(id="fstab", description="noatime in /etc/fstab", state=SKIPPED,
                     reason="no /etc/fstab on this host")]
    # The SSD the data is about to move to holds framework data once this plan is
    # applied: name it now so that one run suffices.
    mps = [ctx.ssd_mount] if ctx.ssd_mount else []
    plan, _title, _extra = build(ctx.app, also=mps,
                                 apply_=ctx.apply_fstab and not ctx.verifying,
                                 remount=ctx.apply_fstab)
    if not ctx.apply_fstab:
        for it in plan.items:
            if it.state == PENDING:
                it.state, it.action = SKIPPED, None
                it.reason = "proposal only: apply with --apply-fstab (diff with --diff)"
    return plan.items
