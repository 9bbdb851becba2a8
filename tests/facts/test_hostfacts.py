"""Facts under --root: sysfs/procfs parsing, block-device mapping, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostfacts
from tests.conftest import FIXTURES, run_mnic, write_tree

MOUNTINFO = (
    "22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw\n"
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw\n"
    "30 22 8:17 / /mnt/fast\\040disk rw,noatime shared:7 - xfs /dev/sdb1 rw,attr2\n"
    "31 22 7:0 / /srv/img rw,relatime - ext4 /dev/loop0 rw\n"
    "32 22 0:50 / /net rw,relatime - nfs4 server:/export rw,vers=4.2\n"
    "bogus line\n"
)


def _sys_block(root: Path) -> None:
    files: dict[str, str] = {
        # sda: rotational disk with a partition; sdb: SSD with a partition
        "sys/block/sda/dev": "8:0\n", "sys/block/sda/queue/rotational": "1\n",
        "sys/block/sda/size": "1000\n", "sys/block/sda/sda1/partition": "1\n",
        "sys/block/sda/sda1/dev": "8:1\n",
        "sys/block/sdb/dev": "8:16\n", "sys/block/sdb/queue/rotational": "0\n",
        "sys/block/sdb/sdb1/partition": "1\n", "sys/block/sdb/sdb1/dev": "8:17\n",
        "sys/block/nvme0n1/dev": "259:0\n", "sys/block/nvme0n1/queue/rotational": "0\n",
        "sys/block/nvme0n1/nvme0n1p1/partition": "1\n",
        "sys/block/nvme0n1/nvme0n1p1/dev": "259:1\n",
        # md0 mirrors sda1 (rotational) and nvme0n1p1 (ssd); dm-0 (LVM) sits on md0
        "sys/block/md0/dev": "9:0\n", "sys/block/md0/queue/rotational": "0\n",
        "sys/block/md0/slaves/sda1": "", "sys/block/md0/slaves/nvme0n1p1": "",
        "sys/block/dm-0/dev": "254:2\n", "sys/block/dm-0/queue/rotational": "0\n",
        "sys/block/dm-0/slaves/md0": "", "sys/block/dm-0/dm/name": "vg-root\n",
        "sys/block/loop0/dev": "7:0\n", "sys/block/loop0/queue/rotational": "garbage\n",
        "proc/self/mountinfo": MOUNTINFO,
    }
    write_tree(root, files)


def test_block_devices_map_to_disks(fake_root: Path) -> None:
    _sys_block(fake_root)
    absent = hostfacts.Absent()
    devs = hostfacts.block_devices(HostRoot.open(fake_root), absent)
    assert devs["sda1"].kind == "part" and devs["sda1"].parent == "sda"
    assert hostfacts.disks_under("dm-0", devs) == ["nvme0n1", "sda"]
    assert devs["dm-0"].dm_name == "vg-root"
    assert "block_devices.loop0.rotational" in absent


def test_mounts_resolve_ssd_through_dm_md_and_partitions(fake_root: Path) -> None:
    _sys_block(fake_root)
    absent = hostfacts.Absent()
    ms = {m.mount_point: m for m in hostfacts.mounts(HostRoot.open(fake_root), absent)}
    # LVM on RAID1 over one rotational and one SSD member: not an SSD
    assert ms["/"].ssd is False and ms["/"].disks == ["nvme0n1", "sda"]
    # escaped mount point decoded; on sdb1, a non-rotational disk
    assert ms["/mnt/fast disk"].ssd is True and ms["/mnt/fast disk"].device == "sdb1"
    assert ms["/srv/img"].ssd is None  # rotational flag unreadable: unknown, not a guess
    assert ms["/net"].network and ms["/proc"].pseudo
    assert "mounts.line6" in absent
    m = hostfacts.mount_for("/mnt/fast disk/project/sessions", list(ms.values()))
    assert m is not None and m.mount_point == "/mnt/fast disk"
    m = hostfacts.mount_for("/mnt/fastdisk", list(ms.values()))
    assert m is not None and m.mount_point == "/"


def test_root_facts_do_not_read_the_live_host(fake_root: Path) -> None:
    write_tree(fake_root, {"proc/meminfo": "MemTotal: 1048576 kB\n",
                           "proc/cpuinfo": "processor\t: 0\nmodel name\t: Fake\n",
                           "sys/devices/system/cpu/online": "0-2,5\n",
                           "etc/os-release": 'ID=alpine\nVERSION_ID=3.20\nNAME="Alpine"\n'})
    r = run_mnic("--root", str(fake_root), "--json", "facts")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["memory"]["total_bytes"] == 1024**3
    assert d["cpu"]["logical"] == 4 and d["cpu"]["model"] == "Fake"
    assert d["distro"]["id"] == "alpine"
    assert d["absent"]["dmi"].startswith("/sys/class/dmi/id does not exist")
    assert d["absent"]["virtualization.systemd_detect_virt"] == "not run under --root"


def test_unreadable_and_missing_files_are_absent(fake_root: Path) -> None:
    (fake_root / "proc" / "meminfo").mkdir()  # a folder where a file should be
    write_tree(fake_root, {"proc/cpuinfo": "garbage without colons\n",
                           "sys/devices/system/cpu/online": "x-y\n",
                           "sys/firmware/acpi/pm_profile": "\n"})
    r = run_mnic("--root", str(fake_root), "--json", "facts")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert "memory.total_bytes" in d["absent"]
    assert "cpu.online" in d["absent"]
    assert "acpi.pm_profile" in d["absent"]
    assert "Traceback" not in r.err


def test_facts_text_output(fake_root: Path) -> None:
    _sys_block(fake_root)
    r = run_mnic("--root", str(fake_root), "facts")
    assert r.code == 0
    assert "/mnt/fast disk" in r.out and "absent:" in r.out


def test_bad_root_is_usage_error(tmp_path: Path) -> None:
    r = run_mnic("--root", str(tmp_path / "nope"), "detect")
    assert r.code == 2 and "no such directory" in r.err and "Traceback" not in r.err
    f = tmp_path / "file"
    f.write_text("")
    r = run_mnic("--root", str(f), "facts")
    assert r.code == 2 and "Traceback" not in r.err


def test_live_facts_read_this_machine() -> None:
    d = hostfacts.gather(HostRoot.open("/"))
    assert d["cpu"]["logical"] == os.cpu_count()
    assert any(m["mount_point"] == "/" for m in d["mounts"])


def test_recorded_hosts_have_batteries_and_ac() -> None:
    root = HostRoot.open(FIXTURES / "hosts" / "thinkpad-t14")
    d = hostfacts.gather(root, hostfacts.DETECT_SECTIONS)
    assert d["batteries"] == [{"name": "BAT0", "scope": "System", "present": True,
                               "status": "Discharging"}]
    assert d["ac_online"] is True
