"""Declared retention on stores shaped as the framework writes them (no framework code
needed here; tests/framework/ runs the real one): the count and size rules, the
index's every mention, the journal, --check, owner and mode."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import checkpointstore, retention
from mnic_ops.facts import policy
from mnic_ops.facts.projects import Project, load_project
from tests.conftest import write_tree

DAY = 86400.0
PROJECT = "/home/alice/p"
STORE = ".ai-tools/checkpoint/storage"


def ts(age_days: float) -> str:
    return dt.datetime.fromtimestamp(time.time() - age_days * DAY).isoformat()


def make_store(root: Path, cps: list[tuple[str, str, float]], config: dict[str, Any] | None
               = None, meta_size: int = 200) -> Project:
    """An install whose store holds ``cps`` (id, level, age in days) as CheckpointEngine
    writes them: metadata/<id>.json, the index with categories and timeline."""
    files: dict[str, str] = {".claude/agents/a.md": "x", ".ai-tools/x": ""}
    index: dict[str, Any] = {"version": "3.7.0", "checkpoints": {}, "categories": {},
                             "tags": {}, "timeline": []}
    for cid, level, age in cps:
        index["checkpoints"][cid] = {"timestamp": ts(age), "level": level,
                                     "category": "unknown", "label": cid, "tags": []}
        index["categories"].setdefault("unknown", []).append(cid)
        index["timeline"].append({"checkpoint_id": cid, "timestamp": ts(age), "label": cid})
        files[f"{STORE}/metadata/{cid}.json"] = json.dumps(
            {"checkpoint_id": cid, "timestamp": ts(age), "level": level,
             "pad": "x" * meta_size}, indent=2)
    index["timeline"].sort(key=lambda e: e["timestamp"], reverse=True)
    files[f"{STORE}/checkpoint_index.json"] = json.dumps(index, indent=2)
    if config is not None:
        files[".claude/config/checkpoint-config.json"] = json.dumps(config, indent=2)
    write_tree(root / PROJECT.lstrip("/"), files)
    return load_project(HostRoot.open(root), PROJECT, "project")


def run(root: Path, p: Project, kind: str = "checkpoint_store", check: bool = False,
        rel: str = STORE) -> retention.Report:
    decl = policy.declared(p)
    real = root / PROJECT.lstrip("/") / rel
    fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
    try:
        keep = retention.Retention(HostRoot.open(root), p, decl, check=check)
        return keep.run(kind, retention.Store(kind, fd, f"{PROJECT}/{rel}", str(real),
                                              os.fstat(fd).st_dev))
    finally:
        os.close(fd)


def index_of(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (root / PROJECT.lstrip("/") / STORE / "checkpoint_index.json").read_text())
    return data


def metadata(root: Path) -> set[str]:
    return {n[:-5] for n in os.listdir(root / PROJECT.lstrip("/") / STORE / "metadata")}


def test_count_rule_keeps_the_newest(fake_root: Path) -> None:
    cps = [(f"cp_20250101_00000{i}_aaaaaaa{i}", "commit_preparation", i + 0.5) for i in range(5)]
    p = make_store(fake_root, cps, {"checkpointLevels": {"commit_preparation": {
        "retention_count": 2, "retention_days": 30}}})
    rep = run(fake_root, p, check=True)
    assert [g.what for g in rep.items] == [c[0] for c in reversed(cps[2:])]
    assert all("checkpointLevels.commit_preparation.retention_count 2" in g.rule
               for g in rep.items)
    assert metadata(fake_root) == {c[0] for c in cps}  # --check changes nothing
    rep = run(fake_root, p)
    assert rep.status == "done" and rep.count == 3
    assert set(index_of(fake_root)["checkpoints"]) == {c[0] for c in cps[:2]}
    assert metadata(fake_root) == {c[0] for c in cps[:2]}
    idx = index_of(fake_root)
    assert idx["categories"] == {"unknown": [cps[0][0], cps[1][0]]}
    assert [e["checkpoint_id"] for e in idx["timeline"]] == [cps[0][0], cps[1][0]]


def test_total_size_goes_oldest_first_and_the_newest_stays(fake_root: Path) -> None:
    cps = [(f"cp_2025010{i}_000000_bbbbbbb{i}", "manual", 5 - i) for i in range(5)]
    p = make_store(fake_root, cps, {"storage": {"max_total_storage_gb": 0.001}},
                   meta_size=400_000)  # 5 x 400 kB > 1 MB
    rep = run(fake_root, p)
    gone = [g.what for g in rep.items]
    assert gone == [cps[0][0], cps[1][0], cps[2][0]]  # oldest first, down to <= 1 MB
    assert all("storage.max_total_storage_gb 0.001" in g.rule for g in rep.items)
    assert metadata(fake_root) == {cps[3][0], cps[4][0]}
    # a single checkpoint over the limit stays: the newest is never expired by size
    p = make_store(fake_root / "x", [cps[4]], {"storage": {"max_total_storage_gb": 0.001}},
                   meta_size=2_000_000)
    assert run(fake_root / "x", p).count == 0


def test_every_mention_goes_and_dangling_ones_too(fake_root: Path) -> None:
    old, new = "cp_20240101_000000_cccccccc", "cp_20251201_000000_dddddddd"
    p = make_store(fake_root, [(old, "manual", 100), (new, "manual", 1)])
    path = fake_root / PROJECT.lstrip("/") / STORE / "checkpoint_index.json"
    idx = json.loads(path.read_text())
    gone_by_framework = "cp_20240601_000000_eeeeeeee"  # _delete_checkpoint leaves these
    idx["categories"]["bugfix"] = [gone_by_framework]
    idx["timeline"].append({"checkpoint_id": gone_by_framework, "timestamp": ts(50),
                            "label": "x"})
    idx["tags"] = {"release": [old, new]}
    path.write_text(json.dumps(idx, indent=2))
    rep = run(fake_root, p)
    assert [g.what for g in rep.items] == [old]
    assert rep.index["dangling_removed"] == 2 and rep.index["rewritten"]
    idx = index_of(fake_root)
    assert idx == {"version": "3.7.0", "checkpoints": {new: idx["checkpoints"][new]},
                   "categories": {"unknown": [new]}, "tags": {"release": [new]},
                   "timeline": [e for e in idx["timeline"]]}
    assert [e["checkpoint_id"] for e in idx["timeline"]] == [new]
    # the framework's own format: json.dump(indent=2), no trailing newline
    assert path.read_text() == json.dumps(idx, indent=2)


def test_names_that_are_no_checkpoint_ids_are_left_alone(fake_root: Path) -> None:
    p = make_store(fake_root, [("cp_20240101_000000_ffffffff", "manual", 100)])
    path = fake_root / PROJECT.lstrip("/") / STORE / "checkpoint_index.json"
    idx = json.loads(path.read_text())
    idx["checkpoints"]["../../../etc/passwd"] = {"timestamp": ts(400), "level": "manual"}
    idx["checkpoints"]["cp_odd"] = {"timestamp": ts(400), "level": "nonsense"}
    idx["checkpoints"]["cp_notime"] = {"timestamp": "yesterday", "level": "manual"}
    path.write_text(json.dumps(idx))
    victim = fake_root / "etc/passwd"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("root:x:0:0\n")
    rep = run(fake_root, p)
    assert [g.what for g in rep.items] == ["cp_20240101_000000_ffffffff"]
    assert victim.read_text() == "root:x:0:0\n"
    assert len(rep.errors) == 3 and "left alone" in rep.errors[0]
    assert {"../../../etc/passwd", "cp_odd", "cp_notime"} <= set(index_of(fake_root)[
        "checkpoints"])


def test_the_later_recorded_time_counts(fake_root: Path) -> None:
    cid = "cp_20240101_000000_abababab"
    p = make_store(fake_root, [(cid, "manual", 95)])
    meta = fake_root / PROJECT.lstrip("/") / STORE / "metadata" / f"{cid}.json"
    m = json.loads(meta.read_text())
    m["timestamp"] = ts(80)  # the metadata says younger than the limit
    meta.write_text(json.dumps(m))
    assert run(fake_root, p).count == 0


def test_a_killed_pass_is_finished_from_its_journal(fake_root: Path) -> None:
    a, b, c = (f"cp_20240101_00000{i}_1234567{i}" for i in range(3))
    p = make_store(fake_root, [(a, "manual", 100), (b, "manual", 100), (c, "manual", 1)])
    base = fake_root / PROJECT.lstrip("/") / STORE
    # killed after the index was rewritten without a and b, before their files went
    idx = json.loads((base / "checkpoint_index.json").read_text())
    for x in (a, b):
        del idx["checkpoints"][x]
    idx["categories"]["unknown"] = [c]
    idx["timeline"] = [e for e in idx["timeline"] if e["checkpoint_id"] == c]
    (base / "checkpoint_index.json").write_text(json.dumps(idx, indent=2))
    jpath = Path(checkpointstore.journal_path(HostRoot.open(fake_root), f"{PROJECT}/{STORE}"))
    jpath.parent.mkdir(parents=True)
    st = os.stat(base)
    jpath.write_text(json.dumps({"store": f"{PROJECT}/{STORE}", "ident": [st.st_dev,
                                                                        st.st_ino],
                                 "ids": [a, b]}))
    # and an orphan the framework left (metadata written, then it crashed): not ours
    orphan = "cp_20240101_000009_99999999"
    (base / "metadata" / f"{orphan}.json").write_text("{}")
    rep = run(fake_root, p)
    assert rep.recovered == 2 and rep.count == 0
    assert metadata(fake_root) == {c, orphan}
    assert rep.index["unlisted_metadata"] == 1
    assert not jpath.exists()


def test_owner_and_mode_of_the_index_are_kept(fake_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    p = make_store(fake_root, [("cp_20240101_000000_0f0f0f0f", "manual", 100),
                               ("cp_20250101_000000_0e0e0e0e", "manual", 1)])
    path = fake_root / PROJECT.lstrip("/") / STORE / "checkpoint_index.json"
    os.chown(path, 4321, 4322)
    os.chmod(path, 0o640)
    assert run(fake_root, p).count == 1
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4321, 4322, 0o640)


def test_thinking_logs_cost_records_and_task_results(fake_root: Path) -> None:
    old_log = f"{dt.datetime.fromtimestamp(time.time() - 40 * DAY):%Y-%m-%d-%H%M%S}-a.json"
    new_log = f"{dt.datetime.fromtimestamp(time.time() - 10 * DAY):%Y-%m-%d-%H%M%S}-b.json"
    day = lambda a: f"{dt.date.fromtimestamp(time.time() - a * DAY):%Y-%m-%d}"  # noqa: E731
    files = {
        ".claude/config/extended-thinking-config.json": json.dumps(
            {"logging": {"retention_days": 30, "compression": "gzip_after_7_days"}}),
        ".claude/config/cost-optimization.json": '{"costTracking": {"retentionDays": 30}}',
        ".claude/config/background-tasks.json": '{"storage": {"retention_days": 7}}',
        f".claude/thinking-logs/core/arch/{old_log}": "{}",
        f".claude/thinking-logs/core/arch/{new_log}.gz": "gz",
        ".claude/thinking-logs/index.json": json.dumps(
            {"logs": [f".claude/thinking-logs/core/arch/{old_log}",
                      f".claude/thinking-logs/core/arch/{new_log}"]}),
        f".ai-tools/model-config/data/daily/{day(40)}.json": "{}",
        f".ai-tools/model-config/data/daily/{day(20)}.json": "{}",
        ".ai-tools/model-config/data/daily/notes.json": "{}",
        "project_archive/background-tasks/results/t1.json": json.dumps(
            {"task_id": "t1", "start_time": ts(9), "end_time": ts(8.9)}),
        "project_archive/background-tasks/results/t2.json": json.dumps(
            {"task_id": "t2", "start_time": ts(2), "end_time": ts(1.9)}),
        "project_archive/background-tasks/results/t3.json": "{not json",
        "project_archive/background-tasks/state.json": json.dumps({"task_results": {
            "t1": {"end_time": ts(8.9)}, "t2": {"end_time": ts(1.9)},
            "t0": {"end_time": ts(30)}}}),
    }
    p = make_store(fake_root, [])
    write_tree(fake_root / PROJECT.lstrip("/"), files)
    p = load_project(HostRoot.open(fake_root), PROJECT, "project")
    base = fake_root / PROJECT.lstrip("/")
    rep = run(fake_root, p, "thinking_logs", rel=".claude/thinking-logs")
    assert [g.what for g in rep.items] == [f"core/arch/{old_log}"]
    assert json.loads((base / ".claude/thinking-logs/index.json").read_text()) == {
        "logs": [f".claude/thinking-logs/core/arch/{new_log}"]}
    assert not (base / f".claude/thinking-logs/core/arch/{old_log}").exists()
    rep = run(fake_root, p, "cost_records", rel=".ai-tools/model-config/data")
    assert [g.what for g in rep.items] == [f"daily/{day(40)}.json"]
    assert (base / ".ai-tools/model-config/data/daily/notes.json").exists()
    rep = run(fake_root, p, "task_results", rel="project_archive/background-tasks/results")
    assert [g.what for g in rep.items] == ["t1.json"]
    assert "t3.json" in rep.errors[0] and "kept" in rep.errors[0]
    state = json.loads((base / "project_archive/background-tasks/state.json").read_text())
    assert set(state["task_results"]) == {"t2"}
    assert rep.index["entries_removed"] == 2
    assert sorted(os.listdir(base / "project_archive/background-tasks/results")) == [
        "t2.json", "t3.json"]


def _engine_gzip(path: Path) -> None:
    """NAME -> NAME.gz as mnic-ops's engine (an earlier pass) made it."""
    from mnic_ops.engines import compress, inplace

    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        o = compress.compress_at(dfd, path.name, inplace.Options(dev=os.fstat(dfd).st_dev))
    finally:
        os.close(dfd)
    assert o.state == "compressed", o


