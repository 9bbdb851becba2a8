"""fstab: lossless parser checked against libmount (findmnt), the noatime planner, the
verified atomic apply with undo, and the command under a fake host root."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnic_ops.capabilities import fstab
from mnic_ops.changes.model import ApplyContext
from mnic_ops.core.errors import InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostfacts
from tests.conftest import FIXTURES, REPO, run_mnic, write_tree
from tests.linkhelp import record

CORPUS = sorted((FIXTURES / "fstab").glob("*.fstab"))
HAVE_FINDMNT = shutil.which("findmnt") is not None
needs_findmnt = pytest.mark.skipif(not HAVE_FINDMNT, reason="findmnt (util-linux) missing")


def findmnt_entries(path: Path | str) -> tuple[list[dict[str, Any]], str]:
    """libmount's own parse of a file: entries and the parse errors it reported."""
    r = subprocess.run(["findmnt", "--tab-file", str(path), "-J", "-o",
                        "SOURCE,TARGET,FSTYPE,OPTIONS,FREQ,PASSNO"],
                       capture_output=True, text=True, check=False)
    data = json.loads(r.stdout)["filesystems"] if r.stdout.strip() else []
    return data, r.stderr


def entries_of(t: fstab.Fstab) -> list[dict[str, Any]]:
    """Our parse in findmnt's JSON shape (findmnt prints an empty value, as left by a
    decoded \\000, as null)."""
    return [{"source": e.source or None, "target": e.target or None,
             "fstype": e.fstype or None, "options": e.options or None, "freq": e.freq,
             "passno": e.passno} for e in t.entries]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def all_mount_points(t: fstab.Fstab) -> dict[str, list[str]]:
    return {fstab.norm_target(e.target): ["test"] for e in t.entries if e.target.startswith("/")}


# --- the corpus -------------------------------------------------------------------------

def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_round_trip_is_identical(path: Path) -> None:
    raw = path.read_bytes()
    assert fstab.encode(fstab.parse(fstab.decode(raw), path.name).render()) == raw


@needs_findmnt
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_parse_equals_findmnt(path: Path) -> None:
    ref, err = findmnt_entries(path)
    assert "parse error" not in err
    mine = entries_of(fstab.parse(fstab.decode(path.read_bytes()), path.name))
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref, strict=True):
        for key in ("source", "target", "fstype", "options", "freq", "passno"):
            assert a[key] == b[key], (key, a, b)


@needs_findmnt
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_noatime_changes_only_eligible_lines_and_verifies(path: Path,
                                                                 tmp_path: Path) -> None:
    old = fstab.parse(fstab.decode(path.read_bytes()), path.name)
    decisions, new = fstab.plan_noatime(old, all_mount_points(old), [])
    changed = {d.line for d in decisions if d.state == "change"}
    differ = {a.number for a, b in zip(old.lines, new.lines, strict=True)
              if a.render() != b.render()}
    assert differ == changed
    assert len(new.lines) == len(old.lines)
    for n in changed:
        a, b = old.lines[n - 1], new.lines[n - 1]
        assert (a.source, a.target, a.fstype, a.freq, a.passno, a.eol) == \
               (b.source, b.target, b.fstype, b.freq, b.passno, b.eol)
        names = fstab.option_names(b.options)
        assert "noatime" in names
        assert not {"relatime", "strictatime", "atime"} & set(names)
        drop = {*fstab.ATIME_CONFLICTS, "noatime"}
        kept = [o for o in fstab.option_names(a.options) if o not in drop]
        assert [o for o in names if o != "noatime"] == kept  # order unchanged
    for d in decisions:
        if d.state == "skip":
            assert d.reason
    cand = tmp_path / "fstab.candidate"
    cand.write_bytes(fstab.encode(new.render()))
    assert fstab.new_errors(fstab.findmnt_verify(str(path)), fstab.findmnt_verify(str(cand))) == []
    # and libmount reads the candidate exactly as we do
    assert entries_of(fstab.parse(fstab.decode(cand.read_bytes()))) == findmnt_entries(cand)[0]


