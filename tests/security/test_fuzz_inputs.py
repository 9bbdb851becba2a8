"""Fuzzing the input side (issue 15): config TOML values and framework JSON documents.

For any document: no internal error; a refusal names the file and line (every line of
the message); nothing is written on a refusal; and what is accepted is within bounds
(finite numbers, no control characters, the install's other data intact)."""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mnic_ops.core import config, configschema, quoting
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from tests.security.inputs_support import mnic_inprocess, snapshot
from tests.testhost import write_project


def _leaves(schema: configschema.Schema, prefix: tuple[str, ...] = ()
            ) -> list[tuple[tuple[str, ...], configschema.Key | None]]:
    out: list[tuple[tuple[str, ...], configschema.Key | None]] = []
    for name, spec in schema.items():
        if isinstance(spec, configschema.Section):
            out.extend(_leaves(spec.keys, (*prefix, name)))
        else:
            out.append(((*prefix, name), spec))
    return out


KEYS = [*_leaves(configschema.SCHEMA), (("tiers", "server", "max_agents"), None),
        (("tiers", "laptop", "caching"), None), (("nosuch",), None), (("clean", "nosuch"), None)]
SPECIAL = list("\n\r\t\x00\x1b\x7f\x85\u2028%\\\"'$#; /*.")
TEXT = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(SPECIAL)),
               max_size=20)
SCALARS = st.one_of(
    TEXT, st.sampled_from(["/abs/path", "syslog", "*/30 * * * *", "*.json", "server", ""]),
    st.integers(-(2**63), 2**63 - 1), st.integers(-3, 100),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans())
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["sessions", "patterns", "x"]),
                                   SCALARS, max_size=2))


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # its escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A TOML file setting a few schema keys (and some unknown ones) to any value."""
    chosen = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=5,
                           unique_by=lambda k: k[0]))
    sections: dict[tuple[str, ...], list[str]] = {}
    for dotted, _spec in chosen:
        sections.setdefault(dotted[:-1], []).append(
            f"{json.dumps(dotted[-1])} = {toml_value(draw(VALUES))}")
    # a table cannot be opened after one of its sub-tables set it as a key: drop
    # sections that are prefixes of a key set in a shorter section
    lines = sections.pop((), [])
    for sec in sorted(sections):
        lines.append("[" + ".".join(json.dumps(p) for p in sec) + "]")
        lines.extend(sections[sec])
    return "\n".join(lines) + "\n"


def _walk(values: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(values, dict):
        for k, v in values.items():
            yield from _walk(v, (*prefix, k))
    elif isinstance(values, list):
        for v in values:
            yield prefix, v
    else:
        yield prefix, values


FUZZ = settings(max_examples=400, deadline=None, database=None)


@FUZZ
@given(documents())
def test_config_documents_load_or_are_refused_with_file_and_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        p = root / "etc/mnic-ops/config.toml"
        p.parent.mkdir(parents=True)
        p.write_text(text)
        try:
            cfg = config.load(HostRoot.open(root), env={})
        except InputError as exc:
            for line in exc.message.split("\n"):
                assert re.match(re.escape(str(p)) + r":\d+(:\d+)?: ", line), (text, line)
            return
    for where, v in _walk(cfg.values):
        if isinstance(v, float):
            assert math.isfinite(v), (where, text)
        if isinstance(v, str):
            assert quoting.bad_char(v) is None, (where, text)


@contextmanager
def _host(with_second: bool = True) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="mnic-fuzz-"))
    try:
        root = top / "host"
        for d in ("etc/cron.d", "etc/profile.d", "etc/sysctl.d", "etc/mnic-ops", "proc",
                  "sys", "var/lib", "home"):
            (root / d).mkdir(parents=True)
        write_project(root / "home/alice/app")
        if with_second:
            write_project(root / "home/bob/app")
        yield root
    finally:
        shutil.rmtree(top, ignore_errors=True)


@settings(max_examples=40, deadline=None, database=None)
@given(documents())
def test_config_refusal_writes_nothing(text: str) -> None:
    """Through the CLI: a refused config is exit 2 with file:line and not one byte
    written (cron file, configs, system files, journal)."""
    with _host(with_second=False) as root:
        cfg = root / "etc/mnic-ops/config.toml"
        cfg.write_text('search_paths = ["/home/*"]\nhost_class = "laptop"\n' + "\n"
                       + text.replace("\nsearch_paths =", "\nx_search_paths =")
                       .replace("\nhost_class =", "\nx_host_class ="))
        if text.startswith(("search_paths", "host_class", '"search_paths"',
                            '"host_class"')):
            return  # a key twice is a TOML error before any of ours: not interesting
        for argv in (["cron", "install", "--system"], ["render"]):
            before = snapshot(root)
            r = mnic_inprocess("--root", str(root), *argv)
            assert "internal error" not in r.err and "Traceback" not in r.err, r.err
            if r.code == 2:
                assert snapshot(root) == before, (argv, r.err)
                assert f"{cfg}:" in r.err, r.err
                break


