"""Host-class detection against recorded real-world hosts (fake --root trees)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostclass, hostfacts
from tests.conftest import FIXTURES, run_mnic

HOSTS = sorted(p for p in (FIXTURES / "hosts").iterdir() if p.is_dir())


def test_enough_recorded_hosts() -> None:
    assert len(HOSTS) >= 15
    sources = {json.loads((h / "expected.json").read_text())["source"] for h in HOSTS}
    assert sources == {"override", "machine-info", "dmi", "acpi", "battery", "resources"}


@pytest.mark.parametrize("host", HOSTS, ids=[h.name for h in HOSTS])
def test_recorded_host(host: Path) -> None:
    want = json.loads((host / "expected.json").read_text())
    r = run_mnic("--root", str(host), "--json", "detect")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert (got["class"], got["source"]) == (want["class"], want["source"])
    assert got["reasons"], "a decision must say why"
    assert got["facts"]["root"] == str(host)


def test_text_output_names_class_and_source() -> None:
    r = run_mnic("--root", str(FIXTURES / "hosts" / "thinkpad-t14"), "detect")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0] == "laptop"
    assert "source: dmi" in r.out and "chassis type 10 (Notebook)" in r.out


def _facts(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"dmi": {}, "acpi": {}, "batteries": [], "machine_info": {},
                               "cpu": {}, "memory": {}, "virtualization": {}, "absent": {}}
    base.update(kw)
    return base


@pytest.mark.parametrize("ct,cls", [(8, "laptop"), (14, "laptop"), (30, "laptop"),
                                    (32, "laptop"), (4, "workstation"), (13, "workstation"),
                                    (24, "workstation"), (36, "workstation"), (17, "server"),
                                    (25, "server"), (27, "server"), (29, "server")])
def test_chassis_numbers(ct: int, cls: str) -> None:
    d = hostclass.classify(_facts(dmi={"chassis_type": ct}))
    assert (d.host_class, d.source) == (cls, "dmi")


@pytest.mark.parametrize("ct", [1, 2, 11, 12, 33])
def test_undeciding_chassis_falls_through_to_acpi(ct: int) -> None:
    d = hostclass.classify(_facts(dmi={"chassis_type": ct}, acpi={"pm_profile": 5}))
    assert (d.host_class, d.source) == ("server", "acpi")


@pytest.mark.parametrize("pm,cls", [(1, "workstation"), (2, "laptop"), (3, "workstation"),
                                    (4, "server"), (5, "server"), (6, "workstation"),
                                    (7, "server")])
def test_pm_profiles(pm: int, cls: str) -> None:
    d = hostclass.classify(_facts(acpi={"pm_profile": pm}))
    assert (d.host_class, d.source) == (cls, "acpi")


def test_resource_thresholds_are_configurable() -> None:
    f = _facts(cpu={"logical": 8}, memory={"total_bytes": 16 * hostclass.GIB})
    assert hostclass.classify(f).host_class == "workstation"
    d = hostclass.classify(f, thresholds={"server_min_cpus": 8})
    assert (d.host_class, d.source) == ("server", "resources")
    d = hostclass.classify(f, thresholds={"laptop_max_cpus": 8, "laptop_max_memory_gib": 16})
    assert d.host_class == "laptop"


def test_override_beats_everything() -> None:
    f = _facts(dmi={"chassis_type": 10}, machine_info={"CHASSIS": "server"})
    assert hostclass.classify(f, override="workstation").source == "override"


def test_machine_info_vm_value_does_not_decide() -> None:
    d = hostclass.classify(_facts(machine_info={"CHASSIS": "vm"}, dmi={"chassis_type": 23}))
    assert (d.host_class, d.source) == ("server", "dmi")
    assert any("CHASSIS=vm" in r for r in d.reasons)


def test_flag_env_config_precedence(tmp_path: Path) -> None:
    host = FIXTURES / "hosts" / "config-override"  # config says workstation, DMI says 23
    r = run_mnic("--root", str(host), "--json", "detect")
    assert json.loads(r.out)["class"] == "workstation"
    r = run_mnic("--root", str(host), "--json", "detect", env={"MNIC_OPS_HOST_CLASS": "laptop"})
    assert json.loads(r.out)["class"] == "laptop"
    r = run_mnic("--root", str(host), "--json", "detect", "--host-class", "server",
                 env={"MNIC_OPS_HOST_CLASS": "laptop"})
    assert json.loads(r.out)["class"] == "server"


def test_garbled_sysfs_is_absent_with_reason() -> None:
    root = HostRoot.open(FIXTURES / "hosts" / "garbled-chassis-laptop")
    f = hostfacts.gather(root, hostfacts.DETECT_SECTIONS)
    assert "chassis_type" not in f["dmi"]
    assert "not a number" in f["absent"]["dmi.chassis_type"]
