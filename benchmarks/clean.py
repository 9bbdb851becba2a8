#!/usr/bin/env python3
"""`mnic-ops clean` vs the guide's recipe it replaces, on a generated install.

Tree: FILES aged files with the framework's size mix (about 70 % checkpoints and
thinking logs of 1-4 KB, 28 % session files of 10-30 KB, 2 % over 100 KB), all in folders
whose files mnic-ops compresses (the checkpoint store and daily cost records are read
back by name by the framework and are never compressed: not part of the comparison;
the install's extended-thinking-config.json declares gzip_after_7_days).
Compared, alternating round by round on fresh copies of the tree (the copy is not timed):

  guide   find P -name '*.json' -mtime +7 -exec gzip {} \\;
  xargs   find P -name '*.json' -mtime +7 -print0 | xargs -0 -P2 gzip
  mnic    mnic-ops clean --only compress   (lock, no-follow walk, lease, verify, syncfs)

Prints median wall time, speed-up over the guide, total compressed size (and vs gzip -6
of the same files), then peak RSS of a pass over --rss-small and --rss-large files.
Goal (issue 6): mnic no slower than xargs -P2 at a size within 10 % of gzip -6 (about 6x
the guide), 10x the guide if reachable; peak RSS at 100k files <= 1.2x that at 1k.

Usage: python benchmarks/clean.py [--files 20000] [--runs 5] [--rss-small 1000]
       [--rss-large 100000] [--no-rss] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = "home/alice/proj"
DIRS_SMALL = [".claude/checkpoints/manual", ".claude/thinking-logs/core/arch",
              ".claude/thinking-logs/enterprise/sre", ".claude/checkpoints/agent_execution"]
DIRS_MID = ["project_archive/sessions", ".claude/sessions"]
WORDS = [
    "agent", "decision", "checkpoint", "quality", "gate", "confidence", "architecture",
    "latency", "budget", "session", "context", "rollback", "semantic", "model", "profile",
    "token", "cost", "worker", "queue", "retry", "microservices", "serverless", "trade-off",
    "rationale", "alternative", "risk", "mitigation",
]


_POOL: list[str] = []


def doc(rnd: random.Random, size: int, i: int) -> bytes:
    """A JSON document like the framework writes: nested keys, prose, ids, numbers
    (entries drawn from a pool of 4000 generated ones, with fresh ids and scores)."""
    if not _POOL:
        for _ in range(4000):
            text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 18)))
            _POOL.append(json.dumps({
                "agent": rnd.choice(["software-architect", "qa-engineer",
                                     "backend-engineer", "sre-engineer"]),
                "timestamp": f"2025-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}T"
                             f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00Z",
                "summary": text}, indent=2))
    parts = [f'{{\n  "checkpoint_id": "cp_{i:08d}",\n  "version": "3.10.0",\n  "entries": [']
    n = len(parts[0])
    while n < size:
        e = rnd.choice(_POOL)[:-2] + (f',\n  "id": "cp_{rnd.getrandbits(32):08x}",'
                                     f'\n  "confidence": {rnd.random():.3f}\n}}')
        parts.append(e)
        n += len(e) + 2
    return (",\n".join(parts) + "]\n}\n").encode()


def make_tree(root: Path, files: int, seed: int = 7, small_only: bool = False) -> int:
    rnd = random.Random(seed)
    base = root / PROJECT
    for d in (".claude/agents/core", ".ai-tools", ".claude/config", *DIRS_SMALL, *DIRS_MID):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / ".claude/config/extended-thinking-config.json").write_text(json.dumps(
        {"logging": {"retention_days": 90, "compression": "gzip_after_7_days"}}))
    old = time.time() - 10 * 86400
    total = 0
    per_dir: dict[str, int] = {}
    for i in range(files):
        r = rnd.random()
        if small_only or r < 0.70:
            d, size = rnd.choice(DIRS_SMALL), rnd.randint(1000, 4000)
        elif r < 0.98:
            d, size = rnd.choice(DIRS_MID), rnd.randint(10_000, 30_000)
        else:
            d, size = rnd.choice(DIRS_MID), rnd.randint(100_000, 300_000)
        # the framework spreads files over per-agent / per-day folders
        k = per_dir[d] = per_dir.get(d, 0) + 1
        sub = base / d / f"b{k // 500:03d}"
        sub.mkdir(exist_ok=True)
        p = sub / f"f{i:06d}.json"
        data = doc(rnd, size, i)
        p.write_bytes(data)
        os.utime(p, (old, old))
        total += len(data)
    cfg = root / "etc/mnic-ops/config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'projects = ["/{PROJECT}"]\nsearch_paths = []\n[clean]\ntextfile = ""\n')
    return total


def mnic_argv(root: Path) -> list[str]:
    exe = shutil.which("mnic-ops")
    head = [exe] if exe else [sys.executable, "-m", "mnic_ops"]
    return [*head, "--root", str(root), "clean", "--only", "compress"]


def data_dirs(r: Path) -> str:
    """The data folders of the tree, for find (not the install's .claude/config/)."""
    return " ".join(f"'{r / PROJECT / d}'" for d in (".claude/checkpoints",
                                                    ".claude/thinking-logs",
                                                    "project_archive/sessions",
                                                    ".claude/sessions"))


COMMANDS = {
    "guide (find -exec gzip)": lambda r: ["sh", "-c", f"find {data_dirs(r)} -name '*.json' "
                                          "-mtime +7 -exec gzip {} \\;"],
    "xargs -P2 gzip": lambda r: ["sh", "-c", f"find {data_dirs(r)} -name '*.json' -mtime +7 "
                                 "-print0 | xargs -0 -P2 gzip"],
    "mnic-ops clean": mnic_argv,
}


def gz_size(root: Path) -> tuple[int, int]:
    """(total .gz bytes, .json left) below the project."""
    size = left = 0
    for dirpath, _, names in os.walk(root / PROJECT):
        if "/.claude/config" in dirpath:
            continue
        for n in names:
            if n.endswith(".gz"):
                size += os.path.getsize(os.path.join(dirpath, n))
            elif n.endswith(".json"):
                left += 1
    return size, left


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(largest single process, largest sum over the process tree) in MiB."""
    import psutil

    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    proc = psutil.Process(p.pid)
    peak_sum = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_sum
        while not stop.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                peak_sum = max(peak_sum, sum(x.memory_info().rss for x in procs))
            except psutil.Error:
                pass
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    _, _, ru = os.wait4(p.pid, 0)
    stop.set()
    t.join()
    return ru.ru_maxrss / 1024, peak_sum / 2**20


def on_loop(size: str, where: str) -> int:
    """Re-run this script inside ``unshare --mount`` on a new ext4 loop filesystem."""
    img = Path(tempfile.mkdtemp(prefix="mnic-bench-img-", dir=where))
    try:
        subprocess.run(["truncate", "-s", size, str(img / "fs.img")], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img / "fs.img")], check=True)
        (img / "mnt").mkdir()
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--loop")
        del argv[i:i + 2]
        script = (f"mount -o loop {img / 'fs.img'} {img / 'mnt'} && "
                  f"exec {sys.executable} {Path(__file__).resolve()} "
                  + " ".join(argv) + f" --dir {img / 'mnt'}")
        print(f"on a {size} ext4 loop filesystem (private mount namespace)", flush=True)
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script], env={**os.environ, "MNIC_BENCH_INNER": "1"}).returncode
    finally:
        shutil.rmtree(img, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rss-small", type=int, default=1_000)
    ap.add_argument("--rss-large", type=int, default=100_000)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--loop", metavar="SIZE", help="run on a fresh ext4 filesystem of SIZE "
                    "(e.g. 4G) on a loop device in a private mount namespace, so that the "
                    "journal and syncfs are not shared with the rest of the machine")
    args = ap.parse_args()
    if args.loop and not os.environ.get("MNIC_BENCH_INNER"):
        return on_loop(args.loop, args.dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    work = Path(tempfile.mkdtemp(prefix="mnic-bench-", dir=args.dir))
    try:
        tpl = work / "template"
        t0 = time.monotonic()
        raw = make_tree(tpl, args.files)
        print(f"tree: {args.files} aged files, {raw / 2**20:.1f} MiB "
              f"(generated in {time.monotonic() - t0:.1f}s)")
        times: dict[str, list[float]] = {k: [] for k in COMMANDS}
        sizes: dict[str, int] = {}
        for run in range(args.runs):
            for name, argv_of in COMMANDS.items():
                r = work / "run"
                shutil.rmtree(r, ignore_errors=True)
                shutil.copytree(tpl, r, symlinks=True)
                subprocess.run(["sync"], check=False)
                t = time.perf_counter()
                res = subprocess.run(argv_of(r), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, check=False)
                times[name].append(time.perf_counter() - t)
                if res.returncode != 0:
                    print(f"{name}: exit {res.returncode}: {res.stderr[-500:]!r}")
                size, left = gz_size(r)
                if left and name.startswith("mnic"):
                    print(f"{name}: {left} .json left uncompressed (run {run})")
                sizes[name] = size
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["guide (find -exec gzip)"]
        ref = sizes["guide (find -exec gzip)"]  # gzip -6
        print(f"\n{'command':<26} {'median s':>9} {'vs guide':>9} {'gz MiB':>8} "
              f"{'vs gzip -6':>10}   runs: {args.runs}")
        for name, m in med.items():
            print(f"{name:<26} {m:>9.2f} {base / m:>8.1f}x {sizes[name] / 2**20:>8.2f} "
                  f"{sizes[name] / ref:>9.3f}x")
        m, x = med["mnic-ops clean"], med["xargs -P2 gzip"]
        print(f"mnic-ops vs xargs -P2: {x / m:.2f}x "
              f"({'no slower' if m <= x else 'slower'}); size within 10% of gzip -6: "
              f"{'yes' if sizes['mnic-ops clean'] <= 1.10 * ref else 'NO'}")
        shutil.rmtree(work / "run", ignore_errors=True)
        shutil.rmtree(tpl, ignore_errors=True)
        if not args.no_rss:
            print()
            rss = {}
            for n in (args.rss_small, args.rss_large):
                r = work / f"rss{n}"
                make_tree(r, n, small_only=True)
                rss[n] = peak_rss(mnic_argv(r), env)
                print(f"peak RSS over {n:>7} files: largest process {rss[n][0]:6.1f} MiB, "
                      f"whole process tree {rss[n][1]:6.1f} MiB")
                shutil.rmtree(r, ignore_errors=True)
            a, b = rss[args.rss_small], rss[args.rss_large]
            print(f"ratio {args.rss_large} / {args.rss_small}: largest process "
                  f"{b[0] / a[0]:.2f}x, tree {b[1] / a[1]:.2f}x (goal <= 1.2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
