"""mnic_ops.engines.treewatch: inotify watches anchored on folder descriptors, in-process.

The watches must follow folders (not names) through renames and RENAME_EXCHANGE,
never reach through a symlink, drop folders that leave the tree, and after lost
events agree again with what is on disk.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnic_ops.core import safefs
from mnic_ops.engines import dirlock
from mnic_ops.engines.treewatch import TreeWatch

Hint = tuple[str, str, str, float]


def _opener(top: Path):  # type: ignore[no-untyped-def]
    def opener(parts: tuple[str, ...]) -> int:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return dirlock.open_dir_nofollow(fd, parts)
        finally:
            os.close(fd)
    return opener


@pytest.fixture
def tw() -> Iterator[tuple[TreeWatch, queue.SimpleQueue[Hint]]]:
    q: queue.SimpleQueue[Hint] = queue.SimpleQueue()
    w = TreeWatch(q)
    w.start()
    try:
        yield w, q
    finally:
        w.stop()


def drain(q: queue.SimpleQueue[Hint], want: int = 0, timeout: float = 5.0) -> list[Hint]:
    """Hints until ``want`` of them arrived and then 0.3 s of quiet."""
    out: list[Hint] = []
    end = time.time() + timeout
    quiet = time.time() + 0.3
    while time.time() < end and (len(out) < want or time.time() < quiet):
        try:
            out.append(q.get(timeout=0.05))
            quiet = time.time() + 0.3
        except queue.Empty:
            pass
    return out


def places(tree) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {n.rel(): n.wd for n in tree.nodes.values()}


def on_disk(top: Path) -> set[str]:
    return {os.path.relpath(d, top) if d != str(top) else ""
            for d, _, _ in os.walk(top)}  # os.walk does not enter links


def exchange(a: Path, b: Path) -> None:
    safefs.renameat2(None, str(a), None, str(b), safefs.RENAME_EXCHANGE)


def test_folders_are_followed_through_renames_and_exchanges(
        tmp_path: Path, tw: tuple[TreeWatch, queue.SimpleQueue[Hint]]) -> None:
    w, q = tw
    top = tmp_path / "data"
    (top / "a/b").mkdir(parents=True)
    (top / "c").mkdir()
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (top / "link").symlink_to(outside)
    tree = w.add_tree(str(top), _opener(top), os.stat(top).st_dev)
    assert set(places(tree)) == {"", "a", "a/b", "c"}
    ino = {rel: os.stat(top / rel).st_ino for rel in ("a", "c")}

    exchange(top / "a", top / "c")  # two folders
    drain(q, 2)
    assert set(places(tree)) == {"", "a", "c", "c/b"}
    (top / "c/b/f.json").write_bytes(b"x")
    exchange(top / "c", top / "link")  # a folder and a symlink out of the tree
    (top / "link/b/g.json").write_bytes(b"x")  # "link" is the folder now
    (outside / "deep/secret.json").write_bytes(b"x")  # must never be seen
    hints = drain(q, 4)
    closed = [h[1] for h in hints if h[0] == "fclosed"]
    assert closed == [f"{top}/c/b/f.json", f"{top}/link/b/g.json"], hints
    assert set(places(tree)) == {"", "a", "link", "link/b"}
    # the same inodes, under their new names
    assert os.stat(top / "link").st_ino == ino["a"] and os.stat(top / "a").st_ino == ino["c"]
    assert not any("secret" in h[1] or "secret" in h[2] for h in hints)
    assert w.watches == len(on_disk(top)) == 4


def test_folder_moved_out_is_unwatched_and_new_trees_are_watched_at_once(
        tmp_path: Path, tw: tuple[TreeWatch, queue.SimpleQueue[Hint]]) -> None:
    w, q = tw
    top = tmp_path / "data"
    (top / "x").mkdir(parents=True)
    tree = w.add_tree(str(top), _opener(top), os.stat(top).st_dev)
    (top / "x/new/deeper").mkdir(parents=True)
    hints = drain(q, 1)
    # "deeper" may be made before "new" is watched: it is watched by the walk below
    # "new" then (files closed that early are the lister's job, after the hint)
    assert ("dcreated", f"{top}/x/new") in [(h[0], h[1]) for h in hints]
    assert set(places(tree)) == {"", "x", "x/new", "x/new/deeper"}
    (top / "x/new/deeper/f.json").write_bytes(b"x")
    assert [h[1] for h in drain(q, 1) if h[0] == "fclosed"] == \
        [f"{top}/x/new/deeper/f.json"]
    os.rename(top / "x/new", tmp_path / "gone")
    drain(q)
    (tmp_path / "gone/deeper/late.json").write_bytes(b"x")
    assert not any("late.json" in h[1] for h in drain(q))
    assert set(places(tree)) == {"", "x"} and w.watches == 2


def test_reconcile_after_lost_events_matches_the_disk(
        tmp_path: Path, tw: tuple[TreeWatch, queue.SimpleQueue[Hint]]) -> None:
    w, q = tw
    top = tmp_path / "data"
    for i in range(5):
        (top / f"d{i}/s").mkdir(parents=True)
    tree = w.add_tree(str(top), _opener(top), os.stat(top).st_dev)
    with w.lock:  # hold the reader off: what it would learn is "lost"
        os.rename(top / "d0", top / "e0")
        exchange(top / "d1", top / "d2")
        os.rename(top / "d3", tmp_path / "out")
        (top / "d4/s/new").mkdir()
        # what an overflow does: walk again, and say so
        w._overflow()
        assert set(places(tree)) == on_disk(top)
    hints = drain(q, 1)  # the events read late re-place folders by inode: no harm
    assert ("overflow", "") in [(h[0], h[1]) for h in hints]  # no events counted yet
    assert set(places(tree)) == on_disk(top)


def test_overflow_names_the_tree_behind_most_events(
        tmp_path: Path, tw: tuple[TreeWatch, queue.SimpleQueue[Hint]]) -> None:
    w, q = tw
    tops = [tmp_path / "quiet", tmp_path / "busy"]
    for t in tops:
        t.mkdir()
        w.add_tree(str(t), _opener(t), os.stat(t).st_dev)
    (tops[0] / "one.json").write_bytes(b"x")
    for i in range(20):
        (tops[1] / f"{i}.json").write_bytes(b"x")
    drain(q, 21)
    with w.lock:
        w._overflow()
    assert [h[1] for h in drain(q, 1) if h[0] == "overflow"] == [str(tops[1])]
    assert [t.overflows for t in w.trees] == [0, 1]


def test_a_link_as_the_top_is_refused(tmp_path: Path,
                                      tw: tuple[TreeWatch, queue.SimpleQueue[Hint]]) -> None:
    w, _ = tw
    (tmp_path / "real").mkdir()
    (tmp_path / "top").symlink_to(tmp_path / "real")

    def opener(parts: tuple[str, ...]) -> int:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return dirlock.open_dir_nofollow(fd, ("top", *parts))
        finally:
            os.close(fd)

    with pytest.raises(OSError):
        w.add_tree(str(tmp_path / "top"), opener, os.stat(tmp_path).st_dev)
    assert w.watches == 0
