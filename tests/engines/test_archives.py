"""One archive at a time: expiry and making a file again from its archive."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

from mnic_ops.engines import archives, compress, inplace, tempfiles
from tests.engines.conftest import aged, opts, payload


def test_expire_only_regular_single_link_old(folder: tuple[Path, int]) -> None:
    d, fd = folder
    aged(d / "old.json.gz", b"z", mtime=time.time() - 40 * 86400)
    aged(d / "hard.json.gz", b"z", mtime=time.time() - 40 * 86400)
    os.link(d / "hard.json.gz", d / "hard2.json.gz")
    o = inplace.Options(dev=os.fstat(fd).st_dev, max_mtime=time.time() - 30 * 86400)
    assert archives.expire_at(fd, "old.json.gz", o).state == inplace.EXPIRED
    assert archives.expire_at(fd, "hard.json.gz", o).reason == "hard_links"
    assert sorted(os.listdir(d)) == ["hard.json.gz", "hard2.json.gz"]


def test_gunzip_at_makes_a_read_back_file_again(folder: tuple[Path, int]) -> None:
    """The reverse of compression, for files an earlier pass gzipped that the framework
    reads by exact name: same bytes, owner, mode and mtime; the archive goes last."""
    d, fd = folder
    data = payload(7)
    aged(d / "m.json", data)
    os.chmod(d / "m.json", 0o640)
    compress.compress_batch(fd, ["m.json"], opts(fd))
    gz_st = (d / "m.json.gz").stat()
    o = archives.gunzip_at(fd, "m.json", inplace.Options(dev=os.fstat(fd).st_dev))
    assert o.state == archives.RESTORED
    st = (d / "m.json").stat()
    assert (d / "m.json").read_bytes() == data and not (d / "m.json.gz").exists()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, gz_st.st_mtime_ns)
    # interrupted after the file got its name: the archive goes when it matches
    (d / "m.json.gz").write_bytes(gzip.compress(data))
    assert archives.gunzip_at(fd, "m.json", inplace.Options()).state == archives.RESTORED
    assert not (d / "m.json.gz").exists()
    # the framework made the file again meanwhile: both stay
    (d / "m.json.gz").write_bytes(gzip.compress(b"older"))
    o = archives.gunzip_at(fd, "m.json", inplace.Options())
    assert (o.state, o.reason) == (inplace.SKIPPED, "archive_exists")
    assert (d / "m.json").read_bytes() == data
    # a bomb, a corrupt archive, a symlink: refused, nothing written
    (d / "b.json.gz").write_bytes(gzip.compress(b"\0" * (2 << 20)))
    o = archives.gunzip_at(fd, "b.json", inplace.Options(), limit=1 << 20)
    assert o.state == inplace.SKIPPED and "more than" in o.detail
    (d / "c.json.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert archives.gunzip_at(fd, "c.json", inplace.Options()).reason == "io_error"
    (d / "l.json.gz").symlink_to(d / "m.json.gz")
    assert archives.gunzip_at(fd, "l.json", inplace.Options()).reason == "symlink"
    assert not any((d / n).exists() for n in ("b.json", "c.json", "l.json"))
    assert not [n for n in os.listdir(d) if tempfiles.is_ours(n)]
