"""The JSON envelope every command prints with --json (issue 16, item 1): one document
on stdout, success or failure, with schema_version, command, ok and errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from mnic_ops.cli import LAZY_COMMANDS, cli
from tests.conftest import run_mnic


def _doc(out: str) -> dict[str, object]:
    doc = json.loads(out)
    assert isinstance(doc, dict)
    assert doc["schema_version"] == 1
    assert isinstance(doc["ok"], bool) and isinstance(doc["errors"], list)
    return doc


def _leaf_commands() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    ctx = click.Context(cli)
    for name in LAZY_COMMANDS:
        cmd = cli.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            out.extend((name, sub) for sub in cmd.commands)
        else:
            out.append((name,))
    return out


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_every_command_takes_json_after_it(path: tuple[str, ...]) -> None:
    ctx = click.Context(cli)
    cmd: click.Command | None = cli.get_command(ctx, path[0])
    for sub in path[1:]:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[sub]
    assert cmd is not None
    assert any("--json" in getattr(p, "opts", ()) for p in cmd.params), path


@pytest.mark.parametrize("where", ["before", "after"])
def test_success_document(fake_root: Path, where: str) -> None:
    args = ["--json", "detect"] if where == "before" else ["detect", "--json"]
    r = run_mnic("--root", str(fake_root), *args)
    assert r.code == 0, r.err
    doc = _doc(r.out)
    assert doc["command"] == "detect" and doc["ok"] is True and doc["errors"] == []
    assert doc["class"] in ("laptop", "workstation", "server")


def test_subcommand_name_and_check_pending_is_ok(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir(parents=True)
    r = run_mnic("--root", str(fake_root), "cron", "install", "--check", "--json")
    assert r.code == 3, r.err
    doc = _doc(r.out)
    assert doc["command"] == "cron install" and doc["ok"] is True
    assert doc["counts"]["pending"] >= 1  # type: ignore[index]


def test_a_group_without_its_subcommand_names_the_choices(fake_root: Path) -> None:
    """``mnic-ops --json cron``: a usage error (2) whose message lists the subcommands,
    not the whole help page squeezed into one JSON string."""
    r = run_mnic("--root", str(fake_root), "--json", "cron")
    assert r.code == 2
    doc = _doc(r.out)
    assert doc["ok"] is False and doc["command"] == "cron"
    [err] = doc["errors"]  # type: ignore[misc]
    assert err["message"] == "mnic-ops cron: a subcommand is needed: one of install, " \
        "remove, show", err
    # without --json: click's usage text, as before
    r = run_mnic("--root", str(fake_root), "cron")
    assert r.code == 2 and "Usage: mnic-ops cron" in r.err + r.out


def test_bad_input_is_a_document_with_file_and_line(fake_root: Path) -> None:
    cfg = fake_root / "etc/mnic-ops/config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('ssd_path = "/mnt/ssd"\nsearch_depth = "deep"\n')
    r = run_mnic("--root", str(fake_root), "projects", "--json")
    assert r.code == 2
    doc = _doc(r.out)
    assert doc["ok"] is False and doc["command"] == "projects"
    [err] = doc["errors"]  # type: ignore[misc]
    assert err["file"] == str(cfg) and err["line"] == 2, err
    assert "search_depth" in err["message"]


@pytest.mark.parametrize("args", [["--root", "/nonexistent-root", "--json", "facts"],
                                  ["--json", "no-such-command"],
                                  ["--json", "clean", "--only", "sideways"]])
def test_usage_errors_are_documents(args: list[str]) -> None:
    r = run_mnic(*args)
    assert r.code == 2
    doc = _doc(r.out)
    assert doc["ok"] is False and doc["errors"], doc
    assert "Traceback" not in r.err
