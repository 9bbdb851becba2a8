"""The tree-move engine on its own: what a copy keeps, what verification catches, what
happens when the source changes under it, and the swap without RENAME_EXCHANGE.

Cross-filesystem cases copy from the test's tmp folder to a tmpfs mounted in a private
mount namespace of the test process (nothing is mounted on this machine itself)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnic_ops.engines import moveplace, treemove
from mnic_ops.engines.moveplace import MoveError, Place
from tests.conftest import require
from tests.fsenv import diff_snapshots, make_tree, private_mounts, snapshot, tmp_leftovers

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def other_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs: another filesystem than the tmp folder's, so moves there copy."""
    require("root", "unshare")
    mnt = tmp_path_factory.mktemp("otherfs")
    with private_mounts():
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "mnic-test", str(mnt)],
                       check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture
def setup(tmp_path: Path, other_fs: Path) -> tuple[Place, Place, str, Path]:
    src_parent = tmp_path / "proj"
    make_tree(src_parent / "sessions", 400, seed=3)
    dest_parent = other_fs / tmp_path.name
    dest_parent.mkdir()
    pub = Place(str(src_parent), "sessions")
    dest = Place(str(other_fs), f"{tmp_path.name}/sessions")
    return pub, dest, str(dest.path), tmp_path / "journal"


def test_copy_keeps_everything_and_comes_back(setup: tuple[Place, Place, str, Path]) -> None:
    pub, dest, text, jdir = setup
    s = pub.path
    special = s / "setuid_tool"
    special.write_bytes(b"#!/bin/sh\n")
    os.chown(special, 1000, 1000)
    os.chmod(special, 0o4755)  # chown after chmod would drop the setuid bit
    os.setxattr(s / "dir000", "user.mnic", b"kept")
    os.symlink("/etc", s / "link_to_etc")  # copied as a link, never followed
    before = snapshot(s)
    res = treemove.link_out(pub, dest, text, jdir, owner=(1000, 1000))
    assert res.method == "copy" and res.files > 400 and res.hardlinked > 0
    assert os.readlink(s) == text and os.lstat(s).st_uid == 1000
    assert diff_snapshots(before, snapshot(s)) == []
    assert os.getxattr(Path(text) / "dir000", "user.mnic") == b"kept"
    assert os.stat(Path(text) / "setuid_tool").st_mode & 0o7777 == 0o4755
    assert os.readlink(Path(text) / "link_to_etc") == "/etc"
    assert tmp_leftovers(s.parent, Path(text).parent) == []
    res = treemove.link_back(pub, dest, text, jdir)
    assert res.method == "copy"
    assert not s.is_symlink() and not Path(text).exists()
    assert diff_snapshots(before, snapshot(s)) == []
    assert tmp_leftovers(s.parent, Path(text).parent) == []
    assert [n for n in os.listdir(jdir) if n.endswith(".json")] == []


def test_same_filesystem_is_one_rename(tmp_path: Path) -> None:
    make_tree(tmp_path / "a" / "sessions", 50)
    (tmp_path / "b").mkdir()
    ino = os.stat(tmp_path / "a" / "sessions").st_ino
    before = snapshot(tmp_path / "a" / "sessions")
    pub, dest = Place(str(tmp_path / "a"), "sessions"), Place(str(tmp_path / "b"), "sessions")
    res = treemove.link_out(pub, dest, str(dest.path), tmp_path / "j")
    assert res.method == "rename"
    assert os.stat(dest.path, follow_symlinks=False).st_ino == ino
    assert diff_snapshots(before, snapshot(pub.path)) == []
    treemove.link_back(pub, dest, str(dest.path), tmp_path / "j")
    assert os.lstat(pub.path).st_ino == ino and not dest.path.exists()


