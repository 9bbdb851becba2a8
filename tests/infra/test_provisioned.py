"""What `mnic-ops provision` promises, checked on the provisioned host with testinfra.

Run against any host: the CI test host (chroot), the qemu VMs (ssh), Vagrant machines
(`--ssh-config`). The expected values come from the host's own mnic-ops (its detected
class and tier), so the suite does not care which class the host is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.infra.conftest import MNIC, mnic_json

CONFIGS = {
    "parallel-agents-config.json": [("maxParallelAgents", "agents"),
                                    ("execution.workerPool.maxWorkers", "workers"),
                                    ("resourceManagement.memory.maxMemoryMB", "memory_mb")],
    "parallel-agents.json": [("parallelExecution.maxConcurrentAgents", "agents")],
    "background-tasks.json": [("execution.max_concurrent_tasks", "background_tasks")],
}


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def test_tool_installed(host: Any) -> None:
    f = host.file(MNIC)
    assert f.exists and f.mode & 0o111
    assert host.run(f"{MNIC} --version").rc == 0


def test_verify_reports_no_drift(host: Any) -> None:
    r = host.run(f"{MNIC} verify")
    assert r.rc == 0, r.stdout + r.stderr


def test_configs_are_valid_json_at_the_tier_values(host: Any,
                                                   projects: list[dict[str, Any]]) -> None:
    assert projects, "no framework install found on the host"
    render = mnic_json(host, "render", "--check")
    assert render["counts"]["pending"] == 0, render
    derived = render["derived"]
    checked = 0
    for p in projects:
        for name, keys in CONFIGS.items():
            f = host.file(f"{p['root']}/.claude/config/{name}")
            if not f.exists:
                continue
            data = json.loads(f.content_string)
            for dotted, dkey in keys:
                try:
                    value = _get(data, dotted)
                except KeyError:
                    continue
                assert value == derived[dkey], f"{f.path}: {dotted}"
                checked += 1
            assert f.user == p["user"], f"{f.path} lost its owner"
    assert checked, "none of the tier-managed keys was found"


def test_data_folders_are_links_onto_the_ssd(host: Any, projects: list[dict[str, Any]],
                                             settings: dict[str, Any]) -> None:
    if not settings.get("provision", {}).get("relocate", True):
        pytest.skip("provision.relocate = false on this host")
    ssd = settings["ssd_path"].rstrip("/")
    for p in projects:
        for kind in ("sessions", "checkpoint_store"):
            d = p["data"][kind]
            link = host.file(d["path"])
            assert link.is_symlink, f"{d['path']} is not a link"
            target = link.linked_to
            assert target.startswith(ssd + "/"), f"{d['path']} -> {target}"
            t = host.file(target)
            assert t.is_directory
            assert (t.user, t.group) == (p["user"], p["group"])
            assert link.user == p["user"]


def test_cron_jobs(host: Any, settings: dict[str, Any]) -> None:
    if not settings.get("provision", {}).get("cron", True):
        pytest.skip("provision.cron = false on this host")
    f = host.file("/etc/cron.d/mnic-ops")
    assert f.exists and f.is_file
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)
    jobs = [ln for ln in f.content_string.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#") and "=" not in ln.split()[0]]
    assert jobs, f.content_string
    for line in jobs:
        fields = line.split()
        assert fields[5] == "root", line  # the user field
        assert fields[6].startswith("/") and fields[6].endswith("mnic-ops"), line
        assert "clean" in fields[7:], line


def test_logrotate_file(host: Any, settings: dict[str, Any]) -> None:
    """The logs mnic-ops writes are rotated where logrotate is installed; where it is
    not, provision ships nothing (and says how to install it)."""
    f = host.file("/etc/logrotate.d/mnic-ops")
    wanted = settings.get("provision", {}).get("logrotate", True)
    if not host.file("/etc/logrotate.d").is_directory or not wanted:
        assert not f.exists
        return
    assert f.exists and f.is_file
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)
    assert "/var/log/mnic-ops.log" in f.content_string
    if host.exists("logrotate"):
        r = host.run("logrotate -d -s /dev/null /etc/logrotate.d/mnic-ops")
        assert r.rc == 0 and "error" not in (r.stdout + r.stderr).lower(), r.stderr


def test_watcher_unit(host: Any, settings: dict[str, Any]) -> None:
    if not settings.get("provision", {}).get("watcher", True):
        pytest.skip("provision.watcher = false on this host")
    f = host.file("/etc/systemd/system/mnic-ops-watch.service")
    assert f.exists
    assert "ExecStart=/" in f.content_string and " watch" in f.content_string


def test_noatime_in_fstab_and_live_where_applied(host: Any,
                                                 settings: dict[str, Any]) -> None:
    if not settings.get("provision", {}).get("apply_fstab", False):
        pytest.skip("provision.apply_fstab = false on this host (proposal only)")
    ssd_mount = host.run(f"findmnt -n -o TARGET -T {settings['ssd_path']}").stdout.strip()
    assert ssd_mount and ssd_mount != "/"
    line = [ln for ln in host.file("/etc/fstab").content_string.splitlines()
            if len(ln.split()) > 3 and not ln.startswith("#") and ln.split()[1] == ssd_mount]
    assert len(line) == 1 and "noatime" in line[0].split()[3].split(","), line
    live = host.run(f"findmnt -n -o OPTIONS {ssd_mount}").stdout.strip()
    assert "noatime" in live.split(","), live
