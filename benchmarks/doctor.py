#!/usr/bin/env python3
"""Median wall time of `mnic-ops doctor PROJECT` vs the guide's by-hand baseline recipe,
on a generated install with 45 agents of the framework's real size (~13 KiB) and a
few sessions, alternating round by round, with the ratio.

The guide's recipe ("Performance Baseline"): `time python3 -c` agent discovery (rglob,
front-matter regex, yaml.safe_load, as .ai-tools' discovery does), `time python3 -c`
json.load of the latest session, `ps aux | grep python | awk '{print $6/1024}'`, then an
admin compares three numbers with a table. doctor does all of it (two fresh processes)
plus the ten checks, so the ratio is the price of the checks.

Usage: python benchmarks/doctor.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

GUIDE_AGENTS = r"""
import re, yaml
from pathlib import Path
n = 0
for f in Path('.claude/agents').rglob('*.md'):
    m = re.match(r'^---\n(.*?)\n---', f.read_text(encoding='utf-8'), re.DOTALL)
    if m and yaml.safe_load(m.group(1)):
        n += 1
print(f'Loaded {n} agents')
"""
GUIDE_CONTEXT = r"""
import json
with open('project_archive/sessions/latest.json') as f:
    session = json.load(f)
print(f'Loaded {len(session)} context items')
"""


def make_install(base: Path) -> None:
    para = "**Primary Expertise:** expert level proficiency with practical application.\n"
    for i in range(45):
        p = base / ".claude/agents" / ("core", "enterprise", "custom")[i % 3] / f"a{i}.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"---\nname: Agent {i}\ndescription: \"agent {i}\"\ncategory: Core\n"
                     f"framework_version: \"3.10.0\"\n---\n\n# Agent {i}\n" + para * 170)
    (base / ".ai-tools").mkdir()
    s = base / "project_archive/sessions"
    s.mkdir(parents=True)
    for i in range(5):
        (s / f"session_{i}.json").write_text(json.dumps({"history": ["x" * 300] * 200}))
    (s / "latest.json").write_text(json.dumps({"history": ["x" * 300] * 200}))
    (s / "SESSION_CURRENT.md").write_text("# current\n" * 200)


def once(argv: list[str], cwd: Path | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mnic-doctor-bench-"))
    try:
        proj = tmp / "proj"
        make_install(proj)
        cfg = tmp / "config.toml"
        cfg.write_text("search_paths = []\n")
        py = sys.executable
        guide = (f"{shlex.quote(py)} -c {shlex.quote(GUIDE_AGENTS)} && "
                 f"{shlex.quote(py)} -c {shlex.quote(GUIDE_CONTEXT)} && "
                 "ps aux | grep python | awk '{print $6/1024 \" MB\"}'")
        check = subprocess.run(["bash", "-c", guide], cwd=proj, capture_output=True,
                               text=True)
        if "Loaded 45 agents" not in check.stdout or check.returncode:
            print(f"guide recipe failed: {check.stdout} {check.stderr}", file=sys.stderr)
            return 1
        mnic = shutil.which("mnic-ops")
        doc = ([mnic] if mnic else [py, "-m", "mnic_ops"]) + [
            "--config", str(cfg), "doctor", "--json", str(proj)]
        res: dict[str, list[float]] = {"guide recipe (3 commands)": [],
                                       "mnic-ops doctor PROJECT": []}
        figures: list[float] = []
        for _ in range(args.runs):
            res["guide recipe (3 commands)"].append(once(["bash", "-c", guide], cwd=proj))
            res["mnic-ops doctor PROJECT"].append(once(doc))
        out = subprocess.run(doc, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        rep = json.loads(out.stdout)
        figures = [rep["projects"][0]["figures"][k]["value"]
                   for k in ("agent_activation", "context_loading")]
        med = {k: statistics.median(v) for k, v in res.items()}
        base = med["guide recipe (3 commands)"]
        print(f"{'command':<30} {'median ms':>10} {'vs guide':>9}")
        for k, m in med.items():
            print(f"{k:<30} {m * 1000:>10.1f} {m / base:>8.2f}x")
        print(f"doctor's figures: agent activation {figures[0] * 1000:.1f} ms, "
              f"context loading {figures[1] * 1000:.1f} ms (timed inside the fresh process)")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
