#!/usr/bin/env python3
"""Finding framework installs: `mnic-ops projects` vs the shell search it replaces.

Builds a fake host root with about 10,000 folders (home folders with project trees,
node_modules, .git, a virtualenv, Claude Code's own ~/.claude/agents look-alikes) and
exactly three installs (two per-project installs and /opt/my-name-is-claude), then
times, median of N alternating rounds:

- ``find ROOT -type d -name agents -path '*/.claude/*'`` (the shell recipe);
- ``find_projects`` in-process (the search itself);
- ``mnic-ops --root ROOT --json projects`` as a fresh process (search, data map and
  sizes, plus Python start-up).

It checks that mnic-ops finds exactly the three installs and prints what the shell
recipe finds (it counts look-alikes too).
Usage: python benchmarks/projects_search.py [--runs N] [--folders N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mnic_ops.core import config  # noqa: E402
from mnic_ops.core.hostroot import HostRoot  # noqa: E402
from mnic_ops.facts import projects  # noqa: E402


def mk_install(p: Path) -> None:
    for d in (".claude/agents/core", ".claude/agents/enterprise", ".claude/agents/custom",
              ".claude/config", ".claude/thinking-logs/core", ".ai-tools/checkpoint/storage",
              ".ai-tools/model-config/data/daily", "project_archive/sessions",
              "project_archive/logs", "project_archive/background-tasks/results"):
        (p / d).mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (p / f"project_archive/sessions/SESSION_SUMMARY_{i}.md").write_text("x" * 200)


def build(root: Path, folders: int) -> list[str]:
    """Make the tree; return the host paths of the three installs."""
    made = 0

    def mkdir(p: Path) -> None:
        """mkdir -p, counting every folder it creates."""
        nonlocal made
        missing = [q for q in [p, *p.parents] if not q.exists()]
        p.mkdir(parents=True, exist_ok=True)
        made += len(missing)

    users = [f"user{i:02d}" for i in range(20)]
    root.mkdir(parents=True)
    for i, u in enumerate(users):
        home = root / "home" / u
        mkdir(home)
        # Claude Code's user folder: .claude/agents but no .ai-tools (not an install).
        if u in ("user03", "user11"):
            mkdir(home / ".claude" / "agents")
        venv = home / "venv"
        mkdir(venv / "lib/python3.11/site-packages")
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        n = 0
        stop = (folders - 100) * (i + 1) // len(users)  # leave room for the installs
        while made < stop:
            proj = home / f"code{n // 100}" / f"repo{n // 20}"
            for kind in ("src", "tests", "node_modules/pkg", ".git/objects", "docs/a/b/c"):
                mkdir(proj / kind / f"d{n}")
                n += 1
    installs = ["/home/user05/code0/fw-app", "/srv/team/agents-svc", "/opt/my-name-is-claude"]
    mk_install(root / installs[0].lstrip("/"))
    mk_install(root / installs[1].lstrip("/"))
    opt = root / installs[2].lstrip("/")
    for d in ("sessions", "checkpoints", "logs", ".claude/agents"):
        (opt / d).mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(exist_ok=True)
    return installs


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--folders", type=int, default=10_000)
    ap.add_argument("--keep", default=None, help="build the tree here and keep it")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mnic-bench-"))
    root = base / "host"
    want = build(root, args.folders)
    total_dirs = sum(1 for _ in os.walk(root))
    print(f"tree: {root} with {total_dirs} folders, {len(want)} installs")

    hr = HostRoot.open(root)
    cfg = config.load(hr, env={})
    found = [p.host_path for p in projects.find_projects(hr, cfg)]
    assert sorted(found) == sorted(want), found
    shell = ["find", str(root), "-type", "d", "-name", "agents", "-path", "*/.claude/*"]
    hits = subprocess.run(shell, capture_output=True, text=True, check=True).stdout.split()
    cli = [sys.executable, "-m", "mnic_ops", "--root", str(root), "--json", "projects"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = json.loads(subprocess.run(cli, capture_output=True, text=True, env=env,
                                    check=True).stdout)
    assert sorted(p["root"] for p in out["projects"]) == sorted(want)
    print(f"mnic-ops finds {len(found)}: {', '.join(found)}")
    print(f"shell find finds {len(hits)} .claude/agents folders (look-alikes included)")

    res: dict[str, list[float]] = {"find (shell recipe)": [], "find_projects (in-process)": [],
                                   "mnic-ops projects (process)": []}
    for _ in range(args.runs):  # alternate so that load and cache affect all alike
        res["find (shell recipe)"].append(timed(lambda: subprocess.run(
            shell, stdout=subprocess.DEVNULL, check=True)))
        res["find_projects (in-process)"].append(timed(
            lambda: projects.find_projects(hr, cfg)))
        res["mnic-ops projects (process)"].append(timed(lambda: subprocess.run(
            cli, stdout=subprocess.DEVNULL, env=env, check=True)))
    med = {k: statistics.median(v) for k, v in res.items()}
    ref = med["find (shell recipe)"]
    print(f"{'search':<30} {'median ms':>10} {'vs find':>9}")
    for name, m in med.items():
        print(f"{name:<30} {m * 1000:>10.1f} {m / ref:>8.2f}x")
    if not args.keep:
        import shutil

        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
