"""Do two ``fnmatch`` patterns match a common string, and which?

The config loader refuses a clean pattern that would cover files the framework reads
back (:func:`mnic_ops.core.patterns.pattern_refusal`). Testing the pattern against a few sample
names misses patterns that cover other names of the same family (``core/*/2026*`` covers
``core/<agent>/2026-...json`` thinking logs, which a 2025 sample is not); deciding it on
the patterns themselves does not. Both patterns are read as ``fnmatch`` reads them
(``*``, ``?``, ``[set]``, ``[!set]``, everything else literal) and walked together, one
token of each at a time (a product of the two automata, memoized: at most
``len(a) * len(b)`` states); the answer comes with a shortest-ish witness.
"""

from __future__ import annotations

import fnmatch
from functools import cache

# A token: ("*",) any run; ("?",) any one character; ("[", negated, ranges) a set;
# ("=", c) the character c.
Token = tuple[object, ...]
_ODD = "\ue000"  # a character no set names: one a negated set has


def tokens(pattern: str) -> tuple[Token, ...]:
    """``pattern`` as fnmatch reads it (an unclosed ``[`` is a literal)."""
    out: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ("*",):
                out.append(("*",))
        elif c == "?":
            out.append(("?",))
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(("=", "["))
                continue
            body = pattern[i:j]
            i = j + 1
            neg = body.startswith("!")
            if neg:
                body = body[1:]
            ranges: list[tuple[str, str]] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    if body[k] <= body[k + 2]:
                        ranges.append((body[k], body[k + 2]))
                    k += 3
                else:
                    ranges.append((body[k], body[k]))
                    k += 1
            out.append(("[", neg, tuple(ranges)))
        else:
            out.append(("=", c))
    return tuple(out)


def _matches(t: Token, c: str) -> bool:
    if t[0] == "?":
        return True
    if t[0] == "=":
        return t[1] == c
    neg, ranges = t[1], t[2]
    inside = any(lo <= c <= hi for lo, hi in ranges)  # type: ignore[attr-defined]
    return inside != neg


def _candidates(a: Token, b: Token) -> list[str]:
    """Characters among which a common one exists if any does: every literal and range
    end of either token, their neighbours, and a character no set names."""
    out: list[str] = []
    for t in (a, b):
        if t[0] == "=":
            out.append(str(t[1]))
        elif t[0] == "[":
            for lo, hi in t[2]:  # type: ignore[attr-defined]
                for ch in (lo, hi):
                    out.append(ch)
                    if ord(ch) > 0:
                        out.append(chr(ord(ch) - 1))
                    if ord(ch) < 0x10FFFF:
                        out.append(chr(ord(ch) + 1))
    out.extend(("x", "0", ".", _ODD))
    return out


def _common(a: Token, b: Token) -> str | None:
    for c in _candidates(a, b):
        if _matches(a, c) and _matches(b, c):
            return c
    return None


def witness(p: str, q: str) -> str | None:
    """A string both ``fnmatch`` patterns match, or None when there is none."""
    a, b = tokens(p), tokens(q)

    @cache
    def walk(i: int, j: int) -> str | None:
        if i == len(a) and j == len(b):
            return ""
        if i < len(a) and a[i] == ("*",):
            rest = walk(i + 1, j)  # a's run ends
            if rest is not None:
                return rest
            if j < len(b):  # a's run takes b's next token
                if b[j] == ("*",):
                    return walk(i, j + 1)
                c = _common(("?",), b[j])
                if c is not None:
                    rest = walk(i, j + 1)
                    if rest is not None:
                        return c + rest
            return None
        if j < len(b) and b[j] == ("*",):
            rest = walk(i, j + 1)
            if rest is not None:
                return rest
            if i < len(a):
                c = _common(a[i], ("?",))
                if c is not None:
                    rest = walk(i + 1, j)
                    if rest is not None:
                        return c + rest
            return None
        if i < len(a) and j < len(b):
            c = _common(a[i], b[j])
            if c is not None:
                rest = walk(i + 1, j + 1)
                if rest is not None:
                    return c + rest
        return None

    try:
        w = walk(0, 0)
    finally:
        walk.cache_clear()
    if w is not None and ("//" in w or w.startswith("/") or "/." in w):
        # empty runs read badly in a message ("core//2026.json"): fill them if both
        # patterns still match
        nicer = w.replace("//", "/x/").replace("//", "/x/").replace("/.", "/x.")
        nicer = "x" + nicer if nicer.startswith("/") else nicer
        if fnmatch.fnmatchcase(nicer, p) and fnmatch.fnmatchcase(nicer, q):
            return nicer
    return w


def meet(p: str, q: str) -> bool:
    """Do the two ``fnmatch`` patterns match a common string?"""
    return witness(p, q) is not None
