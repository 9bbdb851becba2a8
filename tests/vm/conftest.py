"""Fixtures for the qemu test hosts (issue 10).

One VM per host class from ``classes.json``, one after another: ``host_class`` is a
session-scoped parametrized fixture, so pytest runs every test of one class (across all
modules under tests/vm/) before it tears that VM down and boots the next. Only one qemu
runs at a time.

Fixtures (all session scope, per class where they depend on ``host_class``):
- ``vm_image``: the cached Debian image (built on first use; see image.py).
- ``wheelhouse``: mnic-ops and its dependencies as wheels, built on the host.
- ``vm_keys``: the per-run client key and host key.
- ``vm``: the booted guest (systemd finished starting); ``vm.run(cmd)`` ->
  rc/stdout/stderr, ``vm.reboot()``, ``vm.port``, ``vm.keys.client``, ``vm.ssh_config``,
  ``vm.inventory`` (Ansible), ``vm.testinfra_args()`` / ``vm.testinfra_host()``,
  ``vm.ansible_playbook(path)``, ``vm.guest_wheels`` (the wheels, inside the guest).
- ``mnic_vm``: the same guest with mnic-ops installed in /opt/mnic-ops from the wheels
  (``vm.mnic(*args)`` runs it).
- ``provisioned_vm``: the same guest with a framework install (user alice) after
  ``playbooks/site.yml`` (the playbook and variables the Vagrantfile uses) applied
  ``roles/mnic_ops`` over SSH, in two runs: ``--check --diff`` (nothing may change),
  then for real; the state "before provisioning" is recorded before both.

All three are the same VM per class: what one test changes, later tests of the class see
(test modules run in file order, tests in definition order).

Environment: ``MNIC_OPS_VM_CACHE`` (image cache folder), ``MNIC_OPS_VM_MIRROR``
(Debian mirror; default: the one apt uses), ``MNIC_OPS_VM_BOOT_TIMEOUT`` (seconds),
``MNIC_OPS_VM_FULL`` (comma-separated classes that get the whole provisioning flow of
test_vm_provisioned.py; default: all, which is what CI runs. The other classes get
test_vm.py's checks only: boot, firmware chassis and detect, SSD, testinfra; useful to
try one class's flow, about 10 minutes under emulation, while working on it.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.testhost import write_project
from tests.vm.image import GUEST_SHARE, Image, ImageError, ensure_image
from tests.vm.machine import VM, GuestResult, HostClass, Keys, VMError, load_classes

HERE = Path(__file__).resolve().parent
CLASSES = load_classes()
BOOT_TIMEOUT = float(os.environ.get("MNIC_OPS_VM_BOOT_TIMEOUT", "600"))
SITE_PLAYBOOK = REPO / "playbooks" / "site.yml"
SITE_VARS = HERE / "site-vars.yml"
PROJECT = "/home/alice/proj"
SSD_MOUNT = "/mnt/ssd"
# Files the tests write into the install start with this; the before/after comparison
# of undo --all leaves them out (what they became is checked by their own tests).
TEST_PREFIX = "vmtest-"
# What "the state before provisioning" covers: what provision may change.
STATE_ROOTS = ("/etc", "/home/alice", SSD_MOUNT)
# sshd's host key is installed anew by the image's seed unit at every boot.
STATE_SKIP = (TEST_PREFIX, "ssh_host_")
# What a check-mode run must leave as it was: the above, the tool's venv (bytecode
# caches aside: Python writes them when mnic-ops runs), the wheel folder, mnic-ops's
# journal and backups.
CHECK_ROOTS = (*STATE_ROOTS, "/opt/mnic-ops", "/var/cache/mnic-ops", "/var/lib/mnic-ops")
CHECK_SKIP = (*STATE_SKIP, "__pycache__")

# Measurements shown at the end of the run (pytest -m vm prints them).
TIMINGS: dict[str, str] = {}
_RUNNING: list[VM] = []

REQUIRED_TOOLS = (("qemu-system-x86_64", "qemu-system-x86"), ("debootstrap", "debootstrap"),
                  ("mkfs.ext4", "e2fsprogs"), ("ssh", "openssh-client"),
                  ("ssh-keygen", "openssh-client"))


def vm_unavailable() -> str | None:
    """None when this machine can build and boot the test VMs, else why not."""
    if os.geteuid() != 0:
        return "VM tests need root (debootstrap and chroot build the image)"
    for tool, package in REQUIRED_TOOLS:
        if not shutil.which(tool):
            return f"{tool} not installed (apt-get install {package})"
    return None


def full_flow_classes() -> list[str]:
    """The classes MNIC_OPS_VM_FULL names (all when unset or empty)."""
    raw = os.environ.get("MNIC_OPS_VM_FULL", "").strip()
    if not raw:
        return list(CLASSES)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        raise pytest.UsageError(f"MNIC_OPS_VM_FULL: unknown class {', '.join(unknown)} "
                                f"(known: {', '.join(CLASSES)})")
    return names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the provisioning flow for classes MNIC_OPS_VM_FULL does not name."""
    full = full_flow_classes()
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        cls = callspec.params.get("host_class") if callspec else None
        if item.path.name == "test_vm_provisioned.py" and cls not in full:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        TIMINGS["provisioning flow"] = (f"for {', '.join(full)} (MNIC_OPS_VM_FULL); "
                                        f"{len(drop)} tests of other classes left out")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("VM harness timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="session")
def vm_image() -> Image:
    why = vm_unavailable()
    if why:
        pytest.skip(why)
    t0 = time.monotonic()
    try:
        image, built = ensure_image()
    except ImageError as exc:
        pytest.fail(f"VM image: {exc}", pytrace=False)
    TIMINGS["image"] = (f"built (cold) in {built:.0f} s" if built is not None
                        else f"cached, verified in {time.monotonic() - t0:.1f} s") + \
        f" [{image.dir}]"
    return image


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel . -w DIR`` with the running interpreter's pip: the project and every
    dependency as wheels the offline guest installs from (its Python is 3.11 like the
    host's on Debian bookworm; wheels with compiled parts must match it)."""
    why = vm_unavailable()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("wheels")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                        "--disable-pip-version-check", str(REPO), "-w", str(d)],
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{p.stdout}\n{p.stderr}", pytrace=False)
    TIMINGS["wheels"] = f"{time.monotonic() - t0:.1f} s ({len(list(d.glob('*.whl')))} wheels)"
    return d


@pytest.fixture(scope="session")
def vm_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("vm-keys"))