def test_corpus_covers_the_cases_the_issue_names() -> None:
    text = {p.name: p.read_text(errors="replace") for p in CORPUS}
    joined = "\n".join(text.values())
    for needle in ("UUID=", "PARTUUID=", "LABEL=", "PARTLABEL=", "/dev/mapper/",
                   "compress=zstd", " swap ", "\\040", "\t", "x-systemd.", " bind ",
                   "relatime", "noatime", " nfs", " cifs "):
        assert needle in joined, needle
    assert any(not t.endswith("\n") for t in text.values())
    assert any("#" in line.split("0 2", 1)[-1] for t in text.values()
               for line in t.splitlines() if not line.lstrip().startswith("#"))


# --- hypothesis: random valid fstab text ----------------------------------------------------

_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-_.:=,@+%\"'#"
_piece = st.one_of(
    st.sampled_from(_SAFE),
    st.integers(0, 127).map(lambda v: f"\\{v:03o}"),   # an octal escape
    st.sampled_from(["\\x", "\\0", "\\12", "\\8", "\\"]),  # backslashes that are no escape
)
_field = st.lists(_piece, min_size=1, max_size=8).map("".join)
_sep = st.text(" \t", min_size=1, max_size=4)
_blank = st.text(" \t", max_size=3)
_num = st.tuples(st.sampled_from(["", "+", "-"]), st.integers(0, 99999),
                 st.sampled_from(["", "0", "00"])).map(lambda t: f"{t[0]}{t[2]}{t[1]}")


@st.composite
def _entry(draw: st.DrawFn) -> str:
    n = draw(st.integers(3, 6))
    first = draw(_field.filter(lambda f: not f.startswith("#")))
    fields = [first] + [draw(_field) for _ in range(min(n, 4) - 1)]
    fields += [draw(_num) for _ in range(n - 4)]
    out = draw(_blank) + fields[0]
    for f in fields[1:]:
        out += draw(_sep) + f
    if n == 6 and draw(st.booleans()):
        out += draw(_sep) + "# " + draw(st.text(_SAFE + " \t", max_size=10))
    return out + draw(_blank)


_comment = st.tuples(_blank, st.text(_SAFE + " \t\\", max_size=12)).map(
    lambda t: f"{t[0]}#{t[1]}")
_line = st.one_of(_entry(), _entry(), _comment, _blank)


@st.composite
def fstab_texts(draw: st.DrawFn) -> str:
    lines = draw(st.lists(_line, max_size=8))
    eols = [draw(st.sampled_from(["\n", "\n", "\r\n"])) for _ in lines]
    text = "".join(line + eol for line, eol in zip(lines, eols, strict=True))
    if lines and draw(st.booleans()):
        text = text[: -len(eols[-1])]  # no final newline
    return text


def _findmnt_reads_as_fstab(text: str) -> bool:
    """findmnt --tab-file guesses the format from the first entry: one that starts with
    two numbers (sscanf "%u %u") is read as mountinfo. mount(8) reads /etc/fstab as fstab
    regardless, so such texts are left out of the comparison with findmnt."""
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        if body and body != "\r" and not body.startswith("#"):
            return re.match(r"[+-]?[0-9]+\s*[+-]?[0-9]", body) is None
    return True


@needs_findmnt
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fstab_texts().filter(_findmnt_reads_as_fstab))
def test_hypothesis_round_trip_and_parse_equals_findmnt(tmp_path: Path, text: str) -> None:
    t = fstab.parse(text)
    assert t.render() == text
    p = tmp_path / "fstab"
    p.write_text(text)
    ref, err = findmnt_entries(p)
    assert "parse error" not in err
    assert entries_of(t) == ref


