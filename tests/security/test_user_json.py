"""Attack 3 (issue 15): one user's JSON must not stop root's pass over everybody.

A real plain user owns one of two installs under a ``--root`` tree and writes hostile
framework files into it ("[" x 100000, nesting 500 deep, NaN, a 5000-digit integer).
Root's commands must process the other install, report the bad one with the file and
line, exit 1, and never print "internal error" (on main they all died with
RecursionError and processed nobody)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.security.inputs_support import (
    User,
    as_user,
    host_tree,
    mnic,
    plain_user,
    snapshot,
    two_installs,
)

CONFIG = ".claude/config"
CHECKPOINT = f"{CONFIG}/checkpoint-config.json"
THINKING = f"{CONFIG}/extended-thinking-config.json"
AGENTS = f"{CONFIG}/parallel-agents-config.json"
BACKGROUND = f"{CONFIG}/background-tasks.json"

# The user writes the file herself: root only ever reads it.
WRITE = """
import re, sys
path, kind = sys.argv[1], sys.argv[2]
if kind == "brackets":
    data = "[" * 100000
elif kind == "deep":
    data = '{"logging": ' * 500 + "1" + "}" * 500
elif kind == "surrogate":  # valid JSON; the escape decodes to a lone surrogate
    data = '{"storage": {"base_path": "x\\\\ud800y", "task_state_file": "s\\\\udc00.json"}}'
else:
    value = "NaN" if kind == "nan" else "9" * 5000
    text = open(path).read()
    data, n = re.subn(r'("maxParallelAgents": )[^,\\n]*', lambda m: m.group(1) + value,
                      text, count=1)
    assert n == 1
open(path, "w").write(data)
"""

# (file, what she writes, where the error points, commands that read that file)
ALL = ("projects", "clean", "render", "doctor", "provision --check", "verify",
       "watch --check")
CASES = {
    "checkpoint-brackets": ([(CHECKPOINT, "brackets")], CHECKPOINT + ":1:65", ALL),
    # extended-thinking-config.json also says where the thinking logs are
    # (logging.storage_path): every command that builds the data map fails the install
    "thinking-deep": ([(THINKING, "deep")], THINKING + ":1:", ALL),
    "agents-nan": ([(AGENTS, "nan")], AGENTS + ":", ("render", "doctor",
                                                     "provision --check", "verify")),
    "agents-bigint": ([(AGENTS, "bigint")], AGENTS + ":", ("render", "doctor",
                                                           "provision --check", "verify")),
    # a lone surrogate in a path-valued key (valid JSON, no path can hold it): on main
    # os.readlink raised UnicodeEncodeError, an internal error for every install
    "checkpoint-surrogate": ([(CHECKPOINT, "surrogate")], CHECKPOINT + ":1:29", ALL),
    "background-surrogate": ([(BACKGROUND, "surrogate")], BACKGROUND + ":1:29", ALL),
    # the issue's own setup: all of them at once; the data map fails first
    "all-at-once": ([(AGENTS, "nan"), (THINKING, "deep"), (CHECKPOINT, "brackets")],
                    CHECKPOINT + ":1:65", ALL),
}


@pytest.fixture
def alice() -> Iterator[User]:
    with plain_user("alice") as u:
        yield u


@pytest.mark.parametrize("case", list(CASES))
def test_one_users_json_fails_that_install_only(alice: User, case: str) -> None:
    files, where, readers = CASES[case]
    with host_tree() as root:
        a, b = two_installs(root, alice)
        for rel, kind in files:
            as_user(alice, WRITE, str(root / a.lstrip("/") / rel), kind)
        got = (root / a.lstrip("/") / files[0][0]).read_bytes()
        assert b"NaN" in got or b"9" * 5000 in got or got.startswith(
            (b"[[[", b'{"log', b'{"stor'))
        alice_configs = snapshot(root / a.lstrip("/") / CONFIG)
        alice_data = snapshot(root / a.lstrip("/") / "project_archive")
        bob_sessions = root / b.lstrip("/") / "project_archive/sessions"
        reported: dict[str, bool] = {}
        for command in ALL:
            r = mnic(root, "--json", *command.split())
            context = f"{case}: {command}: rc={r.code}\n{r.err[-3000:]}"
            assert "internal error" not in r.err and "Traceback" not in r.err, context
            doc = json.loads(r.out)
            failed = {f["install"]: f for f in doc.get("failed_installs", [])}
            # the other install was processed
            assert b in r.out, context
            assert b not in failed, context
            if command in readers:
                assert r.code == 1, context
                assert a in failed, context
                err = failed[a]["error"]
                assert re.search(re.escape(a + "/" + where) + r"\d*", err), context
                # and on stderr for the admin, with the file and line
                assert f"{a}/{where}" in r.err, context
            else:
                assert a not in failed, context
            reported[command] = a in failed
        # what failed wrote nothing into her install (render and clean ran for real)
        if "render" in readers:
            assert snapshot(root / a.lstrip("/") / CONFIG) == alice_configs
        if "clean" in readers:
            assert snapshot(root / a.lstrip("/") / "project_archive") == alice_data
        # while bob's was rendered and cleaned
        assert (root / b.lstrip("/") / CONFIG / "mnic-ops-performance.json").exists()
        assert any(f.name.endswith(".md.gz") for f in bob_sessions.iterdir())
        assert all(reported[c] for c in readers), reported


def test_text_output_names_the_install_and_file(alice: User) -> None:
    with host_tree() as root:
        a, b = two_installs(root, alice)
        as_user(alice, WRITE, str(root / a.lstrip("/") / CHECKPOINT), "brackets")
        r = mnic(root, "projects")
        assert r.code == 1
        assert b in r.out and f"{a}  owner" not in r.out
        assert (f"mnic-ops: error: install {a} failed (data map): {a}/{CHECKPOINT}:1:65: "
                "nested more than 64 levels deep") in r.err


def test_doctor_bounds_session_json_and_front_matter(alice: User) -> None:
    """Doctor's measuring child reads what the owner wrote (as the owner): a session
    file nested 100000 deep, a "billion laughs" agent and front matter nested deep are
    findings with their line, not a failed measurement or an internal error."""
    code = """
