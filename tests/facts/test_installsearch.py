"""The search for installs: its filesystem only, look-alikes and big trees skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.facts.test_projects import find, make_install


def test_other_filesystems_are_not_searched(fake_root: Path) -> None:
    require("unshare")
    make_install(fake_root / "srv/local")
    mnt = fake_root / "srv/mounted"
    mnt.mkdir()
    script = (f"mount -t tmpfs none {mnt} && mkdir -p {mnt}/p/.claude/agents {mnt}/p/.ai-tools"
              f" && {sys.executable} -m mnic_ops --root {fake_root} --json projects")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [p["root"] for p in json.loads(r.stdout)["projects"]] == ["/srv/local"]


@pytest.mark.slow
def test_ten_thousand_folders_three_installs(tmp_path: Path) -> None:
    """The benchmark's tree (look-alikes, node_modules, .git, a virtualenv): exactly the
    three installs are found. Timing lives in benchmarks/projects_search.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "projects_search", REPO / "benchmarks" / "projects_search.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = tmp_path / "host"
    want = bench.build(root, 10_000)
    assert sum(1 for _ in os.walk(root)) >= 9_900
    assert sorted(p.host_path for p in find(root)) == sorted(want)
