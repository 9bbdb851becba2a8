"""mnic_ops.facts.linkrecords: the record of mnic-ops's own links, its trust checks, and where
`locate` puts a data folder's files."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import linkrecords
from mnic_ops.facts.projects import Project, load_project
from tests.conftest import require, write_tree
from tests.linkhelp import record, relocate_by_hand

P = "/home/alice/p"


def install(root: Path) -> None:
    write_tree(root / P.lstrip("/"), {".claude/agents/a.md": "x", ".ai-tools/x": "",
                                      "project_archive/sessions/s.json": "{}",
                                      ".claude/checkpoints/c.json": "{}"})


def project(root: Path) -> Project:
    return load_project(HostRoot(root), P, "project")


def test_record_file_is_roots_0600_and_round_trips(fake_root: Path) -> None:
    install(fake_root)
    relocate_by_hand(fake_root, P, "project_archive/sessions", "/ssd/mnic/p-1/sessions",
                     "sessions")
    f = fake_root / "var/lib/mnic-ops/links.json"
    st = os.lstat(f)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    doc = json.loads(f.read_text())
    assert doc["version"] == 1 and doc["links"][0]["link_text"] == "/ssd/mnic/p-1/sessions"
    recs = linkrecords.load(HostRoot(fake_root))
    assert recs.source == "file" and recs.problem is None
    assert recs.get(f"{P}/project_archive/sessions").target == "/ssd/mnic/p-1/sessions"
    loc = linkrecords.locate(HostRoot(fake_root), project(fake_root), "sessions")
    assert loc.state == linkrecords.RELOCATED and loc.target == "/ssd/mnic/p-1/sessions"
    assert linkrecords.discard(HostRoot(fake_root), f"{P}/project_archive/sessions", "other text") \
        is False
    assert linkrecords.discard(HostRoot(fake_root), f"{P}/project_archive/sessions")
    assert linkrecords.load(HostRoot(fake_root)).links == {}
    assert linkrecords.locate(HostRoot(fake_root), project(fake_root),
                              "sessions").state == linkrecords.REFUSED


@pytest.mark.parametrize("spoil", ["owner", "mode", "dir_mode", "symlink", "garbage"])
def test_untrusted_state_follows_nothing_and_is_not_written(fake_root: Path, spoil: str
                                                           ) -> None:
    require("root")
    install(fake_root)
    relocate_by_hand(fake_root, P, "project_archive/sessions", "/ssd/mnic/p-1/sessions",
                     "sessions")
    sdir = fake_root / "var/lib/mnic-ops"
    f = sdir / "links.json"
    if spoil == "owner":
        os.chown(f, 1000, 1000)
    elif spoil == "mode":
        os.chmod(f, 0o622)
    elif spoil == "dir_mode":
        os.chmod(sdir, 0o777)
    elif spoil == "symlink":
        real = fake_root / "elsewhere.json"
        f.rename(real)
        f.symlink_to(real)
    else:
        f.write_text("{not json")
    root = HostRoot(fake_root)
    recs = linkrecords.load(root)
    assert recs.links == {} and recs.problem, recs
    loc = linkrecords.locate(root, project(fake_root), "sessions")
    assert loc.state == linkrecords.REFUSED and "cannot be trusted" in loc.note, loc
    before = f.read_bytes() if not f.is_symlink() else None
    with pytest.raises(OpsError):
        record(fake_root, P, ".claude/checkpoints", "/ssd/x", "checkpoints", 0, 0,
               dest_base="/ssd", dest_rel="x")
    if before is not None:
        assert f.read_bytes() == before


def test_records_derive_from_the_journal_of_an_older_version(fake_root: Path) -> None:
    install(fake_root)
    root = HostRoot(fake_root)
    pub = f"{P}/project_archive/sessions"

    def entry(n: int, direction: str, t: float) -> dict:
        return {"entry": f"e{n}", "change": f"relocate:{pub}", "time": t, "kind": "relocate",
                "command": "relocate", "description": "",
                "record": {"direction": direction, "kind": "sessions", "project": P,
                           "public": pub, "public_rel": "project_archive/sessions",
                           "dest_base": "/ssd", "dest_rel": "p-1/sessions",
                           "link_text": "/ssd/p-1/sessions", "owner": [0, 0]}}

    j = fake_root / "var/lib/mnic-ops/journal.jsonl"
    j.parent.mkdir(parents=True, mode=0o700)
    now = time.time()
    lines = [entry(1, "out", now - 30)]
    j.write_text("".join(json.dumps(x) + "\n" for x in lines))
    os.chmod(j, 0o600)
    recs = linkrecords.load(root)
    assert recs.source == "journal" and recs.get(pub).link_text == "/ssd/p-1/sessions"
    # moved back later: no record
    lines.append(entry(2, "back", now - 20))
    j.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert linkrecords.load(root).get(pub) is None
    # ... and that move back undone: out again
    j.write_text("".join(json.dumps(x) + "\n" for x in lines)
                 + json.dumps({"type": "undo", "entry": "e2", "time": now - 10}) + "\n")
    assert linkrecords.load(root).get(pub) is not None
    # the first change written turns the derived records into the file
    record(fake_root, P, ".claude/checkpoints", "/ssd/p-1/checkpoints", "checkpoints", 0, 0,
           dest_base="/ssd", dest_rel="p-1/checkpoints")
    recs = linkrecords.load(root)
    assert recs.source == "file" and set(recs.links) == {pub, f"{P}/.claude/checkpoints"}


def test_locate_matches_path_text_owner_and_target_owner(fake_root: Path) -> None:
    require("root")
    install(fake_root)
    root = HostRoot(fake_root)
    dest = relocate_by_hand(fake_root, P, "project_archive/sessions",
                            "/ssd/mnic/p-1/sessions", "sessions")
    assert linkrecords.locate(root, project(fake_root), "sessions").state == linkrecords.RELOCATED
    # the target folder given to someone else: not followed
    os.chown(dest, 1000, 1000)
    loc = linkrecords.locate(root, project(fake_root), "sessions")
    assert loc.state == linkrecords.REFUSED and "owned by uid 1000" in loc.note, loc
    with pytest.raises(OSError):
        linkrecords.open_folder(root, "/ssd/mnic/p-1", ("sessions",), 0)
    os.chown(dest, 0, 0)
    # the install changed hands: the record no longer matches
    os.chown(fake_root / P.lstrip("/"), 1000, 1000)
    loc = linkrecords.locate(root, project(fake_root), "sessions")
    assert loc.state == linkrecords.REFUSED and "owner changed" in loc.note, loc
    os.chown(fake_root / P.lstrip("/"), 0, 0)
    # the target folder replaced by a link: not followed
    os.rename(dest, dest.with_name("moved"))
    dest.symlink_to(dest.with_name("moved"))
    loc = linkrecords.locate(root, project(fake_root), "sessions")
    assert loc.state == linkrecords.REFUSED and "symlink is in the way" in loc.note, loc
    dest.unlink()
    # gone (an SSD not mounted): absent, with where it would be
    loc = linkrecords.locate(root, project(fake_root), "sessions")
    assert loc.state == linkrecords.ABSENT and loc.target == "/ssd/mnic/p-1/sessions"


def test_a_data_folder_inside_a_relocated_one_is_reached_through_it(fake_root: Path) -> None:
    install(fake_root)
    write_tree(fake_root / P.lstrip("/"), {
        ".claude/config/checkpoint-config.json":
            json.dumps({"storage": {"base_path": ".claude/checkpoints/store"}}),
        ".claude/checkpoints/store/checkpoint_index.json": "{}"})
    relocate_by_hand(fake_root, P, ".claude/checkpoints", "/ssd/mnic/p-1/checkpoints",
                     "checkpoints")
    loc = linkrecords.locate(HostRoot(fake_root), project(fake_root), "checkpoint_store")
    assert loc.state == linkrecords.RELOCATED
    assert loc.target == "/ssd/mnic/p-1/checkpoints/store"
    fd = linkrecords.open_location(HostRoot(fake_root), loc)
    try:
        assert "checkpoint_index.json" in os.listdir(fd)
    finally:
        os.close(fd)
