#!/usr/bin/env python3
"""Declared checkpoint retention (`mnic-ops clean --only expire`) vs the recipe it replaces.

Store: N checkpoints shaped as the framework's CheckpointEngine writes them (index with
categories and timeline, metadata/<id>.json with mtimes at their recorded times), half
of them "manual" checkpoints older than the 90 days its config declares. Compared, round
by round on fresh copies of the store (the copy is not timed):

  recipe  find STORE/metadata -name '*.json' -mtime +90 -delete
          (the guide's find -delete line, pointed at the store: the files go, the index
          keeps listing them)
  mnic    mnic-ops clean --only expire  (process start, lock, holders check, journal,
          atomic index rewrite, verified deletions)

Prints median wall time, the ratio, and how many index entries point at missing files
afterwards (the recipe's cost: every one is a checkpoint the framework lists and cannot
read).

Usage: python benchmarks/retention.py [--checkpoints 10000] [--runs 3] [--dir /var/tmp]
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
STORE = ".ai-tools/checkpoint/storage"
DAY = 86400.0


def make_store(root: Path, n: int) -> None:
    base = root / PROJECT
    meta = base / STORE / "metadata"
    meta.mkdir(parents=True)
    (base / ".claude/agents").mkdir(parents=True)
    (base / ".claude/config").mkdir(parents=True)
    index: dict[str, object] = {"version": "3.7.0", "checkpoints": {}, "categories": {},
                                "tags": {}, "timeline": []}
    cps = index["checkpoints"]
    assert isinstance(cps, dict)
    now = time.time()
    for i in range(n):
        age = 91 + i % 200 if i % 2 else i % 80
        t = now - age * DAY
        stamp = dt.datetime.fromtimestamp(t)
        cid = f"cp_{stamp:%Y%m%d_%H%M%S}_{i:08x}"
        ts = stamp.isoformat()
        cps[cid] = {"timestamp": ts, "level": "manual", "category": "unknown",
                    "label": f"cp {i}", "tags": []}
        index["categories"].setdefault("unknown", []).append(cid)  # type: ignore[union-attr]
        index["timeline"].append({"checkpoint_id": cid, "timestamp": ts,  # type: ignore[union-attr]
                                  "label": f"cp {i}"})
        p = meta / f"{cid}.json"
        p.write_text(json.dumps({"checkpoint_id": cid, "timestamp": ts, "level": "manual",
                                 "label": f"cp {i}", "searchable_text": "x" * 300}, indent=2))
        os.utime(p, (t, t))
    index["timeline"].sort(key=lambda e: e["timestamp"], reverse=True)  # type: ignore[union-attr]
    (base / STORE / "checkpoint_index.json").write_text(json.dumps(index, indent=2))
    (base / ".claude/config/checkpoint-config.json").write_text(json.dumps(
        {"storage": {"base_path": STORE},
         "checkpointLevels": {"manual": {"retention_days": 90, "retention_count": 1000000}}},
        indent=2))
    cfg = root / "etc/mnic-ops/config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'projects = ["/{PROJECT}"]\nsearch_paths = []\n[clean]\ntextfile = ""\n')
    (root / "var/lib").mkdir(parents=True)


def dangling(root: Path) -> tuple[int, int]:
    """(index entries without their metadata file, entries left)."""
    store = root / PROJECT / STORE
    idx = json.loads((store / "checkpoint_index.json").read_text())
    have = {p.name[:-5] for p in (store / "metadata").iterdir()}
    return sum(1 for c in idx["checkpoints"] if c not in have), len(idx["checkpoints"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mnic-bench-ret-", dir=args.dir))
    try:
        pristine = work / "pristine"
        t0 = time.monotonic()
        make_store(pristine, args.checkpoints)
        print(f"store: {args.checkpoints} checkpoints, half past their 90 days "
              f"(generated in {time.monotonic() - t0:.1f}s)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
        env["PYTHONPATH"] = str(REPO)
        exe = shutil.which("mnic-ops")
        head = [exe] if exe else [sys.executable, "-m", "mnic_ops"]
        commands = {
            "recipe (find -mtime +90 -delete)": lambda r: [
                "find", str(r / PROJECT / STORE / "metadata"), "-name", "*.json",
                "-mtime", "+90", "-delete"],
            "mnic-ops clean --only expire": lambda r: [
                *head, "--root", str(r), "clean", "--only", "expire"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        after: dict[str, tuple[int, int]] = {}
        for _ in range(args.runs):
            for name, argv in commands.items():
                root = work / "run"
                shutil.rmtree(root, ignore_errors=True)
                shutil.copytree(pristine, root)
                t = time.monotonic()
                r = subprocess.run(argv(root), env=env, capture_output=True, text=True)
                times[name].append(time.monotonic() - t)
                if r.returncode != 0:
                    print(f"{name}: exit {r.returncode}: {r.stderr[-500:]}")
                    return 1
                after[name] = dangling(root)
        print(f"\n{'command':34} {'median s':>9} {'index entries':>14} {'unreadable':>11}")
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in commands:
            bad, left = after[name]
            print(f"{name:34} {med[name]:9.2f} {left:14d} {bad:11d}")
        a, b = med["mnic-ops clean --only expire"], med["recipe (find -mtime +90 -delete)"]
        print(f"\nmnic-ops / recipe time: {a / b:.1f}x (the recipe leaves "
              f"{after['recipe (find -mtime +90 -delete)'][0]} listed checkpoints the "
              f"framework cannot read; mnic-ops {after['mnic-ops clean --only expire'][0]})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
