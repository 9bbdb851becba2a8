"""The crash-safe gzip engine, used in-process on real files."""

from __future__ import annotations

import gzip
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import compress

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


def opts(fd: int, **kw: object) -> compress.Options:
    return compress.Options(dev=os.fstat(fd).st_dev, max_mtime=time.time() - 7 * 86400,
                      **kw)  # type: ignore[arg-type]


def test_compresses_to_standard_gzip_keeping_metadata(folder: tuple[Path, int]) -> None:
    d, fd = folder
    files = {f"f{i}.json": payload(i, 1000 + 700 * i) for i in range(6)}
    for n, data in files.items():
        aged(d / n, data)
    os.chown(d / "f1.json", 1234, 4321)
    os.chmod(d / "f2.json", 0o640)
    before = {n: os.stat(d / n) for n in files}
    out = compress.compress_batch(fd, sorted(files), opts(fd))
    assert [o.state for o in out] == [compress.COMPRESSED] * 6
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
    assert out[0].state == compress.COMPRESSED and out[0].before == len(data)
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
    assert not [n for n in os.listdir(d) if compress.is_ours(n)]


def test_a_collision_is_resolved_and_reported(folder: tuple[Path, int]) -> None:
    """NAME.gz with other content (the framework re-created NAME after an earlier pass
    archived it): the older archive is kept as NAME.N.gz, N counting up, and NAME is
    compressed; every byte of both stays readable."""
    d, fd = folder
    old = gzip.compress(b"first history")
    (d / "h.json.gz").write_bytes(old)
    aged(d / "h.json", b"second history")
    (o,) = compress.compress_batch(fd, ["h.json"], opts(fd))
    assert (o.state, o.kept_as) == (compress.COMPRESSED, "h.json.1.gz")
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
    assert (o.state, o.kept_as) == (compress.FINISHED, "")
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
    assert out[0].state == compress.FINISHED
    assert not (d / "a.json").exists()
    assert gzip.decompress((d / "a.json.gz").read_bytes()) == data


def test_stale_temporaries(folder: tuple[Path, int]) -> None:
    d, fd = folder
    dead = 4_000_000  # above pid_max: no such process
    data = payload(3)
    # archive temporary of a killed pass: removed
    tmp = f".x.json.gz{compress.TMP_MARK}.{dead}.abcd0123"
    (d / tmp).write_bytes(b"partial")
    # original moved aside, archive complete: the aside copy goes
    aged(d / f".y.json{compress.ASIDE_MARK}.{dead}.00ff00ff", data)
    (d / "y.json.gz").write_bytes(gzip.compress(data))
    # original moved aside, no archive: put back
    aged(d / f".z.json{compress.ASIDE_MARK}.{dead}.00ff00fe", data)
    # a live process's temporary: left alone
    live = f".w.json.gz{compress.TMP_MARK}.{os.getppid()}.abcd0124"
    (d / live).write_bytes(b"busy")
    res = {o.name: o for o in (compress.recover_stale(fd, n, opts(fd)) for n in
                               [tmp, f".y.json{compress.ASIDE_MARK}.{dead}.00ff00ff",
                                f".z.json{compress.ASIDE_MARK}.{dead}.00ff00fe", live])}
    assert sorted(os.listdir(d)) == sorted([live, "y.json.gz", "z.json"])
    assert (d / "z.json").read_bytes() == data
    assert res[live].reason == "tmp_in_use"
    assert res["y.json"].state == compress.FINISHED and res["z.json"].state == compress.RECOVERED


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
    assert (out[0].state, out[0].reason) == (compress.FAILED, "no_space")
    assert sorted(os.listdir(d)) == ["a.json"]


def test_expire_only_regular_single_link_old(folder: tuple[Path, int]) -> None:
    d, fd = folder
    aged(d / "old.json.gz", b"z", mtime=time.time() - 40 * 86400)
    aged(d / "hard.json.gz", b"z", mtime=time.time() - 40 * 86400)
    os.link(d / "hard.json.gz", d / "hard2.json.gz")
    o = compress.Options(dev=os.fstat(fd).st_dev, max_mtime=time.time() - 30 * 86400)
    assert compress.expire_at(fd, "old.json.gz", o).state == compress.EXPIRED
    assert compress.expire_at(fd, "hard.json.gz", o).reason == "hard_links"
    assert sorted(os.listdir(d)) == ["hard.json.gz", "hard2.json.gz"]


def test_open_dir_nofollow_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            compress.open_dir_nofollow(fd, ["link"])
        os.close(compress.open_dir_nofollow(fd, ["real"]))
    finally:
        os.close(fd)


def test_project_lock_is_exclusive(tmp_path: Path) -> None:
    root = HostRoot.open(tmp_path)
    with compress.project_lock(root, "/home/a/p") as first:
        assert first
        with compress.project_lock(root, "/home/a/p") as second:
            assert not second
        with compress.project_lock(root, "/home/a/q") as other:
            assert other


def test_gunzip_at_makes_a_read_back_file_again(folder: tuple[Path, int]) -> None:
    """The reverse of compression, for files an earlier pass gzipped that the framework
    reads by exact name: same bytes, owner, mode and mtime; the archive goes last."""
    d, fd = folder
    data = payload(7)
    aged(d / "m.json", data)
    os.chmod(d / "m.json", 0o640)
    compress.compress_batch(fd, ["m.json"], opts(fd))
    gz_st = (d / "m.json.gz").stat()
    o = compress.gunzip_at(fd, "m.json", compress.Options(dev=os.fstat(fd).st_dev))
    assert o.state == compress.RESTORED
    st = (d / "m.json").stat()
    assert (d / "m.json").read_bytes() == data and not (d / "m.json.gz").exists()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, gz_st.st_mtime_ns)
    # interrupted after the file got its name: the archive goes when it matches
    (d / "m.json.gz").write_bytes(gzip.compress(data))
    assert compress.gunzip_at(fd, "m.json", compress.Options()).state == compress.RESTORED
    assert not (d / "m.json.gz").exists()
    # the framework made the file again meanwhile: both stay
    (d / "m.json.gz").write_bytes(gzip.compress(b"older"))
    o = compress.gunzip_at(fd, "m.json", compress.Options())
    assert (o.state, o.reason) == (compress.SKIPPED, "archive_exists")
    assert (d / "m.json").read_bytes() == data
    # a bomb, a corrupt archive, a symlink: refused, nothing written
    (d / "b.json.gz").write_bytes(gzip.compress(b"\0" * (2 << 20)))
    o = compress.gunzip_at(fd, "b.json", compress.Options(), limit=1 << 20)
    assert o.state == compress.SKIPPED and "more than" in o.detail
    (d / "c.json.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert compress.gunzip_at(fd, "c.json", compress.Options()).reason == "io_error"
    (d / "l.json.gz").symlink_to(d / "m.json.gz")
    assert compress.gunzip_at(fd, "l.json", compress.Options()).reason == "symlink"
    assert not any((d / n).exists() for n in ("b.json", "c.json", "l.json"))
    assert not [n for n in os.listdir(d) if compress.is_ours(n)]
