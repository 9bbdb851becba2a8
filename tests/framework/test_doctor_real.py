"""doctor's compression finding on an install the real framework made: it reports what
``clean`` would compress (the one data-folder policy, :func:`mnic_ops.facts.policy.due`) and
nothing else, so that running the fix it names clears it. Files clean rightly leaves
alone (thinking logs whose config turns compression off, files the framework reads back
by name, classes whose expiry is the retention it declares) are never a finding: such a
finding could never clear."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.framework.fwhelp import Host, Install, host, install, plain_user

pytestmark = pytest.mark.root


@pytest.fixture
def fw_host() -> Iterator[Host]:
    with host() as h:
        yield h


def spec() -> dict[str, Any]:
    files: dict[str, Any] = {
        ".claude/sessions/SESSION_STATE.md": {"text": "# state\n", "age_days": 20},
        ".claude/thinking-logs/index.json": {"text": '{"logs": []}', "age_days": 20},
    }
    for d in (40, 20, 10):  # named by their date, as the framework names them
        t = dt.datetime.fromtimestamp(time.time() - d * 86400)
        files[f".claude/thinking-logs/core/software-architect/{t:%Y-%m-%d-%H%M%S}-x.json"] \
            = {"text": json.dumps({"agent": "software-architect"}), "age_days": d}
    return {"files": files,
            "checkpoints": [{"how": "engine", "level": "manual", "age_days": 20},
                            {"how": "coordinator", "agent": "backend-engineer",
                             "age_days": 20}],
            "cost": [{"age_days": 20}], "tasks": [{"age_days": 20}]}


def compress_findings(h: Host) -> list[dict[str, Any]]:
    rep = h.mnic_json("doctor", ok=(0, 1))
    return [c for p in rep["projects"] for c in p["checks"]
            if c["id"] == "uncompressed" and c["status"] != "ok"]


def set_compression(inst: Install, value: str) -> None:
    f = inst.path / ".claude/config/extended-thinking-config.json"
    cfg = json.loads(f.read_text())
    cfg["logging"]["compression"] = value
    f.write_text(json.dumps(cfg, indent=2))


def run_fix(h: Host, finding: dict[str, Any]) -> None:
    """The command the finding names (``mnic-ops --root R ARGS``), run as named."""
    argv = shlex.split(finding["command"])
    assert argv[:3] == ["mnic-ops", "--root", str(h.root)], argv
    r = h.mnic(*argv[3:])
    assert r.code == 0, r.out + r.err


def test_thinking_logs_with_compression_off_are_no_finding(fw_host: Host) -> None:
    h = fw_host
    with plain_user("rules-doc") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        set_compression(inst, "none")
        h.write_config([inst.host_path])
        inst.populate(spec())
        # clean has nothing to compress here: the logs' config turns it off, the store,
        # cost records and task results are read back by name, SESSION_STATE.md too
        chk = h.mnic_json("clean", "--check", ok=(0, 3))
        kinds = chk["projects"][0]["kinds"]
        assert not any(k.get("would_compress") for k in kinds.values()), kinds
        # ... so doctor reports nothing either
        assert compress_findings(h) == []
        logs = inst.path / ".claude/thinking-logs/core/software-architect"
        assert sorted(p.suffix for p in logs.iterdir()) == [".json"] * 3


def test_every_compress_finding_is_cleared_by_its_fix(fw_host: Host) -> None:
    h = fw_host
    with plain_user("rules-doc") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        set_compression(inst, "gzip_after_7_days")
        h.write_config([inst.host_path])
        s = spec()
        s["files"][".claude/sessions/notes.md"] = {"text": "# notes\n" * 20, "age_days": 20}
        s["files"]["project_archive/sessions/session_a.json"] = {"text": '{"h": 1}',
                                                                 "age_days": 20}
        inst.populate(s)
        found = compress_findings(h)
        assert len(found) == 1
        kinds = found[0]["details"]["kinds"]
        # what clean would compress: the aged session files and the thinking logs the
        # framework's config declares compression for (older than 7 days)
        assert set(kinds) == {"claude_sessions", "sessions", "thinking_logs"}, kinds
        assert kinds["thinking_logs"]["files"] == 3
        assert kinds["claude_sessions"]["files"] == 1  # notes.md, not SESSION_STATE.md
        for f in found:
            run_fix(h, f)
        assert compress_findings(h) == []
        logs = inst.path / ".claude/thinking-logs/core/software-architect"
        assert sorted(p.name.endswith(".json.gz") for p in logs.iterdir()) == [True] * 3
