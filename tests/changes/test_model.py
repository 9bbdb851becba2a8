"""The change model: plan, apply (stop at first failure), journal, undo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mnic_ops.changes import model
from mnic_ops.changes.filechange import file_item
from mnic_ops.changes.model import ApplyContext, Item, Plan, Undo
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from tests.conftest import run_mnic


def test_file_item_ok_pending_and_diff(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    (fake_root / "etc" / "x.conf").write_text("a\nb\n")
    assert file_item(root, "/etc/x.conf", "a\nb\n").state == "ok"
    it = file_item(root, "/etc/x.conf", "a\nc\n")
    assert it.state == "pending"
    assert "-b\n+c\n" in it.diff and "a/etc/x.conf" in it.diff


def test_apply_journal_and_undo_restore_bytes(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    f = fake_root / "etc" / "x.conf"
    f.write_text("original\n")
    os.chmod(f, 0o640)
    plan = Plan([file_item(root, "/etc/x.conf", "new\n"),
                 file_item(root, "/etc/created.conf", "c\n", mode=0o600)])
    model.apply_plan(plan, root, command="test")
    assert plan.counts()["changed"] == 2
    assert f.read_text() == "new\n" and f.stat().st_mode & 0o777 == 0o640
    journal = model.read_journal(root)
    assert [e["change"] for e in journal] == ["file:/etc/x.conf", "file:/etc/created.conf"]
    model.undo_entries(root, journal)
    assert f.read_text() == "original\n" and f.stat().st_mode & 0o777 == 0o640
    assert not (fake_root / "etc" / "created.conf").exists()
    assert all(e.get("undone") for e in model.read_journal(root))


def test_undo_refuses_when_file_changed_since(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    f = fake_root / "etc" / "y"
    f.write_text("1")
    model.apply_plan(Plan([file_item(root, "/etc/y", "2")]), root)
    f.write_text("admin edited")
    with pytest.raises(OpsError, match="changed since"):
        model.undo_entries(root, model.read_journal(root))
    assert f.read_text() == "admin edited"


def test_apply_stops_at_first_failure(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    ran: list[str] = []

    def good(ctx: ApplyContext) -> Undo:
        ran.append("good")
        return Undo("file", {})

    def bad(ctx: ApplyContext) -> Undo:
        raise OpsError("disk on fire")

    plan = Plan([Item("a", "first", action=good), Item("b", "second", action=bad),
                 Item("c", "third", action=good), Item("d", "already", state="ok")])
    model.apply_plan(plan, root)
    assert [i.state for i in plan.items] == ["changed", "failed", "skipped", "ok"]
    assert plan.items[1].error == "disk on fire" and ran == ["good"]


def test_plan_fails_if_file_changed_between_plan_and_apply(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    f = fake_root / "etc" / "z"
    f.write_text("1")
    item = file_item(root, "/etc/z", "2")
    f.write_text("someone else")
    model.apply_plan(Plan([item]), root)
    assert item.state == "failed" and "changed since the plan" in item.error
    assert f.read_text() == "someone else"


def test_undo_cli(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    for n in range(3):
        model.apply_plan(Plan([file_item(root, f"/etc/f{n}", f"{n}\n")]), root)
    r = run_mnic("--root", str(fake_root), "--json", "undo", "--list")
    assert [e["change"] for e in json.loads(r.out)["entries"]] == ["file:/etc/f0", "file:/etc/f1",
                                                        "file:/etc/f2"]
    r = run_mnic("--root", str(fake_root), "undo", "--last", "--check")
    assert r.code == 3 and "file:/etc/f2" in r.out and (fake_root / "etc/f2").exists()
    r = run_mnic("--root", str(fake_root), "undo", "--last")
    assert r.code == 0 and not (fake_root / "etc/f2").exists()
    r = run_mnic("--root", str(fake_root), "undo", "file:/etc/f0")
    assert r.code == 0 and not (fake_root / "etc/f0").exists()
    assert (fake_root / "etc/f1").exists()
    r = run_mnic("--root", str(fake_root), "undo", "nope")
    assert r.code == 2 and "no such recorded change" in r.err
    r = run_mnic("--root", str(fake_root), "undo", "--all")
    assert r.code == 0 and not (fake_root / "etc/f1").exists()
    r = run_mnic("--root", str(fake_root), "undo", "--all")
    assert r.code == 0 and "nothing to revert" in r.out


def _mtime(p: Path) -> int:
    return os.stat(p).st_mtime_ns


@pytest.mark.parametrize("beneath", [None, "/home/u/p"])
@pytest.mark.parametrize("existing", [True, False])
def test_undo_restores_the_folder_times(fake_root: Path, beneath: str | None,
                                        existing: bool) -> None:
    """Issue 16 item 10: provision then undo leaves folders as they were, times
    included; three changes in one folder are undone newest first."""
    root = HostRoot.open(fake_root)
    folder = fake_root / ("home/u/p/cfg" if beneath else "etc/cfg")
    folder.mkdir(parents=True)
    host = "/home/u/p/cfg" if beneath else "/etc/cfg"
    if existing:
        for n in range(3):
            (folder / f"f{n}").write_text("old\n")
    os.utime(folder, ns=(1_000_000_000_000, 2_000_000_000_000))
    before = (os.stat(folder).st_atime_ns, _mtime(folder))
    for n in range(3):
        item = file_item(root, f"{host}/f{n}", f"new {n}\n", beneath=beneath)
        model.apply_plan(Plan([item]), root)
        assert item.state == "changed", item.error
    assert _mtime(folder) != before[1]
    model.undo_entries(root, model.read_journal(root))
    assert _mtime(folder) == before[1]
    assert sorted(os.listdir(folder)) == (["f0", "f1", "f2"] if existing else [])


def test_undo_keeps_the_times_of_a_folder_someone_else_changed(fake_root: Path) -> None:
    root = HostRoot.open(fake_root)
    folder = fake_root / "etc/cfg"
    folder.mkdir()
    os.utime(folder, ns=(1_000_000_000_000, 2_000_000_000_000))
    model.apply_plan(Plan([file_item(root, "/etc/cfg/f", "x\n")]), root)
    (folder / "admins-own").write_text("y\n")
    os.utime(folder, ns=(3_000_000_000_000, 3_000_000_000_000))
    model.undo_entries(root, model.read_journal(root))
    assert not (folder / "f").exists()
    assert _mtime(folder) != 2_000_000_000_000  # not passed off as untouched


def test_json_texts_whole_before_and_after_only_with_diff_and_bounded(
        fake_root: Path) -> None:
    """``--diff`` JSON carries the whole file before and after a change (for Ansible's
    own diff); binary and oversized content become a one-line note, never raw bytes."""
    root = HostRoot.open(fake_root)
    (fake_root / "etc/x.conf").write_text("a\nb\n")
    it = file_item(root, "/etc/x.conf", "a\nc\n")
    assert "before" not in it.to_json()
    j = it.to_json(texts=True)
    assert (j["before"], j["after"]) == ("a\nb\n", "a\nc\n")
    new = file_item(root, "/etc/new.conf", "x\n").to_json(texts=True)
    assert (new["before"], new["after"]) == ("", "x\n")
    (fake_root / "etc/bin").write_bytes(b"\xff\x00\x01")
    b = file_item(root, "/etc/bin", b"\xfe\x00").to_json(texts=True)
    assert b["before"].startswith("(binary content, 3 bytes, sha256 ")
    assert b["after"].startswith("(binary content, 2 bytes, sha256 ")
    big = "y" * (model.TEXT_LIMIT + 1)
    g = file_item(root, "/etc/big", big).to_json(texts=True)
    assert g["after"].startswith(f"(text too large to show, {len(big)} bytes")
    assert Plan([it]).to_json(texts=True)["items"][0]["after"] == "a\nc\n"


def test_config_from_reads_the_settings_but_written_files_name_the_config(
        fake_root: Path, tmp_path: Path) -> None:
    """--config-from previews a config before it is installed: its settings are used,
    and what would be written (the cron jobs) names --config's file, not the preview."""
    (fake_root / "etc/cron.d").mkdir()
    (fake_root / "etc/mnic-ops").mkdir()
    (fake_root / "etc/mnic-ops/config.toml").write_text(
        '[cron]\ncompress_schedule = "1 1 * * *"\n')
    preview = tmp_path / "new.toml"
    preview.write_text('[cron]\ncompress_schedule = "17 4 * * *"\n')
    r = run_mnic("--root", str(fake_root), "--config-from", str(preview), "--json",
                 "cron", "install", "--check", "--diff")
    assert r.code == 3, r.err
    after = json.loads(r.out)["items"][0]["after"]
    assert "17 4 * * * root " in after and "1 1 * * *" not in after
    assert "--config" not in after and str(preview) not in after
    named = fake_root / "etc/mnic-ops/config.toml"
    r = run_mnic("--root", str(fake_root), "--config", str(named), "--config-from",
                 str(preview), "--json", "cron", "install", "--check", "--diff")
    after = json.loads(r.out)["items"][0]["after"]
    assert f"--config {named}" in after and "17 4 * * * root " in after
    bad = tmp_path / "bad.toml"
    bad.write_text("[cron]\nbogus = 1\n")
    r = run_mnic("--root", str(fake_root), "--config-from", str(bad), "cron", "install",
                 "--check")
    assert r.code == 2 and f"{bad}:2" in r.err and "bogus" in r.err


