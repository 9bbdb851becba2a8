"""No-follow folder opening and the per-project lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import dirlock


def test_open_dir_nofollow_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            dirlock.open_dir_nofollow(fd, ["link"])
        os.close(dirlock.open_dir_nofollow(fd, ["real"]))
    finally:
        os.close(fd)


def test_project_lock_is_exclusive(tmp_path: Path) -> None:
    root = HostRoot.open(tmp_path)
    with dirlock.project_lock(root, "/home/a/p") as first:
        assert first
        with dirlock.project_lock(root, "/home/a/p") as second:
            assert not second
        with dirlock.project_lock(root, "/home/a/q") as other:
            assert other
