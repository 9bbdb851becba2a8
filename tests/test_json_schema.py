"""Every command's --json output, success and failure, against docs/json-schema.json
(issue 16 item 1): run on ``--root`` host trees (fresh, provisioned, with a failed
install, with a bad config), each document validated with jsonschema. A key added,
renamed or retyped without the schema (and docs/json.md) fails here."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import click
import pytest
from jsonschema import Draft202012Validator

from mnic_ops.cli import LAZY_COMMANDS, cli
from tests.capabilities.test_watch import Watcher, settle_env
from tests.conftest import REPO, run_mnic
from tests.hosttree import PROJECT, break_install, build_host, pending_journal

SCHEMA = json.loads((REPO / "docs/json-schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)


def validate(doc: Any, what: str) -> None:
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:5]:
            lines.append(f"{list(e.absolute_path)}: {e.message[:300]}")
            lines += [f"    {list(c.absolute_path)}: {c.message[:200]}"
                      for c in (e.context or [])[:8]]
        pytest.fail(f"{what}: output does not match docs/json-schema.json:\n"
                    + "\n".join(lines))


def run_json(root: Path, args: list[str], code: int | tuple[int, ...],
             cwd: str | None = None) -> dict[str, Any]:
    """``mnic-ops --root ROOT ARGS --json``: one document on stdout, valid, with the
    expected exit code and ``ok`` matching it."""
    r = run_mnic("--root", str(root), *args, "--json", cwd=cwd)
    codes = (code,) if isinstance(code, int) else code
    assert r.code in codes, f"{args}: exit {r.code}\n{r.out[-2000:]}\n{r.err[-2000:]}"
    assert "Traceback" not in r.err, r.err
    try:
        doc = json.loads(r.out)
    except ValueError:
        pytest.fail(f"{args}: not one JSON document: {r.out[:500]!r}")
    validate(doc, " ".join(args))
    assert doc["ok"] is (r.code in (0, 3)), (args, r.code, doc["ok"])
    return doc


# (args, exit codes): every command and subcommand, on a fresh host and a provisioned one
FRESH: list[tuple[list[str], int | tuple[int, ...]]] = [
    (["detect"], 0), (["facts"], 0), (["config"], 0), (["config", "--schema"], 0),
    (["undo", "--list"], 0), (["undo", "--check", "--all"], 0), (["undo", "--last"], 0),
    (["projects"], 0), (["render", "--check"], 3), (["relocate", "--check"], 3),
    (["relocate", "--check", "--undo"], 0), (["relocate", "--list-pending"], 0),
    (["fstab"], 3), (["clean", "--check"], 3), (["clean", "--check", "--only", "expire"], 0),
    (["cron", "install", "--check"], 3), (["cron", "remove", "--check"], 0),
    (["cron", "show"], 0), (["watch", "--check"], 0),
    (["watch", "--install-unit", "--check"], 3), (["watch", "--remove-unit", "--check"], 0),
    (["provision", "--check"], 3), (["provision", "--check", "--diff"], 3),
    (["render", "--check", "--diff"], 3), (["verify"], 1), (["doctor"], (0, 1)),
    (["status"], 0),  # never provisioned: drift is a warning
    (["completion", "bash"], 0), (["completion", "zsh"], 0), (["completion", "fish"], 0),
    (["manpage"], 0)]
PROVISIONED: list[tuple[list[str], int | tuple[int, ...]]] = [
    (["verify"], 0), (["status"], 0), (["relocate", "--check"], 0), (["undo", "--list"], 0),
    (["undo", "--check", "--all"], 3), (["cron", "show"], 0), (["projects"], 0),
    (["render", "--check"], 0), (["clean", "--check"], 0), (["doctor"], (0, 1)),
    (["watch", "--check"], 0), (["fstab"], 3)]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_host(tmp_path_factory.mktemp("json") / "fresh")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_host(tmp_path_factory.mktemp("json") / "provisioned")
    doc = run_json(root, ["provision"], 0)
    assert doc["counts"]["changed"] >= 3, doc["counts"]
    doc = run_json(root, ["clean"], 0)
    assert doc["counts"]["changed"] == 1 and doc["state_file"], doc["counts"]
    return root


@pytest.mark.parametrize(("args", "code"), FRESH, ids=[" ".join(a) for a, _ in FRESH])
def test_fresh_host(fresh: Path, args: list[str], code: int) -> None:
    doc = run_json(fresh, args, code)
    assert doc["command"] == _named(args)


@pytest.mark.parametrize(("args", "code"), PROVISIONED,
                         ids=[" ".join(a) for a, _ in PROVISIONED])
def test_provisioned_host(provisioned: Path, args: list[str], code: int) -> None:
    run_json(provisioned, args, code)


def test_diff_adds_the_whole_texts(fresh: Path) -> None:
    doc = run_json(fresh, ["cron", "install", "--check", "--diff"], 3)
    [item] = doc["items"]
    assert item["before"] == "" and "mnic-ops:compress" in item["after"]


def test_changes_and_their_undo(tmp_path: Path) -> None:
    """The commands that change something, applied: each document valid."""
    root = build_host(tmp_path / "h")
    run_json(root, ["render"], 0)
    run_json(root, ["cron", "install"], 0)
    run_json(root, ["watch", "--install-unit"], 0)
    doc = run_json(root, ["relocate"], 0)
    assert doc["counts"]["changed"] == 3 and doc["target"]["path"] == "/mnt/ssd/mnic"
    run_json(root, ["fstab", "--apply"], 0)
    run_json(root, ["relocate", "--undo", PROJECT], 0)
    run_json(root, ["watch", "--remove-unit"], 0)
    run_json(root, ["cron", "remove"], 0)
    doc = run_json(root, ["undo", "--check", "--last"], 3)
    assert doc["counts"]["pending"] == 1 and doc["items"][0]["state"] == "pending"
    doc = run_json(root, ["undo", "--last"], 0)
    assert doc["check"] is False and [i["state"] for i in doc["items"]] == ["changed"]
    assert doc["items"][0]["data"]["result"]
    run_json(root, ["undo", "--all"], 0)
    # an interrupted move: listed, then forgotten (nothing of it is left on disk)
    move = pending_journal(root)
    doc = run_json(root, ["relocate", "--list-pending"], 0)
    assert [p["id"] for p in doc["pending"]] == [move]
    run_json(root, ["status"], 1)
    run_json(root, ["relocate", "--forget", move, "--check"], 3)
    run_json(root, ["relocate", "--forget", move], 0)
    run_json(root, ["relocate", "--forget", move], 2)  # gone now: an error document


# --- failures ----------------------------------------------------------------------------

BAD_CONFIG_COMMANDS = [["detect"], ["config"], ["projects"], ["render", "--check"],
                       ["relocate", "--check"], ["fstab"], ["clean", "--check"],
                       ["cron", "install", "--check"], ["watch", "--check"],
                       ["provision", "--check"], ["verify"], ["doctor"]]


@pytest.fixture(scope="module")
def bad_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_host(tmp_path_factory.mktemp("json") / "badcfg",
                      config='search_paths = ["/home"]\nsearch_depth = "deep"\n')


@pytest.mark.parametrize("args", BAD_CONFIG_COMMANDS, ids=" ".join)
def test_bad_config_names_file_and_line(bad_config: Path, args: list[str]) -> None:
    doc = run_json(bad_config, args, 2)
    [err] = doc["errors"]
    assert err["file"] == str(bad_config / "etc/mnic-ops/config.toml") and err["line"] == 2
    assert set(doc) == {"schema_version", "command", "ok", "errors"}


def test_status_with_a_bad_config_still_shows_the_rest(bad_config: Path) -> None:
    doc = run_json(bad_config, ["status"], 1)
    assert doc["config"]["health"] == "failed"
    assert doc["errors"][0]["line"] == 2, doc["errors"]
    assert doc["watcher"]["health"] != "unknown" and doc["journal"]["health"] == "ok"
    assert doc["installs"]["health"] == "unknown"


UNKNOWN_INSTALL = [["projects"], ["render", "--check"], ["relocate", "--check"],
                   ["clean", "--check"], ["watch", "--check"],
                   ["watch", "--install-unit", "--check"], ["doctor"]]


@pytest.mark.parametrize("args", UNKNOWN_INSTALL, ids=" ".join)
def test_unknown_install(fresh: Path, args: list[str]) -> None:
    doc = run_json(fresh, [*args, "nosuch"], 2)
    assert "no such framework install" in doc["errors"][0]["message"]


USAGE = [["no-such-command"], ["clean", "--only", "sideways"], ["undo", "--last", "x"],
         ["completion", "tcsh"], ["relocate", "--list-pending", "--forget", "x"],
         ["fstab", "--check", "--apply"], ["cron", "show", "--system", "--user", "root"],
         ["watch", "--install-unit", "--remove-unit"], ["status", "extra-arg"],
         ["detect", "--host-class", "mainframe"]]


@pytest.mark.parametrize("args", USAGE, ids=" ".join)
def test_usage_errors(fresh: Path, args: list[str]) -> None:
    doc = run_json(fresh, args, 2)
    assert doc["errors"] and doc["ok"] is False


FAILED_INSTALL = [(["projects"], 1), (["render", "--check"], 1), (["clean", "--check"], 1),
                  (["clean"], 1), (["watch", "--check"], 1), (["provision", "--check"], 1),
                  (["verify"], 1), (["doctor"], 1), (["status"], 1)]


@pytest.fixture(scope="module")
def failed_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_host(tmp_path_factory.mktemp("json") / "failed")
    break_install(root)
    return root


@pytest.mark.parametrize(("args", "code"), FAILED_INSTALL,
                         ids=[" ".join(a) for a, _ in FAILED_INSTALL])
def test_failed_install(failed_install: Path, args: list[str], code: int) -> None:
    doc = run_json(failed_install, args, code)
    assert [f["install"] for f in doc["failed_installs"]] == [PROJECT]
    assert any(e.get("install") == PROJECT for e in doc["errors"]), doc["errors"]


# --- the watcher's event lines -------------------------------------------------------------

def test_watch_event_lines(tmp_path: Path) -> None:
    root = build_host(tmp_path / "h", files=2)
    with Watcher(root, env=settle_env(0.2)) as w:
        w.ready()
        p = root / PROJECT.lstrip("/") / "project_archive/sessions/new.json"
        p.write_bytes(b'{"x": 1}\n' * 400)
        assert w.wait_for(lambda: bool(w.compressed()), 30), w.stderr()
        assert w.stop(signal.SIGTERM) == 0
    kinds = [e.get("event") for e in w.events]
    assert kinds[0] == "watching" and "compressed" in kinds and kinds[-1] == "stopped"
    for e in w.events:
        assert e["schema_version"] == 1 and e["command"] == "watch", e
        validate(e, f"watch event {e.get('event')}")


# --- coverage: every command has a case, the schema knows every command --------------------

def _leaves() -> set[str]:
    out: set[str] = set()
    ctx = click.Context(cli)
    for name in LAZY_COMMANDS:
        cmd = cli.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            out |= {f"{name} {sub}" for sub in cmd.commands}
        else:
            out.add(name)
    return out


def _named(args: list[str]) -> str:
    return " ".join(args[:2]) if args[0] == "cron" else args[0]


def test_every_command_is_run_and_known_to_the_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    ran = {_named(a) for a, _ in FRESH + PROVISIONED}
    assert _leaves() - ran == set(), "commands without a case in this file"
    documented = {k.removeprefix("cmd_").replace("_", " ")
                  for k in SCHEMA["$defs"] if k.startswith("cmd_")}
    assert _leaves() == documented, "docs/json-schema.json and the CLI differ"


def test_every_example_in_the_docs_is_valid() -> None:
    """docs/json.md shows one example per command: each must match the schema, so the
    page cannot drift from what the commands print either."""
    text = (REPO / "docs/json.md").read_text()
    docs = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, re.S)]
    lines = [json.loads(ln) for b in re.findall(r"```jsonl\n(.*?)\n```", text, re.S)
             for ln in b.splitlines()]
    assert len(docs) >= 25 and {e["event"] for e in lines} >= {"watching", "stopped"}
    for d in docs + lines:
        validate(d, f"docs/json.md example {d.get('command')} {d.get('event', '')}")
    shown = {d["command"] for d in docs if len(d) > 4}  # not only the envelope
    assert _leaves() - shown - {"cron remove"} == set(), "commands without an example"
