"""Shared fixtures: run the CLI in-process or as a subprocess, build fake host roots,
and skip (with the reason) tests whose kernel features this machine lacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_mnic(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             input: str | None = None, cwd: str | None = None) -> Result:
    """Run ``python -m mnic_ops ARGS`` from this checkout in a fresh process."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-m", "mnic_ops", *args], capture_output=True,
                       text=True, env=e, timeout=timeout, input=input, cwd=cwd)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def mnic() -> Callable[..., Result]:
    return run_mnic


def can(cap: str) -> str | None:
    """None when the machine has the capability, else the reason it does not."""
    if os.geteuid() != 0:
        return "needs root"
    if cap == "root":
        return None
    if cap == "unshare":
        if not shutil.which("unshare"):
            return "unshare not installed"
        r = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
        return None if r.returncode == 0 else "unshare --mount fails: " + r.stderr.decode()
    if cap == "loop":
        if not shutil.which("losetup"):
            return "losetup not installed"
        if not os.path.exists("/dev/loop-control"):
            return "no /dev/loop-control"
        return None
    if cap == "cron":
        return None if shutil.which("cron") else "cron not installed (apt-get install cron)"
    raise ValueError(cap)


def require(*caps: str) -> None:
    for c in caps:
        why = can(c)
        if why:
            pytest.skip(why)


def write_tree(base: Path, files: dict[str, str | bytes]) -> Path:
    """Create files (and their folders) under ``base`` from a {relpath: content} map."""
    for rel, content in files.items():
        p = base / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return base


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """An empty host root with the usual top-level folders."""
    root = tmp_path / "host"
    for d in ("etc", "proc", "sys", "run", "var/lib", "home", "opt", "srv", "root"):
        (root / d).mkdir(parents=True)
    return root


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/infra is a testinfra suite for a provisioned host: collected only when
    pointed at one with --hosts (tests/capabilities/test_provision_host.py does that in CI)."""
    if "infra" in collection_path.parts and collection_path.parent.name != "fixtures" \
            and not config.getoption("hosts", default=None):
        return True
    return None