@pytest.fixture(scope="session", params=list(CLASSES), ids=list(CLASSES))
def host_class(request: pytest.FixtureRequest) -> HostClass:
    return CLASSES[request.param]


@pytest.fixture(scope="session")
def vm(host_class: HostClass, vm_image: Image, wheelhouse: Path, vm_keys: Keys,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    """The booted guest of ``host_class``. Stopped (by PID) when the class's tests are
    done, and also when booting or a test fails."""
    for other in list(_RUNNING):  # one VM at a time, whatever the test order
        other.stop()
        _RUNNING.remove(other)
    machine = VM(vm_image, host_class, tmp_path_factory.mktemp(f"vm-{host_class.name}"),
                 vm_keys, wheels=wheelhouse)
    _RUNNING.append(machine)
    try:
        machine.start()
        boot = machine.wait_ready(BOOT_TIMEOUT)
        TIMINGS[f"{host_class.name} boot"] = (
            f"{boot:.0f} s to systemd {machine.system_state}"
            + (f" (failed: {', '.join(machine.failed_units)})" if machine.failed_units
               else ""))
        yield machine
    except VMError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        machine.stop()
        if machine in _RUNNING:
            _RUNNING.remove(machine)


@pytest.fixture(scope="session")
def mnic_vm(vm: VM) -> VM:
    """``vm`` with mnic-ops installed in /opt/mnic-ops (pip from the 9p wheels)."""
    try:
        seconds = vm.install_mnic_ops()
    except VMError as exc:
        pytest.fail(str(exc), pytrace=False)
    if seconds:
        TIMINGS[f"{vm.cls.name} install"] = f"{seconds:.0f} s (venv + wheels over 9p)"
    return vm


def site_vars() -> dict[str, Any]:
    """The variables the Vagrantfile passes too (tests/vm/site-vars.yml)."""
    import yaml

    data = yaml.safe_load(SITE_VARS.read_text())
    assert isinstance(data, dict)
    return data


def role_vars(vm: VM, **override: Any) -> list[str]:
    """Extra vars for playbooks/site.yml on a test VM: those of site-vars.yml, the same
    as the Vagrant VMs get (the SSD by id for the pre-tasks, fstab applied, cron every
    minute, a 2 s settle time for checkpoints; no class: the firmware decides), plus the
    one thing an offline host needs: mnic-ops's dependencies from a wheelhouse (the
    share). mnic-ops itself is the role's default, a wheel of this checkout built on
    the controller."""
    ev: dict[str, Any] = {**site_vars(), "mnic_ops_wheelhouse": vm.guest_wheels, **override}
    return ["-e", json.dumps(ev)]


def recap(r: GuestResult) -> dict[str, int]:
    """The PLAY RECAP counters of an ansible-playbook run on the one VM."""
    m = re.search(r"^\S+\s*:\s*(ok=.*)$", r.stdout.split("PLAY RECAP")[-1], re.M)
    assert m, f"no PLAY RECAP in:\n{r}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def add_project(vm: VM) -> None:
    """A framework install owned by alice (uid 4242) at PROJECT, made from the real
    framework configs on the host and copied in through the 9p share."""
    write_project(vm.share / "project")
    vm.run(f"set -e; id alice >/dev/null 2>&1 || useradd -u 4242 -U -m -s /bin/sh alice; "
           f"cp -a {GUEST_SHARE}/project {PROJECT}; chown -R alice:alice /home/alice",
           check=True)


@dataclass
class Provisioned:
    vm: VM
    before: dict[str, list[object]]  # STATE_ROOTS just before the role run
    fstab_before: str
    check: GuestResult  # the role run with --check --diff, first
    checked: tuple[dict[str, list[object]], dict[str, list[object]]]  # CHECK_ROOTS
    # before and after it
    first: GuestResult  # the role run
    aged: list[str]  # session files backdated 10 days, written right after provisioning
    aged_at: float  # guest clock (epoch seconds) when they were written


@pytest.fixture(scope="session")
def provisioned_vm(mnic_vm: VM) -> Provisioned:
    """The guest after one run of playbooks/site.yml over SSH, as an admin would do it:
    first with ``--check --diff`` (what would change, shown; nothing changed), then for
    real (pre-tasks format and mount the SSD; the role writes its config and
    provisions). ``before`` is the state just before those runs. Right after them,
    session files 10 days old are written for the cron test: the job runs every minute,
    so by the time that test looks, cron has had its chance."""
    vm = mnic_vm
    add_project(vm)
    before = vm.state(*STATE_ROOTS, skip=STATE_SKIP)
    fstab = vm.run("cat /etc/fstab", check=True).stdout
    t0 = time.monotonic()
    checked_before = vm.state(*CHECK_ROOTS, skip=CHECK_SKIP)
    t1 = time.monotonic()
    check = vm.ansible_playbook(SITE_PLAYBOOK, *role_vars(vm), "--check", "--diff")
    t2 = time.monotonic()
    checked_after = vm.state(*CHECK_ROOTS, skip=CHECK_SKIP)
    TIMINGS[f"{vm.cls.name} role run (--check --diff)"] = (
        f"{t2 - t1:.0f} s (+ {time.monotonic() - t0 - (t2 - t1):.0f} s for the two "
        "snapshots)")
    t0 = time.monotonic()
    first = vm.ansible_playbook(SITE_PLAYBOOK, *role_vars(vm), "--diff")
    assert first.rc == 0, f"role run failed:\n{first}"
    TIMINGS[f"{vm.cls.name} role run"] = f"{time.monotonic() - t0:.0f} s"
    sessions = f"{PROJECT}/project_archive/sessions"
    aged = [f"{sessions}/{TEST_PREFIX}old-{n}.md" for n in range(3)]
    r = vm.run("set -e; " + "; ".join(
        f"runuser -u alice -- sh -c 'seq 1 5000 > {p} && touch -d \"10 days ago\" {p}'"
        for p in aged) + "; date +%s", check=True)
    return Provisioned(vm, before, fstab, check, (checked_before, checked_after), first,
                       aged, float(r.stdout.split()[-1]))