@needs_findmnt
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fstab_texts().filter(_findmnt_reads_as_fstab))
def test_hypothesis_noatime_keeps_other_lines_and_libmount_agrees(tmp_path: Path,
                                                                   text: str) -> None:
    old = fstab.parse(text)
    decisions, new = fstab.plan_noatime(old, all_mount_points(old), [])
    changed = {d.line for d in decisions if d.state == "change"}
    assert {a.number for a, b in zip(old.lines, new.lines, strict=True)
            if a.render() != b.render()} == changed
    p = tmp_path / "fstab"
    p.write_text(new.render())
    assert entries_of(new) == findmnt_entries(p)[0]


# --- parser details ------------------------------------------------------------------------

def test_unparsable_line_names_its_number() -> None:
    with pytest.raises(InputError, match=r"^etc/fstab:3: cannot parse: expected at least"):
        fstab.parse("# c\n/dev/sda1 / ext4 defaults 0 1\n/dev/sdb1 /data\n", "etc/fstab")
    with pytest.raises(InputError, match=r":2: .*field 5 \(dump frequency\).*'defaults'"):
        fstab.parse("\nLABEL=\"two words\" /srv ext4 defaults 0 2\n")
    with pytest.raises(InputError, match=r":1: .*field 6 \(fsck pass\).*'0x1'"):
        fstab.parse("/dev/a /a ext4 defaults 0 0x1\n")
    with pytest.raises(InputError, match=r":1: .*NUL"):
        fstab.parse("/dev/a /a ext4 de\0faults\n")


def test_fields_escapes_and_line_ends() -> None:
    t = fstab.parse("  LABEL=My\\040Disk\t/media/My\\040Disk  ntfs-3g  uid=1000  0  0  # usb\r\n"
                "/dev/b /b ext4")
    a, b = t.entries
    assert (a.source, a.target, a.fstype, a.options, a.tail) == \
        ("LABEL=My Disk", "/media/My Disk", "ntfs-3g", "uid=1000", "  # usb")
    assert a.eol == "\r\n" and b.eol == "" and b.options is None and b.freq == 0
    assert fstab.unmangle("a\\134b\\777c\\000d") == "a\\b\udcffc"


@pytest.mark.parametrize(("before", "after"), [
    ("defaults", "defaults,noatime"),
    ("rw,relatime,errors=remount-ro", "rw,noatime,errors=remount-ro"),
    ("relatime", "noatime"),
    ("strictatime,nodev,atime", "noatime,nodev"),
    ("noatime", "noatime"),
    ("noatime,relatime", "noatime"),
    ("nodiratime,defaults", "nodiratime,defaults,noatime"),
    ('context="a:b:s0:c1,c2",relatime', 'context="a:b:s0:c1,c2",noatime'),
    ("defaults,", "defaults,noatime,"),
    ("lazytime,x-systemd.automount", "lazytime,x-systemd.automount,noatime"),
    (None, "noatime"),
])
def test_noatime_options(before: str | None, after: str) -> None:
    assert fstab.noatime_options(before) == after


def test_nodiratime_only_when_configured() -> None:
    assert fstab.noatime_options("defaults,diratime", nodiratime=True) == \
        "defaults,noatime,nodiratime"
    assert fstab.noatime_options("defaults,diratime") == "defaults,diratime,noatime"
    assert fstab.noatime_options("noatime,nodiratime", nodiratime=True) == "noatime,nodiratime"


