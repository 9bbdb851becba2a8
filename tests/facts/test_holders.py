"""mnic_ops.facts.holders: the processes with a file open under a folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnic_ops.facts import holders
from tests.fsenv import make_tree

pytestmark = pytest.mark.root  # make_tree gives files several owners


def test_holders(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", 120)
    victim = next((tmp_path / "t").rglob("SESSION_*.md"))
    proc = subprocess.Popen([sys.executable, "-c", "import sys,time\nf=open(sys.argv[1])\n"
                             "print('ok', flush=True)\ntime.sleep(30)", str(victim)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        hs = holders.holders([str(tmp_path / "t")])
        assert [(h.pid, h.path) for h in hs] == [(proc.pid, str(victim))]
        assert holders.holders([str(tmp_path / "elsewhere")]) == []
    finally:
        proc.kill()
        proc.wait()
