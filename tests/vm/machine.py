"""One qemu test host: boot it, reach it over SSH, reboot it, stop it.

Design notes (field notes section 7):
- Software emulation (``-accel tcg,thread=multi -cpu max``, ``tb-size=256`` to keep qemu
  near 700 MiB); ``/dev/kvm`` is far slower here, so it is not used.
- ``-snapshot``: every disk write goes to a throw-away overlay, so the cached image and
  the SSD file stay as they were. A guest reboot keeps the same qemu process, so the
  overlay (and what the test wrote) survives a reboot, as on a real disk.
- The SSD is a raw file behind virtio-scsi with ``rotation_rate=1``: the guest kernel
  reports it non-rotational; the virtio root disk stays rotational.
- The chassis type comes from a raw SMBIOS type-3 table (``-smbios file=``); qemu's own
  ``-smbios type=3`` cannot set it.
- Network: user mode with ``restrict=on`` (the guest reaches nothing) and one forward
  from 127.0.0.1:PORT to the guest's sshd.
- SSH: per-run client key and host key, handed to the guest through the read-only 9p
  share (the image's seed unit installs them before sshd starts). The harness writes a
  known_hosts entry for that host key, so host key checking stays strict.
- qemu is started by this process, in its own session, with PR_SET_PDEATHSIG so it
  dies with the test run even on SIGKILL; ``stop()`` ends it by its PID only.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm.image import GUEST_PIP, GUEST_SHARE, SHARE_TAG, Image

HERE = Path(__file__).resolve().parent
CLASSES_FILE = HERE / "classes.json"
GUEST_VENV = "/opt/mnic-ops"
SSD_SERIAL = "mnic-ssd"
SSD_BY_ID = f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{SSD_SERIAL}"


class VMError(RuntimeError):
    """The VM did not come up or misbehaved; the message carries the console's tail."""


@dataclass(frozen=True)
class HostClass:
    name: str
    memory_mb: int
    cpus: int
    chassis: int


def load_classes(path: Path = CLASSES_FILE) -> dict[str, HostClass]:
    """The class table shared with the Vagrantfile (one place for memory/CPUs/chassis)."""
    data = json.loads(path.read_text())
    return {name: HostClass(name, int(v["memory_mb"]), int(v["cpus"]), int(v["chassis"]))
            for name, v in data.items() if not name.startswith("_")}


def smbios_type3(chassis: int, manufacturer: str = "mnic-ops", version: str = "",
                 handle: int = 0x0300) -> bytes:
    """A raw SMBIOS System Enclosure (type 3) structure, SMBIOS 2.7 layout, length 0x16:
    type, length, handle, then string indexes and bytes; the chassis type is the byte at
    offset 5. Strings follow, the set ends with a double NUL."""
    if not 1 <= chassis <= 0x7F:
        raise ValueError(f"chassis type {chassis} out of range 1..127")
    strings = [s for s in (manufacturer, version) if s]
    man_idx = 1 if manufacturer else 0
    ver_idx = (man_idx + 1) if version else 0
    formatted = struct.pack(
        "<BBHBBBBBBBBBIBBBBB",
        3, 0x16, handle,
        man_idx,      # 04 manufacturer (string)
        chassis,      # 05 type (bit 7: lock present = 0)
        ver_idx,      # 06 version (string)
        0, 0,         # 07 serial, 08 asset tag (no string)
        3, 3, 3,      # 09 boot-up, 0A power supply, 0B thermal state: safe
        3,            # 0C security status: none
        0,            # 0D OEM-defined (dword)
        0, 0,         # 11 height, 12 power cords
        0, 0,         # 13 contained element count, 14 record length
        0,            # 15 SKU number (no string)
    )
    assert len(formatted) == 0x16
    tail = b"".join(s.encode() + b"\0" for s in strings) + b"\0"
    return formatted + (tail if strings else b"\0\0")


