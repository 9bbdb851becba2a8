"""provision on host trees (--root): what it plans with no install, without a cron
daemon or systemd, and the logrotate file it ships (checked with logrotate itself,
journalled and undone with its folder's times)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostservices
from tests.conftest import run_mnic
from tests.testhost import write_project

PROJECT = "/home/alice/proj"
LOGROTATE = "etc/logrotate.d/mnic-ops"


def make_host(root: Path, *, cron: bool = True, systemd: str = "init",
              install: bool = True, logrotate: bool = True, extra: str = "") -> Path:
    """A host tree: a cron daemon binary, systemd as /sbin/init (or running, or
    neither), /etc/logrotate.d, one framework install."""
    for d in ("etc/cron.d", "etc/mnic-ops", "usr/sbin", "lib/systemd", "sbin",
              "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if logrotate:
        (root / "etc/logrotate.d").mkdir()
    if cron:
        shutil.copy("/bin/true", root / "usr/sbin/cron")
    if systemd in ("init", "running"):
        shutil.copy("/bin/true", root / "lib/systemd/systemd")
        (root / "sbin/init").symlink_to("/lib/systemd/systemd")
    if systemd == "running":
        (root / "sbin/init").unlink()
        (root / "run/systemd/system").mkdir(parents=True)
    if systemd == "sysvinit":
        shutil.copy("/bin/true", root / "sbin/init")
    projects = f'["{PROJECT}"]' if install else "[]"
    (root / "etc/mnic-ops/config.toml").write_text(
        f'host_class = "server"\nprojects = {projects}\nsearch_paths = []\n{extra}')
    if install:
        write_project(root / PROJECT.lstrip("/"))
    return root


def provision(root: Path, *args: str) -> tuple[int, dict]:
    r = run_mnic("--root", str(root), "--json", "provision", *args)
    try:
        return r.code, json.loads(r.out)
    except json.JSONDecodeError:
        raise AssertionError(r.out + r.err) from None


def items(doc: dict) -> dict[str, dict]:
    return {i["id"]: i for i in doc["items"]}


# --- what the host runs --------------------------------------------------------------

def test_presence_is_read_from_the_host_tree(fake_root: Path) -> None:
    root = HostRoot.open(make_host(fake_root, cron=False, systemd="none", install=False))
    assert not hostservices.cron_daemon(root).present
    assert not hostservices.systemd(root).present
    # /etc/cron.d alone (e2fsprogs ships a file there) is no cron daemon
    (fake_root / "etc/cron.d/e2scrub_all").write_text("# from e2fsprogs\n")
    assert not hostservices.cron_daemon(root).present
    shutil.copy("/bin/true", fake_root / "usr/sbin/crond")  # cronie
    assert hostservices.cron_daemon(root).present
    # systemd as the init the image boots (systemd-sysv's link, resolved in the tree)
    (fake_root / "lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/true", fake_root / "lib/systemd/systemd")
    (fake_root / "sbin/init").symlink_to("../lib/systemd/systemd")
    p = hostservices.systemd(root)
    assert p.present and "/lib/systemd/systemd" in p.evidence
    # a link that points outside the tree is resolved inside it
    (fake_root / "sbin/init").unlink()
    (fake_root / "sbin/init").symlink_to("/../../../../lib/systemd/systemd")
    assert hostservices.systemd(root).present
    (fake_root / "sbin/init").unlink()
    shutil.copy("/bin/true", fake_root / "sbin/init")  # sysvinit, busybox...
    assert not hostservices.systemd(root).present
    (fake_root / "run/systemd/system").mkdir(parents=True)  # running systemd
    assert hostservices.systemd(root).present


# --- no install -------------------------------------------------------------------

def test_no_install_plans_no_cron_jobs_and_no_watcher(fake_root: Path) -> None:
    root = make_host(fake_root, install=False)
    code, doc = provision(root, "--check")
    assert code == 3, doc  # the logrotate file is still planned
    it = items(doc)
    for name in ("cron", "watcher"):
        assert it[name]["state"] == "skipped", it
        assert "no framework install found" in it[name]["reason"]
    assert not [i for i in doc["items"] if "cron.d" in i["id"] or "systemd" in i["id"]]
    r = run_mnic("--root", str(root), "provision", "--check")
    assert "skipped: [cron]" in r.out and "no framework install found" in r.out
    assert "0 framework install(s)" in r.out


# --- a missing cron daemon or systemd ------------------------------------------------

def test_no_cron_daemon_fails_the_cron_item_with_the_fix(fake_root: Path) -> None:
    root = make_host(fake_root, cron=False)
    code, doc = provision(root, "--check")
    assert code == 1, doc
    cron = items(doc)["cron"]
    assert cron["state"] == "failed"
    assert "no cron daemon on this host" in cron["error"]
    assert "apt install cron" in cron["error"]
    assert "provision.missing_cron" in cron["error"]
    assert "file:/etc/cron.d/mnic-ops" not in items(doc)
    # the rest of the plan is still there, and applies
    assert items(doc)["file:/etc/logrotate.d/mnic-ops"]["state"] == "pending"
    code, doc = provision(root)
    assert code == 1
    assert items(doc)["file:/etc/logrotate.d/mnic-ops"]["state"] == "changed"
    assert not (root / "etc/cron.d/mnic-ops").exists()


def test_no_cron_daemon_skipped_by_config(fake_root: Path) -> None:
    root = make_host(fake_root, cron=False, extra='[provision]\nmissing_cron = "skip"\n')
    code, doc = provision(root, "--check")
    assert code == 3, doc
    cron = items(doc)["cron"]
    assert cron["state"] == "skipped"
    assert "no cron daemon" in cron["reason"] and "apt install cron" in cron["reason"]


def test_no_systemd_fails_the_watcher_item_with_the_fix(fake_root: Path) -> None:
    root = make_host(fake_root, systemd="sysvinit")
    code, doc = provision(root, "--check")
    assert code == 1, doc
    w = items(doc)["watcher"]
    assert w["state"] == "failed"
    assert "systemd is not this host's init" in w["error"]
    assert "/sbin/init is /sbin/init" in w["error"]
    assert not [i for i in doc["items"] if "mnic-ops-watch" in i["id"]]
    root2 = make_host(fake_root.parent / "other", systemd="none",
                      extra='[provision]\nmissing_systemd = "skip"\n')
    code, doc = provision(root2, "--check")
    assert code == 3 and items(doc)["watcher"]["state"] == "skipped", doc


def test_running_systemd_plans_the_unit(fake_root: Path) -> None:
    root = make_host(fake_root, systemd="running")
    code, doc = provision(root, "--check")
    assert code == 3, doc
    assert items(doc)["file:/etc/systemd/system/mnic-ops-watch.service"]["state"] == \
        "pending"


def test_bad_missing_key_value_is_refused(fake_root: Path) -> None:
    root = make_host(fake_root, extra='[provision]\nmissing_cron = "ignore"\n')
    r = run_mnic("--root", str(root), "provision", "--check")
    assert r.code == 2 and "missing_cron" in r.err, r.err


# --- logrotate ---------------------------------------------------------------------

def _logrotate() -> str:
    path = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.path.exists(path):
        pytest.skip("logrotate not installed (apt-get install logrotate)")
    return path


def test_logrotate_file_is_valid_rotates_and_is_undone(fake_root: Path,
                                                        tmp_path: Path) -> None:
    lr = _logrotate()
    root = make_host(fake_root, extra='[cron]\nlog = "/var/log/mnic/cron-jobs.log"\n')
    folder = root / "etc/logrotate.d"
    os.utime(folder, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = os.stat(folder)
    code, doc = provision(root, "--check", "--diff")
    assert code == 3, doc
    item = items(doc)["file:/etc/logrotate.d/mnic-ops"]
    assert item["state"] == "pending" and "+/var/log/mnic-ops.log " in item["diff"]
    code, doc = provision(root)
    assert code == 0, doc
    f = root / LOGROTATE
    st = f.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    text = f.read_text()
    assert "/var/log/mnic-ops.log /var/log/mnic/cron-jobs.log {" in text

    # logrotate itself reads it without an error ...
    state = tmp_path / "state"
    d = subprocess.run([lr, "-d", "-s", str(state), str(f)], capture_output=True,
                       text=True, timeout=60)
    assert d.returncode == 0, d.stdout + d.stderr
    assert "error" not in (d.stdout + d.stderr).lower(), d.stdout + d.stderr
    assert "considering log /var/log/mnic-ops.log" in d.stdout + d.stderr

    # ... and rotates what it names (the same file with its paths moved into tmp_path)
    logs = tmp_path / "var/log"
    (logs / "mnic").mkdir(parents=True)
    (logs / "mnic-ops.log").write_text("apply log\n")
    (logs / "mnic/cron-jobs.log").write_text("cron log\n")
    conf = tmp_path / "mnic-ops.conf"
    conf.write_text(text.replace("/var/log/", f"{logs}/"))
    r = subprocess.run([lr, "-f", "-s", str(state), str(conf)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (logs / "mnic-ops.log.1").read_text() == "apply log\n"
    assert (logs / "mnic/cron-jobs.log.1").read_text() == "cron log\n"
    assert not (logs / "mnic-ops.log").exists()  # renamed: the next run makes a new one

    # journalled and undone like every file, its folder's times included
    journal = [json.loads(x) for x in
               (root / "var/lib/mnic-ops/journal.jsonl").read_text().splitlines()]
    assert any(j["change"] == "file:/etc/logrotate.d/mnic-ops" for j in journal)
    time.sleep(0.01)
    u = run_mnic("--root", str(root), "undo", "--all")
    assert u.code == 0, u.out + u.err
    assert not f.exists()
    after = os.stat(folder)
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns,
                                                      before.st_atime_ns)


def test_logrotate_skipped_with_the_fix_when_not_installed(fake_root: Path) -> None:
    root = make_host(fake_root, logrotate=False)
    _code, doc = provision(root, "--check")
    it = items(doc)["file:/etc/logrotate.d/mnic-ops"]
    assert it["state"] == "skipped" and "apt install logrotate" in it["reason"], it


def test_logrotate_refuses_a_log_path_it_would_read_as_syntax(fake_root: Path) -> None:
    root = make_host(fake_root, extra='[cron]\nlog = "/var/log/mnic-ops-*.log"\n')
    code, doc = provision(root, "--check")
    assert code == 1, doc
    bad = [i for i in doc["items"] if i["state"] == "failed"]
    assert bad and "glob" in json.dumps(bad), bad
    assert not (root / LOGROTATE).exists()
