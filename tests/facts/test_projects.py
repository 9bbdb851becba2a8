"""The data map: finding installs under a fake host root and mapping their data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mnic_ops.core.app import AppContext
from mnic_ops.core.config import load
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import datameasure, projects
from tests.conftest import run_mnic, write_tree
from tests.linkhelp import record


def make_install(base: Path, *, version: str | None = None,
                 extra: dict[str, str | bytes] | None = None) -> Path:
    """A per-project install as copy_framework_to_project.sh leaves it."""
    files: dict[str, str | bytes] = {
        ".claude/agents/core/backend-engineer.md": "# agent\n",
        ".ai-tools/__init__.py": "",
        "ai-tools.sh": "#!/bin/sh\n",
        "project_archive/sessions/SESSION_CURRENT.md": "current\n",
        "project_archive/sessions/SESSION_SUMMARY_2025-01-01.md": "x" * 1000,
        ".claude/thinking-logs/index.json": "{}",
    }
    if version:
        files["VERSION"] = version + "\n"
    files.update(extra or {})
    write_tree(base, files)
    return base


def write_config(root: Path, text: str) -> Path:
    p = root / "etc/mnic-ops/config.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def find(root: Path) -> list[projects.Project]:
    hr = HostRoot.open(root)
    return projects.find_projects(hr, load(hr, env={}))


def test_finds_installs_and_skips_lookalikes(fake_root: Path) -> None:
    make_install(fake_root / "home/alice/work/p1", version="3.10.0")
    make_install(fake_root / "srv/team/p2")
    write_tree(fake_root / "opt/my-name-is-claude", {"sessions/s.json": "{}",
                                                     "logs/a.log": "x"})
    # Claude Code's own user folder has .claude/agents but no .ai-tools: not an install.
    write_tree(fake_root / "home/bob", {".claude/agents/mine.md": "x"})
    # Installs inside folders the search must not enter.
    make_install(fake_root / "home/alice/work/node_modules/pkg")
    make_install(fake_root / "home/alice/work/.git/p")
    venv = fake_root / "home/alice/venv1"
    write_tree(venv, {"pyvenv.cfg": "home = /usr\n"})
    make_install(venv / "lib/p")
    # Too deep for search_depth = 3 below /home/*.
    make_install(fake_root / "home/alice/a/b/c/deep")
    # A symlink to an install is not followed (and not counted twice).
    (fake_root / "home/alice/link").symlink_to(fake_root / "srv/team/p2")
    # .claude/agents as a symlink does not make an install.
    write_tree(fake_root / "srv/fake", {".ai-tools/x": ""})
    (fake_root / "srv/fake/.claude").mkdir()
    (fake_root / "srv/fake/.claude/agents").symlink_to(fake_root / "home/bob/.claude/agents")

    found = find(fake_root)
    assert [(p.host_path, p.layout) for p in found] == [
        ("/home/alice/work/p1", "project"), ("/opt/my-name-is-claude", "opt"),
        ("/srv/team/p2", "project")]
    p1 = found[0]
    assert p1.version == "3.10.0" and found[2].version is None
    assert p1.path == fake_root / "home/alice/work/p1"
    assert set(p1.data) == set(projects.DATA_KINDS)
    opt = found[1]
    assert opt.data["sessions"].host_path == "/opt/my-name-is-claude/sessions"
    assert opt.data["sessions"].exists and not opt.data["checkpoints"].exists


def test_depth_and_explicit_projects(fake_root: Path) -> None:
    make_install(fake_root / "home/alice/a/b/c/deep")
    make_install(fake_root / "data/elsewhere")
    write_config(fake_root, 'search_depth = 4\nprojects = ["/data/elsewhere"]\n')
    found = find(fake_root)
    assert [p.host_path for p in found] == ["/data/elsewhere", "/home/alice/a/b/c/deep"]
    write_config(fake_root, 'search_depth = 3\nsearch_paths = []\n'
                            'projects = ["/data/elsewhere", "/data/none"]\n')
    assert [p.host_path for p in find(fake_root)] == ["/data/elsewhere"]


def test_data_map_paths_links_and_checkpoint_store(fake_root: Path, caplog:
                                                   pytest.LogCaptureFixture) -> None:
    base = make_install(fake_root / "home/alice/p", extra={
        ".claude/config/checkpoint-config.json":
            json.dumps({"storage": {"base_path": "var/cp-store"}}),
        "var/cp-store/checkpoint_index.json": "{}",
    })
    ssd = fake_root / "mnt/ssd/my-name-is-claude/sessions"
    write_tree(ssd, {"a.md": "12345", "b.md": "123"})
    (base / "project_archive/logs").symlink_to("/mnt/ssd/my-name-is-claude/sessions")
    (p,) = find(fake_root)
    d = p.data
    assert d["checkpoint_store"].host_path == "/home/alice/p/var/cp-store"
    assert d["checkpoint_store"].exists
    assert d["checkpoints"].host_path == "/home/alice/p/.claude/checkpoints"
    assert d["cost_records"].host_path == "/home/alice/p/.ai-tools/model-config/data"
    assert d["task_results"].host_path == \
        "/home/alice/p/project_archive/background-tasks/results"
    logs = d["logs"]
    assert logs.is_link and logs.exists
    assert logs.link_target == "/mnt/ssd/my-name-is-claude/sessions"
    # A link mnic-ops did not make is not followed: nothing is measured through it ...
    assert datameasure.measure(logs, p) == (0, 0)
    assert datameasure.data_top(logs, p) is None
    # ... a link relocate made (in its record) is: the relocated data, at its target.
    record(fake_root, "/home/alice/p", "project_archive/logs",
           "/mnt/ssd/my-name-is-claude/sessions", "logs", p.uid, p.gid,
           dest_base="/mnt/ssd", dest_rel="my-name-is-claude/sessions")
    assert datameasure.measure(logs, p) == (8, 2)
    assert datameasure.data_top(logs, p) == str(ssd)
    assert datameasure.measure(logs) == (0, 0)  # without its install: never followed
    assert not d["sessions"].is_link and d["sessions"].link_target is None

    # A relative link is made absolute; ".." cannot climb above the root.
    (base / "project_archive/logs").unlink()
    (base / "project_archive/logs").symlink_to("../../../../../../../mnt/ssd")
    (p,) = find(fake_root)
    assert p.data["logs"].link_target == "/mnt/ssd"

    # A base_path that leaves the install is ignored, with a warning.
    (base / ".claude/config/checkpoint-config.json").write_text(
        json.dumps({"storage": {"base_path": "../../../etc"}}))
    (p,) = find(fake_root)
    assert p.data["checkpoint_store"].host_path == \
        "/home/alice/p/.ai-tools/checkpoint/storage"
    assert "outside the install" in caplog.text


def test_owner_names_come_from_the_roots_own_files(fake_root: Path) -> None:
    base = make_install(fake_root / "home/alice/p")
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() == 0:
        uid = gid = 4242
        for dirpath, dirs, files in os.walk(base):
            for n in [*dirs, *files, "."]:
                os.lchown(os.path.join(dirpath, n), uid, gid)
    write_tree(fake_root, {"etc/passwd": f"alice:x:{uid}:{gid}::/home/alice:/bin/sh\n",
                           "etc/group": f"devs:x:{gid}:\n"})
    (p,) = find(fake_root)
    assert (p.uid, p.gid, p.user, p.group) == (uid, gid, "alice", "devs")


def test_select_projects(fake_root: Path) -> None:
    make_install(fake_root / "home/alice/p")
    make_install(fake_root / "srv/p")
    make_install(fake_root / "srv/q")
    make_install(fake_root / "data/unlisted")
    app = AppContext(root=HostRoot.open(fake_root), config_path=None)
    assert [p.host_path for p in projects.select_projects(app, [])] == [
        "/home/alice/p", "/srv/p", "/srv/q"]
    assert [p.host_path for p in projects.select_projects(app, ["q", "/srv/p/"])] == [
        "/srv/q", "/srv/p"]
    # An install outside the search paths can be named by its path.
    assert [p.host_path for p in projects.select_projects(app, ["/data/unlisted"])] == [
        "/data/unlisted"]
    with pytest.raises(InputError, match="ambiguous"):
        projects.select_projects(app, ["p"])
    with pytest.raises(InputError, match="nope: no such framework install"):
        projects.select_projects(app, ["nope"])
    with pytest.raises(InputError, match="not a framework install"):
        projects.select_projects(app, ["/data"])


# --- the data map from the framework's code (issue 14) -------------------------------

def test_an_install_without_config_says_so_and_render_says_why_it_skips(
        fake_root: Path) -> None:
    make_install(fake_root / "home/alice/p")
    r = run_mnic("--root", str(fake_root), "--json", "projects")
    (p,) = json.loads(r.out)["projects"]
    assert p["has_config"] is False
    assert any("copy_framework_to_project.sh" in n for n in p["notes"])
    r = run_mnic("--root", str(fake_root), "render", "--host-class", "laptop",
                 "/home/alice/p")
    assert r.code == 0, r.err
    assert "skipped: [project:/home/alice/p]" in r.out
    assert "no .claude/config/" in r.out and "then run mnic-ops render" in r.out
    assert not (fake_root / "home/alice/p/.claude/config").exists()


def test_data_folders_the_framework_config_moves(fake_root: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    base = make_install(fake_root / "home/alice/p", extra={
        ".claude/config/extended-thinking-config.json":
            json.dumps({"logging": {"storage_path": "logs/thinking/"}}),
        ".claude/config/background-tasks.json": json.dumps(
            {"storage": {"task_results_dir": "bg/results", "task_logs_dir": "/etc"}}),
    })
    (p,) = find(fake_root)
    d = p.data
    assert d["thinking_logs"].host_path == "/home/alice/p/logs/thinking"
    assert d["task_results"].host_path == "/home/alice/p/bg/results"
    # outside the install: ignored, with the line that says it
    assert d["task_logs"].host_path == "/home/alice/p/project_archive/background-tasks/logs"
    assert "background-tasks.json:1: storage.task_logs_dir '/etc' is outside" in caplog.text
    assert d["claude_sessions"].host_path == "/home/alice/p/.claude/sessions"
    # a config that locates data and does not parse: where the data is is unknown, so
    # the install fails (reported with file:line; nothing is done for it)
    (base / ".claude/config/extended-thinking-config.json").write_text('{"logging": [')
    (p,) = find(fake_root)
    assert p.failure is not None and not p.data
    assert "/home/alice/p/.claude/config/extended-thinking-config.json:1:" in p.failure
