"""mnic_ops.engines.treestat: a tree's size (hardlinks counted once) and its digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnic_ops.engines import treestat
from tests.fsenv import make_tree

pytestmark = pytest.mark.root  # make_tree gives files several owners


def test_measure_tree(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", 120)
    size = treestat.measure_tree(tmp_path / "t")
    regular = {(st.st_ino) for p in (tmp_path / "t").rglob("*")
               if p.is_file() and not p.is_symlink() and (st := p.lstat())}
    assert size.files == len(regular) and size.hardlinked >= 1
