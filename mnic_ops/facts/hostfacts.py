"""Host facts: read-only, under ``--root``, every unreadable fact absent with a reason.

Like ``ansible -m setup``: one dictionary of what the tool knows about the host. Each
getter reads files below the host root only (sysfs, procfs, ``/etc``); with ``--root``
pointing elsewhere, nothing of the running host is read (psutil and
``systemd-detect-virt`` are used only when the root is ``/``). Getters never raise for
a missing or garbled file: they record the fact as absent with the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot

CHASSIS_NAMES = {
    1: "Other", 2: "Unknown", 3: "Desktop", 4: "Low Profile Desktop", 5: "Pizza Box",
    6: "Mini Tower", 7: "Tower", 8: "Portable", 9: "Laptop", 10: "Notebook",
    11: "Hand Held", 12: "Docking Station", 13: "All in One", 14: "Sub Notebook",
    15: "Space-saving", 16: "Lunch Box", 17: "Main Server Chassis", 18: "Expansion Chassis",
    19: "SubChassis", 20: "Bus Expansion Chassis", 21: "Peripheral Chassis",
    22: "RAID Chassis", 23: "Rack Mount Chassis", 24: "Sealed-case PC",
    25: "Multi-system chassis", 26: "Compact PCI", 27: "Advanced TCA", 28: "Blade",
    29: "Blade Enclosure", 30: "Tablet", 31: "Convertible", 32: "Detachable",
    33: "IoT Gateway", 34: "Embedded PC", 35: "Mini PC", 36: "Stick PC",
}

PM_PROFILE_NAMES = {
    0: "Unspecified", 1: "Desktop", 2: "Mobile", 3: "Workstation", 4: "Enterprise Server",
    5: "SOHO Server", 6: "Appliance PC", 7: "Performance Server", 8: "Tablet",
}

PSEUDO_FS = frozenset({
    "proc", "sysfs", "tmpfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs",
    "debugfs", "tracefs", "mqueue", "hugetlbfs", "pstore", "bpf", "configfs", "fusectl",
    "autofs", "binfmt_misc", "efivarfs", "rpc_pipefs", "nsfs", "ramfs", "overlay",
    "squashfs", "iso9660", "nfsd", "selinuxfs", "fuse.lxcfs", "fuse.portal", "swap",
    "none",
})
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "sshfs", "fuse.sshfs", "glusterfs",
    "fuse.glusterfs", "ceph", "fuse.ceph", "9p", "afs", "davfs", "fuse.s3fs", "lustre",
    "gfs2", "ocfs2", "virtiofs",
})

# (pattern on "sys_vendor product_name", virtualisation name)
_DMI_VIRT = [
    (r"\bQEMU\b", "qemu"), (r"\bKVM\b", "kvm"), (r"VMware", "vmware"),
    (r"VirtualBox|innotek", "oracle"), (r"\bXen\b", "xen"), (r"Parallels", "parallels"),
    (r"Microsoft Corporation.*Virtual Machine", "microsoft"), (r"Amazon EC2", "amazon"),
    (r"Google Compute Engine", "google"), (r"OpenStack", "openstack"), (r"bhyve", "bhyve"),
    (r"DigitalOcean", "digitalocean"), (r"Hetzner.*vServer", "kvm"),
]


_CONTAINERS = frozenset({"openvz", "lxc", "lxc-libvirt", "systemd-nspawn", "docker",
                         "podman", "rkt", "wsl", "proot", "pouch"})


class Absent(dict[str, str]):
    """dotted fact name -> why it could not be read."""


def _read(root: HostRoot, host_path: str, absent: Absent, name: str) -> str | None:
    try:
        return root.path(host_path).read_text(errors="replace").strip()
    except FileNotFoundError:
        absent[name] = f"{host_path} does not exist"
    except PermissionError:
        absent[name] = f"{host_path}: permission denied"
    except OSError as exc:
        absent[name] = f"{host_path}: {exc.strerror or exc}"
    return None


def _read_int(root: HostRoot, host_path: str, absent: Absent, name: str) -> int | None:
    raw = _read(root, host_path, absent, name)
    if raw is None:
        return None
    try:
        return int(raw, 10)
    except ValueError:
        absent[name] = f"{host_path}: not a number: {raw[:40]!r}"
        return None


# --- DMI, ACPI, power, machine-info --------------------------------------------------

def dmi(root: HostRoot, absent: Absent) -> dict[str, Any]:
    base = "/sys/class/dmi/id"
    if not root.path(base).is_dir():
        absent["dmi"] = f"{base} does not exist (no DMI: container, ARM board or image)"
        return {}
    out: dict[str, Any] = {}
    ct = _read_int(root, f"{base}/chassis_type", absent, "dmi.chassis_type")
    if ct is not None:
        out["chassis_type"] = ct
        out["chassis_name"] = CHASSIS_NAMES.get(ct, f"reserved ({ct})")
    for key in ("sys_vendor", "product_name", "product_version", "board_vendor",
                "board_name", "chassis_vendor", "bios_vendor"):
        v = _read(root, f"{base}/{key}", Absent(), key)
        if v:
            out[key] = v
    return out


def acpi(root: HostRoot, absent: Absent) -> dict[str, Any]:
    p = _read_int(root, "/sys/firmware/acpi/pm_profile", absent, "acpi.pm_profile")
    if p is None:
        return {}
    return {"pm_profile": p, "pm_profile_name": PM_PROFILE_NAMES.get(p, f"reserved ({p})")}


def batteries(root: HostRoot, absent: Absent) -> list[dict[str, Any]]:
    """System batteries: ``power_supply/*/type == Battery``, excluding peripherals
    (``scope == Device``: a mouse or a headset) and slots reporting ``present == 0``."""
    base = root.path("/sys/class/power_supply")
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        absent["batteries"] = "/sys/class/power_supply does not exist"
        return []
    except OSError as exc:
        absent["batteries"] = f"/sys/class/power_supply: {exc.strerror}"
        return []
    out = []
    for name in names:
        d = f"/sys/class/power_supply/{name}"
        ign = Absent()
        if _read(root, f"{d}/type", ign, "type") != "Battery":
            continue
        scope = _read(root, f"{d}/scope", ign, "scope")
        present = _read(root, f"{d}/present", ign, "present")
        bat = {"name": name, "scope": scope or "System", "present": present != "0"}
        status = _read(root, f"{d}/status", ign, "status")
        if status:
            bat["status"] = status
        out.append(bat)
    return out


def ac_online(root: HostRoot) -> bool | None:
    base = root.path("/sys/class/power_supply")
    try:
        names = os.listdir(base)
    except OSError:
        return None
    for name in names:
        ign = Absent()
        if _read(root, f"/sys/class/power_supply/{name}/type", ign, "t") == "Mains":
            return _read(root, f"/sys/class/power_supply/{name}/online", ign, "o") == "1"
    return None


def machine_info(root: HostRoot, absent: Absent) -> dict[str, str]:
    raw = _read(root, "/etc/machine-info", absent, "machine_info")
    if raw is None:
        return {}
    return _parse_env_file(raw)


def _parse_env_file(raw: str) -> dict[str, str]:
    out = {}
    for line in raw.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


# --- virtualisation ------------------------------------------------------------------

def virtualization(root: HostRoot, dmi_facts: dict[str, Any], cpu_flags: set[str],
                   absent: Absent) -> dict[str, Any]:
    vm: str | None = None
    container: str | None = None
    evidence: list[str] = []
    ident = " ".join(str(dmi_facts.get(k, "")) for k in
                     ("sys_vendor", "product_name", "board_vendor", "bios_vendor"))
    for pat, name in _DMI_VIRT:
        if re.search(pat, ident):
            vm = name
            evidence.append(f"DMI vendor/product {ident.strip()!r} looks like {name}")
            break
    if "hypervisor" in cpu_flags:
        vm = vm or "hypervisor"
        evidence.append("/proc/cpuinfo has the hypervisor flag")
    if root.path("/.dockerenv").exists():
        container = "docker"
        evidence.append("/.dockerenv exists")
    if root.path("/run/.containerenv").exists():
        container = "podman"
        evidence.append("/run/.containerenv exists")
    sd = _read(root, "/run/systemd/container", Absent(), "c")
    if sd:
        container = container or sd
        evidence.append(f"/run/systemd/container says {sd}")
    if root.live:
        from mnic_ops.core import execute

        if execute.which("systemd-detect-virt"):
            # One call: it names the container when there is one, else the VM.
            try:
                r = execute.run(["systemd-detect-virt"], check=False, timeout=5)
                val = r.stdout.strip()
                if val and val != "none":
                    if val in _CONTAINERS:
                        container = val
                    else:
                        vm = val
                    evidence.append(f"systemd-detect-virt: {val}")
            except OpsError as exc:
                absent["virtualization.systemd_detect_virt"] = exc.message
        else:
            absent["virtualization.systemd_detect_virt"] = "systemd-detect-virt not installed"
    else:
        absent["virtualization.systemd_detect_virt"] = "not run under --root"
    return {"vm": vm, "container": container, "evidence": evidence}


# --- CPU and memory ------------------------------------------------------------------

def _parse_ranges(s: str) -> int:
    n = 0
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        n += int(b) - int(a) + 1 if b else 1
    return n


def cpu(root: HostRoot, absent: Absent) -> tuple[dict[str, Any], set[str]]:
    out: dict[str, Any] = {}
    flags: set[str] = set()
    raw = _read(root, "/proc/cpuinfo", absent, "cpu.cpuinfo")
    cores: set[tuple[str, str]] = set()
    processors = 0
    if raw is not None:
        phys, core = "0", None
        for line in raw.splitlines():
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k == "processor":
                processors += 1
            elif k in ("model name", "Model", "Hardware") and "model" not in out:
                out["model"] = v
            elif k == "flags" and not flags:
                flags = set(v.split())
            elif k == "physical id":
                phys = v
            elif k == "core id":
                core = v
                cores.add((phys, core))
    # One code path for the live host and --root: sysfs and procfs are what psutil
    # reads too, and parsing them here keeps `detect` free of psutil's import cost.
    online = _read(root, "/sys/devices/system/cpu/online", Absent(), "cpu.online")
    try:
        out["logical"] = _parse_ranges(online) if online else (processors or None)
    except ValueError:
        absent["cpu.online"] = f"/sys/devices/system/cpu/online: garbled {online!r:.40}"
        out["logical"] = processors or None
    out["physical"] = len(cores) or out["logical"]
    if not out.get("logical"):
        out.pop("logical", None)
        absent.setdefault("cpu.logical", "no CPU count in /proc/cpuinfo or sysfs")
    if not out.get("physical"):
        out.pop("physical", None)
    return out, flags


def memory(root: HostRoot, absent: Absent) -> dict[str, Any]:
    raw = _read(root, "/proc/meminfo", absent, "memory.total_bytes")
    if raw is None:
        return {}
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", raw, re.M)
    if not m:
        absent["memory.total_bytes"] = "/proc/meminfo has no readable MemTotal line"
        return {}
    return {"total_bytes": int(m.group(1)) * 1024}


def distro_facts(root: HostRoot, absent: Absent) -> dict[str, Any]:
    if not root.path("/etc/os-release").exists() and not root.path(
            "/usr/lib/os-release").exists():
        absent["distro"] = "no /etc/os-release"
        return {}
    import distro

    d = distro.LinuxDistribution(root_dir=str(root.root), include_lsb=False,
                                 include_uname=False, include_oslevel=False)
    out = {"id": d.id(), "version": d.version(), "name": d.name(pretty=True),
           "codename": d.codename(), "like": d.like()}
    return {k: v for k, v in out.items() if v}


# --- block devices and mounts --------------------------------------------------------

@dataclass
class BlockDevice:
    name: str
    dev: str  # major:minor
    kind: str  # disk | part | loop | dm | md | ...
    rotational: bool | None = None
    removable: bool | None = None
    size_bytes: int | None = None
    parent: str | None = None  # a partition's disk
    slaves: list[str] = field(default_factory=list)
    dm_name: str | None = None


@dataclass
class Mount:
    mount_point: str
    source: str
    fstype: str
    options: list[str]
    super_options: list[str]
    dev: str
    root: str = "/"
    device: str | None = None
    disks: list[str] = field(default_factory=list)
    ssd: bool | None = None  # True when every disk under it is non-rotational

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @property
    def network(self) -> bool:
        return self.fstype in NETWORK_FS

    @property
    def pseudo(self) -> bool:
        return self.fstype in PSEUDO_FS

    def option(self, name: str) -> bool:
        return name in self.options


def block_devices(root: HostRoot, absent: Absent) -> dict[str, BlockDevice]:
    base = root.path("/sys/block")
    try:
        names = sorted(os.listdir(base))
    except OSError as exc:
        absent["block_devices"] = f"/sys/block: {exc.strerror or exc}"
        return {}
    devs: dict[str, BlockDevice] = {}
    for name in names:
        d = f"/sys/block/{name}"
        ign = Absent()
        dev = _read(root, f"{d}/dev", ign, "dev") or ""
        kind = ("loop" if name.startswith("loop") else "dm" if name.startswith("dm-")
                else "md" if name.startswith("md") else "disk")
        rot = _read_int(root, f"{d}/queue/rotational", absent, f"block_devices.{name}.rotational")
        rem = _read_int(root, f"{d}/removable", ign, "removable")
        size = _read_int(root, f"{d}/size", ign, "size")
        try:
            slaves = sorted(os.listdir(root.path(f"{d}/slaves")))
        except OSError:
            slaves = []
        bd = BlockDevice(name=name, dev=dev, kind=kind,
                         rotational=None if rot is None else rot != 0,
                         removable=None if rem is None else rem != 0,
                         size_bytes=None if size is None else size * 512, slaves=slaves,
                         dm_name=_read(root, f"{d}/dm/name", ign, "dm") if kind == "dm"
                         else None)
        devs[name] = bd
        try:
            children = sorted(os.listdir(root.path(d)))
        except OSError:
            children = []
        for child in children:
            if child.startswith(name) and root.path(f"{d}/{child}/partition").exists():
                pdev = _read(root, f"{d}/{child}/dev", ign, "dev") or ""
                psize = _read_int(root, f"{d}/{child}/size", ign, "size")
                devs[child] = BlockDevice(name=child, dev=pdev, kind="part", parent=name,
                                          rotational=bd.rotational, removable=bd.removable,
                                          size_bytes=None if psize is None else psize * 512)
    return devs


def disks_under(name: str, devs: dict[str, BlockDevice], _seen: frozenset[str] = frozenset()
                ) -> list[str]:
    """The whole disks that a block device rests on, through partitions, dm and md."""
    bd = devs.get(name)
    if bd is None or name in _seen:
        return []
    seen = _seen | {name}
    if bd.kind == "part" and bd.parent:
        return disks_under(bd.parent, devs, seen)
    if bd.slaves:
        out: list[str] = []
        for s in bd.slaves:
            for d in disks_under(s, devs, seen):
                if d not in out:
                    out.append(d)
        return out
    return [name]


_ESC = re.compile(r"\\([0-7]{3})")


def unescape(s: str) -> str:
    """Undo the octal escapes of mountinfo and fstab (``\\040`` is a space)."""
    return _ESC.sub(lambda m: chr(int(m.group(1), 8)), s)


def mounts(root: HostRoot, absent: Absent,
           devs: dict[str, BlockDevice] | None = None) -> list[Mount]:
    raw = _read(root, "/proc/self/mountinfo", absent, "mounts")
    if raw is None:
        return []
    devs = devs if devs is not None else block_devices(root, Absent())
    by_dev = {bd.dev: bd for bd in devs.values() if bd.dev}
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        left, sep, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if not sep or len(lf) < 6 or len(rf) < 2:
            absent[f"mounts.line{n}"] = "/proc/self/mountinfo: unparsable line"
            continue
        m = Mount(mount_point=unescape(lf[4]), source=unescape(rf[1]), fstype=rf[0],
                  options=lf[5].split(","),
                  super_options=rf[2].split(",") if len(rf) > 2 else [],
                  dev=lf[2], root=unescape(lf[3]))
        bd = by_dev.get(m.dev)
        if bd is not None:
            m.device = bd.name
            m.disks = disks_under(bd.name, devs)
            rots = [devs[d].rotational for d in m.disks]
            if rots and all(r is not None for r in rots):
                m.ssd = not any(rots)
        out.append(m)
    return out


def mount_for(host_path: str, mount_list: list[Mount]) -> Mount | None:
    """The mount that holds ``host_path`` (the last, innermost, longest match)."""
    best: Mount | None = None
    for m in mount_list:
        mp = m.mount_point.rstrip("/") or "/"
        inside = host_path == mp or host_path.startswith(mp.rstrip("/") + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    return best


# --- all together --------------------------------------------------------------------

SECTIONS = ("dmi", "acpi", "batteries", "machine_info", "cpu", "memory", "virtualization",
            "distro", "block_devices", "mounts")
DETECT_SECTIONS = ("dmi", "acpi", "batteries", "machine_info", "cpu", "memory",
                   "virtualization")


def gather(root: HostRoot, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Every fact in ``sections`` as JSON-able data, with ``absent`` reasons."""
    absent = Absent()
    out: dict[str, Any] = {"root": str(root)}
    d = dmi(root, absent)
    if "dmi" in sections:
        out["dmi"] = d
    if "acpi" in sections:
        out["acpi"] = acpi(root, absent)
    if "batteries" in sections:
        out["batteries"] = batteries(root, absent)
        ac = ac_online(root)
        if ac is not None:
            out["ac_online"] = ac
    if "machine_info" in sections:
        out["machine_info"] = machine_info(root, absent)
    cpu_facts, flags = cpu(root, absent)
    if "cpu" in sections:
        out["cpu"] = cpu_facts
    if "memory" in sections:
        out["memory"] = memory(root, absent)
    if "virtualization" in sections:
        out["virtualization"] = virtualization(root, d, flags, absent)
    if "distro" in sections:
        out["distro"] = distro_facts(root, absent)
    devs: dict[str, BlockDevice] | None = None
    if "block_devices" in sections:
        devs = block_devices(root, absent)
        out["block_devices"] = {k: asdict(v) for k, v in devs.items()}
    if "mounts" in sections:
        out["mounts"] = [asdict(m) for m in mounts(root, absent, devs)]
    out["absent"] = dict(sorted(absent.items()))
    return out


def live_mounts(root: HostRoot) -> list[Mount]:
    """Mounts with SSD flags, for capabilities that pick or check filesystems."""
    return mounts(root, Absent())


def path_is_within(child: str | Path, parent: str | Path) -> bool:
    c, p = os.path.normpath(child), os.path.normpath(parent)
    return c == p or c.startswith(p.rstrip("/") + "/")
