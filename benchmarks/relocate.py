#!/usr/bin/env python3
"""`mnic-ops relocate` (verified copy, fsync, read-back, atomic swap) vs the shell
recipe it replaces, `cp -a SRC DST && rm -rf SRC` (no verification, no flush), moving
1 GB in 20k files from one ext4 filesystem to another.

Both filesystems are ext4 images on loop devices (one marked rotational, one not)
mounted in a private mount namespace; both are unmounted and mounted again before
every timed run so that each starts with cold filesystem caches. The recipe is timed
twice: as typed, and followed by `sync` (what mnic-ops guarantees: the data is on the
disk before the original goes). Goal (issue 4): mnic-ops <= 1.5x `cp -a` + `rm -rf`.

Usage (root): python benchmarks/relocate.py [--runs 3] [--mb 1024] [--files 20000]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


class Loop:
    def __init__(self, img: Path, mnt: Path, size_mb: int, rotational: bool) -> None:
        with open(img, "wb") as fh:
            fh.truncate(size_mb << 20)
        sh("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0",
           str(img))
        self.dev = sh("losetup", "--find", "--show", str(img))
        Path(f"/sys/block/{os.path.basename(self.dev)}/queue/rotational").write_text(
            "1" if rotational else "0")
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        sh("mount", self.dev, str(mnt))

    def cold(self) -> None:
        """Unmount and mount again: nothing of this filesystem stays in the page cache."""
        sh("umount", str(self.mnt))
        sh("mount", self.dev, str(self.mnt))

    def close(self) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)


def make_data(top: Path, total_mb: int, files: int) -> None:
    r = random.Random(42)
    dirs = [top]
    for i in range(files // 200):
        d = r.choice(dirs) / f"d{i:03d}"
        d.mkdir(parents=True)
        dirs.append(d)
    # Sizes spread like session files: mostly small, a few large; sum = total_mb.
    weights = [r.lognormvariate(0, 1.2) for _ in range(files)]
    scale = (total_mb << 20) / sum(weights)
    blob = os.urandom(8 << 20)
    for i, w in enumerate(weights):
        n = int(w * scale)
        off = r.randrange(0, len(blob) - min(n, len(blob)) + 1)
        data = blob[off:off + n] if n <= len(blob) else (blob * (n // len(blob) + 1))[:n]
        (r.choice(dirs) / f"SESSION_{i:05d}.md").write_bytes(data)


CPU: dict[str, list[float]] = {}


def timed(name: str, argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time; the CPU time the command used (user + system) goes to CPU[name]."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(name, []).append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=20000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    if os.environ.get("_MNIC_BENCH_NS") != "1":
        env = {**os.environ, "_MNIC_BENCH_NS": "1"}
        return subprocess.run(["unshare", "--mount", "--propagation", "private",
                               sys.executable, *sys.argv], env=env).returncode

    tmp = Path(tempfile.mkdtemp(prefix="mnic-bench-relocate-"))
    loops: list[Loop] = []
    try:
        var = tmp / "var"
        (var / "lib").mkdir(parents=True)
        (var / "log").mkdir()
        sh("mount", "--bind", str(var), "/var")  # journal and log stay in the namespace
        img_mb = args.mb * 3 + 512
        hdd = Loop(tmp / "hdd.img", tmp / "hdd", img_mb, rotational=True)
        loops.append(hdd)
        ssd = Loop(tmp / "ssd.img", tmp / "ssd", img_mb, rotational=False)
        loops.append(ssd)
        proj = hdd.mnt / "home" / "alice" / "proj"
        (proj / ".claude" / "agents").mkdir(parents=True)
        (proj / ".ai-tools").mkdir()
        src = proj / "project_archive" / "sessions"
        print(f"making {args.mb} MB in {args.files} files ...", file=sys.stderr)
        make_data(src, args.mb, args.files)
        cfg = tmp / "config.toml"
        cfg.write_text(f'projects = ["{proj}"]\nsearch_paths = []\n[relocate]\n'
                       'kinds = ["sessions"]\n')
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        mnic = [sys.executable, "-m", "mnic_ops", "--config", str(cfg), "relocate",
                "--to", str(ssd.mnt / "mnic")]
        dst = ssd.mnt / "cp-sessions"
        res: dict[str, list[float]] = {"mnic-ops relocate": [], "cp -a && rm -rf": [],
                                       "cp -a && sync && rm -rf && sync": []}

        def cold() -> None:
            os.sync()
            hdd.cold()
            ssd.cold()

        for run in range(args.runs):
            cold()
            res["mnic-ops relocate"].append(timed("mnic-ops relocate", mnic, env))
            subprocess.run([*mnic, "--undo"], check=True, env=env, stdout=subprocess.DEVNULL)
            cold()
            res["cp -a && rm -rf"].append(timed(
                "cp -a && rm -rf", ["sh", "-c", f"cp -a '{src}' '{dst}' && rm -rf '{src}'"]))
            shutil.move(str(dst), str(src))  # restore (different fs: copies back)
            cold()
            res["cp -a && sync && rm -rf && sync"].append(timed(
                "cp -a && sync && rm -rf && sync",
                ["sh", "-c", f"cp -a '{src}' '{dst}' && sync && rm -rf '{src}' && sync"]))
            shutil.move(str(dst), str(src))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()),
                  file=sys.stderr)
        med = {k: statistics.median(v) for k, v in res.items()}
        base = med["mnic-ops relocate"]
        print(f"{args.mb} MB in {args.files} files, ext4 -> ext4 on loop devices, "
              f"median of {args.runs}")
        print(f"{'command':<34} {'median s':>9} {'mnic-ops / this':>16} {'CPU s':>7}")
        for k, v in med.items():
            print(f"{k:<34} {v:>9.2f} {base / v:>15.2f}x "
                  f"{statistics.median(CPU[k]):>7.2f}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} "
              f"({os.cpu_count()} CPUs)")
        ratio = base / med["cp -a && rm -rf"]
        print(f"ratio mnic-ops / (cp -a && rm -rf) = {ratio:.2f} (goal <= 1.5): "
              f"{'met' if ratio <= 1.5 else 'NOT met'}")
        return 0
    finally:
        for lp in reversed(loops):
            lp.close()
        subprocess.run(["umount", "/var"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
