"""Attack 7 of issue 15: fstab bytes are kept byte for byte, whatever the encoding.

One byte that is not UTF-8 anywhere in the file (``/dev/a /caf\\xe9 ext4 ...``) ended
in "internal error: UnicodeDecodeError", even in propose mode, and the blanks after a
changed options field were rewritten (`` \\t `` became ``\\t\\t ``). Now: the file is
parsed and written back byte for byte, only the options field of the asked entries
changes (its blanks included), the diff and the JSON show such bytes as ``\\xNN``, the
``findmnt --verify`` comparison still works, and input that is refused writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mnic_ops.capabilities import fstab, fstabapply, fstabplan
from mnic_ops.changes.model import unified_diff
from mnic_ops.core.errors import InputError
from mnic_ops.facts import fstabfile
from tests.conftest import REPO

HAVE_FINDMNT = shutil.which("findmnt") is not None
needs_findmnt = pytest.mark.skipif(not HAVE_FINDMNT, reason="findmnt (util-linux) missing")

BASE = (b"# /etc/fstab\n"
        b"UUID=0a1b-0001 /              ext4    errors=remount-ro  0      1\n"
        b"UUID=0a1b-0002 /srv \t ext4 \t defaults \t 0 \t 2\n")


# --- random fstab bytes ---------------------------------------------------------------------

_SAFE = [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789/-_.:=,@+%\"'#"]
_piece = st.one_of(
    st.sampled_from(_SAFE),
    st.sampled_from(_SAFE),
    st.integers(0, 255).map(lambda v: b"\\%03o" % v),  # octal escapes (\000 included)
    st.integers(0x80, 0xFF).map(lambda v: bytes([v])),  # not UTF-8 on its own
    st.sampled_from(["é", "日本", "\u2028", "\u0085", "\u00a0"]).map(str.encode),
    st.sampled_from([b"\x0b", b"\x0c", b"\x1b[31m", b"x\ry", b"\x7f", b"\\", b"\\x"]),
)
_field = st.lists(_piece, min_size=1, max_size=6).map(b"".join)
_sep = st.lists(st.sampled_from([b" ", b"\t"]), min_size=1, max_size=4).map(b"".join)
_blank = st.lists(st.sampled_from([b" ", b"\t"]), max_size=3).map(b"".join)
_num = st.tuples(st.sampled_from([b"", b"+", b"-"]), st.integers(0, 99999)).map(
    lambda t: t[0] + str(t[1]).encode())
_text = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\0", b""))


@st.composite
def _entry(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(3, 6))
    first = draw(_field.filter(lambda f: not f.startswith(b"#")))
    target = b"/" + draw(_field)
    fields = [first, target] + [draw(_field) for _ in range(min(n, 4) - 2)]
    fields += [draw(_num) for _ in range(n - 4)]
    out = draw(_blank) + fields[0]
    for f in fields[1:]:
        out += draw(_sep) + f
    if n == 6 and draw(st.booleans()):
        out += draw(_sep) + b"#" + draw(_text)
    return out + draw(_blank)


_comment = st.tuples(_blank, _text).map(lambda t: t[0] + b"#" + t[1])
_line = st.one_of(_entry(), _entry(), _entry(), _comment, _blank)


@st.composite
def fstab_bytes(draw: st.DrawFn, line: st.SearchStrategy[bytes] = _line) -> bytes:
    lines = draw(st.lists(line, max_size=7))
    eols = [draw(st.sampled_from([b"\n", b"\n", b"\r\n"])) for _ in lines]
    data = b"".join(a + e for a, e in zip(lines, eols, strict=True))
    if lines and draw(st.booleans()):
        data = data[: -len(eols[-1])]
    return data


# a line libmount (and so mnic-ops) refuses: too few fields, a NUL, a word as a number
_bad_line = st.one_of(
    st.tuples(_field.filter(lambda f: not f.startswith(b"#")), _sep, _field).map(b"".join),
    st.tuples(_entry(), st.just(b"\0")).map(b"".join),
    st.tuples(_field.filter(lambda f: not f.startswith(b"#")), _sep, _field, _sep, _field,
              _sep, _field, _sep, st.sampled_from([b"x", b"0x1", b"1e3"])).map(b"".join),
)


def _mount_points(t: fstabfile.Fstab) -> dict[str, list[str]]:
    return {fstabfile.norm_target(e.target): ["test"] for e in t.entries
            if e.target.startswith("/")}


def _check_only_options_changed(old: fstabfile.Fstab, new: fstabfile.Fstab) -> int:
    """Byte for byte: every line that is not a changed entry is identical; a changed
    entry differs only inside its options field (or gains one after its type)."""
    assert len(old.lines) == len(new.lines)
    changed = 0
    for a, b in zip(old.lines, new.lines, strict=True):
        ab, bb = fstabfile.encode(a.render()), fstabfile.encode(b.render())
        if ab == bb:
            continue
        changed += 1
        assert a.is_entry and b.is_entry
        f = a.fields
        if len(f) >= 4:
            head = fstabfile.encode(a.text[:f[3].start])
            tail = fstabfile.encode(a.text[f[3].end:] + a.eol)
            middle = fstabfile.encode(b.options_raw or "")
        else:
            head = fstabfile.encode(a.text[:f[2].end])
            tail = fstabfile.encode(a.text[f[2].end:] + a.eol)
            middle = fstabfile.encode(b.text[f[2].end:b.fields[3].end])
            assert middle.lstrip(b" \t") == fstabfile.encode(b.options_raw or "")
        assert bb.startswith(head) and bb.endswith(tail), (ab, bb)
        assert bb == head + middle + tail, (ab, bb)
        assert "noatime" in fstabfile.option_names(b.options)
    return changed


def _printable(text: str) -> None:
    """What mnic-ops prints must be valid UTF-8 with no control character but tab and
    newline (no escape sequence, no carriage return, no surrogate)."""
    text.encode("utf-8")  # a surrogate would raise here
    assert all(c in "\t\n" or c.isprintable() for c in text), repr(text)


@settings(max_examples=400, deadline=None)
@given(fstab_bytes())
def test_hypothesis_bytes_round_trip_and_only_options_change(data: bytes) -> None:
    t = fstabfile.parse(fstabfile.decode(data))
    assert fstabfile.encode(t.render()) == data
    decisions, new = fstabplan.plan_noatime(t, _mount_points(t), [])
    n = _check_only_options_changed(t, new)
    assert n == sum(d.state == "change" for d in decisions)
    diff = unified_diff(fstabfile.shown(fstabfile.decode(data)), fstabfile.shown(new.render()),
                        "/etc/fstab")
    _printable(diff)
    _printable(fstab.report_text(fstabapply.Target("/etc/fstab", Path("/x"), None), decisions, []))
    _printable(json.dumps([d.to_json() for d in decisions], ensure_ascii=False))


@settings(max_examples=200, deadline=None)
@given(st.tuples(fstab_bytes(), _bad_line, fstab_bytes()).map(lambda t: t[0] + b"\n" + t[1]
                                                              + b"\n" + t[2]))
def test_hypothesis_refused_lines_are_input_errors_with_their_number(data: bytes) -> None:
    with pytest.raises(InputError) as exc:
        fstabfile.parse(fstabfile.decode(data), "etc/fstab")
    msg = exc.value.message
    assert msg.startswith("etc/fstab:") and msg.split(":")[1].isdigit()
    _printable(msg)


def test_shown_bytes_and_controls() -> None:
    assert fstabfile.shown(fstabfile.decode(b"/caf\xe9\t# \x1b[31m\r\x0b\xff")) == \
        "/caf\\xe9\t# \\x1b[31m\\r\\x0b\\xff"
    assert fstabfile.shown("é日本") == "é日本"


# --- the command, as an admin runs it --------------------------------------------------------

def _run(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "mnic_ops", "--root", str(root), *args],
                          capture_output=True, env=env, timeout=120)


def _host(tmp: Path, data: bytes) -> Path:
    root = tmp / "host"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("etc", "proc", "var/lib"):
        (root / d).mkdir(parents=True)
    (root / "etc/fstab").write_bytes(data)
    return root


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_one_byte_that_is_not_utf8_is_no_internal_error(tmp_path: Path) -> None:
    data = BASE + b"/dev/a /caf\xe9 ext4 defaults \t 0 2 # caf\xe9\n"
    root = _host(tmp_path, data)
    mp = os.fsdecode(b"/caf\xe9")
    r = _run(root, "fstab", "--mount-point", mp, "--mount-point", "/srv")
    out, err = r.stdout.decode(), r.stderr.decode()  # valid UTF-8, or this raises
    assert r.returncode == 3, out + err
    assert "internal error" not in err and "Traceback" not in err
    assert "-/dev/a /caf\\xe9 ext4 defaults \t 0 2 # caf\\xe9" in out
    assert "+/dev/a /caf\\xe9 ext4 defaults,noatime \t 0 2 # caf\\xe9" in out
    assert "+UUID=0a1b-0002 /srv \t ext4 \t defaults,noatime \t 0 \t 2" in out
    if HAVE_FINDMNT:
        assert "findmnt --verify: the candidate adds no error" in out
    assert (root / "etc/fstab").read_bytes() == data
    r = _run(root, "--json", "fstab", "--mount-point", mp)
    doc = json.loads(r.stdout)
    assert r.returncode == 3 and doc["mount_points"][0]["mount_point"] == "/caf\\xe9"
    if not HAVE_FINDMNT:
        return
    r = _run(root, "fstab", "--apply", "--mount-point", mp, "--mount-point", "/srv")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert (root / "etc/fstab").read_bytes() == BASE.replace(
        b"\t defaults \t 0", b"\t defaults,noatime \t 0") + \
        b"/dev/a /caf\xe9 ext4 defaults,noatime \t 0 2 # caf\xe9\n"
    r = _run(root, "undo", "--last")
    assert r.returncode == 0, r.stderr.decode()
    assert (root / "etc/fstab").read_bytes() == data


@needs_findmnt
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fstab_bytes(), st.one_of(st.none(), _bad_line), st.booleans())
def test_hypothesis_the_command_on_any_bytes(tmp_path: Path, data: bytes, bad: bytes | None,
                                             apply: bool) -> None:
    """No internal error on any file; a refused file is left exactly as it was (no
    backup, no journal); an applied change touches only options fields."""
    if bad is not None:
        data = data + (b"\n" if data and not data.endswith(b"\n") else b"") + bad + b"\n"
    root = _host(tmp_path, data)
    try:
        t = fstabfile.parse(fstabfile.decode(data))
    except InputError:
        t = None
    mps = sorted(_mount_points(t)) if t is not None else ["/x"]
    assume(all("\0" not in m for m in mps))
    args = [a for m in mps[:6] for a in ("--mount-point", m)] or ["--mount-point", "/x"]
    before = _sha(root / "etc/fstab")
    r = _run(root, "fstab", *(["--apply"] if apply else []), *args)
    out, err = r.stdout.decode(), r.stderr.decode()  # valid UTF-8, or this raises
    _printable(out)
    assert "internal error" not in err and "Traceback" not in err, err
    if t is None:
        assert r.returncode == 2 and ("cannot parse" in err or "NUL" in err), err
    if r.returncode != 0 or not apply:
        assert _sha(root / "etc/fstab") == before
        assert sorted(os.listdir(root / "etc")) == ["fstab"]
        assert not (root / "var/lib/mnic-ops/journal.jsonl").exists()
        # 1 in propose mode: a mount point asked for has two entries (never guessed)
        assert r.returncode in ((1, 2) if apply else (0, 1, 2, 3)), (r.returncode, err)
        if r.returncode == 1 and not apply:
            assert "ambiguous" in out, out
        return
    assert t is not None
    new = fstabfile.parse(fstabfile.decode((root / "etc/fstab").read_bytes()))
    _check_only_options_changed(t, new)


def test_unbalanced_quote_in_options_is_left_alone() -> None:
    """Found by the byte fuzzer: `noatime` added after an unterminated quote would land
    inside the quoted text, where libmount's option parser never sees it."""
    t = fstabfile.parse('/dev/a /a ext4 x,"y 0 2\n/dev/b /b ext4 context="a,b",relatime 0 2\n')
    ds, new = fstabplan.plan_noatime(t, {"/a": ["x"], "/b": ["x"]}, [])
    by = {d.mount_point: d for d in ds}
    assert by["/a"].state == "skip" and "unbalanced double quote" in by["/a"].reason
    assert by["/b"].state == "change"
    assert new.render() == '/dev/a /a ext4 x,"y 0 2\n' \
                           '/dev/b /b ext4 context="a,b",noatime 0 2\n'
