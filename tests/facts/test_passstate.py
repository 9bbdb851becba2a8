"""The record of the last maintenance pass: written by every real clean pass (not by
--check), read back by status; a record anyone else could have written is not used."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import passstate
from tests.cleanhelp import make_project, write_config
from tests.conftest import run_mnic


def test_a_pass_leaves_its_record_and_check_does_not(fake_root: Path) -> None:
    make_project(fake_root, files=12)
    write_config(fake_root)
    root = HostRoot.open(fake_root)
    r = run_mnic("--root", str(fake_root), "clean", "--check")
    assert r.code == 3, r.err
    assert passstate.last(root) is None
    r = run_mnic("--root", str(fake_root), "--json", "clean")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["state_file"] == passstate.PATH
    rec = passstate.last(root)
    assert rec is not None
    assert rec["ok"] is True and rec["exit_code"] == 0 and rec["only"] is None
    assert rec["totals"]["compressed"] == doc["totals"]["compressed"] > 0
    assert [p["status"] for p in rec["projects"]] == ["done"]
    assert rec["finished"] >= rec["started"]
    st = os.stat(fake_root / passstate.PATH.lstrip("/"))
    assert st.st_mode & 0o777 == 0o644 and st.st_uid == os.geteuid()


def test_a_failed_pass_is_recorded_as_failed(fake_root: Path) -> None:
    make_project(fake_root, files=4)
    write_config(fake_root)
    cfg = fake_root / "home/alice/proj/.claude/config/checkpoint-config.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[" * 1000)
    r = run_mnic("--root", str(fake_root), "clean")
    assert r.code == 1
    rec = passstate.last(HostRoot.open(fake_root))
    assert rec is not None and rec["ok"] is False and rec["exit_code"] == 1
    assert rec["failed_installs"][0]["install"] == "/home/alice/proj"


def test_a_record_others_can_write_is_ignored(fake_root: Path) -> None:
    p = fake_root / passstate.PATH.lstrip("/")
    p.parent.mkdir(parents=True)
    p.write_text('{"ok": true}')
    root = HostRoot.open(fake_root)
    assert passstate.last(root) == {"ok": True}
    os.chmod(p, 0o666)
    assert passstate.last(root) is None
    os.chmod(p, 0o644)
    p.write_text("[" * 100)
    assert passstate.last(root) is None
