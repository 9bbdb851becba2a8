"""Shared by the clean and cron tests: a framework install with aged data, and checks
that nothing was lost."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import time
from pathlib import Path

PROJECT = "/home/alice/proj"
DAY = 86400


def make_project(root: Path, *, files: int = 40, seed: int = 1, age_days: float = 10,
                 host_path: str = PROJECT) -> dict[str, bytes]:
    """A per-project install under ``root`` with ``files`` aged JSON files spread over the
    data folders (plus names the framework reads back). Returns {host path: bytes} of
    every file that must survive (as itself or as a .gz)."""
    rnd = random.Random(seed)
    base = root / host_path.lstrip("/")
    for d in (".claude/agents/core", ".ai-tools", ".claude/config",
              "project_archive/sessions", ".claude/checkpoints/manual",
              ".ai-tools/checkpoint/storage/metadata", ".claude/thinking-logs/core/arch",
              ".ai-tools/model-config/data/daily"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / ".claude/agents/core/a.md").write_text("# agent\n")
    dirs = ["project_archive/sessions", ".claude/checkpoints/manual",
            ".ai-tools/checkpoint/storage/metadata", ".claude/thinking-logs/core/arch",
            ".ai-tools/model-config/data/daily"]
    out: dict[str, bytes] = {}
    old = time.time() - age_days * DAY
    for i in range(files):
        d = dirs[i % len(dirs)]
        size = rnd.choice([1500, 3000, 4000, 12000, 25000])
        line = f'{{"i": {i}, "agent": "qa-engineer", "v": {rnd.random():.6f}}}\n'.encode()
        data = (line * (size // len(line) + 1))[:size]
        rel = f"{d}/f{i:05d}.json"
        p = base / rel
        p.write_bytes(data)
        os.utime(p, (old, old))
        out[f"{host_path}/{rel}"] = data
    for rel in ("project_archive/sessions/SESSION_CURRENT.md",
                ".ai-tools/checkpoint/storage/checkpoint_index.json",
                ".ai-tools/checkpoint/storage/agent_coordination.json",
                ".claude/thinking-logs/index.json",
                ".ai-tools/model-config/data/current_session.json"):
        p = base / rel
        p.write_bytes(b'{"protected": true}\n')
        os.utime(p, (old, old))
        out[f"{host_path}/{rel}"] = p.read_bytes()
    return out


def write_config(root: Path, extra: str = "", host_path: str = PROJECT) -> Path:
    p = root / "etc/mnic-ops/config.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f'projects = ["{host_path}"]\nsearch_paths = []\n{extra}')
    return p


def content_of(root: Path, host_path: str) -> tuple[bytes | None, bytes | None]:
    """(the file's bytes, its .gz's decompressed bytes); None where absent. A .gz that
    does not decompress raises."""
    p = root / host_path.lstrip("/")
    plain = p.read_bytes() if p.exists() else None
    gz = Path(str(p) + ".gz")
    packed = gzip.decompress(gz.read_bytes()) if gz.exists() else None
    return plain, packed


def assert_nothing_lost(root: Path, files: dict[str, bytes]) -> None:
    for host, data in files.items():
        plain, packed = content_of(root, host)
        assert plain is not None or packed is not None, f"{host}: lost"
        if plain is not None:
            assert plain == data, f"{host}: changed"
        if packed is not None:
            assert packed == data, f"{host}.gz: differs from the original"


def snapshot(path: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry below ``path`` (not following links): kind/hash, mode, mtime."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.islink(p):
                what = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                what = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                what = "other"
            out[os.path.relpath(p, path)] = (what, st.st_mode, st.st_mtime_ns)
    return out