def test_removal_item_backs_up_removes_and_undo_restores(fake_root: Path) -> None:
    from mnic_ops.changes.filechange import removal_item
    from mnic_ops.engines import cronfile  # registers "cron-file-removed"

    root = HostRoot.open(fake_root)
    f = fake_root / "etc" / "cron.d" / "mnic-ops"
    f.parent.mkdir()
    f.write_text("# ours\n")
    gone: list[bool] = []
    item = removal_item(root, "/etc/cron.d/mnic-ops", b"# ours\n", "cron-file-removed",
                        after=lambda: gone.append(not f.exists()))
    assert item.diff and "-# ours" in item.diff
    model.apply_plan(Plan([item]), root)
    assert item.state == "changed" and not f.exists() and gone == [True]
    assert cronfile.SYSTEM_FILE == "/etc/cron.d/mnic-ops"
    model.undo_entries(root, model.read_journal(root))
    assert f.read_text() == "# ours\n"


def test_removal_item_leaves_a_file_changed_since_the_plan(fake_root: Path) -> None:
    from mnic_ops.changes.filechange import removal_item

    root = HostRoot.open(fake_root)
    f = fake_root / "etc" / "gone-soon"
    f.write_text("planned\n")
    item = removal_item(root, "/etc/gone-soon", b"planned\n", "cron-file-removed")
    f.write_text("admin edited\n")
    model.apply_plan(Plan([item]), root)
    assert item.state == "failed" and "changed since the plan" in item.error
    assert f.read_text() == "admin edited\n"