import sys
base = sys.argv[1]
open(base + "/project_archive/sessions/session_evil.json", "w").write("[" * 100000)
laughs = "a: &a [x, x, x, x, x, x, x, x, x]\\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\\n"
    for p, c in zip("abcdefgh", "bcdefghi"))
open(base + "/.claude/agents/laughs.md", "w").write("---\\n" + laughs + "---\\nbody\\n")
open(base + "/.claude/agents/deep.md", "w").write("---\\nx: " + "[" * 5000 + "\\n---\\n")
"""
    with host_tree() as root:
        a, _ = two_installs(root, alice)
        as_user(alice, code, str(root / a.lstrip("/")))
        r = mnic(root, "--json", "doctor", a)
        assert "internal error" not in r.err and "Traceback" not in r.err, r.err
        doc = json.loads(r.out)
        row = doc["projects"][0]
        checks = {c["id"]: c for c in row["checks"]}
        assert row["figures"]["agent_activation"]["value"] is not None
        assert row["figures"]["context_loading"]["value"] is not None
        text = json.dumps(checks)
        assert "aliases (*name) are refused" in text, text
        assert "nested more than 32 levels deep" in text, text
        assert "session_evil.json" in text and "line 1 column 65" in text, text
        assert not doc.get("failed_installs")


@pytest.mark.parametrize(("doc", "where"), [
    ("[" * 65 + "]" * 65, "f:1:65: nested more than 64 levels deep"),  # C parser accepts
    ("[" * 900 + "]" * 900, "f:1:65: nested more than 64 levels deep"),
    ("[" * 5000, "f:1:65: nested more than 64 levels deep"),  # C parser's RecursionError
    ('{"a": [' + "1" * 65 + "]}", "f:1:8: a number of 65 characters"),
    ('{"a": 1.' + "5" * 70 + "}", "f:1:7: a number of 72 characters"),
    ('{"a": {"b": 1, "b": 2}}', "f:1:16: duplicate key 'b'"),
])
def test_bounded_parser_fast_path_keeps_every_refusal(doc: str, where: str) -> None:
    """The bounded parser lets the C parser go first and scans only on a refusal or a
    deep result: the refusals and their places are those of the scan."""
    from mnic_ops.core import userjson

    with pytest.raises(userjson.UserDataError) as ei:
        userjson.parse(doc, "f")
    assert str(ei.value).startswith(where), str(ei.value)
    assert userjson.parse("[" * 64 + "]" * 64, "f") is not None


def test_a_value_error_past_the_parsers_fails_that_install_only() -> None:
    """The backstop: should a value the parsers let through still reach an encoder or a
    path (UnicodeEncodeError, a ValueError), it is that install's failure, reported in
    text any output can carry, never an internal error for everyone."""
    import os
    from types import SimpleNamespace

    from mnic_ops.core import installfail

    app = SimpleNamespace(failures=installfail.InstallFailures())
    with installfail.guard(app, "/home/a/app", "clean"):  # type: ignore[arg-type]
        os.readlink("/tmp/x\ud800y")
    with installfail.guard(app, "/home/b/app", "clean"):  # type: ignore[arg-type]
        int("not a number")
    got = {f.install: f for f in app.failures}
    assert set(got) == {"/home/a/app", "/home/b/app"}
    err = got["/home/a/app"].error
    assert err.startswith("UnicodeEncodeError: ") and "\\ud800" in err, err
    err.encode("utf-8")  # printable anywhere: the surrogate is an escape
    assert got["/home/b/app"].error.startswith("ValueError: ")