def test_only_the_options_field_changes_blanks_included() -> None:
    """Issue 15: the blanks after the options field are kept as they are, even where
    the columns then no longer line up (` \t ` used to become `\t\t `)."""
    def change(line: str) -> str:
        e = fstab.parse(line).entries[0]
        return fstab.set_options(e, fstab.noatime_options(e.options_raw)).text

    assert change("/dev/a  /a  ext4  defaults          0  2") == \
        "/dev/a  /a  ext4  defaults,noatime          0  2"
    assert change("/dev/a  /a  ext4  rw,relatime  0  2") == "/dev/a  /a  ext4  rw,noatime  0  2"
    assert change("/dev/a\t/a\text4\tdefaults\t\t0\t2") == \
        "/dev/a\t/a\text4\tdefaults,noatime\t\t0\t2"
    assert change("/dev/a /a ext4 defaults \t 0 2") == "/dev/a /a ext4 defaults,noatime \t 0 2"
    assert change("/dev/a /a ext4 defaults 0 2 # c") == "/dev/a /a ext4 defaults,noatime 0 2 # c"
    assert change("/dev/a /a ext4 defaults \t") == "/dev/a /a ext4 defaults,noatime \t"
    assert change("/dev/a /a ext4") == "/dev/a /a ext4 noatime"
    assert change("/dev/a\t/a\text4 ") == "/dev/a\t/a\text4\tnoatime "


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


