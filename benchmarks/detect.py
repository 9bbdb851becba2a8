#!/usr/bin/env python3
"""Median wall time of `mnic-ops detect` vs `tuned-adm recommend` vs
`python3 -c 'import psutil'`, in one run, with the ratios.

Goal (issue 2): faster than tuned-adm and <= 150 ms on the CI machine.
Usage: python benchmarks/detect.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def bench(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    mnic = shutil.which("mnic-ops")
    cands = {
        "mnic-ops detect": [mnic, "detect"] if mnic else [sys.executable, "-m", "mnic_ops",
                                                          "detect"],
        "python3 -c 'import psutil'": [sys.executable, "-c", "import psutil"],
    }
    if shutil.which("tuned-adm"):
        cands["tuned-adm recommend"] = ["tuned-adm", "recommend"]
    else:
        print("tuned-adm not installed (apt-get install tuned): skipped", file=sys.stderr)
    # alternate the commands round by round so that load affects all alike
    results: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(args.runs):
        for name, argv in cands.items():
            results[name].append(bench(argv, 1))
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med["mnic-ops detect"]
    print(f"{'command':<30} {'median ms':>10} {'vs mnic-ops':>12}")
    for name, m in med.items():
        print(f"{name:<30} {m * 1000:>10.1f} {m / base:>11.2f}x")
    ok = base <= 0.150 and all(base < m for k, m in med.items() if k.startswith("tuned"))
    print(f"goal (<=150 ms and faster than tuned-adm): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
