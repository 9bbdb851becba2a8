#!/usr/bin/env python3
"""`mnic-ops status` vs the commands whose picture it puts on one screen.

Before `status` an admin ran, for the same picture: `verify` (drift), `doctor` (which
measures the installs), `cron show`, `watch --check`, `projects` (sizes) and `undo
--list`. Both are timed on the same provisioned `--root` host tree: INSTALLS installs of
FILES files each (half of them gzip, as after a few clean passes), their sessions and
checkpoints relocated to the SSD folder by `provision`, alternating round by round.

Then the bound: one install with --big files (more than status's 500,000-file budget):
status's wall time stays near its 2 s sizing budget plus the rest, and its sizes say
they are lower bounds; `du -s` of the same folders is timed beside it.

Usage: python benchmarks/status.py [--installs 20] [--files 2500] [--runs 5]
       [--big 0] [--dir /var/tmp]
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

from tests.cleanhelp import make_project  # noqa: E402
from tests.hosttree import PROJECT, build_host  # noqa: E402

DIRS = ["project_archive/sessions", ".claude/checkpoints/manual", ".claude/sessions",
        ".claude/thinking-logs/core/arch", ".ai-tools/checkpoint/storage/metadata"]
OLD_PICTURE = [["verify"], ["doctor"], ["cron", "show"], ["watch", "--check"],
               ["projects"], ["undo", "--list"]]


def mnic(root: Path, *args: str) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "mnic_ops", "--root", str(root), *args],
                       capture_output=True, text=True, env=env)
    return time.perf_counter() - t, p.returncode, p.stdout


def fill(root: Path, host_path: str, files: int) -> None:
    base = root / host_path.lstrip("/")
    for i in range(files):
        d = base / DIRS[i % len(DIRS)] / f"b{i // 1000}"
        if i % 1000 < len(DIRS):
            d.mkdir(parents=True, exist_ok=True)
        (d / (f"f{i}.json.gz" if i % 2 else f"f{i}.json")).write_bytes(b"{}" * (i % 200))


def build(top: Path, installs: int, files: int) -> Path:
    """The host (with its own install, alice's) plus INSTALLS more, provisioned."""
    root = build_host(top, files=2)
    for n in range(installs - 1):
        make_project(root, files=2, host_path=f"/home/user{n:03d}/app")
    for p in [PROJECT] + [f"/home/user{n:03d}/app" for n in range(installs - 1)]:
        fill(root, p, files)
    _took, rc, out = mnic(root, "provision")
    assert rc == 0, out
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--installs", type=int, default=20)
    ap.add_argument("--files", type=int, default=2500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--big", type=int, default=0, help="files in one install (bound)")
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="mnic-bench-status-") as tmp:
        root = build(Path(tmp) / "host", a.installs, a.files)
        st, old = [], []
        for _ in range(a.runs):
            took, rc, out = mnic(root, "status", "--json")
            doc = json.loads(out)
            assert doc["installs"]["sizes"]["spent"] is False, doc["installs"]["sizes"]
            st.append(took)
            total = 0.0
            for cmd in OLD_PICTURE:
                took, _rc, _out = mnic(root, *cmd)
                total += took
            old.append(total)
        files = sum(i["total"]["files"] for i in doc["installs"]["items"])
        ms, mo = statistics.median(st), statistics.median(old)
        print(f"{a.installs} installs, {files} files in their data folders, "
              f"{len(doc['installs']['items'][0]['relocated'])} classes relocated each")
        print(f"  status (one screen)                 {ms:7.2f} s  (exit {rc})")
        print(f"  verify+doctor+cron show+watch --check+projects+undo --list "
              f"{mo:7.2f} s")
        print(f"  ratio (old picture / status)        {mo / ms:7.1f}x")
        if a.big:
            big = Path(tmp) / "big"
            build_host(big, files=2)
            fill(big, "/home/alice/proj", a.big)
            took, rc, out = mnic(big, "status", "--json")
            doc = json.loads(out)
            inst = doc["installs"]["items"][0]
            t = time.perf_counter()
            subprocess.run(["du", "-s", str(big / "home/alice/proj")], capture_output=True)
            du = time.perf_counter() - t
            print(f"one install, {a.big} files: status {took:.2f} s, counted "
                  f"{inst['total']['files']} files (complete: "
                  f"{inst['total']['complete']}); du -s {du:.2f} s")


if __name__ == "__main__":
    main()
