"""A huge user file is refused, never read whole (the reviewer's finding 3 on issue 15).

``truncate -s 3G .claude/config/parallel-agents-config.json`` (a sparse file: no disk
used) made render, verify and provision read 3 GB into root's memory (MemoryError, or
3.1 GB RSS). Files below an install are read with a bound (one byte past it is a
refusal): that install fails with the file and its size, the others are rendered. The
commands run under a 1 GiB address-space limit, so that a regression fails here fast
instead of eating the machine's memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.security.inputs_support import User, as_user, host_tree, plain_user, two_installs

AGENTS = ".claude/config/parallel-agents-config.json"
LIMIT = 1 << 30


def _stats(top: Path) -> dict[str, tuple[int, int, int, int]]:
    """(size, mtime, mode, uid) of every entry: the 3 GB file is not read to compare."""
    return {str(p.relative_to(top)): (st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
            for p in top.rglob("*") if (st := p.lstat())}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _mnic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mnic_ops", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limited,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/bin"})


@pytest.fixture
def alice() -> User:
    with plain_user("alice") as u:
        yield u  # type: ignore[misc]


@pytest.mark.parametrize("command", ["render", "verify", "provision --check",
                                     "render --check"])
def test_a_sparse_3g_config_fails_that_install_only(alice: User, command: str) -> None:
    with host_tree() as root:
        a, b = two_installs(root, alice)
        big = root / a.lstrip("/") / AGENTS
        as_user(alice, "import os, sys; os.truncate(sys.argv[1], 3 << 30)", str(big))
        assert big.stat().st_size == 3 << 30
        before = _stats(root / a.lstrip("/") / ".claude/config")
        r = _mnic("--root", str(root), "--json", *command.split())
        out = r.stdout + r.stderr
        context = f"{command}: rc={r.returncode}\n{out[-2000:]}"
        assert "internal error" not in out and "MemoryError" not in out, context
        assert r.returncode == 1, context
        doc = json.loads(r.stdout)
        failed = {f["install"]: f["error"] for f in doc["failed_installs"]}
        assert b not in failed, context
        assert f"{a}/{AGENTS}: {3 << 30} bytes, more than the" in failed[a], failed
        assert _stats(root / a.lstrip("/") / ".claude/config") == before
        if command == "render":
            assert (root / b.lstrip("/") / ".claude/config/mnic-ops-performance.json").exists()
