"""Text-preserving JSON merge: only managed values move, the rest stays byte-identical."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnic_ops.core.errors import InputError
from mnic_ops.engines import jsonedit


def test_changes_only_the_value_span() -> None:
    text = '{\n  "a": 1,\n\n  "b": {"x": [1,2],   "y": "keep"},\n  "c": true\n}\n'
    new = jsonedit.merge(text, {"b": {"y": "new"}, "c": False}, "f")
    assert new == '{\n  "a": 1,\n\n  "b": {"x": [1,2],   "y": "new"},\n  "c": false\n}\n'
    assert jsonedit.merge(new, {"b": {"y": "new"}, "c": False}, "f") == new


def test_same_value_of_another_type_is_rewritten() -> None:
    assert jsonedit.merge('{"a": 1}', {"a": True}, "f") == '{"a": true}'
    assert jsonedit.merge('{"a": 1.0}', {"a": 1}, "f") == '{"a": 1}'
    assert jsonedit.merge('{"a": 1}', {"a": 1}, "f") == '{"a": 1}'


@pytest.mark.parametrize("text,overlay,want", [
    # Missing keys go at the end of their object, in the style of its members.
    ('{\n\t"a": 1\n}', {"b": 2}, '{\n\t"a": 1,\n\t"b": 2\n}'),
    ('{\r\n    "a": 1\r\n}\r\n', {"b": {"c": 1}},
     '{\r\n    "a": 1,\r\n    "b": {\r\n        "c": 1\r\n    }\r\n}\r\n'),
    ('{"a":1}', {"b": 2}, '{"a":1, "b":2}'),
    ('{\n  "a": {}\n}', {"a": {"b": 1}}, '{\n  "a": {\n    "b": 1\n  }\n}'),
    ('{}', {"a": 1}, '{\n  "a": 1\n}'),
    # A scalar where the overlay has an object is replaced by the object.
    ('{\n  "a": 3\n}', {"a": {"b": 1}}, '{\n  "a": {\n    "b": 1\n  }\n}'),
    # Strings with escapes, braces and colons inside do not confuse positions.
    ('{"s": "a\\"}:{", "n": 1}', {"n": 2}, '{"s": "a\\"}:{", "n": 2}'),
    # Unicode is kept as it is.
    ('{"f": "🚀 {x}", "n": 1}', {"n": 2, "g": "é"}, '{"f": "🚀 {x}", "n": 2, "g": "é"}'),
])
def test_insert_and_replace_styles(text: str, overlay: dict[str, Any], want: str) -> None:
    assert jsonedit.merge(text, overlay, "f") == want


def test_duplicate_keys_are_refused_with_their_place() -> None:
    # A user's file with a key twice is ambiguous (json reads the last, other tools the
    # first): refused with file:line:col rather than edited (mnic_ops.core.userjson).
    with pytest.raises(InputError) as ei:
        jsonedit.merge('{"a": 1,\n "a": 2}', {"a": 3}, "f")
    assert ei.value.message.startswith("f:2:2: duplicate key 'a'"), ei.value.message


@pytest.mark.parametrize("text,where", [
    ('{\n  "a": 1,\n}\n', "f.json:3:1:"),
    ('{\n  "a": 1\n  "b": 2\n}', "f.json:3:3:"),
    ("", "f.json:1:1:"),
])
def test_invalid_json_names_line_and_column(text: str, where: str) -> None:
    with pytest.raises(InputError) as ei:
        jsonedit.merge(text, {"a": 2}, "f.json")
    assert ei.value.message.startswith(where) and "not valid JSON" in ei.value.message


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(InputError, match="expected a JSON object"):
        jsonedit.merge("[1, 2]", {"a": 1}, "f.json")


# --- property: any document, any formatting, any overlay ------------------------------

keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6)
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | \
    st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
docs = st.dictionaries(keys, values, max_size=6)
overlays = st.recursive(st.dictionaries(keys, scalars | st.lists(scalars, max_size=2),
                                        max_size=3),
                        lambda inner: st.dictionaries(keys, inner | scalars, max_size=3),
                        max_leaves=8)
styles = st.sampled_from([None, 0, 1, 2, 4, "\t"])


@settings(max_examples=300, deadline=None)
@given(doc=docs, overlay=overlays, indent=styles, crlf=st.booleans(), nl=st.booleans())
def test_merge_means_deep_merge_and_is_idempotent(doc: dict[str, Any],
                                                   overlay: dict[str, Any],
                                                   indent: int | str | None, crlf: bool,
                                                   nl: bool) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    if crlf:
        text = text.replace("\n", "\r\n")
    if nl:
        text += "\r\n" if crlf else "\n"
    new = jsonedit.merge(text, overlay, "f")
    assert json.loads(new) == jsonedit.deep_merge(doc, overlay)
    assert jsonedit.merge(new, overlay, "f") == new
    assert new.endswith("\n") == nl
    if "\r\n" in text:  # CRLF files stay CRLF
        assert "\n" not in new.replace("\r\n", "")