def test_an_older_archive_beside_a_history_is_kept_once_as_numbered(fake_root: Path) -> None:
    """Issue 14's own collision in the checkpoint store: an earlier pass gzipped
    quality_gate_history.json, the framework wrote it again. The older archive is kept
    once as NAME.1.gz and reported once; the next run says nothing (on main the same
    line came back every run). The current file is the framework's and stays."""
    cid = "cp_20250101_000000_aaaaaaaa"
    p = make_store(fake_root, [(cid, "manual", 1)])
    store = fake_root / PROJECT.lstrip("/") / STORE
    hist = store / "quality_gate_history.json"
    hist.write_text('[{"gate": "old"}]')
    _engine_gzip(hist)
    hist.write_text('[{"gate": "new"}]')
    meta = store / "metadata" / f"{cid}.json"
    current = meta.read_bytes()
    meta.write_text('{"older": true}')
    _engine_gzip(meta)
    meta.write_bytes(current)
    rep = run(fake_root, p, check=True)
    assert [k["file"] for k in rep.kept] == ["quality_gate_history.json.gz",
                                            f"metadata/{cid}.json.gz"], rep.kept
    assert (store / "quality_gate_history.json.gz").exists()  # --check changes nothing
    rep = run(fake_root, p)
    assert rep.kept == [{"file": "quality_gate_history.json.gz",
                         "kept_as": "quality_gate_history.json.1.gz"},
                        {"file": f"metadata/{cid}.json.gz",
                         "kept_as": f"metadata/{cid}.json.1.gz"}], rep.kept
    assert not rep.errors, rep.errors
    assert hist.read_text() == '[{"gate": "new"}]' and meta.read_bytes() == current
    import gzip

    assert gzip.decompress((store / "quality_gate_history.json.1.gz").read_bytes()) == \
        b'[{"gate": "old"}]'
    again = run(fake_root, p)
    assert not again.kept and not again.errors, (again.kept, again.errors)
    # the numbered archive of the metadata goes with its checkpoint
    p = make_store(fake_root, [(cid, "manual", 100)],
                   {"checkpointLevels": {"manual": {"retention_days": 90}}})
    gone = run(fake_root, p)
    assert [g.what for g in gone.items] == [cid]
    assert not list((store / "metadata").iterdir())


