"""The processes doctor looks at: which command lines are an ``mnic-ops watch`` and for
which host tree."""

from __future__ import annotations

import pytest

from mnic_ops.facts import processes


@pytest.mark.parametrize(("argv", "want"), [
    (["/opt/mnic-ops/bin/python", "/opt/mnic-ops/bin/mnic-ops", "watch"], "/"),
    (["python", "-m", "mnic_ops", "--root", "/srv/img", "-v", "watch", "--poll"], "/srv/img"),
    (["mnic-ops", "--root=/x/", "--config", "/c.toml", "watch"], "/x"),
    (["mnic-ops", "clean"], None),
    (["mnic-ops", "doctor", "watch"], None),
    (["vim", "watch"], None),
])
def test_watch_command_lines(argv: list[str], want: str | None) -> None:
    assert processes.watch_root(argv) == want
