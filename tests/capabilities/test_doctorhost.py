"""doctor's host checks, as units: who a shell profile gives PYTHONOPTIMIZE, and tier
drift read from render's own plan (the checks as a whole run in test_doctor.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mnic_ops.capabilities import doctorhost, render


@pytest.mark.parametrize(("text", "everyone", "uids"), [
    ("export PYTHONOPTIMIZE=2\n", True, set()),
    ("PYTHONOPTIMIZE=\"1\"\n", True, set()),
    ("export PYTHONOPTIMIZE=0\n", False, set()),
    ("# export PYTHONOPTIMIZE=2\n", False, set()),
    ('case "$(id -u)" in\n    1000|1001)\n        export PYTHONOPTIMIZE=2\n        ;;\n'
     "esac\nexport OTHER=1\n", False, {1000, 1001}),
    ('case "$(id -u)" in 1000) export PYTHONOPTIMIZE=2 ;; esac\n', False, {1000}),
])
def test_who_gets_pythonoptimize(text: str, everyone: bool, uids: set[int]) -> None:
    assert doctorhost.optimize_for(text) == (everyone, uids)


def test_tier_drift_uses_render_plan(fake_root: Path, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    """Drift = pending items of render's plan; refused items fail; a render bug skips."""
    from mnic_ops.changes.model import Item, Plan
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

    seen: list[Any] = []
    state: dict[str, Any] = {"items": []}

    def build(app: Any, host_class: Any, names: list[str]) -> tuple[Plan, None, list[Any]]:
        seen.append((host_class, names))
        if "raise" in state:
            raise state["raise"]
        plan = Plan()
        for it in state["items"]:
            plan.add(it)
        return plan, None, []

    monkeypatch.setattr(render, "build", build)
    app = AppContext(root=HostRoot.open(fake_root), config_path=None)
    assert doctorhost.tier_drift_check(app, ["/home/a/p"]).status == "ok"
    assert seen == [(None, ["/home/a/p"])]
    state["items"] = [Item("file:/etc/profile.d/mnic-ops.sh", "write /etc/profile.d/mnic-ops.sh",
                           state="ok"),
                      Item("p:maxParallelAgents", "set maxParallelAgents 2 -> 5")]
    c = doctorhost.tier_drift_check(app, [])
    assert c.status == "fail" and c.details["pending"] == ["set maxParallelAgents 2 -> 5"]
    assert c.command == f"mnic-ops --root {fake_root} render"
    state["items"] = [Item("x", "merge parallel-agents-config.json", state="failed",
                           error="x.json:3:5: not valid JSON")]
    c = doctorhost.tier_drift_check(app, [])
    assert c.status == "fail" and "x.json:3:5" in c.finding
    state["raise"] = RuntimeError("boom")
    c = doctorhost.tier_drift_check(app, [])
    assert c.status == "skip" and "boom" in c.finding
