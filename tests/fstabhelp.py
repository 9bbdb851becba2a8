"""fstab test helpers: the corpus, libmount's own parse (findmnt) in the shape of ours,
random valid fstab text, and a fake host with a framework install and an SSD mount."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from mnic_ops.facts import fstabfile
from tests.conftest import FIXTURES, write_tree
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


def entries_of(t: fstabfile.Fstab) -> list[dict[str, Any]]:
    """Our parse in findmnt's JSON shape (findmnt prints an empty value, as left by a
    decoded \\000, as null)."""
    return [{"source": e.source or None, "target": e.target or None,
             "fstype": e.fstype or None, "options": e.options or None, "freq": e.freq,
             "passno": e.passno} for e in t.entries]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def all_mount_points(t: fstabfile.Fstab) -> dict[str, list[str]]:
    return {fstabfile.norm_target(e.target): ["test"] for e in t.entries
            if e.target.startswith("/")}

# --- random valid fstab text ----------------------------------------------------

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


def findmnt_reads_as_fstab(text: str) -> bool:
    """findmnt --tab-file guesses the format from the first entry: one that starts with
    two numbers (sscanf "%u %u") is read as mountinfo. mount(8) reads /etc/fstab as fstab
    regardless, so such texts are left out of the comparison with findmnt."""
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        if body and body != "\r" and not body.startswith("#"):
            return re.match(r"[+-]?[0-9]+\s*[+-]?[0-9]", body) is None
    return True

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
