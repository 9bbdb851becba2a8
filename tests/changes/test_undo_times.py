"""undo puts back the times of every folder a change touched, not only the folders of
plain file writes: a removed cron file or unit, the watcher's enable link (and the
folders made for it), fstab and its backup. A change then its undo leaves the tree
identical, folder times included (tests/testhost.py's tree_hash compares them)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cleanhelp import make_project, write_config
from tests.conftest import run_mnic
from tests.testhost import tree_hash

OLD = 1_500_000_000_000_000_000  # 2017: a time no folder here gets by itself


def _age(root: Path, *rels: str) -> None:
    """Give folders an old, distinct time, so that any change shows."""
    for n, rel in enumerate(rels):
        os.utime(root / rel, ns=(OLD + n, OLD + n))


def _undo_all(root: Path) -> None:
    r = run_mnic("--root", str(root), "undo", "--all")
    assert r.code == 0, r.out + r.err


def _same(a: dict[str, list[object]], b: dict[str, list[object]]) -> None:
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    assert not diff, [(k, a.get(k), b.get(k)) for k in diff[:10]]


def test_cron_install_remove_and_undo_restore_the_folder_times(fake_root: Path) -> None:
    (fake_root / "etc/cron.d").mkdir()
    _age(fake_root, "etc/cron.d", "etc")
    before = tree_hash(fake_root, "/etc")
    env = {"MNIC_OPS_CRON__COMPRESS_SCHEDULE": "15 3 * * *"}
    assert run_mnic("--root", str(fake_root), "cron", "install", env=env).code == 0
    installed = tree_hash(fake_root, "/etc")
    assert run_mnic("--root", str(fake_root), "cron", "remove", env=env).code == 0
    assert not (fake_root / "etc/cron.d/mnic-ops").exists()
    r = run_mnic("--root", str(fake_root), "undo", "--last")  # the removal
    assert r.code == 0, r.err
    _same(installed, tree_hash(fake_root, "/etc"))
    _undo_all(fake_root)
    _same(before, tree_hash(fake_root, "/etc"))


def test_watcher_unit_and_its_link_undone_with_folder_times(fake_root: Path) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    wants = "etc/systemd/system/multi-user.target.wants"
    (fake_root / wants).mkdir(parents=True)
    _age(fake_root, wants, "etc/systemd/system", "etc/systemd", "etc")
    before = tree_hash(fake_root, "/etc")
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit")
    assert r.code == 0, r.out + r.err
    installed = tree_hash(fake_root, "/etc")
    assert installed[wants] != before[wants]  # the link went in: the folder changed
    r = run_mnic("--root", str(fake_root), "watch", "--remove-unit")
    assert r.code == 0, r.out + r.err
    for _ in range(2):  # the link, then the unit file, come back
        assert run_mnic("--root", str(fake_root), "undo", "--last").code == 0
    _same(installed, tree_hash(fake_root, "/etc"))
    _undo_all(fake_root)
    _same(before, tree_hash(fake_root, "/etc"))


def test_watcher_unit_on_a_bare_root_takes_its_folders_away_again(fake_root: Path
                                                                   ) -> None:
    make_project(fake_root, files=0)
    write_config(fake_root)
    _age(fake_root, "etc")
    before = tree_hash(fake_root, "/etc")
    r = run_mnic("--root", str(fake_root), "watch", "--install-unit")
    assert r.code == 0, r.out + r.err
    assert (fake_root / "etc/systemd/system/multi-user.target.wants").is_dir()
    _undo_all(fake_root)
    assert not (fake_root / "etc/systemd").exists()
    _same(before, tree_hash(fake_root, "/etc"))


FSTAB = "UUID=0a1b2c3d-0000-4000-8000-000000000002 /srv ext4 defaults 0 2\n"


def test_fstab_apply_and_undo_leave_etc_as_it_was(fake_root: Path) -> None:
    (fake_root / "etc/fstab").write_text(FSTAB)
    (fake_root / "proc/self").mkdir(parents=True)
    (fake_root / "proc/self/mountinfo").write_text("")
    _age(fake_root, "etc")
    before = tree_hash(fake_root, "/etc")
    r = run_mnic("--root", str(fake_root), "fstab", "--mount-point", "/srv", "--apply")
    assert r.code == 0, r.out + r.err
    assert list((fake_root / "etc").glob("fstab.mnic-ops.*"))  # the backup beside it
    _undo_all(fake_root)
    _same(before, tree_hash(fake_root, "/etc"))
