#!/usr/bin/env python3
"""Thinking-log retention (`mnic-ops clean --only expire`) vs the recipe it replaces, with
a large index.

Install: L thinking logs under .claude/thinking-logs/core/<agent>/ named as the assistant
writes them (YYYY-MM-DD-HHMMSS-decision.json), E of them older than the
logging.retention_days its extended-thinking-config.json declares, and an index.json of
S strings (the assistant's undocumented format: entries naming each log, plus by-agent
lists and tags), about 2 MB for S = 200,000. Compared, round by round on fresh copies
(the copy is not timed):

  recipe  find .claude/thinking-logs -name '*.json' -mtime +N -delete
          (the files go; index.json keeps naming them)
  mnic    mnic-ops clean --only expire  (the expired logs go and every mention of them
          leaves index.json first, rewritten atomically)

Prints the median wall time of each, the ratio, and how many index strings name a log
that is gone afterwards.

Usage: python benchmarks/thinking_logs.py [--logs 6000] [--expired 2000]
       [--strings 200000] [--runs 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = "home/alice/proj"
LOGS = ".claude/thinking-logs"
DAY = 86400.0
RETENTION = 30


def make_install(root: Path, logs: int, expired: int, strings: int) -> list[str]:
    base = root / PROJECT
    for d in (".claude/agents", ".claude/config", ".ai-tools"):
        (base / d).mkdir(parents=True)
    (base / ".claude/agents/a.md").write_text("# agent\n")
    (base / ".claude/config/extended-thinking-config.json").write_text(json.dumps(
        {"logging": {"enabled": True, "storage_path": LOGS + "/",
                     "retention_days": RETENTION, "compression": "none"}}))
    now = time.time()
    rels: list[str] = []
    for i in range(logs):
        agent = f"agent-{i % 40:02d}"
        age = RETENTION + 5 + i % 100 if i < expired else i % RETENTION
        t = now - age * DAY
        rel = f"core/{agent}/{dt.datetime.fromtimestamp(t):%Y-%m-%d-%H%M%S}-d{i:05d}.json"
        p = base / LOGS / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"agent": agent, "decision": i, "reasoning": "x" * 200}))
        os.utime(p, (t, t))
        rels.append(rel)
    entries: dict[str, object] = {}
    by_agent: dict[str, list[str]] = {}
    tags: dict[str, list[str]] = {}
    n = 0
    while n < strings:
        for rel in rels:
            if n >= strings:
                break
            key = f"e{n:07d}"
            entries[key] = {"file": f"{LOGS}/{rel}", "tag": f"t{n % 500}"}
            by_agent.setdefault(rel.split("/")[1], []).append(rel)
            tags.setdefault(f"t{n % 500}", []).append(key)
            n += 4  # key, file, tag, and a by-agent or tag string
    (base / LOGS / "index.json").write_text(json.dumps(
        {"entries": entries, "by_agent": by_agent, "tags": tags}))
    return rels


def stale(base: Path) -> int:
    index = json.loads((base / LOGS / "index.json").read_text())
    gone = 0

    def walk(x: object) -> None:
        nonlocal gone
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and x.endswith(".json"):
            rel = x.removeprefix(LOGS + "/")
            if not (base / LOGS / rel).exists():
                gone += 1
    walk(index)
    return gone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", type=int, default=6000)
    ap.add_argument("--expired", type=int, default=2000)
    ap.add_argument("--strings", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="mnic-bench-tl-", dir=a.dir))
    try:
        tmpl = top / "template"
        make_install(tmpl, a.logs, a.expired, a.strings)
        size = (tmpl / PROJECT / LOGS / "index.json").stat().st_size
        print(f"{a.logs} logs, {a.expired} expired, index.json {size / 1e6:.1f} MB "
              f"(~{a.strings} strings), {a.runs} runs")
        times: dict[str, list[float]] = {"recipe": [], "mnic": []}
        left: dict[str, int] = {}
        for _ in range(a.runs):
            for how in ("recipe", "mnic"):
                root = top / how
                shutil.rmtree(root, ignore_errors=True)
                shutil.copytree(tmpl, root, symlinks=True)
                for d in ("etc/mnic-ops", "var/lib", "proc", "sys"):
                    (root / d).mkdir(parents=True, exist_ok=True)
                (root / "etc/mnic-ops/config.toml").write_text(
                    f'projects = ["/{PROJECT}"]\nsearch_paths = []\n')
                base = root / PROJECT
                if how == "recipe":
                    argv = ["find", str(base / LOGS), "-name", "*.json", "-mtime",
                            f"+{RETENTION}", "-delete"]
                    env = None
                else:
                    argv = [sys.executable, "-m", "mnic_ops", "--root", str(root), "clean",
                            "--only", "expire"]
                    env = {**os.environ, "PYTHONPATH": str(REPO)}
                t0 = time.perf_counter()
                r = subprocess.run(argv, capture_output=True, text=True, env=env)
                times[how].append(time.perf_counter() - t0)
                if r.returncode != 0:
                    print(r.stdout[-2000:], r.stderr[-2000:])
                    return 1
                left[how] = stale(base)
        rec, mn = statistics.median(times["recipe"]), statistics.median(times["mnic"])
        print(f"recipe (find -delete): {rec:.2f} s, index strings naming a deleted log "
              f"afterwards: {left['recipe']}")
        print(f"mnic-ops clean --only expire: {mn:.2f} s, index strings naming a deleted "
              f"log afterwards: {left['mnic']}")
        print(f"ratio mnic/recipe: {mn / rec:.1f}x")
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
