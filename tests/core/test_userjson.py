"""Bounded JSON for user-written files: every refusal names the file and, where the
scanner can tell, the line and column; nothing a user writes ends in an internal error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnic_ops.core import userjson
from mnic_ops.core.errors import InputError
from mnic_ops.core.userjson import UserDataError


@pytest.mark.parametrize(("doc", "where", "why"), [
    ("[" * 100000, "f.json:1:65", "nested more than 64"),
    ('{"a": NaN}', "f.json:1:7", "'NaN' is not a JSON value"),
    ('{"a":\n  -Infinity}', "f.json:2:4", "'Infinity'"),
    ("1" * 5000, "f.json:1:1", "a number of 5000 characters"),
    ('{"a": 1e999}', "f.json", "out of range"),
    ('{"a": 1, "a": 2}', "f.json", "duplicate key 'a'"),
    ('{\n "x": [1,\n 2,,]}', "f.json:3:4", "not valid JSON"),
    (b'{"a": "caf\xe9"}', "f.json:1:11", "not UTF-8"),
])
def test_refusals_name_the_place(doc: str | bytes, where: str, why: str) -> None:
    with pytest.raises(UserDataError) as ei:
        userjson.parse(doc, "f.json")
    msg = str(ei.value)
    assert msg.startswith(where + ":"), msg
    assert why in msg
    assert isinstance(ei.value, InputError)  # the CLI's exit 2, never a traceback


def test_strings_may_hold_anything() -> None:
    doc = '{"k": "NaN [[[[ {{{ \\" ' + "9" * 100 + '"}'
    assert userjson.parse(doc, "f")["k"].startswith("NaN [[[[")


def test_size_limit() -> None:
    with pytest.raises(UserDataError, match="more than the 10 mnic-ops reads"):
        userjson.parse(b'"' + b"x" * 20 + b'"', "f", max_bytes=10)


def test_framework_config_parses_as_json_does() -> None:
    fw = Path(__file__).parent.parent / "fixtures" / "framework-configs"
    files = sorted(fw.glob("*.json"))
    assert files
    for f in files:
        assert userjson.parse(f.read_bytes(), str(f)) == json.loads(f.read_text())


def test_read_beneath_refuses_links_and_reads_bounded(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text('{"v": 1}')
    assert userjson.read_beneath(tmp_path, "a/x.json") == {"v": 1}
    assert userjson.read_beneath(tmp_path, "a/absent.json") is None
    assert userjson.read_beneath(tmp_path, "nope/x.json") is None
    os.symlink("a", tmp_path / "b")
    with pytest.raises(UserDataError, match="symlink"):
        userjson.read_beneath(tmp_path, "b/x.json")
    os.symlink("x.json", tmp_path / "a" / "l.json")
    with pytest.raises(UserDataError, match="symlink"):
        userjson.read_beneath(tmp_path, "a/l.json")
    os.mkfifo(tmp_path / "a" / "f.json")
    with pytest.raises(UserDataError, match="not a regular file"):
        userjson.read_beneath(tmp_path, "a/f.json")
    (tmp_path / "a" / "big.json").write_text("[" + "1," * 100 + "1]")
    with pytest.raises(UserDataError, match="more than the 50"):
        userjson.read_beneath(tmp_path, "a/big.json", max_bytes=50)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**18, 10**18)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_valid_documents_round_trip(value: object) -> None:
    assert userjson.parse(json.dumps(value), "f") == value


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_bytes_parse_or_refuse_cleanly(raw: bytes | str) -> None:
    try:
        userjson.parse(raw, "f.json")
    except UserDataError as exc:
        assert str(exc).startswith("f.json")
