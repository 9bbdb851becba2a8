"""The fstab format: the lossless parser checked against libmount (findmnt) on a corpus
and on random text, the options edit, and findmnt --verify reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from mnic_ops.core.errors import InputError
from mnic_ops.facts import fstabfile
from tests.fstabhelp import (
    CORPUS,
    entries_of,
    findmnt_entries,
    findmnt_reads_as_fstab,
    fstab_texts,
    needs_findmnt,
)

# --- the corpus -------------------------------------------------------------------------

def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_round_trip_is_identical(path: Path) -> None:
    raw = path.read_bytes()
    assert fstabfile.encode(fstabfile.parse(fstabfile.decode(raw), path.name).render()) == raw


@needs_findmnt
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_parse_equals_findmnt(path: Path) -> None:
    ref, err = findmnt_entries(path)
    assert "parse error" not in err
    mine = entries_of(fstabfile.parse(fstabfile.decode(path.read_bytes()), path.name))
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref, strict=True):
        for key in ("source", "target", "fstype", "options", "freq", "passno"):
            assert a[key] == b[key], (key, a, b)


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

@needs_findmnt
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fstab_texts().filter(findmnt_reads_as_fstab))
def test_hypothesis_round_trip_and_parse_equals_findmnt(tmp_path: Path, text: str) -> None:
    t = fstabfile.parse(text)
    assert t.render() == text
    p = tmp_path / "fstab"
    p.write_text(text)
    ref, err = findmnt_entries(p)
    assert "parse error" not in err
    assert entries_of(t) == ref


# --- parser details ------------------------------------------------------------------------

def test_unparsable_line_names_its_number() -> None:
    with pytest.raises(InputError, match=r"^etc/fstab:3: cannot parse: expected at least"):
        fstabfile.parse("# c\n/dev/sda1 / ext4 defaults 0 1\n/dev/sdb1 /data\n", "etc/fstab")
    with pytest.raises(InputError, match=r":2: .*field 5 \(dump frequency\).*'defaults'"):
        fstabfile.parse("\nLABEL=\"two words\" /srv ext4 defaults 0 2\n")
    with pytest.raises(InputError, match=r":1: .*field 6 \(fsck pass\).*'0x1'"):
        fstabfile.parse("/dev/a /a ext4 defaults 0 0x1\n")
    with pytest.raises(InputError, match=r":1: .*NUL"):
        fstabfile.parse("/dev/a /a ext4 de\0faults\n")


def test_fields_escapes_and_line_ends() -> None:
    t = fstabfile.parse("  LABEL=My\\040Disk\t/media/My\\040Disk  ntfs-3g  uid=1000  0  0  "
                        "# usb\r\n/dev/b /b ext4")
    a, b = t.entries
    assert (a.source, a.target, a.fstype, a.options, a.tail) == \
        ("LABEL=My Disk", "/media/My Disk", "ntfs-3g", "uid=1000", "  # usb")
    assert a.eol == "\r\n" and b.eol == "" and b.options is None and b.freq == 0
    assert fstabfile.unmangle("a\\134b\\777c\\000d") == "a\\b\udcffc"


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
    assert fstabfile.noatime_options(before) == after


def test_nodiratime_only_when_configured() -> None:
    assert fstabfile.noatime_options("defaults,diratime", nodiratime=True) == \
        "defaults,noatime,nodiratime"
    assert fstabfile.noatime_options("defaults,diratime") == "defaults,diratime,noatime"
    assert fstabfile.noatime_options("noatime,nodiratime", nodiratime=True) == "noatime,nodiratime"


def test_only_the_options_field_changes_blanks_included() -> None:
    """Issue 15: the blanks after the options field are kept as they are, even where
    the columns then no longer line up (` \t ` used to become `\t\t `)."""
    def change(line: str) -> str:
        e = fstabfile.parse(line).entries[0]
        return fstabfile.set_options(e, fstabfile.noatime_options(e.options_raw)).text

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


# --- findmnt --verify --------------------------------------------------------------------

def test_parse_verify_and_new_errors() -> None:
    cur = fstabfile.parse_verify("/\n   [E] unreachable source: UUID=x\n   [W] w\n/a\n   [E] e1\n",
                                 "findmnt: f: parse error at line 7 -- ignored\n")
    cand = fstabfile.parse_verify("/\n   [E] unreachable source: UUID=x\n/a\n   [E] e1\n"
                                  "   [E] e2\n",
                                  "findmnt: g: parse error at line 7 -- ignored\n"
                                  "findmnt: g: parse error at line 9 -- ignored\n")
    assert fstabfile.new_errors(cur, cand) == ["/a: e2", "line 9: parse error"]
    assert fstabfile.new_errors(cand, cur) == []
