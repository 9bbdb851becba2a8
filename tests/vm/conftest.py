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
- ``provisioned_vm``: the same guest after ``ansible-playbook tests/vm/provision.yml``
  applied ``roles/mnic_ops`` (skips until that playbook exists).

All three are the same VM per class: what one test changes, later tests of the class see
(test modules run in file order, tests in definition order).

Environment: ``MNIC_OPS_VM_CACHE`` (image cache folder), ``MNIC_OPS_VM_MIRROR``
(Debian mirror; default: the one apt uses), ``MNIC_OPS_VM_BOOT_TIMEOUT`` (seconds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.vm.image import Image, ImageError, ensure_image
from tests.vm.machine import VM, HostClass, Keys, VMError, load_classes

HERE = Path(__file__).resolve().parent
CLASSES = load_classes()
BOOT_TIMEOUT = float(os.environ.get("MNIC_OPS_VM_BOOT_TIMEOUT", "600"))
PROVISION_PLAYBOOK = HERE / "provision.yml"

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


@pytest.fixture(scope="session")
def provisioned_vm(vm: VM) -> VM:
    """``vm`` after the playbook applied ``roles/mnic_ops`` over SSH. The playbook (SSD
    pre-tasks, role vars) lives in tests/vm/provision.yml; the inventory gives it
    ``mnic_host_class``, ``mnic_chassis``, ``mnic_wheels`` (for
    ``mnic_ops_pip_extra_args: --no-index --find-links {{ mnic_wheels }}``) and
    ``mnic_ssd_device`` (the non-rotational disk, by id)."""
    if not PROVISION_PLAYBOOK.exists():
        pytest.skip("tests/vm/provision.yml (the role run for the VMs) does not exist yet")
    t0 = time.monotonic()
    r = vm.ansible_playbook(PROVISION_PLAYBOOK)
    assert r.rc == 0, f"ansible-playbook failed:\n{r}"
    TIMINGS[f"{vm.cls.name} provision"] = f"{time.monotonic() - t0:.0f} s"
    return vm
