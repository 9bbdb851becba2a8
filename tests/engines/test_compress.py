"""The crash-safe gzip engine, used in-process on real files."""

from __future__ import annotations

import gzip
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from mnic_ops.engines import compress, inplace, tempfiles
from tests.engines.conftest import aged, opts, payload


def test_compresses_to_standard_gzip_keeping_metadata(folder: tuple[Path, int]) -> None:
    d, fd = folder
    files = {f"f{i}.json": payload(i, 1000 + 700 * i) for i in range(6)}
    for n, data in files.items():
        aged(d / n, data)
    os.chown(d / "f1.json", 1234, 4321)
    os.chmod(d / "f2.json", 0o640)
    before = {n: os.stat(d / n) for n in files}
    out = compress.compress_batch(fd, sorted(files), opts(fd))
    assert [o.state for o in out] == [inplace.COMPRESSED] * 6
    for n, data in files.items():
        assert not (d / n).exists()
        gz = d / (n + ".gz")
        st, old = os.stat(gz), before[n]
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            old.st_uid, old.st_gid, stat.S_IMODE(old.st_mode))
        assert st.st_mtime_ns == old.st_mtime_ns
        assert subprocess.run(["gzip", "-t", str(gz)]).returncode == 0
        assert subprocess.run(["gzip", "-dc", str(gz)], capture_output=True).stdout == data
    assert sorted(os.listdir(d)) == sorted(n + ".gz" for n in files)  # no temporaries


@pytest.mark.parametrize("compressor", ["zlib", "auto"])
def test_large_file_is_streamed_and_verified(folder: tuple[Path, int], compressor: str) -> None:
    d, fd = folder
    data = os.urandom(1 << 19) + payload(1, 3 << 20)  # over the in-memory limit
    aged(d / "big.json", data)
    out = compress.compress_batch(fd, ["big.json"], opts(fd, compressor=compressor, level=1))
    assert out[0].state == inplace.COMPRESSED and out[0].before == len(data)
    assert gzip.decompress((d / "big.json.gz").read_bytes()) == data


def test_skips_what_it_must_not_touch(folder: tuple[Path, int], tmp_path: Path) -> None:
    d, fd = folder
    outside = aged(tmp_path / "secret.json", b"secret")
    (d / "link.json").symlink_to(outside)
    os.mkfifo(d / "fifo.json")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.json"))
    aged(d / "hard.json", b"h" * 100)
    os.link(d / "hard.json", d / "hard2.json")
    aged(d / "young.json", b"y", mtime=time.time())
    aged(d / "writing.json", b"w" * 100)
    (d / "linked.json.gz").symlink_to(outside)  # NAME.gz that is no plain file
    aged(d / "linked.json", b"l" * 100)
    names = ["link.json", "fifo.json", "sock.json", "hard.json", "young.json",
             "writing.json", "linked.json", "missing.json"]
    with open(d / "writing.json", "ab"):
        out = {o.name: o.reason for o in compress.compress_batch(fd, names, opts(fd))}
    sock.close()
    assert out == {"link.json": "symlink", "fifo.json": "not_regular",
                   "sock.json": "not_regular", "hard.json": "hard_links",
                   "young.json": "too_young", "writing.json": "open_for_writing",
                   "linked.json": "archive_exists", "missing.json": "vanished"}
    assert outside.read_bytes() == b"secret"
    assert os.readlink(d / "linked.json.gz") == str(outside)
    assert not [n for n in os.listdir(d) if tempfiles.is_ours(n)]


def test_a_collision_is_resolved_and_reported(folder: tuple[Path, int]) -> None:
    """NAME.gz with other content (the framework re-created NAME after an earlier pass
    archived it): the older archive is kept as NAME.N.gz, N counting up, and NAME is
    compressed; every byte of both stays readable."""
    d, fd = folder
    old = gzip.compress(b"first history")
    (d / "h.json.gz").write_bytes(old)
    aged(d / "h.json", b"second history")
    (o,) = compress.compress_batch(fd, ["h.json"], opts(fd))
    assert (o.state, o.kept_as) == (inplace.COMPRESSED, "h.json.1.gz")
    assert (d / "h.json.1.gz").read_bytes() == old
    assert gzip.decompress((d / "h.json.gz").read_bytes()) == b"second history"
    assert not (d / "h.json").exists()
    # again: the next archive gets the next number, a gap in the numbers is not reused
    (d / "h.json.1.gz").rename(d / "h.json.3.gz")
    aged(d / "h.json", b"third history")
    (o,) = compress.compress_batch(fd, ["h.json"], opts(fd))
    assert o.kept_as == "h.json.4.gz"
    assert gzip.decompress((d / "h.json.4.gz").read_bytes()) == b"second history"
    assert gzip.decompress((d / "h.json.gz").read_bytes()) == b"third history"
    # the same content: an interrupted pass finished, nothing renamed
    aged(d / "h.json", b"third history")
    (o,) = compress.compress_batch(fd, ["h.json"], opts(fd))
    assert (o.state, o.kept_as) == (inplace.FINISHED, "")
    assert sorted(n for n in os.listdir(d) if n.startswith("h.json")) == [
        "h.json.3.gz", "h.json.4.gz", "h.json.gz"]


def test_open_for_writing_fallback_scans_proc(folder: tuple[Path, int]) -> None:
    d, _ = folder
    p = aged(d / "w.json", b"x")
    st = os.stat(p)
    with open(p, "ab"):
        assert compress.open_for_writing({(st.st_dev, st.st_ino)}) == {(st.st_dev, st.st_ino)}
    with open(p, "rb"):
        assert compress.open_for_writing({(st.st_dev, st.st_ino)}) == set()


def test_an_interrupted_compression_is_finished(folder: tuple[Path, int]) -> None:
    """Killed after the archive got its name but before the original was removed."""
    d, fd = folder
    data = payload(7)
    aged(d / "a.json", data)
    (d / "a.json.gz").write_bytes(gzip.compress(data))
    out = compress.compress_batch(fd, ["a.json"], opts(fd))
    assert out[0].state == inplace.FINISHED
    assert not (d / "a.json").exists()
    assert gzip.decompress((d / "a.json.gz").read_bytes()) == data


def test_no_space_keeps_the_original(folder: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    d, fd = folder
    aged(d / "a.json", payload(1))
    real_write = os.write

    def full(fd_: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    out = compress.compress_batch(fd, ["a.json"], opts(fd))
    monkeypatch.setattr(os, "write", real_write)
    assert (out[0].state, out[0].reason) == (inplace.FAILED, "no_space")
    assert sorted(os.listdir(d)) == ["a.json"]
