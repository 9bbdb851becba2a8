#!/usr/bin/env python3
"""Median wall time of `mnic-ops detect` vs `tuned-adm recommend` vs
`python3 -c 'import psutil'`, in one run, with the ratios.

Goal (issue 2): faster than tuned-adm and <= 150 ms on the CI machine.
Usage: python benchmarks/detect.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time


def bench(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one run. CPU time says what the command
    costs when the machine is busy with other work and wall time is inflated."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


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
    walls: dict[str, list[float]] = {k: [] for k in cands}
    cpus: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(args.runs):
        for name, argv in cands.items():
            w, c = bench(argv)
            walls[name].append(w)
            cpus[name].append(c)
    med = {k: statistics.median(v) for k, v in walls.items()}
    cmed = {k: statistics.median(v) for k, v in cpus.items()}
    base, cbase = med["mnic-ops detect"], cmed["mnic-ops detect"]
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, "
          f"{args.runs} runs each, alternating")
    print(f"{'command':<30} {'wall ms':>9} {'ratio':>7} {'cpu ms':>8} {'ratio':>7}")
    for name in cands:
        print(f"{name:<30} {med[name] * 1000:>9.1f} {med[name] / base:>6.2f}x "
              f"{cmed[name] * 1000:>8.1f} {cmed[name] / cbase:>6.2f}x")
    tuned = [k for k in med if k.startswith("tuned")]
    ok = base <= 0.150 and all(base < med[k] for k in tuned)
    print(f"goal (wall <= 150 ms and faster than tuned-adm): {'met' if ok else 'NOT met'}"
          + ("" if ok else f" (cpu time {cbase * 1000:.0f} ms)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
