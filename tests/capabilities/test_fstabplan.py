"""The noatime plan: only eligible lines change and libmount agrees (corpus, random
text), why an entry is not eligible, and which entry governs a live mount."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from mnic_ops.capabilities import fstabplan
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import fstabfile, hostfacts
from tests.conftest import write_tree
from tests.fstabhelp import (
    CORPUS,
    all_mount_points,
    entries_of,
    findmnt_entries,
    findmnt_reads_as_fstab,
    fstab_texts,
    needs_findmnt,
)


@needs_findmnt
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_noatime_changes_only_eligible_lines_and_verifies(path: Path,
                                                                 tmp_path: Path) -> None:
    old = fstabfile.parse(fstabfile.decode(path.read_bytes()), path.name)
    decisions, new = fstabplan.plan_noatime(old, all_mount_points(old), [])
    changed = {d.line for d in decisions if d.state == "change"}
    differ = {a.number for a, b in zip(old.lines, new.lines, strict=True)
              if a.render() != b.render()}
    assert differ == changed
    assert len(new.lines) == len(old.lines)
    for n in changed:
        a, b = old.lines[n - 1], new.lines[n - 1]
        assert (a.source, a.target, a.fstype, a.freq, a.passno, a.eol) == \
               (b.source, b.target, b.fstype, b.freq, b.passno, b.eol)
        names = fstabfile.option_names(b.options)
        assert "noatime" in names
        assert not {"relatime", "strictatime", "atime"} & set(names)
        drop = {*fstabfile.ATIME_CONFLICTS, "noatime"}
        kept = [o for o in fstabfile.option_names(a.options) if o not in drop]
        assert [o for o in names if o != "noatime"] == kept  # order unchanged
    for d in decisions:
        if d.state == "skip":
            assert d.reason
    cand = tmp_path / "fstab.candidate"
    cand.write_bytes(fstabfile.encode(new.render()))
    assert fstabfile.new_errors(fstabfile.findmnt_verify(str(path)),
                                fstabfile.findmnt_verify(str(cand))) == []
    # and libmount reads the candidate exactly as we do
    assert entries_of(fstabfile.parse(fstabfile.decode(cand.read_bytes()))) == \
        findmnt_entries(cand)[0]


@needs_findmnt
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fstab_texts().filter(findmnt_reads_as_fstab))
def test_hypothesis_noatime_keeps_other_lines_and_libmount_agrees(tmp_path: Path,
                                                                   text: str) -> None:
    old = fstabfile.parse(text)
    decisions, new = fstabplan.plan_noatime(old, all_mount_points(old), [])
    changed = {d.line for d in decisions if d.state == "change"}
    assert {a.number for a, b in zip(old.lines, new.lines, strict=True)
            if a.render() != b.render()} == changed
    p = tmp_path / "fstab"
    p.write_text(new.render())
    assert entries_of(new) == findmnt_entries(p)[0]


# --- eligibility -------------------------------------------------------------------------

ELIGIBILITY = """\
UUID=1111 / ext4 defaults 0 1
/dev/sda2 none swap sw 0 0
tmpfs /tmp tmpfs nosuid 0 0
/srv/x /home/a/x none bind 0 0
nas:/e /mnt/nfs nfs defaults
UUID=2222 /data ext4 noatime 0 2
UUID=3333 /dup ext4 defaults 0 2
UUID=4444 /dup/ ext4 defaults 0 2
"""


def decide(mps: list[str], **kw: Any) -> dict[str, fstabplan.Decision]:
    ds, _ = fstabplan.plan_noatime(fstabfile.parse(ELIGIBILITY), {m: ["x"] for m in mps}, [], **kw)
    return {d.mount_point: d for d in ds}


def test_eligibility_reasons() -> None:
    d = decide(["/", "none", "/tmp", "/home/a/x", "/mnt/nfs", "/data", "/dup", "/nope"])
    assert d["/"].state == "change"
    assert d["none"].state == "skip" and "swap" in d["none"].reason
    assert "pseudo" in d["/tmp"].reason
    assert "bind mount" in d["/home/a/x"].reason
    assert "network filesystem" in d["/mnt/nfs"].reason and "include_network" in \
        d["/mnt/nfs"].reason
    assert d["/data"].state == "ok" and d["/data"].reason == "already noatime"
    assert d["/dup"].state == "skip" and "ambiguous" in d["/dup"].reason \
        and "lines 7, 8" in d["/dup"].reason
    assert "no fstab entry" in d["/nope"].reason
    assert decide(["/mnt/nfs"], include_network=True)["/mnt/nfs"].state == "change"


def test_no_entry_for_container_root() -> None:
    ds, _ = fstabplan.plan_noatime(fstabfile.parse("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"),
                                   {"/": ["x"]}, [])
    assert ds[0].state == "skip" and "root filesystem of a container" in ds[0].reason


def _mount(mp: str, source: str, dev: str, options: str = "rw,relatime") -> hostfacts.Mount:
    return hostfacts.Mount(mount_point=mp, source=source, fstype="ext4",
                       options=options.split(","), super_options=[], dev=dev)


def test_source_resolution_through_dev_disk_links(fake_root: Path) -> None:
    write_tree(fake_root, {"dev/vdb1": "", "dev/vdc1": "", "dev/mapper/.keep": "",
                           "dev/dm-3": ""})
    byu = fake_root / "dev/disk/by-uuid"
    byl = fake_root / "dev/disk/by-label"
    byu.mkdir(parents=True)
    byl.mkdir(parents=True)
    (byu / "aaaa-1111").symlink_to("../../vdb1")
    (byl / "framework\\x20data").symlink_to("../../vdc1")
    (fake_root / "dev/mapper/vg-data").symlink_to("../dm-3")
    text = ("UUID=aaaa-1111 /a ext4 defaults 0 2\n"
            "LABEL=framework\\040data /b ext4 defaults 0 2\n"
            "/dev/mapper/vg-data /c ext4 defaults 0 2\n"
            "UUID=AAAA-1111 /d ext4 defaults 0 2\n"
            "UUID=ffff /e ext4 defaults 0 2\n")
    mounts = [_mount("/a", "/dev/vdb1", "0:1"), _mount("/b", "/dev/vdb1", "0:2"),
              _mount("/c", "/dev/mapper/vg-data", "0:3"), _mount("/d", "/dev/vdb1", "0:4"),
              _mount("/e", "/dev/vdb1", "0:5")]
    res = fstabplan.Resolver(HostRoot.open(fake_root), use_blkid=False)
    ds, _ = fstabplan.plan_noatime(fstabfile.parse(text),
                                   {m: ["x"] for m in ("/a", "/b", "/c", "/d", "/e")},
                                   mounts, res)
    d = {x.mount_point: x for x in ds}
    assert d["/a"].state == "change" and "UUID=aaaa-1111 is /dev/vdb1" in d["/a"].notes
    assert d["/b"].state == "skip" and "comes from /dev/vdb1" in d["/b"].reason \
        and "/dev/vdc1" in d["/b"].reason
    assert d["/c"].state == "change"  # /dev/mapper link and mountinfo source agree
    assert d["/d"].state == "change"  # upper-case UUID matched case-insensitively
    assert d["/e"].state == "change" and "could not be resolved" in d["/e"].notes[0]
