"""The fstab write: locating the file inside the root, and the apply refusing a file
changed since the plan or a candidate findmnt --verify finds new errors in."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnic_ops.capabilities import fstabapply, fstabplan
from mnic_ops.changes.model import ApplyContext
from mnic_ops.core import beneathfs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import fstabfile
from tests.conftest import write_tree
from tests.fstabhelp import host, needs_findmnt


def test_resolve_beneath_stays_inside_root(tmp_path: Path) -> None:

    write_tree(tmp_path, {"etc/real/fstab": "x", "outside": ""})
    (tmp_path / "etc/fstab").symlink_to("/etc/real/fstab")
    (tmp_path / "etc/up").symlink_to("../../../../../etc/real")
    (tmp_path / "etc/loop").symlink_to("loop")
    assert beneathfs.resolve_beneath(tmp_path, "/etc/fstab") == "/etc/real/fstab"
    assert beneathfs.resolve_beneath(tmp_path, "/etc/up/fstab") == "/etc/real/fstab"
    assert beneathfs.resolve_beneath(tmp_path, "/etc/missing/x") == "/etc/missing/x"
    with pytest.raises(OpsError, match="too many levels"):
        beneathfs.resolve_beneath(tmp_path, "/etc/loop")


def test_apply_refuses_when_file_changed_after_plan(fake_root: Path) -> None:
    root = host(fake_root)
    fst = root / "etc/fstab"
    target = fstabapply.locate(HostRoot.open(root), None)
    old = fst.read_bytes()
    _, new = fstabplan.plan_noatime(fstabfile.parse(fstabfile.decode(old)), {"/mnt/ssd": ["x"]}, [])
    item = fstabapply.fstab_write_item(target, old, fstabfile.encode(new.render()), ["/mnt/ssd"])
    fst.write_bytes(old + b"# edited meanwhile\n")
    assert item.action is not None
    with pytest.raises(OpsError, match="changed since the plan was made"):
        item.action(ApplyContext(HostRoot.open(root), "e1", "fstab"))
    assert fst.read_bytes() == old + b"# edited meanwhile\n"


@needs_findmnt
def test_apply_refuses_a_candidate_with_new_errors(fake_root: Path) -> None:
    """The verify gate itself: a candidate that breaks a line is refused, nothing
    written, no backup left behind."""
    root = host(fake_root)
    fst = root / "etc/fstab"
    old = fst.read_bytes()
    bad = old.replace(b"none           swap", b"none           swap nonsense")
    target = fstabapply.locate(HostRoot.open(root), None)
    item = fstabapply.fstab_write_item(target, old, bad, ["x"])
    assert item.action is not None
    with pytest.raises(OpsError, match="findmnt --verify finds new errors"):
        item.action(ApplyContext(HostRoot.open(root), "e1", "fstab"))
    assert fst.read_bytes() == old
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["fstab"]
