"""The Debian test-host image the VM harness boots: built once with debootstrap, cached
under a hash of its recipe, verified before every use.

Why a cache with a marker: a cold build takes minutes and a CI run must not repeat it,
but a build killed half-way (or a damaged file) must never be booted as if it were good.
The build goes into a temporary folder; the marker (hashes and sizes of every file) is
written last, and the folder is renamed into place only after that. A folder without a
valid marker is thrown away and rebuilt.

The image itself carries nothing secret and nothing per run: no SSH host keys, no
authorized keys. Those come in at every boot through the 9p share (see ``SEED_SCRIPT``),
and the VM runs with ``-snapshot`` so the cached image never changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Field notes section 7, plus sudo (an Ansible play with `become: true` calls sudo even
# as root) and python3-apt (Ansible's apt module, which the role uses to check
# python3-venv, would otherwise try to download it: the guest has no network), and
# python3-packaging (the role installs it: Ansible's pip module needs it on the target).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "linux-image-amd64", "initramfs-tools", "cron",
    "python3", "python3-venv", "openssh-server", "udev", "kmod", "e2fsprogs", "procps",
    "iproute2", "sudo", "python3-apt", "python3-packaging",
)
IMAGE_SIZE = "3G"
# Bump when build() changes what lands in the image in a way the recipe does not show.
BUILD_STEPS_VERSION = 1
# pip, unpacked from Debian's own wheel and byte-compiled at build time (natively): under
# emulation, pip run from its wheel spends a minute compiling itself on every start.
GUEST_PIP = "/usr/local/lib/mnic-vm-pip"
# Where the guest mounts the host's 9p share (seed files and wheels).
GUEST_SHARE = "/mnt/mnic-share"
SHARE_TAG = "mnicshare"

SEED_SCRIPT = f"""#!/bin/sh
# mnic-ops VM harness: take this boot's SSH keys from the host's 9p share.
set -eu
mkdir -p {GUEST_SHARE}
mountpoint -q {GUEST_SHARE} || mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 \\
    {SHARE_TAG} {GUEST_SHARE}
install -d -m 0700 /root/.ssh
install -m 0600 {GUEST_SHARE}/seed/authorized_keys /root/.ssh/authorized_keys
install -m 0600 {GUEST_SHARE}/seed/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 0644 {GUEST_SHARE}/seed/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
"""

# Early (no default dependencies): it runs alongside sysinit instead of after
# basic.target, which takes it off the boot's critical path.
SEED_UNIT = """[Unit]
Description=mnic-ops VM harness: SSH keys for this boot from the host (9p)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target ssh.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/mnic-vm-seed

