"""The size of a data folder: no symlink followed inside it."""

from __future__ import annotations

from pathlib import Path

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import datameasure, projects
from tests.conftest import write_tree


def test_measure_follows_no_symlink(tmp_path: Path) -> None:
    d = write_tree(tmp_path / "d", {"a": "1" * 10, "sub/b": "2" * 5, "sub/deeper/c": ""})
    big = write_tree(tmp_path / "outside", {"big": "x" * 10000})
    (d / "sub/link").symlink_to(big / "big")
    (d / "dirlink").symlink_to(big)
    hr = HostRoot.open(tmp_path)
    dd = projects.data_dir(hr, "logs", "/d")
    assert datameasure.measure(dd) == (15, 3)
