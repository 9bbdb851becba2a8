"""Reads and writes beneath a user-owned tree through folder descriptors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnic_ops.changes import model
from mnic_ops.changes.filechange import file_item
from mnic_ops.changes.model import Plan
from mnic_ops.core import beneathfs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from tests.conftest import require


def test_open_beneath_refuses_symlinked_components(tmp_path: Path) -> None:
    base = tmp_path / "tree"
    (base / "a").mkdir(parents=True)
    (base / "a" / "f").write_text("inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("secret")
    (base / "b").symlink_to(outside)
    fd = beneathfs.open_beneath(base, "a/f")
    assert os.read(fd, 100) == b"inside"
    os.close(fd)
    with pytest.raises(OpsError, match="symlink"):
        beneathfs.open_beneath(base, "b/f")
    with pytest.raises(OpsError, match=r"\.\."):
        beneathfs.open_beneath(base, "a/../../outside/f")
    (base / "a" / "l").symlink_to(outside / "f")
    with pytest.raises(OpsError):
        beneathfs.open_beneath(base, "a/l")


def test_write_and_read_beneath(tmp_path: Path) -> None:
    (tmp_path / "p/a").mkdir(parents=True)
    beneathfs.atomic_write_beneath(tmp_path / "p", "a/f", "one")
    got = beneathfs.read_beneath(tmp_path / "p", "a/f")
    assert got is not None and got[0] == b"one"
    assert (got[1].st_mode & 0o777) == 0o644
    os.chmod(tmp_path / "p/a/f", 0o600)
    beneathfs.atomic_write_beneath(tmp_path / "p", "a/f", "two")
    assert (tmp_path / "p/a/f").read_text() == "two"
    assert (tmp_path / "p/a/f").stat().st_mode & 0o777 == 0o600
    assert beneathfs.read_beneath(tmp_path / "p", "a/missing") is None
    assert beneathfs.read_beneath(tmp_path / "p", "nope/missing") is None
    assert beneathfs.unlink_beneath(tmp_path / "p", "a/f") is True
    assert beneathfs.unlink_beneath(tmp_path / "p", "a/f") is False
    assert os.listdir(tmp_path / "p/a") == []


@pytest.mark.parametrize("link", ["p", "p/a", "p/a/f"])
def test_no_symlink_anywhere_below_is_followed(tmp_path: Path, link: str) -> None:
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    (target / "a/f").write_text("victim")
    (target / "f").write_text("victim")
    real = tmp_path / "real"
    dest = {"p": target, "p/a": target / "a", "p/a/f": target / "a/f"}[link]
    node = real / link
    node.parent.mkdir(parents=True, exist_ok=True)
    node.symlink_to(dest)
    with pytest.raises(OpsError, match="symlink"):
        beneathfs.atomic_write_beneath(real / "p", "a/f", "evil")
    with pytest.raises(OpsError, match="symlink"):
        beneathfs.read_beneath(real / "p", "a/f")
    assert (target / "a/f").read_text() == "victim"


def test_file_item_beneath_keeps_owner_and_undoes(fake_root: Path) -> None:
    require("root")
    root = HostRoot.open(fake_root)
    proj = fake_root / "home/alice/p"
    (proj / "c").mkdir(parents=True)
    f = proj / "c/x.json"
    f.write_text("{}\n")
    os.chown(f, 4242, 4343)
    os.chmod(f, 0o640)
    plan = Plan([file_item(root, "/home/alice/p/c/x.json", '{"a": 1}\n',
                           beneath="/home/alice/p"),
                 file_item(root, "/home/alice/p/c/new.json", "{}\n", beneath="/home/alice/p",
                           uid=4242, gid=4343, mode=0o644)])
    model.apply_plan(plan, root)
    assert plan.counts()["changed"] == 2
    st = f.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o640)
    assert (proj / "c/new.json").stat().st_uid == 4242
    model.undo_entries(root, model.read_journal(root))
    assert f.read_text() == "{}\n" and not (proj / "c/new.json").exists()
    st = f.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o640)