@pytest.mark.parametrize("cross", [True, False])
def test_without_rename_exchange(setup: tuple[Place, Place, str, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, cross: bool) -> None:
    """Filesystems without RENAME_EXCHANGE: two renames, same result."""
    monkeypatch.setenv("MNIC_OPS_TEST_NO_EXCHANGE", "1")
    pub, dest, text, jdir = setup
    if not cross:
        (tmp_path / "same").mkdir()
        dest = Place(str(tmp_path), "same/sessions")
        text = str(dest.path)
    before = snapshot(pub.path)
    assert treemove.link_out(pub, dest, text, jdir).method == ("copy" if cross else "rename")
    assert os.readlink(pub.path) == text
    treemove.link_back(pub, dest, text, jdir)
    assert diff_snapshots(before, snapshot(pub.path)) == []
    assert tmp_leftovers(pub.path.parent, dest.path.parent) == []


def test_source_written_during_copy(setup: tuple[Place, Place, str, Path]) -> None:
    pub, dest, text, jdir = setup
    victim = next(pub.path.rglob("SESSION_*.md"))
    done = []

    def progress(stage: str, nbytes: int, nfiles: int) -> None:
        if stage == "copy" and not done:
            done.append(1)
            with open(victim, "ab") as fh:  # the framework appends to a session
                fh.write(b"new line\n")

    with pytest.raises(MoveError) as ei:
        treemove.link_out(pub, dest, text, jdir, progress=progress)
    assert "while copying" in ei.value.message and "nothing was moved" in ei.value.message
    assert victim.read_bytes().endswith(b"new line\n")
    assert not pub.path.is_symlink() and not dest.path.exists()
    assert os.listdir(dest.path.parent) == []
    assert [n for n in os.listdir(jdir) if n.endswith(".json")] == []


def test_source_written_between_verify_and_swap(setup: tuple[Place, Place, str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A write after the verification: the old tree's digest no longer matches after
    the swap, so the swap is undone, the unused copy removed, the new data kept."""
    pub, dest, text, jdir = setup
    victim = next(pub.path.rglob("SESSION_*.md"))
    real_crash = moveplace.crashpoint

    def hook(name: str) -> None:
        if name == "copy-verified":
            with open(victim, "ab") as fh:
                fh.write(b"late write\n")
        real_crash(name)

    monkeypatch.setattr(moveplace, "crashpoint", hook)
    with pytest.raises(MoveError) as ei:
        treemove.link_out(pub, dest, text, jdir)
    assert "changed while it was being moved" in ei.value.message
    assert "kept" not in ei.value.message
    assert pub.path.is_dir() and not pub.path.is_symlink()
    assert victim.read_bytes().endswith(b"late write\n")
    assert not dest.path.exists()
    assert tmp_leftovers(pub.path.parent, dest.path.parent) == []


def test_corrupted_copy_is_caught(setup: tuple[Place, Place, str, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pub, dest, text, jdir = setup
    before = snapshot(pub.path)
    real_crash = moveplace.crashpoint

    def hook(name: str) -> None:
        if name == "copy-copied":  # flip one byte of one copied file, keeping its size
            stg = next(p for p in dest.path.parent.iterdir() if ".mnic-ops-tmp" in p.name)
            f = max((p for p in stg.rglob("*.md") if p.is_file() and not p.is_symlink()),
                    key=lambda p: p.stat().st_size)
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            st = f.stat()
            f.write_bytes(bytes(data))
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        real_crash(name)

    monkeypatch.setattr(moveplace, "crashpoint", hook)
    with pytest.raises(MoveError) as ei:
        treemove.link_out(pub, dest, text, jdir)
    assert "content of the copy differs" in ei.value.message
    assert diff_snapshots(before, snapshot(pub.path)) == []
    assert os.listdir(dest.path.parent) == []


def test_refusals(setup: tuple[Place, Place, str, Path]) -> None:
    pub, dest, text, jdir = setup
    dest.path.mkdir()
    with pytest.raises(MoveError, match="already exists"):
        treemove.link_out(pub, dest, text, jdir)
    dest.path.rmdir()
    with pytest.raises(MoveError, match="not the link"):
        treemove.link_back(pub, dest, text, jdir)
    f = pub.path.parent / "afile"
    f.write_text("x")
    with pytest.raises(MoveError, match="not a folder"):
        treemove.link_out(Place(pub.base, "afile"), dest, text, jdir)
    # a symlink inside the relative part is never followed
    os.symlink(str(pub.path.parent), pub.path.parent.parent / "via_link")
    with pytest.raises(Exception, match="symlink"):
        treemove.link_out(Place(str(pub.path.parent.parent), "via_link/sessions"), dest,
                          text, jdir)
    assert pub.path.is_dir() and not dest.path.exists()


def test_link_target_written_between_verify_and_swap_back(
        setup: tuple[Place, Place, str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving back: a write through the link after the verification puts the link back
    and drops the unused copy; the new data stays where it was written."""
    pub, dest, text, jdir = setup
    treemove.link_out(pub, dest, text, jdir)
    victim = next(Path(text).rglob("SESSION_*.md"))
    real_crash = moveplace.crashpoint

    def hook(name: str) -> None:
        if name == "copy-verified":
            with open(victim, "ab") as fh:
                fh.write(b"written through the link\n")
        real_crash(name)

    monkeypatch.setattr(moveplace, "crashpoint", hook)
    with pytest.raises(MoveError) as ei:
        treemove.link_back(pub, dest, text, jdir)
    assert "changed while it was being moved back" in ei.value.message
    assert os.readlink(pub.path) == text
    assert victim.read_bytes().endswith(b"written through the link\n")
    assert tmp_leftovers(pub.path.parent, dest.path.parent) == []
    monkeypatch.setattr(moveplace, "crashpoint", real_crash)
    before = snapshot(pub.path)
    treemove.link_back(pub, dest, text, jdir)  # a second try, undisturbed, works
    assert diff_snapshots(before, snapshot(pub.path)) == []
