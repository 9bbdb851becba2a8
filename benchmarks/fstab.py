#!/usr/bin/env python3
"""Median wall time of `mnic-ops fstab` (propose: parse, plan, findmnt --verify of the
current file and of the candidate, diff) against the guide's shell recipe (`sed` on the
options, then `findmnt --verify` so that the comparison is fair), and the parser alone
against libmount (`findmnt --tab-file -J`) on a 5000-line file, with the ratios.

Usage: python benchmarks/fstab.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mnic_ops.facts import fstabfile  # noqa: E402

FSTAB = (REPO / "tests/fixtures/fstab/framework-ssd-guide.fstab").read_text()


def once(argv: list[str] | str, shell: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(argv, shell=shell, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def big_fstab(n: int) -> str:
    lines = []
    for i in range(n):
        if i % 5 == 0:
            lines.append(f"# disk {i}")
        lines.append(f"UUID=0a1b2c3d-0000-4000-8000-{i:012d}  /srv/d{i}\\040x  ext4  "
                     f"defaults,relatime,x-systemd.device-timeout=10s  0  2")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    if not shutil.which("findmnt"):
        print("findmnt missing (util-linux)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "host"
        (root / "etc").mkdir(parents=True)
        (root / "etc/fstab").write_text(FSTAB)
        mnic = shutil.which("mnic-ops")
        base = [mnic] if mnic else [sys.executable, "-m", "mnic_ops"]
        cands: dict[str, list[str] | str] = {
            "mnic-ops fstab (propose)": [*base, "--root", str(root), "fstab",
                                         "--mount-point", "/mnt/ssd"],
            "sed + findmnt --verify": (
                f"sed -e '/ \\/mnt\\/ssd /s/defaults/defaults,noatime/' {root}/etc/fstab "
                f"> {tmp}/new && findmnt --verify --tab-file {tmp}/new"),
        }
        results: dict[str, list[float]] = {k: [] for k in cands}
        for _ in range(args.runs):  # alternate so that load affects both alike
            for name, argv in cands.items():
                results[name].append(once(argv, shell=isinstance(argv, str)))
        med = {k: statistics.median(v) for k, v in results.items()}
        ref = med["mnic-ops fstab (propose)"]
        print(f"{'command':<32} {'median ms':>10} {'vs mnic-ops':>12}")
        for name, m in med.items():
            print(f"{name:<32} {m * 1000:>10.1f} {m / ref:>11.2f}x")

        big = Path(tmp) / "big.fstab"
        text = big_fstab(5000)
        big.write_text(text)
        py: list[float] = []
        lm: list[float] = []
        for _ in range(args.runs):
            t = time.perf_counter()
            parsed = fstabfile.parse(text)
            assert parsed.render() == text
            py.append(time.perf_counter() - t)
            lm.append(once(["findmnt", "--tab-file", str(big), "-J"]))
        p, m = statistics.median(py), statistics.median(lm)
        print(f"parse+render 5000 entries: mnic-ops {p * 1000:.1f} ms, "
              f"findmnt --tab-file -J {m * 1000:.1f} ms ({p / m:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
