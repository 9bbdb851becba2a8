"""`mnic-ops projects`: the installs and their data folders, as text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_mnic
from tests.facts.test_projects import make_install, write_config


def test_projects_command_text_and_json(fake_root: Path) -> None:
    make_install(fake_root / "home/alice/p", version="3.9.1")
    r = run_mnic("--root", str(fake_root), "projects", "--json")
    assert r.code == 0, r.err
    (row,) = json.loads(r.out)["projects"]
    assert row["root"] == "/home/alice/p" and row["version"] == "3.9.1"
    sessions = row["data"]["sessions"]
    assert (sessions["bytes"], sessions["files"]) == (1008, 2)
    assert row["data"]["checkpoints"]["exists"] is False
    r = run_mnic("--root", str(fake_root), "projects")
    assert r.code == 0, r.err
    assert "/home/alice/p" in r.out and "1008 B in 2 files" in r.out
    r = run_mnic("--root", str(fake_root), "projects", "nope")
    assert r.code == 2 and "nope: no such framework install" in r.err
    assert "Traceback" not in r.err
    write_config(fake_root, 'search_paths = ["relative/path"]\n')
    r = run_mnic("--root", str(fake_root), "projects")
    assert r.code == 2 and "not an absolute path" in r.err