def decide(mps: list[str], **kw: Any) -> dict[str, fstab.Decision]:
    ds, _ = fstab.plan_noatime(fstab.parse(ELIGIBILITY), {m: ["x"] for m in mps}, [], **kw)
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
    ds, _ = fstab.plan_noatime(fstab.parse("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"),
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
    res = fstab.Resolver(HostRoot.open(fake_root), use_blkid=False)
    ds, _ = fstab.plan_noatime(fstab.parse(text),
                               {m: ["x"] for m in ("/a", "/b", "/c", "/d", "/e")},
                           mounts, res)
    d = {x.mount_point: x for x in ds}
    assert d["/a"].state == "change" and "UUID=aaaa-1111 is /dev/vdb1" in d["/a"].notes
    assert d["/b"].state == "skip" and "comes from /dev/vdb1" in d["/b"].reason \
        and "/dev/vdc1" in d["/b"].reason
    assert d["/c"].state == "change"  # /dev/mapper link and mountinfo source agree
    assert d["/d"].state == "change"  # upper-case UUID matched case-insensitively
    assert d["/e"].state == "change" and "could not be resolved" in d["/e"].notes[0]


def test_resolve_beneath_stays_inside_root(tmp_path: Path) -> None:
    from mnic_ops.core import beneathfs

    write_tree(tmp_path, {"etc/real/fstab": "x", "outside": ""})
    (tmp_path / "etc/fstab").symlink_to("/etc/real/fstab")
    (tmp_path / "etc/up").symlink_to("../../../../../etc/real")
    (tmp_path / "etc/loop").symlink_to("loop")
    assert beneathfs.resolve_beneath(tmp_path, "/etc/fstab") == "/etc/real/fstab"
    assert beneathfs.resolve_beneath(tmp_path, "/etc/up/fstab") == "/etc/real/fstab"
    assert beneathfs.resolve_beneath(tmp_path, "/etc/missing/x") == "/etc/missing/x"
    with pytest.raises(OpsError, match="too many levels"):
        beneathfs.resolve_beneath(tmp_path, "/etc/loop")


def test_parse_verify_and_new_errors() -> None:
    cur = fstab.parse_verify("/\n   [E] unreachable source: UUID=x\n   [W] w\n/a\n   [E] e1\n",
                         "findmnt: f: parse error at line 7 -- ignored\n")
    cand = fstab.parse_verify("/\n   [E] unreachable source: UUID=x\n/a\n   [E] e1\n   [E] e2\n",
                          "findmnt: g: parse error at line 7 -- ignored\n"
                          "findmnt: g: parse error at line 9 -- ignored\n")
    assert fstab.new_errors(cur, cand) == ["/a: e2", "line 9: parse error"]
    assert fstab.new_errors(cand, cur) == []


# --- the command under a fake root -------------------------------------------------------

FSTAB = """\
# /etc/fstab: static file system information.
# <file system>                          <mount point>  <type>  <options>          <dump> <pass>
UUID=0a1b2c3d-0000-4000-8000-000000000001 /              ext4    errors=remount-ro  0      1
UUID=0a1b2c3d-0000-4000-8000-000000000002 /mnt/ssd       ext4    defaults           0      2
UUID=0a1b2c3d-0000-4000-8000-000000000003 none           swap    sw                 0      0
"""
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw
40 27 254:17 / /mnt/ssd rw,relatime - ext4 /dev/vdb1 rw
"""


def host(fake_root: Path, fstab: str = FSTAB) -> Path:
    """A host with one framework install whose sessions are symlinked to the SSD."""
    write_tree(fake_root, {
        "etc/fstab": fstab, "proc/self/mountinfo": MOUNTINFO, "dev/vda1": "", "dev/vdb1": "",
        "home/alice/p/.claude/agents/a.md": "x", "home/alice/p/.ai-tools/x": "",
        "home/alice/p/.claude/checkpoints/c.json": "{}",
        "mnt/ssd/mnic/sessions/s.md": "x",
    })
    byu = fake_root / "dev/disk/by-uuid"
    byu.mkdir(parents=True)
    for n, dev in (("1", "vda1"), ("2", "vdb1")):
        (byu / f"0a1b2c3d-0000-4000-8000-00000000000{n}").symlink_to(f"../../{dev}")
    (fake_root / "home/alice/p/project_archive").mkdir()
    (fake_root / "home/alice/p/project_archive/sessions").symlink_to("/mnt/ssd/mnic/sessions")
    # as relocate leaves it: the link is in mnic-ops's own record, so it is followed
    record(fake_root, "/home/alice/p", "project_archive/sessions", "/mnt/ssd/mnic/sessions",
           "sessions", 0, 0, dest_base="/mnt/ssd", dest_rel="mnic/sessions")
    return fake_root


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


def test_apply_refuses_when_file_changed_after_plan(fake_root: Path) -> None:
    root = host(fake_root)
    fst = root / "etc/fstab"
    target = fstab.locate(HostRoot.open(root), None)
    old = fst.read_bytes()
    _, new = fstab.plan_noatime(fstab.parse(fstab.decode(old)), {"/mnt/ssd": ["x"]}, [])
    item = fstab.fstab_write_item(target, old, fstab.encode(new.render()), ["/mnt/ssd"])
    fst.write_bytes(old + b"# edited meanwhile\n")
    assert item.action is not None
    with pytest.raises(OpsError, match="changed since the plan was made"):
        item.action(ApplyContext(HostRoot.open(root), "e1", "fstab"))
    assert fst.read_bytes() == old + b"# edited meanwhile\n"


@needs_findmnt
def test_apply_refuses_a_candidate_with_new_errors(fake_root: Path) -> None:
    """The verify gate itself: a candidate that breaks a line is refused, nothing
    written, no backup left behind."""
    root = host(fake_root)
    fst = root / "etc/fstab"
    old = fst.read_bytes()
    bad = old.replace(b"none           swap", b"none           swap nonsense")
    item = fstab.fstab_write_item(fstab.locate(HostRoot.open(root), None), old, bad, ["x"])
    assert item.action is not None
    with pytest.raises(OpsError, match="findmnt --verify finds new errors"):
        item.action(ApplyContext(HostRoot.open(root), "e1", "fstab"))
    assert fst.read_bytes() == old
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["fstab"]


@pytest.mark.slow
@needs_findmnt
def test_kill_9_during_apply_leaves_old_or_new_and_a_rerun_finishes(fake_root: Path) -> None:
    root = host(fake_root)
    fst = root / "etc/fstab"
    old = fst.read_bytes()
    _, planned = fstab.plan_noatime(fstab.parse(fstab.decode(old)),
                                    {"/": ["x"], "/mnt/ssd": ["x"]}, [])
    new = fstab.encode(planned.render())
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