def _json_texts() -> st.SearchStrategy[bytes]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    docs = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                        | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                        max_leaves=12).map(lambda v: json.dumps(v, indent=1).encode())
    hostile = st.sampled_from([
        b"[" * 100000, b'{"a":' * 200 + b"1" + b"}" * 200, b'{"a": NaN}',
        b'{"a": -Infinity}', b'{"a": ' + b"9" * 5000 + b"}", b'{"a": 1e999}',
        b'{"a": 1,\n "a": 2}', b'{"a": "caf\xe9"}', b"", b"{", b"\xef\xbb\xbf{}",
        b'{"maxParallelAgents": 1, "maxParallelAgents": 2}'])

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        doc = draw(docs)
        how = draw(st.sampled_from(["none", "insert", "truncate", "nest"]))
        if how == "insert" and doc:
            at = draw(st.integers(0, len(doc)))
            piece = draw(st.sampled_from([b"NaN", b"[", b"}", b",", b"\xff", b'"',
                                          b"9" * 80, b"Infinity", b"\x00"]))
            doc = doc[:at] + piece + doc[at:]
        elif how == "truncate" and doc:
            doc = doc[:draw(st.integers(0, len(doc) - 1))]
        elif how == "nest":
            depth = draw(st.integers(60, 70))
            doc = b"[" * depth + doc + b"]" * depth
        return doc

    return st.one_of(hostile, mutated())


FILES = [".claude/config/parallel-agents-config.json",
         ".claude/config/checkpoint-config.json",
         ".claude/config/cost-optimization.json"]


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(FILES), _json_texts())
def test_framework_json_fails_that_install_only(rel: str, doc: bytes) -> None:
    """Any bytes in one install's framework file: render exits 0 or 1, never with an
    internal error; a refusal names that file and a line; the other install is
    rendered; nothing is written into the refused install."""
    with _host() as root:
        (root / "etc/mnic-ops/config.toml").write_text(
            'search_paths = ["/home/*"]\nhost_class = "server"\n')
        alice = root / "home/alice/app"
        (alice / rel).write_bytes(doc)
        before = snapshot(alice)
        r = mnic_inprocess("--root", str(root), "--json", "render")
        assert "internal error" not in r.err and "Traceback" not in r.err, r.err
        assert r.code in (0, 1), (r.code, r.err)
        out = json.loads(r.out)
        failed = {f["install"]: f["error"] for f in out["failed_installs"]}
        assert "/home/bob/app" not in failed
        assert (root / "home/bob/app/.claude/config/mnic-ops-performance.json").exists()
        if r.code == 1:
            err = failed["/home/alice/app"]
            assert re.search(re.escape(f"/home/alice/app/{rel}:") + r"\d+", err), err
            assert snapshot(alice) == before


# Path-valued keys of the framework's configs: where the data map puts a data folder
# (or the task index). Any string a user can write there, escapes included: an unpaired
# surrogate (``\ud800``, valid JSON that no path can hold) crashed every command on main.
PATH_KEYS = [(".claude/config/checkpoint-config.json", ("storage", "base_path")),
             (".claude/config/extended-thinking-config.json", ("logging", "storage_path")),
             (".claude/config/background-tasks.json", ("storage", "task_results_dir")),
             (".claude/config/background-tasks.json", ("storage", "task_state_file"))]
ESCAPES = ["\\ud800", "\\udfff", "\\udc80", "\\ud83d\\ude00", "\\u0000", "\\n", "\\\\",
           "\\u002e\\u002e/", "/", "..", "\\ud83d", "\\ud800\\ud800"]


@st.composite
def path_values(draw: st.DrawFn) -> str:
    """The JSON text of a string value: plain characters and escapes, surrogates (paired,
    unpaired, reversed) among them."""
    pieces = draw(st.lists(st.one_of(
        st.sampled_from(ESCAPES),
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters='"\\'),
                max_size=4)), min_size=1, max_size=5))
    return '"' + "".join(pieces) + '"'


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(PATH_KEYS), path_values())
def test_path_valued_keys_fail_that_install_only(key: tuple[str, tuple[str, str]],
                                                 value: str) -> None:
    """Any string (as JSON text) in a path-valued key of one install: projects and clean
    exit 0 or 1, never an internal error; a refusal names that file and a line; the other
    install is processed."""
    rel, (section, name) = key
    with _host() as root:
        (root / "etc/mnic-ops/config.toml").write_text(
            'search_paths = ["/home/*"]\nhost_class = "server"\n')
        alice = root / "home/alice/app"
        (alice / rel).write_text(f'{{"{section}": {{"{name}": {value}}}}}\n')
        for argv in (["projects"], ["clean", "--check"], ["clean"]):
            r = mnic_inprocess("--root", str(root), "--json", *argv)
            assert "internal error" not in r.err and "Traceback" not in r.err, (value, r.err)
            assert r.code in (0, 1, 3), (argv, value, r.code, r.err)
            out = json.loads(r.out)
            failed = {f["install"]: f["error"] for f in out["failed_installs"]}
            assert "/home/bob/app" not in failed, (argv, value, failed)
            assert "/home/bob/app" in r.out
            if "/home/alice/app" in failed:
                err = failed["/home/alice/app"]
                assert re.search(re.escape(f"/home/alice/app/{rel}:") + r"\d+", err), err
