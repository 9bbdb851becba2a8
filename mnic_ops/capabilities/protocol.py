"""The capability protocol: what a capability module may offer the commands that iterate
every capability, found by discovery (:func:`mnic_ops.capabilities.modules`).

- ``PROVISION = ProvisionStep(order, name, switch)`` and ``provision_plan(ctx)``: its part
  of ``provision``/``verify``'s one plan (``ctx``: :class:`ProvisionContext`); steps run
  in ``order``, and ``provision.<switch> = false`` turns one off;
- undo handlers: ``@mnic_ops.changes.model.undo_handler(kind)``, registered on import
  (:func:`mnic_ops.capabilities.load_undo_handlers` imports every capability).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mnic_ops import capabilities
from mnic_ops.changes.model import FAILED, SKIPPED, Item
from mnic_ops.core.app import AppContext


@dataclass
class ProvisionContext:
    """What every capability's provision step gets: the decision, the installs, the
    switches, and what earlier steps planned (the SSD)."""

    app: AppContext
    host_class: str
    source: str
    projects: list[Any]
    apply_fstab: bool
    verifying: bool = False
    notes: list[str] = field(default_factory=list)
    ssd_mount: str | None = None  # mount point of the relocation target, once planned
    ssd_target: str | None = None  # the relocation target folder, once planned


@dataclass(frozen=True)
class ProvisionStep:
    order: int  # steps run in this order
    name: str  # the step's item id when turned off or failed
    switch: str = ""  # provision.<switch> = false turns it off ("": always on)


@dataclass(frozen=True)
class BoundStep:
    order: int
    name: str
    switch: str
    plan: Callable[[ProvisionContext], list[Item]]


def provision_steps(mods: list[ModuleType] | None = None) -> list[BoundStep]:
    """Every capability's provision step, in order."""
    out = []
    for mod in capabilities.modules() if mods is None else mods:
        step = getattr(mod, "PROVISION", None)
        if isinstance(step, ProvisionStep):
            out.append(BoundStep(step.order, step.name, step.switch, mod.provision_plan))
    return sorted(out, key=lambda s: s.order)


def no_installs(ctx: ProvisionContext, name: str, what: str) -> list[Item]:
    """Cron jobs and a watcher with nothing to work on: not planned, and said."""
    if ctx.projects or ctx.app.failures:
        return []
    return [Item(id=name, description=what, state=SKIPPED,
                 reason="no framework install found: nothing for it to do (provision "
                        "again once there is one; see projects and search_paths)")]


def missing_service(ctx: ProvisionContext, name: str, what: str, needs: str, fix: str,
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
