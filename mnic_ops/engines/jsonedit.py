"""Set values in a JSON document by editing its text, not by re-serialising it.

The framework's config files belong to their users: blank lines between sections,
inline arrays, key order, indentation (spaces or tabs), CRLF line ends and the trailing
newline must survive a render. ``json.loads`` + ``json.dumps`` would lose most of that,
so :func:`merge` parses the text once more with byte positions and replaces only the
spans of values that must change, inserting missing keys in the file's own style.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from mnic_ops.core import userjson
from mnic_ops.core.errors import InputError

_WS = " \t\n\r"
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")


@dataclass
class Node:
    """A JSON value and where it sits in the text (``end`` is exclusive)."""

    kind: str  # object | array | scalar
    start: int
    end: int
    members: dict[str, Member] = field(default_factory=dict)  # objects: last wins
    order: list[Member] = field(default_factory=list)  # objects: every member, in order


@dataclass
class Member:
    key: str
    key_start: int
    value: Node


def loads(text: str, name: str) -> Any:
    """The user's document, parsed with bounds (:func:`mnic_ops.core.userjson.parse`: depth,
    size, number length, NaN/Infinity, duplicate keys); errors are
    ``name:line:column: message`` input errors. The position parser below recurses once
    per nesting level, so it must only ever see what this accepted."""
    return userjson.parse(text, name)


class _Parser:
    """Positions of a document already known to be valid JSON."""

    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0

    def ws(self) -> None:
        t, i = self.t, self.i
        while i < len(t) and t[i] in _WS:
            i += 1
        self.i = i

    def string_end(self, i: int) -> int:
        t = self.t
        i += 1
        while t[i] != '"':
            i += 2 if t[i] == "\\" else 1
        return i + 1

    def value(self) -> Node:
        self.ws()
        t, i = self.t, self.i
        c = t[i]
        if c == "{":
            node = Node("object", i, i)
            self.i = i + 1
            self.ws()
            if self.t[self.i] == "}":
                self.i += 1
            else:
                while True:
                    self.ws()
                    ks = self.i
                    ke = self.string_end(ks)
                    key = json.loads(self.t[ks:ke])
                    self.i = ke
                    self.ws()
                    self.i += 1  # ':'
                    m = Member(key, ks, self.value())
                    node.members[key] = m
                    node.order.append(m)
                    self.ws()
                    sep = self.t[self.i]
                    self.i += 1
                    if sep == "}":
                        break
            node.end = self.i
            return node
        if c == "[":
            node = Node("array", i, i)
            self.i = i + 1
            self.ws()
            if self.t[self.i] == "]":
                self.i += 1
            else:
                while True:
                    self.value()
                    self.ws()
                    sep = self.t[self.i]
                    self.i += 1
                    if sep == "]":
                        break
            node.end = self.i
            return node
        if c == '"':
            self.i = self.string_end(i)
            return Node("scalar", i, self.i)
        lit = _SCALAR.match(t, i)
        assert lit is not None, f"unexpected {c!r} at {i}"
        self.i = lit.end()
        return Node("scalar", i, self.i)


@dataclass
class _Style:
    nl: str
    unit: str  # one level of indentation
    colon: str  # between key and value, e.g. ": "


def _style(text: str) -> _Style:
    nl = "\r\n" if "\r\n" in text else "\n"
    indents = [m.group(1) for m in re.finditer(r"\n([ \t]+)\S", text)]
    unit = "  "
    if indents:
        if all(s.startswith("\t") for s in indents[:20]):
            unit = "\t"
        else:
            unit = " " * min(len(s) for s in indents if s.startswith(" ")) \
                if any(s.startswith(" ") for s in indents) else "  "
    m = re.search(r'"\s*(:\s*)(?=["\[{0-9tfn-])', text)
    colon = m.group(1) if m and "\n" not in m.group(1) else ": "
    return _Style(nl, unit, colon)


def _line_indent(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    m = re.match(r"[ \t]*", text[start:pos])
    return m.group(0) if m else ""


def _at_line_start(text: str, pos: int) -> bool:
    start = text.rfind("\n", 0, pos) + 1
    return text[start:pos].strip() == ""


def _dumps(value: Any, style: _Style, indent: str, multiline: bool) -> str:
    if not multiline or not isinstance(value, dict) or not value:
        return json.dumps(value, ensure_ascii=False, separators=(", ", style.colon))
    raw = json.dumps(value, ensure_ascii=False, indent=style.unit,
                     separators=(",", style.colon))
    return raw.replace("\n", style.nl + indent)


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same JSON type (``True`` is not ``1``, ``1.0`` is not ``1``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _edits(text: str, node: Node, overlay: dict[str, Any], style: _Style,
           out: list[tuple[int, int, str]]) -> None:
    missing: dict[str, Any] = {}
    for key, want in overlay.items():
        m = node.members.get(key)
        if m is None:
            missing[key] = want
            continue
        v = m.value
        if isinstance(want, dict) and v.kind == "object":
            _edits(text, v, want, style, out)
            continue
        have = json.loads(text[v.start:v.end])
        if _same(have, want):
            continue
        multiline = _at_line_start(text, m.key_start)
        out.append((v.start, v.end, _dumps(want, style, _line_indent(text, m.key_start),
                                           multiline)))
    if missing:
        out.append(_insert(text, node, missing, style))


def _insert(text: str, node: Node, missing: dict[str, Any], style: _Style
            ) -> tuple[int, int, str]:
    """Add members at the end of an object, in the style of its existing members."""
    if node.order:
        last = node.order[-1]
        multiline = _at_line_start(text, last.key_start)
        indent = _line_indent(text, last.key_start)
        parts = [json.dumps(k, ensure_ascii=False) + style.colon
                 + _dumps(v, style, indent, multiline) for k, v in missing.items()]
        if multiline:
            add = "".join("," + style.nl + indent + p for p in parts)
        else:
            add = "".join(", " + p for p in parts)
        return last.value.end, last.value.end, add
    # An empty object: "{}" or "{ ... whitespace ... }".
    outer = _line_indent(text, node.start)
    inner = outer + style.unit
    parts = [json.dumps(k, ensure_ascii=False) + style.colon + _dumps(v, style, inner, True)
             for k, v in missing.items()]
    body = style.nl + ("," + style.nl).join(inner + p for p in parts) + style.nl + outer
    return node.start + 1, node.end - 1, body


def deep_merge(base: Any, overlay: dict[str, Any]) -> Any:
    """What the document means after :func:`merge` (for checks and tests)."""
    if not isinstance(base, dict):
        return json.loads(json.dumps(overlay))
    out = dict(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def merge(text: str, overlay: dict[str, Any], name: str) -> str:
    """``text`` with every leaf of ``overlay`` set, everything else byte-identical.

    ``name`` labels errors. A document that is not an object, or not valid JSON, is an
    input error with line and column.
    """
    doc = loads(text, name)
    if not isinstance(doc, dict):
        raise InputError(f"{name}:1:1: expected a JSON object at the top level, got "
                         f"{type(doc).__name__}")
    root = _Parser(text).value()
    style = _style(text)
    edits: list[tuple[int, int, str]] = []
    _edits(text, root, overlay, style, edits)
    new = text
    for start, end, repl in sorted(edits, key=lambda e: e[0], reverse=True):
        new = new[:start] + repl + new[end:]
    # The edit must mean exactly the merge; anything else is a bug, never written.
    if not _same(json.loads(new), deep_merge(doc, overlay)):
        raise AssertionError(f"{name}: text merge does not match the value merge")
    return new