def free_port() -> int:
    """A loopback port free right now (qemu may still lose a race: start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class GuestResult:
    rc: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"rc={self.rc}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@dataclass
class Keys:
    """Per-run SSH material: the client key the guest trusts and the guest's host key."""

    dir: Path
    client: Path = field(init=False)
    host: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.client = self.dir / "id_ed25519"
        self.host = self.dir / "ssh_host_ed25519_key"
        for path, comment in ((self.client, "mnic-ops-vm-client"),
                              (self.host, "mnic-ops-vm-host")):
            if not path.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                "-f", str(path)], check=True, capture_output=True)

    def public(self, path: Path) -> str:
        return Path(str(path) + ".pub").read_text().strip()


class VM:
    """A qemu guest of one host class. Use ``start()`` then ``wait_ready()``; always
    ``stop()`` (the pytest fixture does it in a finalizer)."""

    def __init__(self, image: Image, host_class: HostClass, workdir: Path, keys: Keys,
                 wheels: Path | None = None, ssd_size: int = 2 * 1024**3) -> None:
        self.image = image
        self.cls = host_class
        self.name = f"mnic-{host_class.name}"
        self.dir = workdir
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keys = keys
        self.share = self.dir / "share"
        self.console_log = self.dir / "console.log"
        self.qemu_log = self.dir / "qemu.log"
        self.ssd = self.dir / "ssd.img"
        self.smbios = self.dir / "smbios-type3.bin"
        self.ssh_config = self.dir / "ssh_config"
        self.known_hosts = self.dir / "known_hosts"
        self.inventory = self.dir / "inventory.ini"
        self.control_path = self.dir / "ctl"
        if len(str(self.control_path)) > 100:  # a unix socket path has ~108 bytes
            self.control_path = Path(tempfile.mkdtemp(prefix="mnic-ssh-")) / "ctl"
        self._master: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.guest_wheels = f"{GUEST_SHARE}/wheels"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None
        self.failed_units: list[str] = []
        self.system_state = ""
        self._t0 = 0.0
        self._ssd_size = ssd_size
        self._prepare_share(wheels)

    # -- files -----------------------------------------------------------------------

    def _prepare_share(self, wheels: Path | None) -> None:
        seed = self.share / "seed"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "authorized_keys").write_text(self.keys.public(self.keys.client) + "\n")
        for suffix in ("", ".pub"):
            src = Path(str(self.keys.host) + suffix)
            (seed / src.name).write_bytes(src.read_bytes())
        self.known_hosts.write_text(f"{self.name} {self.keys.public(self.keys.host)}\n")
        if wheels is not None:
            dest = self.share / "wheels"
            dest.mkdir(exist_ok=True)
            for whl in wheels.glob("*.whl"):
                # A 9p share shows host symlinks as symlinks: link or copy the files.
                try:
                    os.link(whl, dest / whl.name)
                except OSError:
                    (dest / whl.name).write_bytes(whl.read_bytes())
        self.smbios.write_bytes(smbios_type3(self.cls.chassis, "mnic-ops test host",
                                             self.cls.name))
        with self.ssd.open("wb") as f:
            f.truncate(self._ssd_size)

    def _write_ssh_files(self) -> None:
        self.ssh_config.write_text(
            f"Host {self.name} 127.0.0.1\n"
            f"  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {self.keys.client}\n  IdentitiesOnly yes\n"
            f"  HostKeyAlias {self.name}\n  UserKnownHostsFile {self.known_hosts}\n"
            f"  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n  ConnectTimeout 10\n  ServerAliveInterval 5\n"
            f"  ServerAliveCountMax 6\n  LogLevel ERROR\n"
            f"  ControlPath {self.control_path}\n  ControlMaster no\n")
        self.inventory.write_text(
            "[mnic_vms]\n"
            f"{self.name} ansible_host=127.0.0.1 ansible_port={self.port} ansible_user=root "
            f"ansible_ssh_private_key_file={self.keys.client} "
            f"ansible_python_interpreter=/usr/bin/python3 "
            f"ansible_ssh_common_args='-F {self.ssh_config}' "
            f"mnic_host_class={self.cls.name} mnic_chassis={self.cls.chassis} "
            f"mnic_wheels={self.guest_wheels} mnic_ssd_device={SSD_BY_ID}\n")

    # -- lifecycle -------------------------------------------------------------------

    def argv(self) -> list[str]:
        c = self.cls
        return [
            "qemu-system-x86_64", "-name", f"{self.name},process={self.name}",
            "-no-user-config", "-nodefaults", "-display", "none", "-machine", "pc",
            "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max",
            "-smp", str(c.cpus), "-m", str(c.memory_mb),
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", f"root=/dev/vda rw console=ttyS0 net.ifnames=0 "
                                  f"systemd.hostname={self.name}",
            "-drive", f"file={self.image.root},if=virtio,format=raw",
            "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", f"file={self.ssd},if=none,id=ssd,format=raw",
            "-device", f"scsi-hd,drive=ssd,bus=scsi0.0,rotation_rate=1,serial={SSD_SERIAL}",
            "-snapshot",
            "-smbios", f"file={self.smbios}",
            "-virtfs", f"local,path={self.share},mount_tag={SHARE_TAG},"
                       "security_model=none,readonly=on",
            "-nic", f"user,model=virtio-net-pci,restrict=on,"
                    f"hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-serial", f"file:{self.console_log}",
        ]

    def start(self, attempts: int = 3) -> None:
        """Start qemu (not waiting for the guest). Retries with a new port when another
        process took the chosen one between probing and qemu's bind."""
        if self.proc is not None:
            raise VMError(f"{self.name} already started (pid {self.proc.pid})")
        for _ in range(attempts):
            self.port = free_port()
            self._write_ssh_files()
            self._t0 = time.monotonic()
            with self.qemu_log.open("wb") as log:
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True,
                                             preexec_fn=_die_with_parent)
            try:
                rc = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return  # running
            err = self.qemu_log.read_text(errors="replace")
            self.proc = None
            if "hostfwd" not in err and "forwarding" not in err:
                raise VMError(f"qemu exited at once (rc {rc}): {err.strip()}")
        raise VMError(f"qemu could not bind a loopback port in {attempts} attempts")

    def stop(self, timeout: float = 15) -> None:
        """End the qemu process (and the SSH master) this object started, by PID;
        idempotent."""
        self._stop_master()
        proc, self.proc = self.proc, None
        _end(proc, timeout)

    def _start_master(self) -> None:
        """One multiplexed SSH connection: each command then costs a channel, not a new
        key exchange (several seconds under emulation). Commands fall back to a direct
        connection whenever the master is gone (e.g. across a reboot)."""
        self._stop_master()
        self.control_path.unlink(missing_ok=True)
        self._master = subprocess.Popen(
            ["ssh", "-F", str(self.ssh_config), "-N", "-o", "ControlMaster=yes",
             "-o", "ControlPersist=no", self.name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while not self.control_path.exists() and self._master.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)

    def _stop_master(self) -> None:
        master, self._master = self._master, None
        _end(master, 5)
        self.control_path.unlink(missing_ok=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, n: int = 40) -> str:
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no console log)"
        return "\n".join(lines[-n:])

    def _fail(self, msg: str) -> VMError:
        qlog = self.qemu_log.read_text(errors="replace").strip() if self.qemu_log.exists() \
            else ""
        return VMError(f"{self.name}: {msg}\n--- qemu ---\n{qlog}\n--- console (tail) ---\n"
                       f"{self.console_tail()}")

    def wait_ready(self, timeout: float = 300) -> float:
        """Wait for SSH and for systemd to finish booting ("running" or "degraded"; the
        failed units are kept in ``failed_units``). Returns the seconds since start."""
        deadline = time.monotonic() + timeout
        self._wait_ssh(deadline)
        self._start_master()
        self._wait_systemd(deadline)
        self.boot_seconds = time.monotonic() - self._t0
        return self.boot_seconds

    def _wait_ssh(self, deadline: float, not_boot_id: str | None = None) -> None:
        """Poll for sshd's banner on the forwarded port (cheap, every half second; an
        ssh probe can hang on slirp for its whole timeout while the guest boots), then
        log in; with ``not_boot_id``, until a different boot answers."""
        while True:
            if not self.alive():
                raise self._fail("qemu exited while waiting for SSH")
            if self._banner():
                r = self.run("cat /proc/sys/kernel/random/boot_id", timeout=30,
                             connect_timeout=10)
                if r.rc == 0 and r.stdout.strip() and r.stdout.strip() != not_boot_id:
                    return
                last = str(r)
            else:
                last = "no SSH banner"
            if time.monotonic() > deadline:
                raise self._fail(f"no SSH on 127.0.0.1:{self.port} in time (last: {last})")
            time.sleep(0.5)

    def _banner(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.settimeout(3)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def _wait_systemd(self, deadline: float) -> None:
        left = max(5.0, deadline - time.monotonic())
        r = self.run("systemctl is-system-running --wait", timeout=left)
        state = r.stdout.strip()
        if state not in ("running", "degraded"):
            raise self._fail(f"systemd state {state!r} ({r.stderr.strip()})")
        failed = self.run("systemctl list-units --failed --plain --no-legend --no-pager")
        self.failed_units = [ln.split()[0] for ln in failed.stdout.splitlines() if ln.strip()]
        self.system_state = state

    def reboot(self, timeout: float = 300) -> float:
        """Reboot the guest (same qemu process, same disk overlay) and wait until the new
        boot's systemd has finished starting. Returns the seconds it took."""
        old = self.boot_id()
        t0 = time.monotonic()
        # The connection may drop before ssh gets an answer: the rc does not matter.
        self.run("systemctl reboot", timeout=30)
        self._stop_master()
        deadline = t0 + timeout
        self._wait_ssh(deadline, not_boot_id=old)
        self._start_master()
        self._wait_systemd(deadline)
        return time.monotonic() - t0

    # -- SSH -------------------------------------------------------------------------

    def ssh_argv(self, connect_timeout: float | None = None) -> list[str]:
        argv = ["ssh", "-F", str(self.ssh_config)]
        if connect_timeout is not None:
            argv += ["-o", f"ConnectTimeout={int(connect_timeout)}"]
        return [*argv, self.name]

    def run(self, command: str | list[str], *, check: bool = False, timeout: float = 120,
            input: str | None = None, connect_timeout: float | None = None) -> GuestResult:
        """Run a shell command in the guest as root; (rc, stdout, stderr). rc 255 means
        SSH itself failed. ``check=True`` raises with the output on a non-zero rc."""
        cmd = command if isinstance(command, str) else shlex.join(command)
        try:
            p = subprocess.run([*self.ssh_argv(connect_timeout), "--", cmd],
                               capture_output=True, text=True, timeout=timeout,
                               input=input if input is not None else "")
            r = GuestResult(p.returncode, p.stdout, p.stderr)
        except subprocess.TimeoutExpired as exc:
            r = GuestResult(-1, _text(exc.stdout), _text(exc.stderr) + f"\n(timeout {timeout}s)")
        if check and r.rc != 0:
            raise VMError(f"{self.name}: `{cmd}` failed: {r}")
        return r

    def boot_id(self) -> str:
        return self.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()

    # -- mnic-ops inside ---------------------------------------------------------------

    def install_mnic_ops(self, venv: str = GUEST_VENV) -> float:
        """Create ``venv`` in the guest and install mnic-ops from the host-built wheels on
        the 9p share (the guest has no network). Returns the seconds it took; nothing to
        do when mnic-ops is already there (say, the role installed it).

        Under emulation ``python3 -m venv`` spends minutes byte-compiling pip in
        ensurepip, and pip run from its wheel compiles itself again on every start. So
        the venv is made without pip, and the image's pre-compiled copy of Debian's pip
        (image.GUEST_PIP) installs, in one run, pip itself (so the venv has bin/pip, as
        Ansible's pip module expects) and mnic-ops with its dependencies."""
        t0 = time.monotonic()
        if self.run(f"test -x {venv}/bin/mnic-ops").rc == 0:
            return 0.0
        self.run("set -e; whl=$(ls /usr/share/python-wheels/pip-*.whl | tail -n 1); "
                 f"test -x {venv}/bin/python || python3 -m venv --without-pip {venv}; "
                 f"PYTHONPATH={GUEST_PIP} PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 "
                 f"{venv}/bin/python -m pip install -q --no-compile --no-index "
                 # pip is importable from PYTHONPATH already: without --ignore-installed
                 # it would count as installed and the venv would get no bin/pip
                 f"--ignore-installed --find-links {self.guest_wheels} \"$whl\" mnic-ops; "
                 f"test -x {venv}/bin/pip",
                 check=True, timeout=900)
        return time.monotonic() - t0

    def state(self, *roots: str, skip: tuple[str, ...] = ()) -> dict[str, list[object]]:
        """{path: [sha256 | ->target | dir, mode, uid, gid, mtime_ns]} of every entry under
        ``roots`` in the guest (guest_state.py, links not followed); entries whose name
        starts with one of ``skip`` are left out."""
        argv = ["python3", "-", *roots]
        for prefix in skip:
            argv += ["--skip", prefix]
        r = self.run(argv, input=(HERE / "guest_state.py").read_text(), check=True,
                     timeout=300)
        return dict(json.loads(r.stdout))

    def mnic(self, *args: str, venv: str = GUEST_VENV, timeout: float = 120) -> GuestResult:
        return self.run([f"{venv}/bin/mnic-ops", *args], timeout=timeout)

    # -- other clients -----------------------------------------------------------------

    def testinfra_args(self) -> list[str]:
        """Arguments for ``pytest tests/infra`` to reach this VM (through the harness's
        SSH master; testinfra starts no lingering master of its own)."""
        return [f"--hosts=ssh://{self.name}", f"--ssh-config={self.ssh_config}",
                "--ssh-extra-args=-o ControlMaster=no"]

    def testinfra_host(self):  # type: ignore[no-untyped-def]
        import testinfra  # pytest-testinfra; imported late: only the VM tests need it

        return testinfra.get_host(f"ssh://{self.name}", ssh_config=str(self.ssh_config),
                                  ssh_extra_args="-o ControlMaster=no")

    def ansible_playbook(self, playbook: Path, *args: str,
                         timeout: float = 1800) -> GuestResult:
        """Run ansible-playbook on the host against this VM (the inventory's only host).
        ANSIBLE_SSH_ARGS is emptied so Ansible starts no persistent SSH master that would
        outlive the test; it rides on the harness's master through the ssh_config."""
        bindir = str(Path(sys.executable).parent)
        exe = shutil.which("ansible-playbook", path=bindir + os.pathsep
                           + os.environ.get("PATH", ""))
        if exe is None:
            raise VMError("ansible-playbook not installed (pip install ansible)")
        home = self.dir / "ansible"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        repo = HERE.parent.parent
        env.update(ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
                   ANSIBLE_CONFIG=str(repo / "ansible.cfg"),
                   ANSIBLE_ROLES_PATH=str(repo / "roles"),
                   ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_NOCOLOR="1",
                   ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_SSH_ARGS="",
                   ANSIBLE_PIPELINING="1")
        try:
            p = subprocess.run([exe, "-i", str(self.inventory), str(playbook), *args],
                               capture_output=True, text=True, timeout=timeout, env=env,
                               stdin=subprocess.DEVNULL, cwd=repo)
        except subprocess.TimeoutExpired as exc:
            return GuestResult(-1, _text(exc.stdout), _text(exc.stderr) + "\n(timeout)")
        return GuestResult(p.returncode, p.stdout, p.stderr)


def _end(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Terminate one child we started, by its PID (SIGTERM, then SIGKILL)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")
