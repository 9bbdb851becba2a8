"""The test hosts themselves, one VM per class (laptop, workstation, server): systemd
boots, the firmware's chassis type decides the class inside the guest, the second disk
is an SSD to the kernel, testinfra reaches the guest. Ansible, the role, cron, the
watcher and a reboot are test_vm_provisioned.py's, on the same VM after these.

Runs with ``pytest -m vm tests/vm``; skips (with the reason) without root, qemu or
debootstrap."""

from __future__ import annotations

import json

import pytest

from tests.vm.machine import SSD_BY_ID, VM, HostClass

pytestmark = pytest.mark.vm


def test_boots_with_systemd_as_pid1_and_no_failed_units(vm: VM) -> None:
    assert vm.run("cat /proc/1/comm", check=True).stdout.strip() == "systemd"
    assert vm.system_state == "running", f"failed units: {vm.failed_units}"


def test_memory_and_cpus_match_the_class(vm: VM, host_class: HostClass) -> None:
    assert int(vm.run("nproc", check=True).stdout) == host_class.cpus
    meminfo = vm.run("grep MemTotal /proc/meminfo", check=True).stdout.split()
    mem_mib = int(meminfo[1]) / 1024
    # The kernel keeps some memory for itself; MemTotal is a little below -m.
    assert host_class.memory_mb * 0.85 < mem_mib <= host_class.memory_mb


def test_detect_reports_the_class_from_the_firmware_chassis(mnic_vm: VM,
                                                          host_class: HostClass) -> None:
    vm = mnic_vm
    chassis = vm.run("cat /sys/class/dmi/id/chassis_type", check=True).stdout.strip()
    assert chassis == str(host_class.chassis)
    # No override anywhere: no config, no machine-info, no environment.
    assert vm.run("test ! -e /etc/mnic-ops/config.toml && test ! -e /etc/machine-info "
                  "&& ! env | grep -q ^MNIC_OPS_").rc == 0
    r = vm.mnic("--json", "detect")
    assert r.rc == 0, str(r)
    decision = json.loads(r.stdout)
    assert decision["class"] == host_class.name, decision["reasons"]
    assert decision["source"] == "dmi", decision["reasons"]
    assert decision["facts"]["dmi"]["chassis_type"] == host_class.chassis


def test_second_disk_is_non_rotational_and_root_disk_is_not(mnic_vm: VM) -> None:
    vm = mnic_vm
    ssd = vm.run(f"basename $(readlink -f {SSD_BY_ID})", check=True).stdout.strip()
    assert ssd.startswith("sd"), ssd
    rot = vm.run(f"cat /sys/block/{ssd}/queue/rotational /sys/block/vda/queue/rotational",
                 check=True).stdout.split()
    assert rot == ["0", "1"]
    r = vm.mnic("--json", "facts")
    assert r.rc == 0, str(r)
    devices = json.loads(r.stdout)["block_devices"]
    assert devices[ssd]["rotational"] is False
    assert devices["vda"]["rotational"] is True


def test_testinfra_reaches_the_vm(vm: VM, host_class: HostClass) -> None:
    host = vm.testinfra_host()
    assert host.file("/sys/class/dmi/id/chassis_type").content_string.strip() == \
        str(host_class.chassis)
    assert host.service("ssh").is_running
    assert host.service("cron").is_running