[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
"""

NET_UNIT = """[Unit]
Description=mnic-ops VM harness: static address on qemu's user network
BindsTo=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network.target
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set lo up
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip address replace 10.0.2.15/24 dev eth0
ExecStart=/sbin/ip route replace default via 10.0.2.2

[Install]
WantedBy=multi-user.target
"""

# Files written into the image: path -> (content, mode). Part of the recipe hash.
GUEST_FILES: dict[str, tuple[str, int]] = {
    "/etc/fstab": ("/dev/vda / ext4 rw,errors=remount-ro 0 0\n", 0o644),
    "/etc/hostname": ("mnic-vm\n", 0o644),
    "/etc/hosts": ("127.0.0.1 localhost\n127.0.1.1 mnic-vm\n", 0o644),
    # Static address on qemu's user network (the kernel command line sets
    # net.ifnames=0): three `ip` calls start in a fraction of systemd-networkd's time
    # under emulation, and sshd waits for network.target.
    "/etc/systemd/system/mnic-vm-net.service": (NET_UNIT, 0o644),
    "/etc/ssh/sshd_config.d/mnic-vm.conf": (
        "# mnic-ops VM harness: key-only root login; the host key comes from the seed.\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n", 0o644),
    "/usr/local/sbin/mnic-vm-seed": (SEED_SCRIPT, 0o755),
    # The initramfs only has to find an ext4 root on virtio: MODULES=most makes udev load
    # drivers for every emulated device, which costs tens of seconds under emulation.
    "/etc/initramfs-tools/conf.d/mnic-vm.conf": ("MODULES=list\n", 0o644),
    "/etc/initramfs-tools/modules": ("virtio_pci\nvirtio_blk\next4\n", 0o644),
    "/etc/systemd/system/mnic-vm-seed.service": (SEED_UNIT, 0o644),
}
ENABLE_UNITS = ("mnic-vm-seed.service", "mnic-vm-net.service")
# e2scrub_reap looks for LVM snapshots the image never has (10 s of boot under TCG).
MASK_UNITS = ("e2scrub_reap.service",)
DEFAULT_TARGET = "multi-user.target"

ARTIFACTS = ("root.img", "vmlinuz", "initrd.img")
MARKER = "COMPLETE.json"


class ImageError(RuntimeError):
    """The image could not be built; the message says which step and shows its output."""


@dataclass(frozen=True)
class Image:
    """A verified, complete cached image."""

    dir: Path
    root: Path
    kernel: Path
    initrd: Path
    recipe_hash: str


# -- recipe -----------------------------------------------------------------------------

def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses for ``SUITE``: the first ``deb`` entry of
    sources.list or sources.list.d/*.list / *.sources whose suite is exactly SUITE."""
    if os.environ.get("MNIC_OPS_VM_MIRROR"):
        return os.environ["MNIC_OPS_VM_MIRROR"]
    files = [sources_dir / "sources.list"]
    d = sources_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        uri = (_mirror_from_deb822(text) if f.suffix == ".sources"
               else _mirror_from_list(text))
        if uri:
            return uri
    return DEFAULT_MIRROR


def _mirror_from_list(text: str) -> str | None:
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = re.sub(r"\[[^\]]*\]", " ", line).split()  # drop [arch=... signed-by=...]
        if len(words) >= 3 and words[2] == SUITE:
            return words[1].rstrip("/")
    return None


def _mirror_from_deb822(text: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites",
                                                                              "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0].rstrip("/")
    return None


def recipe(mirror: str) -> dict[str, object]:
    """Everything that decides the image's content; its hash names the cache entry."""
    return {
        "suite": SUITE, "variant": "minbase", "arch": "amd64", "mirror": mirror,
        "packages": sorted(PACKAGES), "size": IMAGE_SIZE,
        "files": {p: [c, oct(m)] for p, (c, m) in sorted(GUEST_FILES.items())},
        "enable": list(ENABLE_UNITS), "mask": list(MASK_UNITS), "target": DEFAULT_TARGET,
        "pip": GUEST_PIP, "steps": BUILD_STEPS_VERSION,
    }


def recipe_hash(r: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    """``$MNIC_OPS_VM_CACHE``, else /var/cache/mnic-ops-vm (root) or ~/.cache/..."""
    env = os.environ.get("MNIC_OPS_VM_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/mnic-ops-vm")
    return Path.home() / ".cache" / "mnic-ops-vm"


# -- cache verification ------------------------------------------------------------------

def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(entry: Path, rhash: str) -> tuple[Image | None, str]:
    """(image, "") when ``entry`` is a complete build of recipe ``rhash``; else
    (None, why not)."""
    marker = entry / MARKER
    try:
        data = json.loads(marker.read_text())
    except FileNotFoundError:
        return None, f"{marker} missing (partial build)"
    except (OSError, ValueError) as exc:
        return None, f"{marker} unreadable: {exc}"
    if not isinstance(data, dict) or data.get("recipe_hash") != rhash:
        return None, f"{marker} is for another recipe"
    files = data.get("files")
    if not isinstance(files, dict) or set(files) != set(ARTIFACTS):
        return None, f"{marker} does not list {', '.join(ARTIFACTS)}"
    for name in ARTIFACTS:
        p = entry / name
        want = files[name]
        try:
            size = p.stat().st_size
        except OSError as exc:
            return None, f"{p}: {exc.strerror}"
        if size != want.get("size"):
            return None, f"{p}: size {size}, marker says {want.get('size')}"
        if _sha256(p) != want.get("sha256"):
            return None, f"{p}: content differs from the marker's sha256"
    return Image(entry, entry / "root.img", entry / "vmlinuz", entry / "initrd.img",
                 rhash), ""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per cache (other sessions on the machine wait)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- build -------------------------------------------------------------------------------

def _run(argv: list[str], log: Path, step: str, timeout: float = 1800,
         env: dict[str, str] | None = None) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            p = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                               env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ImageError(f"{step}: timed out after {timeout:.0f} s (log: {log})") from exc
    if p.returncode != 0:
        tail = log.read_bytes()[-3000:].decode(errors="replace")
        raise ImageError(f"{step} failed (exit {p.returncode}); log {log}:\n{tail}")


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a (possibly half-built) chroot without ever reaching into a mount a killed
    debootstrap left behind (its /proc, /sys or a bind-mounted /dev)."""
    if not path.exists():
        return
    for mp in _mounts_under(path):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    left = _mounts_under(path)
    if left:
        raise ImageError(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _write_guest_files(rootdir: Path) -> None:
    for gpath, (content, mode) in GUEST_FILES.items():
        dest = rootdir / gpath.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        dest.write_text(content)
        dest.chmod(mode)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(dest: Path, rhash: str, mirror: str, log: Path) -> None:
    """Build the image into ``dest`` (a fresh folder); the marker is written last."""
    _build_artifacts(dest, mirror, log)
    write_marker(dest, rhash, mirror)


def _build_artifacts(dest: Path, mirror: str, log: Path) -> None:
    rootdir = dest / "rootfs"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C", **{k: v for k, v in os.environ.items()
                             if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}}
    chroot = ["chroot", str(rootdir)]
    try:
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
              SUITE, str(rootdir), mirror], log, "debootstrap", env=env)
        _write_guest_files(rootdir)
        _run([*chroot, "systemctl", "enable", *ENABLE_UNITS], log, "systemctl enable",
             env=env)
        _run([*chroot, "systemctl", "mask", *MASK_UNITS], log, "systemctl mask", env=env)
        _run([*chroot, "systemctl", "set-default", DEFAULT_TARGET], log,
             "systemctl set-default", env=env)
        _run([*chroot, "update-initramfs", "-u", "-k", "all"], log, "update-initramfs",
             env=env)
        _run([*chroot, "python3", "-c",
              "import glob, zipfile; zipfile.ZipFile(sorted(glob.glob("
              f"'/usr/share/python-wheels/pip-*.whl'))[-1]).extractall('{GUEST_PIP}')"],
             log, "unpack pip", env=env)
        _run([*chroot, "python3", "-m", "compileall", "-q", GUEST_PIP], log,
             "compile pip", env=env)
        _run([*chroot, "apt-get", "clean"], log, "apt-get clean", env=env)
        for p in (rootdir / "etc/ssh").glob("ssh_host_*"):
            p.unlink()  # per boot from the seed; never baked into the cache
        for p in (rootdir / "var/lib/apt/lists").glob("*_*"):
            p.unlink()
        (rootdir / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        kernels = sorted((rootdir / "boot").glob("vmlinuz-*"))
        initrds = sorted((rootdir / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise ImageError(f"expected one kernel and one initrd in {rootdir}/boot, found "
                             f"{[p.name for p in kernels + initrds]}")
        shutil.copyfile(kernels[0], dest / "vmlinuz")
        shutil.copyfile(initrds[0], dest / "initrd.img")
        _run(["mkfs.ext4", "-q", "-F", "-L", "mnic-root", "-d", str(rootdir),
              str(dest / "root.img"), IMAGE_SIZE], log, "mkfs.ext4 -d", env=env)
    finally:
        remove_tree(rootdir)


def write_marker(dest: Path, rhash: str, mirror: str) -> None:
    """Record size and sha256 of every artifact, after fsyncing them; written last."""
    files = {}
    for name in ARTIFACTS:
        _fsync(dest / name)
        files[name] = {"size": (dest / name).stat().st_size,
                       "sha256": _sha256(dest / name)}
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"recipe_hash": rhash, "recipe": recipe(mirror),
                               "files": files, "built": time.strftime("%FT%T%z")},
                              indent=1))
    _fsync(tmp)
    tmp.rename(dest / MARKER)
    _fsync(dest)


def ensure_image(cache: Path | None = None, mirror: str | None = None,
                 keep: int = 2) -> tuple[Image, float | None]:
    """The cached image for the current recipe, built first when missing or broken.
    Returns (image, build seconds or None when the cache was used)."""
    cache = cache or cache_root()
    mirror = mirror or apt_mirror()
    rhash = recipe_hash(recipe(mirror))
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = cache / rhash
    with _locked(cache / ".lock"):
        image, why = verify(entry, rhash)
        if image:
            return image, None
        # Holding the lock, every tmp-* folder is a leftover of a killed build.
        for stale in cache.glob("tmp-*"):
            remove_tree(stale)
        if entry.exists():
            remove_tree(entry)
        tmp = cache / f"tmp-{rhash}-{os.getpid()}"
        tmp.mkdir(mode=0o700)
        log = cache / f"build-{rhash}.log"
        log.write_text(f"building {rhash} ({why}) from {mirror}\n")
        t0 = time.monotonic()
        try:
            build(tmp, rhash, mirror, log)
        except BaseException:
            remove_tree(tmp)
            raise
        tmp.rename(entry)
        _fsync(cache)
        elapsed = time.monotonic() - t0
        _prune(cache, keep)
        image, why = verify(entry, rhash)
        if not image:
            raise ImageError(f"fresh build does not verify: {why}")
        return image, elapsed


def _prune(cache: Path, keep: int) -> None:
    """Keep the ``keep`` most recently built images (two branches can alternate)."""
    entries = sorted((p for p in cache.iterdir()
                      if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        remove_tree(old)
        (cache / f"build-{old.name}.log").unlink(missing_ok=True)
