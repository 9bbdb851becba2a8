"""doctor's levels: the guide's "Expected Performance Metrics" table (the report's text
and metrics are read back in test_doctor.py)."""

from __future__ import annotations

import pytest

from mnic_ops.capabilities import doctorreport


@pytest.mark.parametrize(("value", "want"), [
    (0.0, "excellent"), (0.499, "excellent"), (0.5, "good"), (0.99, "good"),
    (1.0, "target"), (1.99, "target"), (2.0, "missed"), (None, "unknown")])
def test_levels_follow_the_guides_table(value: float | None, want: str) -> None:
    assert doctorreport.level(value, doctorreport.FIGURES["agent_activation"]) == want


def test_memory_levels_in_mib() -> None:
    th = doctorreport.FIGURES["memory"]
    assert doctorreport.level(99 * doctorreport.MIB, th) == "excellent"
    assert doctorreport.level(180 * doctorreport.MIB, th) == "target"
    assert doctorreport.level(200 * doctorreport.MIB, th) == "missed"
