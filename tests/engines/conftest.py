"""Shared by the tests of the in-place engines: a data folder open as a directory fd,
files aged past the cut-off, and the options a pass would use."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnic_ops.engines import inplace

OLD = time.time() - 10 * 86400


def payload(i: int, size: int = 3000) -> bytes:
    line = f'{{"id": {i}, "agent": "software-architect", "note": "decision {i}"}}\n'.encode()
    return (line * (size // len(line) + 1))[:size]


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    d = tmp_path / "data"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield d, fd
    finally:
        os.close(fd)


def aged(p: Path, data: bytes, mtime: float = OLD) -> Path:
    p.write_bytes(data)
    os.utime(p, (mtime - 5, mtime))
    return p


def opts(fd: int, **kw: object) -> inplace.Options:
    return inplace.Options(dev=os.fstat(fd).st_dev, max_mtime=time.time() - 7 * 86400,
                           **kw)  # type: ignore[arg-type]
