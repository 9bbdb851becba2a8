"""Host-class detection: laptop, workstation or server, with the source and the evidence.

Order (first that decides wins; the reasons list every step looked at):
config ``host_class`` override, ``CHASSIS=`` in ``/etc/machine-info``, DMI chassis type,
ACPI ``pm_profile``, a present system battery, then CPU and memory thresholds (the only
signal left for VMs, containers and boards without DMI). Chassis 1 (Other) and 2
(Unknown), which most VMs report, fall through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnic_ops.facts import hostfacts

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

LAPTOP, WORKSTATION, SERVER = "laptop", "workstation", "server"

CHASSIS_CLASS = {
    **dict.fromkeys((8, 9, 10, 14, 30, 31, 32), LAPTOP),
    **dict.fromkeys((3, 4, 5, 6, 7, 13, 15, 16, 24, 35, 36), WORKSTATION),
    **dict.fromkeys((17, 23, 25, 27, 28, 29), SERVER),
}
PM_PROFILE_CLASS = {2: LAPTOP, 8: LAPTOP, 1: WORKSTATION, 3: WORKSTATION, 6: WORKSTATION,
                    4: SERVER, 5: SERVER, 7: SERVER}
MACHINE_INFO_CLASS = {"laptop": LAPTOP, "convertible": LAPTOP, "tablet": LAPTOP,
                      "handset": LAPTOP, "desktop": WORKSTATION, "server": SERVER}

GIB = 1024**3


@dataclass
class Decision:
    host_class: str
    source: str  # override | machine-info | dmi | acpi | battery | resources
    reasons: list[str] = field(default_factory=list)

    def to_json(self, facts: dict[str, Any]) -> dict[str, Any]:
        return {"class": self.host_class, "source": self.source, "reasons": self.reasons,
                "facts": facts}


def classify(facts: dict[str, Any], *, override: str | None = None,
             thresholds: dict[str, Any] | None = None) -> Decision:
    """Decide the class from gathered facts (pure: no I/O)."""
    th = {"server_min_cpus": 32, "server_min_memory_gib": 48.0, "laptop_max_cpus": 4,
          "laptop_max_memory_gib": 8.0, **(thresholds or {})}
    reasons: list[str] = []
    absent = facts.get("absent", {})

    if override:
        return Decision(override, "override", [f"host_class = {override} set in config, "
                                                "environment or flag"])
    chassis = facts.get("machine_info", {}).get("CHASSIS")
    if chassis:
        cls = MACHINE_INFO_CLASS.get(chassis.lower())
        if cls:
            return Decision(cls, "machine-info",
                            [f"CHASSIS={chassis} in /etc/machine-info -> {cls}"])
        reasons.append(f"CHASSIS={chassis} in /etc/machine-info names no class; ignored")
    else:
        reasons.append("no CHASSIS= in /etc/machine-info")

    dmi = facts.get("dmi", {})
    ct = dmi.get("chassis_type")
    if ct is not None:
        cls = CHASSIS_CLASS.get(ct)
        name = dmi.get("chassis_name", "")
        if cls:
            return Decision(cls, "dmi", [*reasons, f"DMI chassis type {ct} ({name}) -> {cls}"])
        reasons.append(f"DMI chassis type {ct} ({name}) does not decide")
    else:
        reasons.append("no DMI chassis type: "
                       + absent.get("dmi.chassis_type", absent.get("dmi", "not readable")))

    pm = facts.get("acpi", {}).get("pm_profile")
    if pm is not None:
        cls = PM_PROFILE_CLASS.get(pm)
        pname = facts["acpi"].get("pm_profile_name", "")
        if cls:
            return Decision(cls, "acpi", [*reasons, f"ACPI pm_profile {pm} ({pname}) -> {cls}"])
        reasons.append(f"ACPI pm_profile {pm} ({pname}) does not decide")
    else:
        reasons.append("no ACPI pm_profile")

    bats = [b for b in facts.get("batteries", []) if b.get("present")
            and b.get("scope", "System") != "Device"]
    if bats:
        return Decision(LAPTOP, "battery", [*reasons, "system battery present: "
                                            + ", ".join(b["name"] for b in bats)])
    reasons.append("no system battery")

    virt = facts.get("virtualization", {})
    what = [f"{k}={virt[k]}" for k in ("vm", "container") if virt.get(k)]
    if what:
        reasons.append("virtualised (" + ", ".join(what) + "): sizing by resources")
    cpus = facts.get("cpu", {}).get("logical")
    mem = facts.get("memory", {}).get("total_bytes")
    mem_gib = mem / GIB if mem else None
    desc = (f"{cpus if cpus is not None else '?'} CPUs, "
            f"{f'{mem_gib:.1f}' if mem_gib is not None else '?'} GiB memory")
    if (cpus is not None and cpus >= th["server_min_cpus"]) or (
            mem_gib is not None and mem_gib >= th["server_min_memory_gib"]):
        cls = SERVER
        why = (f"{desc}: at least {th['server_min_cpus']} CPUs or "
               f"{th['server_min_memory_gib']:g} GiB -> server")
    elif (cpus is not None and cpus <= th["laptop_max_cpus"]) and (
            mem_gib is not None and mem_gib <= th["laptop_max_memory_gib"]):
        cls = LAPTOP
        why = (f"{desc}: at most {th['laptop_max_cpus']} CPUs and "
               f"{th['laptop_max_memory_gib']:g} GiB -> laptop-sized")
    else:
        cls = WORKSTATION
        why = f"{desc}: between the laptop and server thresholds -> workstation"
    return Decision(cls, "resources", [*reasons, why])


def detect(app: AppContext, host_class: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The host-class decision and the facts it used; flag > env > config > detection."""
    cfg = app.config
    override = host_class or cfg["host_class"]
    data = hostfacts.gather(app.root, hostfacts.DETECT_SECTIONS)
    return classify(data, override=override, thresholds=cfg["detect"]), data
