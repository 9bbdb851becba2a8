"""fstab: the command under a fake host root (proposal, verified atomic apply, undo, a
kill -9 during apply, ambiguous entries); the format, the plan and the write have their
own test files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnic_ops.capabilities import fstabplan
from mnic_ops.facts import fstabfile
from tests.conftest import REPO, run_mnic, write_tree
from tests.fstabhelp import FSTAB, host, needs_findmnt, sha

# --- the command under a fake root -------------------------------------------------------

def test_cli_proposes_for_data_mount_points_and_writes_nothing(fake_root: Path) -> None:
    root = host(fake_root)
    before = sha(root / "etc/fstab")
    r = run_mnic("--root", str(root), "fstab")
    assert r.code == 3, r.err
    assert "/mnt/ssd: holds /home/alice/p/project_archive/sessions -> /mnt/ssd/mnic/sessions" \
        in r.out
    assert "/: holds /home/alice/p/.claude/checkpoints" in r.out
    assert "  line 4: UUID=0a1b2c3d-0000-4000-8000-000000000002 /mnt/ssd" in r.out
    assert "note: UUID=0a1b2c3d-0000-4000-8000-000000000002 is /dev/vdb1" in r.out
    assert ("-UUID=0a1b2c3d-0000-4000-8000-000000000002 /mnt/ssd       ext4    defaults"
            "           0      2") in r.out
    assert ("+UUID=0a1b2c3d-0000-4000-8000-000000000002 /mnt/ssd       ext4    "
            "defaults,noatime           0      2") in r.out
    assert "+UUID=0a1b2c3d-0000-4000-8000-000000000001 /              ext4    " \
        "errors=remount-ro,noatime  0      1" in r.out
    assert sha(root / "etc/fstab") == before
    assert not list((root / "etc").glob("fstab.mnic-ops.*"))
    assert not (root / "var/lib/mnic-ops/journal.jsonl").exists()


def test_cli_json_and_mount_point_option(fake_root: Path) -> None:
    root = host(fake_root)
    r = run_mnic("--root", str(root), "fstab", "--mount-point", "/mnt/ssd/", "--json",
                 "--mount-point", "/srv", "--remount")
    assert r.code == 3, r.err
    data = json.loads(r.out)
    mps = {d["mount_point"]: d for d in data["mount_points"]}
    assert mps["/mnt/ssd"]["state"] == "change"
    assert mps["/mnt/ssd"]["new_options"] == "defaults,noatime"
    assert "(--mount-point)" in mps["/mnt/ssd"]["holds"]
    assert mps["/srv"]["state"] == "skip" and "no fstab entry" in mps["/srv"]["reason"]
    assert data["counts"]["pending"] == 1
    remount = {i["id"]: i for i in data["items"]}["remount:/mnt/ssd"]
    assert remount["state"] == "skipped" and "not the running system" in remount["reason"]
    assert data["items"][0]["diff"].startswith("--- a/etc/fstab\n+++ b/etc/fstab\n")


def test_cli_nothing_to_change_exits_0(fake_root: Path) -> None:
    root = host(fake_root, FSTAB.replace("errors=remount-ro ", "noatime,errors=remount-ro")
                .replace("defaults   ", "noatime    "))
    r = run_mnic("--root", str(root), "fstab")
    assert r.code == 0, r.out + r.err
    assert "already noatime, but the live mount is not (rw,relatime): run with --remount" \
        in r.out


def test_cli_apply_backup_mode_owner_journal_and_undo(fake_root: Path) -> None:
    root = host(fake_root)
    fst = root / "etc/fstab"
    os.chmod(fst, 0o640)
    if os.geteuid() == 0:
        os.chown(fst, 0, 4)
    original = fst.read_bytes()
    st0 = fst.stat()
    stale = root / "etc/.fstab.mnic-ops-tmp.999999999.abcd1234"  # left by a kill -9
    stale.write_text("half a candidate")
    r = run_mnic("--root", str(root), "fstab", "--apply", "--mount-point", "/mnt/ssd")
    assert r.code == 0, r.out + r.err
    assert "changed: [fstab:/etc/fstab]" in r.out
    new = fst.read_bytes()
    assert new != original
    old_lines, new_lines = original.splitlines(), new.splitlines()
    # only the entry asked for: --mount-point is the whole set (/ was changed too)
    assert [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b] \
        == [3]
    st1 = fst.stat()
    assert (st1.st_mode, st1.st_uid, st1.st_gid) == (st0.st_mode, st0.st_uid, st0.st_gid)
    backups = list((root / "etc").glob("fstab.mnic-ops.*"))
    assert len(backups) == 1 and backups[0].read_bytes() == original
    assert not [p for p in (root / "etc").iterdir() if ".mnic-ops-tmp" in p.name]
    journal = [json.loads(x) for x in
               (root / "var/lib/mnic-ops/journal.jsonl").read_text().splitlines()]
    assert [j["kind"] for j in journal] == ["fstab"]
    # applying again changes nothing; the automatic set still proposes /
    assert run_mnic("--root", str(root), "fstab", "--mount-point", "/mnt/ssd").code == 0
    r = run_mnic("--root", str(root), "fstab")
    assert r.code == 3 and "+UUID=0a1b2c3d-0000-4000-8000-000000000001 /  " in r.out, r.out
    r = run_mnic("--root", str(root), "undo", "--last")
    assert r.code == 0, r.err
    assert fst.read_bytes() == original


def test_undo_refuses_when_fstab_changed_since(fake_root: Path) -> None:
    root = host(fake_root)
    assert run_mnic("--root", str(root), "fstab", "--apply").code == 0
    fst = root / "etc/fstab"
    edited = fst.read_bytes() + b"# admin edit\n"
    fst.write_bytes(edited)
    r = run_mnic("--root", str(root), "undo", "--last")
    assert r.code != 0 and "changed since mnic-ops wrote it" in r.err
    assert fst.read_bytes() == edited


def test_cli_symlinked_fstab_is_written_through(fake_root: Path) -> None:
    root = host(fake_root)
    real = root / "etc/fstab.d/main"
    real.parent.mkdir()
    (root / "etc/fstab").rename(real)
    (root / "etc/fstab").symlink_to("/etc/fstab.d/main")  # absolute: inside the root
    r = run_mnic("--root", str(root), "fstab", "--apply")
    assert r.code == 0, r.out + r.err
    assert (root / "etc/fstab").is_symlink()
    assert os.readlink(root / "etc/fstab") == "/etc/fstab.d/main"
    assert b"defaults,noatime" in real.read_bytes()
    assert list(real.parent.glob("main.mnic-ops.*"))


def test_cli_bad_line_names_number_and_writes_nothing(fake_root: Path) -> None:
    root = host(fake_root, FSTAB + "/dev/sdz1 /broken\n")
    before = sha(root / "etc/fstab")
    r = run_mnic("--root", str(root), "fstab", "--apply")
    assert r.code == 2
    assert "error: /etc/fstab:6: cannot parse" in r.err and "Traceback" not in r.err
    assert sha(root / "etc/fstab") == before
    assert not list((root / "etc").glob("fstab.mnic-ops.*"))
    assert not (root / "var/lib/mnic-ops/journal.jsonl").exists()


def test_cli_config_nodiratime_and_include_network(fake_root: Path) -> None:
    root = host(fake_root, FSTAB + "nas:/export /mnt/nas nfs4 defaults,_netdev\n")
    write_tree(root, {"etc/mnic-ops/config.toml":
                      "[fstab]\nnodiratime = true\nmount_points = [\"/mnt/nas\"]\n"})
    r = run_mnic("--root", str(root), "fstab", "--json")
    mps = {d["mount_point"]: d for d in json.loads(r.out)["mount_points"]}
    assert mps["/mnt/ssd"]["new_options"] == "defaults,noatime,nodiratime"
    assert mps["/mnt/nas"]["state"] == "skip" and "network" in mps["/mnt/nas"]["reason"]
    r = run_mnic("--root", str(root), "fstab", "--json",
                 env={"MNIC_OPS_FSTAB__INCLUDE_NETWORK": "1"})
    mps = {d["mount_point"]: d for d in json.loads(r.out)["mount_points"]}
    assert mps["/mnt/nas"]["new_options"] == "defaults,_netdev,noatime,nodiratime"


def test_cli_missing_fstab_is_a_clear_error(fake_root: Path) -> None:
    r = run_mnic("--root", str(fake_root), "fstab", "--mount-point", "/")
    assert r.code == 2 and "error: /etc/fstab: no such file" in r.err
    (fake_root / "etc/fstab").symlink_to("/etc/gone")
    r = run_mnic("--root", str(fake_root), "fstab", "--mount-point", "/")
    assert r.code == 2 and "a symlink to /etc/gone, which is missing" in r.err
    r = run_mnic("--root", str(fake_root), "fstab", "--fstab", str(fake_root / "nope"))
    assert r.code == 2 and "nope: no such file" in r.err
    r = run_mnic("--root", str(fake_root), "fstab", "--mount-point", "relative")
    assert r.code == 2 and "not an absolute path" in r.err



@pytest.mark.slow
@needs_findmnt
def test_kill_9_during_apply_leaves_old_or_new_and_a_rerun_finishes(fake_root: Path) -> None:
    root = host(fake_root)
    fst = root / "etc/fstab"
    old = fst.read_bytes()
    _, planned = fstabplan.plan_noatime(fstabfile.parse(fstabfile.decode(old)),
                                        {"/": ["x"], "/mnt/ssd": ["x"]}, [])
    new = fstabfile.encode(planned.render())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "mnic_ops", "--root", str(root), "fstab", "--apply"]
    rng = random.Random(5)
    for _ in range(8):
        fst.write_bytes(old)
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert fst.read_bytes() in (old, new)
    r = run_mnic("--root", str(root), "fstab", "--apply")
    assert r.code == 0, r.out + r.err
    assert fst.read_bytes() == new
    assert not [x for x in (root / "etc").iterdir() if ".mnic-ops-tmp" in x.name]


def test_explicit_mount_points_are_the_whole_set(fake_root: Path) -> None:
    """`--mount-point /mnt/ssd --apply` also added noatime to / (where the install
    lives): the automatic set now applies only without --mount-point."""
    root = host(fake_root)
    r = run_mnic("--root", str(root), "--json", "fstab", "--mount-point", "/mnt/ssd")
    data = json.loads(r.out)
    assert [d["mount_point"] for d in data["mount_points"]] == ["/mnt/ssd"]
    # what it holds is still said
    assert "/home/alice/p/project_archive/sessions -> /mnt/ssd/mnic/sessions" in \
        data["mount_points"][0]["holds"]
    assert run_mnic("--root", str(root), "fstab", "--apply", "--mount-point",
                    "/mnt/ssd").code == 0
    text = (root / "etc/fstab").read_text()
    assert "/mnt/ssd       ext4    defaults,noatime " in text
    assert "/              ext4    errors=remount-ro  0" in text  # untouched


AMBIGUOUS = FSTAB + "/dev/vdc1 /mnt/ssd ext4 defaults 0 2\n"


def test_an_ambiguous_entry_asked_for_fails_with_the_reason(fake_root: Path) -> None:
    root = host(fake_root, AMBIGUOUS)
    before = sha(root / "etc/fstab")
    r = run_mnic("--root", str(root), "fstab", "--mount-point", "/mnt/ssd", "--apply")
    assert r.code == 1, r.out + r.err
    assert "failed: [fstab:/mnt/ssd]" in r.out, r.out
    assert "2 entries for /mnt/ssd (lines 4, 6): ambiguous" in r.out
    assert sha(root / "etc/fstab") == before
    r = run_mnic("--root", str(root), "--json", "fstab", "--mount-point", "/mnt/ssd")
    doc = json.loads(r.out)
    assert r.code == 1 and doc["ok"] is False
    assert any("ambiguous" in e["message"] for e in doc["errors"]), doc["errors"]
    assert doc["mount_points"][0]["ambiguous"] is True


def test_an_ambiguous_data_mount_fails_its_item_and_the_rest_applies(fake_root: Path
                                                                      ) -> None:
    root = host(fake_root, AMBIGUOUS)
    r = run_mnic("--root", str(root), "fstab", "--apply")
    assert r.code == 1, r.out + r.err
    assert "failed: [fstab:/mnt/ssd]" in r.out
    text = (root / "etc/fstab").read_text()
    assert "errors=remount-ro,noatime" in text  # / still got its change
    assert "/mnt/ssd       ext4    defaults           0" in text


def test_provision_an_ambiguous_entry_is_a_failed_item(fake_root: Path) -> None:
    root = host(fake_root, AMBIGUOUS)
    (root / "etc/mnic-ops").mkdir(parents=True)
    (root / "etc/mnic-ops/config.toml").write_text(
        'host_class = "server"\n[provision]\nrelocate = false\ncron = false\n'
        "watcher = false\nlogrotate = false\n")
    r = run_mnic("--root", str(root), "--json", "provision", "--check")
    doc = json.loads(r.out)
    assert r.code == 1, r.out + r.err
    items = {i["id"]: i for i in doc["items"]}
    assert items["fstab:/mnt/ssd"]["state"] == "failed", items
    assert "ambiguous" in items["fstab:/mnt/ssd"]["error"]
    # ... and it does not stop the rest of the plan (a planning failure would)
    assert not [i for i in doc["items"] if "planning failed elsewhere" in
                i.get("reason", "")], doc["items"]


def test_an_explicit_set_with_an_ambiguous_entry_writes_nothing(fake_root: Path) -> None:
    """--mount-point names the whole set, all or nothing: one of it with two fstab
    entries fails (exit 1) and the others are not written either."""
    (fake_root / "etc/fstab").write_text(
        "/dev/a /srv ext4 defaults 0 2\n/dev/b /data ext4 defaults 0 2\n"
        "/dev/c /data ext4 defaults 0 2\n")
    before = (fake_root / "etc/fstab").read_bytes()
    r = run_mnic("--root", str(fake_root), "--json", "fstab", "--apply",
                 "--mount-point", "/srv", "--mount-point", "/data")
    assert r.code == 1, r.out + r.err
    doc = json.loads(r.out)
    states = {i["id"]: i["state"] for i in doc["items"]}
    assert states["fstab:/data"] == "failed" and states["fstab:/etc/fstab"] == "skipped"
    assert (fake_root / "etc/fstab").read_bytes() == before
