"""Issue 10, the run for each class: playbooks/site.yml applies roles/mnic_ops to the VM
over SSH, first in check mode with diffs (issue 17: nothing changes), then for real (SSD
formatted and mounted by the playbook's pre-tasks, fstab applied); the
testinfra suite of tests/infra checks the host over SSH; then, on the real systemd, cron
and disks of the guest: the watcher compresses a file written there, the cron job fires
under the cron service, sessions and checkpoints live on the non-rotational disk with
noatime; a reboot keeps all of it; a second role run changes nothing; ``undo --all``
brings back the state before provisioning.

Tests run in this order on one VM per class (see conftest.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.vm.conftest import (
    PROJECT,
    SITE_PLAYBOOK,
    SSD_MOUNT,
    STATE_ROOTS,
    STATE_SKIP,
    TEST_PREFIX,
    TIMINGS,
    Provisioned,
    recap,
    role_vars,
)
from tests.vm.machine import SSD_BY_ID, VM, HostClass

pytestmark = pytest.mark.vm
MNIC = "/opt/mnic-ops/bin/mnic-ops"
UNIT = "mnic-ops-watch.service"
DATA = {"sessions": f"{PROJECT}/project_archive/sessions",
        "checkpoints": f"{PROJECT}/.claude/checkpoints",
        "checkpoint_store": f"{PROJECT}/.ai-tools/checkpoint/storage"}


def _wait_for(vm: VM, command: str, timeout: float, every: float = 2.0) -> bool:
    """Poll ``command`` in the guest until it succeeds (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.run(command, timeout=60).rc == 0:
            return True
        time.sleep(every)
    return False


def _write_checkpoint_as_alice(vm: VM, name: str) -> str:
    path = f"{DATA['checkpoints']}/manual/{TEST_PREFIX}{name}.json"
    vm.run(f"runuser -u alice -- sh -c 'seq 1 3000 | sed s/^/line/ > {path}'", check=True)
    return path


def _watcher_compresses(vm: VM, path: str, timeout: float = 120) -> None:
    want = vm.run("seq 1 3000 | sed s/^/line/ | sha256sum", check=True).stdout.split()[0]
    assert _wait_for(vm, f"test -f {path}.gz && test ! -e {path}", timeout), \
        f"watcher did not compress {path}:\n" + \
        vm.run(f"ls -la $(dirname {path}); journalctl -u {UNIT} --no-pager -n 30").stdout
    got = vm.run(f"gzip -dc {path}.gz | sha256sum", check=True).stdout.split()[0]
    assert got == want
    owner = vm.run(f"stat -c %U:%G {path}.gz", check=True).stdout.strip()
    assert owner == "alice:alice"


def _task_output(stdout: str, task: str) -> str:
    """What ansible-playbook printed for one task (its banner to the next)."""
    parts = stdout.split(f"TASK [{task}]")
    assert len(parts) == 2, f"task {task!r} not run once in:\n{stdout}"
    return parts[1].split("\nTASK [")[0].split("\nRUNNING HANDLER [")[0]


def _same_entry(a: list[object] | None, b: list[object] | None) -> bool:
    """Two state records of one path: equal, or both folders with the same type, mode
    and owner (a folder's mtime records that entries came and went)."""
    return a == b or (a is not None and b is not None and a[0] == b[0] == "dir"
                      and a[:4] == b[:4])


def test_check_run_first_shows_diffs_and_changes_nothing(provisioned_vm: Provisioned) -> None:
    """``ansible-playbook --check --diff`` before anything is provisioned: the module's
    task reports changed and shows each file mnic-ops would write as a diff, planned
    against the config the role would write (cron every minute, from site-vars.yml);
    nothing in the guest changes."""
    p = provisioned_vm
    c = p.check
    assert c.rc == 0, str(c)
    counts = recap(c)
    assert counts["failed"] == 0 and counts["changed"] >= 1, c.stdout
    task = _task_output(c.stdout, "mnic_ops : Provision the host with mnic-ops")
    assert "changed: [" in task, task
    assert "+++ after: /etc/cron.d/mnic-ops" in task, task
    # the daily job, every minute here (site-vars.yml), waiting for a busy install
    # rather than skipping it, its output appended to the log
    assert re.search(rf"^\+\* \* \* \* \* root {re.escape(MNIC)} clean --wait \d+ >>",
                     task, re.M), task
    assert f"+++ after: {PROJECT}/.claude/config/parallel-agents-config.json" in task
    assert f"+++ after: /etc/systemd/system/{UNIT}" in task
    # The config itself: the template task's own diff (a new file).
    config = _task_output(c.stdout, "mnic_ops : Write the mnic-ops configuration")
    assert "changed: [" in config and "+apply_fstab = true" in config, config
    # Every entry as it was; folders by type, mode and owner: running mnic-ops writes
    # Python's bytecode caches (left out), which moves their folders' mtimes.
    before, after = p.checked
    diff = sorted(k for k in before.keys() | after.keys() if not _same_entry(before.get(k),
                                                                            after.get(k)))
    assert not diff, "changed by a --check run:\n" + "\n".join(
        f"{k}: {before.get(k)} -> {after.get(k)}" for k in diff[:30])


def test_role_provisions_the_vm_over_ssh(provisioned_vm: Provisioned,
                                         host_class: HostClass) -> None:
    p = provisioned_vm
    counts = recap(p.first)
    assert counts["failed"] == 0 and counts["unreachable"] == 0, p.first.stdout
    assert counts["changed"] >= 1, p.first.stdout
    # --diff: the module's task shows what it changed, file by file.
    task = _task_output(p.first.stdout, "mnic_ops : Provision the host with mnic-ops")
    assert "changed: [" in task and "+++ after: /etc/cron.d/mnic-ops" in task, task
    # The class came from the firmware: the role set no override.
    config = p.vm.run("cat /etc/mnic-ops/config.toml", check=True).stdout
    assert "host_class" not in config, config
    decision = json.loads(p.vm.mnic("--json", "detect").stdout)
    assert decision["class"] == host_class.name and decision["source"] == "dmi"
    verify = p.vm.mnic("verify")
    assert verify.rc == 0, str(verify)


def test_testinfra_suite_passes_over_ssh(provisioned_vm: Provisioned) -> None:
    vm = provisioned_vm.vm
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", "tests/infra", *vm.testinfra_args()],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "MNIC_OPS_BIN": MNIC})
    TIMINGS[f"{vm.cls.name} testinfra"] = f"{time.monotonic() - t0:.0f} s"
    assert r.returncode == 0, r.stdout + r.stderr
    # every check applies here (relocation, cron, watcher, fstab applied): none skipped
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout


def test_watcher_is_enabled_active_and_compresses_a_file_written_in_the_guest(
        provisioned_vm: Provisioned) -> None:
    vm = provisioned_vm.vm
    assert vm.run(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert vm.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    _watcher_compresses(vm, _write_checkpoint_as_alice(vm, "cp-watch"))


def test_sessions_and_checkpoints_are_links_onto_the_ssd_with_noatime(
        provisioned_vm: Provisioned) -> None:
    vm = provisioned_vm.vm
    ssd = vm.run(f"readlink -f {SSD_BY_ID}", check=True).stdout.strip()
    assert vm.run(f"cat /sys/block/{os.path.basename(ssd)}/queue/rotational",
                  check=True).stdout.strip() == "0"
    for kind, path in DATA.items():
        assert vm.run(f"test -L {path}").rc == 0, f"{kind}: {path} is not a link"
        target = vm.run(f"readlink -f {path}", check=True).stdout.strip()
        assert target.startswith(f"{SSD_MOUNT}/"), f"{path} -> {target}"
        source, options = vm.run(f"findmnt -n -o SOURCE,OPTIONS -T {target}",
                                 check=True).stdout.split()
        assert source == ssd, f"{target} is on {source}, not the SSD {ssd}"
        assert "noatime" in options.split(","), options
    fstab = vm.run(f"findmnt --fstab -n -o OPTIONS {SSD_MOUNT}", check=True).stdout.strip()
    assert "noatime" in fstab.split(","), fstab


def test_cron_job_fires_under_the_cron_service_and_compresses_aged_files(
        provisioned_vm: Provisioned) -> None:
    p = provisioned_vm
    vm = p.vm
    # The job runs every minute; the files were written right after provisioning.
    done = " && ".join(f"test -f {f}.gz && test ! -e {f}" for f in p.aged)
    assert _wait_for(vm, done, timeout=150, every=5), \
        vm.run(f"ls -la {DATA['sessions']}/; cat /etc/cron.d/mnic-ops; "
               "tail -n 30 /var/log/mnic-ops-cron.log; journalctl -t CRON --no-pager -n 20"
               ).stdout
    # ... and it was cron that ran it: the service logged the command, after the files
    # were written.
    log = vm.run(f"journalctl -t CRON --no-pager -o short-unix --since @{int(p.aged_at)}",
                 check=True).stdout
    assert any("CMD" in ln and f"{MNIC} " in ln and " clean" in ln
               for ln in log.splitlines()), log
    assert vm.run("test -s /var/log/mnic-ops-cron.log").rc == 0
    # Files that are not old enough stay as they are.
    assert vm.run(f"test -f {DATA['sessions']}/SESSION_CURRENT.md").rc == 0


def test_reboot_keeps_noatime_links_data_and_the_watcher(provisioned_vm: Provisioned) -> None:
    vm = provisioned_vm.vm
    data = vm.state(SSD_MOUNT, PROJECT)
    before = vm.boot_id()
    seconds = vm.reboot()
    TIMINGS[f"{vm.cls.name} reboot"] = f"{seconds:.0f} s"
    assert vm.boot_id() != before
    assert vm.system_state == "running", f"failed units: {vm.failed_units}"
    options = vm.run(f"findmnt -n -o OPTIONS {SSD_MOUNT}", check=True).stdout.strip()
    assert "noatime" in options.split(","), f"after reboot: {options}"
    assert vm.state(SSD_MOUNT, PROJECT) == data
    assert vm.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    _watcher_compresses(vm, _write_checkpoint_as_alice(vm, "cp-after-reboot"))


def test_second_role_run_changes_nothing(provisioned_vm: Provisioned) -> None:
    vm = provisioned_vm.vm
    t0 = time.monotonic()
    r = vm.ansible_playbook(SITE_PLAYBOOK, *role_vars(vm))
    TIMINGS[f"{vm.cls.name} role (again)"] = f"{time.monotonic() - t0:.0f} s"
    assert r.rc == 0, str(r)
    counts = recap(r)
    assert "changed: [" not in _task_output(r.stdout, "mnic_ops : Provision the host "
                                                      "with mnic-ops")
    assert counts["changed"] == 0 and counts["failed"] == 0, \
        r.stdout + "\n--- what mnic-ops journalled (newest last) ---\n" + \
        "\n".join(vm.mnic("undo", "--list").stdout.splitlines()[-15:])
    assert vm.mnic("verify").rc == 0


def test_undo_all_restores_the_state_before_provisioning(
        provisioned_vm: Provisioned) -> None:
    """After ``undo --all`` only what the admin's own steps made is left: the role's
    config file and the SSD's filesystem and fstab line (pre-tasks). Everything
    mnic-ops changed (configs, links, data, fstab options, cron file, unit) is back."""
    p = provisioned_vm
    vm = p.vm
    u = vm.mnic("undo", "--all", timeout=600)
    assert u.rc == 0, str(u)
    after = vm.state(*STATE_ROOTS, skip=STATE_SKIP)
    admins = {"/etc/mnic-ops", "/etc/mnic-ops/config.toml", SSD_MOUNT,
              f"{SSD_MOUNT}/lost+found"}
    assert admins <= after.keys() and not admins & p.before.keys()
    fstab = vm.run("cat /etc/fstab", check=True).stdout
    added = fstab.splitlines()[len(p.fstab_before.splitlines()):]
    assert fstab.startswith(p.fstab_before) and len(added) == 1, fstab
    assert added[0].split()[:4] == [SSD_BY_ID, SSD_MOUNT, "ext4", "defaults"], added
    # Files and links must be as they were, times included. Folders keep type, mode
    # and owner; their mtime records that entries came and went (a temporary file
    # renamed over a config, a unit installed and removed), which undo cannot take back.
    ignore = admins | {"/etc/fstab"}

    diff = sorted(k for k in (p.before.keys() | after.keys()) - ignore
                  if not _same_entry(p.before.get(k), after.get(k)))
    assert not diff, "differs after undo --all:\n" + "\n".join(
        f"{k}: {p.before.get(k)} -> {after.get(k)}" for k in diff[:30])
    assert vm.run(f"systemctl is-active {UNIT}").stdout.strip() != "active"
    assert vm.run(f"systemctl is-enabled {UNIT}").stdout.strip() != "enabled"
    # The noatime remount is undone too: the live options are the fstab's again.
    options = vm.run(f"findmnt -n -o OPTIONS {SSD_MOUNT}", check=True).stdout.strip()
    assert "noatime" not in options.split(","), options
    # What the watcher and cron compressed came back with the data, still readable.
    for kind in ("sessions", "checkpoints"):
        assert vm.run(f"test -d {DATA[kind]} && test ! -L {DATA[kind]}").rc == 0
    for gz in (f"{DATA['checkpoints']}/manual/{TEST_PREFIX}cp-watch.json.gz",
               f"{DATA['sessions']}/{TEST_PREFIX}old-0.md.gz"):
        assert vm.run(f"gzip -t {gz}").rc == 0, gz
