"""The classes retention expires by age: what of the thinking-logs index refers to an
expired log (the index's format is the assistant's, undocumented)."""

from __future__ import annotations

from typing import Any

import pytest

from mnic_ops.engines import agedclasses


@pytest.mark.parametrize(("index", "refs", "want", "removed"), [
    ({"logs": [{"path": ".claude/thinking-logs/core/a/x.json"}, {"path": "core/a/y.json"}]},
     {"core/a/x.json"}, {"logs": [{"path": "core/a/y.json"}]}, 1),
    (["core/a/x.json", "core/a/y.json"], {"core/a/x.json"}, ["core/a/y.json"], 1),
    ({"core/a/x.json": {"c": 1}, "other": {"by_agent": {"a": ["core/a/x.json"]}}},
     {"core/a/x.json"}, {"other": {"by_agent": {"a": []}}}, 2),
    ({"entries": {"id1": {"file": "core/a/x.json"}, "id2": {"file": "core/b/z.json"}}},
     {"core/a/x.json"}, {"entries": {"id2": {"file": "core/b/z.json"}}}, 1),
    ({"logs": []}, {"core/a/x.json"}, {"logs": []}, 0),
    # a suffix counts only after a "/": xcore/a/x.json is another file
    (["xcore/a/x.json", "/abs/p/core/a/x.json", "core/a/x.json/"], {"core/a/x.json"},
     ["xcore/a/x.json", "core/a/x.json/"], 1),
])
def test_thinking_index_references_are_removed(index: Any, refs: set[str], want: Any,
                                               removed: int) -> None:
    assert agedclasses.prune_refs(index, refs) == (want, removed)