def test_a_pass_restores_only_archives_it_made_before(fake_root: Path) -> None:
    """What an earlier pass gzipped is made again; an archive made after this host's
    first restoring pass, or not shaped as the engine writes one, is not (a user's
    gzip bomb must not become root's write)."""
    import gzip

    from mnic_ops.engines import restore

    cid = "cp_20250101_000000_aaaaaaaa"
    p = make_store(fake_root, [(cid, "manual", 1)])
    store = fake_root / PROJECT.lstrip("/") / STORE
    meta = store / "metadata" / f"{cid}.json"
    want = meta.read_bytes()
    _engine_gzip(meta)
    (store / "agent_coordination.json.gz").write_bytes(gzip.compress(b"{}"))  # not ours
    rep = run(fake_root, p)  # the first pass: records since when, restores the old one
    assert rep.restored == [f"metadata/{cid}.json"] and meta.read_bytes() == want
    assert any("agent_coordination.json.gz not restored: its gzip header is not" in e
               for e in rep.errors), rep.errors
    since = json.loads((fake_root / restore.SINCE_FILE.lstrip("/")).read_text())["since"]
    time.sleep(0.05)
    (store / "trigger_history.json.gz").write_bytes(gzip.compress(b"[]" * 1000))
    hist = store / "quality_gate_history.json"
    hist.write_text("[]")
    _engine_gzip(hist)  # engine-shaped, but made after the first pass
    rep = run(fake_root, p)
    assert rep.restored == [], rep.restored
    why = "\n".join(rep.errors)
    assert "trigger_history.json.gz not restored" in why and \
        "quality_gate_history.json.gz not restored: made after mnic-ops stopped" in why, why
    assert json.loads((fake_root / restore.SINCE_FILE.lstrip("/")).read_text()) == \
        {"since": since}
