"""Shared by the clean and cron tests: a framework install with aged data, and checks
that nothing was lost."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import time
from pathlib import Path

PROJECT = "/home/alice/proj"
DAY = 86400


# Data folders where the built-in policy compresses aged *.json: the session folders,
# the 3.3 checkpoint folder, and thinking logs (their config below declares it). The
# framework's checkpoint store and cost records are read back by name: never compressed.
AGED_DIRS = ["project_archive/sessions", ".claude/checkpoints/manual", ".claude/sessions",
             ".claude/thinking-logs/core/arch", ".claude/checkpoints/agent_execution"]
# What the framework writes and reads back by name, shaped as it writes it.
EMPTY_INDEX = {"version": "3.7.0", "checkpoints": {}, "categories": {}, "tags": {},
               "timeline": []}
THINKING_CONFIG = {"logging": {"enabled": True, "storage_path": ".claude/thinking-logs/",
                               "retention_days": 90, "compression": "gzip_after_7_days"}}


def make_project(root: Path, *, files: int = 40, seed: int = 1, age_days: float = 10,
                 host_path: str = PROJECT) -> dict[str, bytes]:
    """A per-project install under ``root`` with ``files`` aged JSON files spread over the
    data folders the built-in policy compresses (plus names the framework reads back,
    shaped as it writes them). Returns {host path: bytes} of every file that must
    survive (as itself or as a .gz)."""
    rnd = random.Random(seed)
    base = root / host_path.lstrip("/")
    for d in (".claude/agents/core", ".ai-tools", ".claude/config",
              ".ai-tools/checkpoint/storage/metadata", ".ai-tools/model-config/data/daily",
              *AGED_DIRS):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / ".claude/agents/core/a.md").write_text("# agent\n")
    (base / ".claude/config/extended-thinking-config.json").write_text(
        json.dumps(THINKING_CONFIG, indent=2))
    out: dict[str, bytes] = {}
    old = time.time() - age_days * DAY
    for i in range(files):
        d = AGED_DIRS[i % len(AGED_DIRS)]
        size = rnd.choice([1500, 3000, 4000, 12000, 25000])
        line = f'{{"i": {i}, "agent": "qa-engineer", "v": {rnd.random():.6f}}}\n'.encode()
        data = (line * (size // len(line) + 1))[:size]
        rel = f"{d}/f{i:05d}.json"
        p = base / rel
        p.write_bytes(data)
        os.utime(p, (old, old))
        out[f"{host_path}/{rel}"] = data
    for rel, content in (
            ("project_archive/sessions/SESSION_CURRENT.md", b"# current session\n"),
            (".ai-tools/checkpoint/storage/checkpoint_index.json",
             json.dumps(EMPTY_INDEX, indent=2).encode()),
            (".ai-tools/checkpoint/storage/agent_coordination.json",
             b'{"version": "3.7.0", "agent_states": {}}'),
            (".claude/thinking-logs/index.json", b'{"logs": []}'),
            (".ai-tools/model-config/data/current_session.json",
             b'{"record_count": 0, "records": []}')):
        p = base / rel
        p.write_bytes(content)
        os.utime(p, (old, old))
        out[f"{host_path}/{rel}"] = content
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
