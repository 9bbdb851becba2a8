"""Temporaries a killed pass left: recognised by name, finished, removed or put back."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from mnic_ops.engines import inplace, tempfiles
from tests.engines.conftest import aged, opts, payload


def test_stale_temporaries(folder: tuple[Path, int]) -> None:
    d, fd = folder
    dead = 4_000_000  # above pid_max: no such process
    data = payload(3)
    # archive temporary of a killed pass: removed
    tmp = f".x.json.gz{tempfiles.TMP_MARK}.{dead}.abcd0123"
    (d / tmp).write_bytes(b"partial")
    # original moved aside, archive complete: the aside copy goes
    aged(d / f".y.json{tempfiles.ASIDE_MARK}.{dead}.00ff00ff", data)
    (d / "y.json.gz").write_bytes(gzip.compress(data))
    # original moved aside, no archive: put back
    aged(d / f".z.json{tempfiles.ASIDE_MARK}.{dead}.00ff00fe", data)
    # a live process's temporary: left alone
    live = f".w.json.gz{tempfiles.TMP_MARK}.{os.getppid()}.abcd0124"
    (d / live).write_bytes(b"busy")
    res = {o.name: o for o in (tempfiles.recover_stale(fd, n, opts(fd)) for n in
                               [tmp, f".y.json{tempfiles.ASIDE_MARK}.{dead}.00ff00ff",
                                f".z.json{tempfiles.ASIDE_MARK}.{dead}.00ff00fe", live])}
    assert sorted(os.listdir(d)) == sorted([live, "y.json.gz", "z.json"])
    assert (d / "z.json").read_bytes() == data
    assert res[live].reason == "tmp_in_use"
    assert res["y.json"].state == inplace.FINISHED and res["z.json"].state == inplace.RECOVERED
