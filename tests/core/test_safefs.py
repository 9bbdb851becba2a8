"""Safe file primitives: atomicity under kill -9, owner/mode kept, no symlink following."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mnic_ops.core import execute, safefs
from mnic_ops.core.errors import CommandError, OpsError
from tests.conftest import REPO, require


def test_atomic_write_keeps_owner_group_and_mode(tmp_path: Path) -> None:
    require("root")
    p = tmp_path / "f"
    p.write_text("old")
    os.chown(p, 4242, 4343)
    os.chmod(p, 0o640)
    safefs.atomic_write(p, "new")
    st = p.stat()
    assert p.read_text() == "new"
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4242, 4343, 0o640)
    assert [x.name for x in tmp_path.iterdir()] == ["f"]  # no temporary left


def test_atomic_write_new_file_mode(tmp_path: Path) -> None:
    p = safefs.atomic_write(tmp_path / "n", b"x", mode=0o600)
    assert p.stat().st_mode & 0o777 == 0o600


def test_atomic_write_refuses_symlink_unless_follow(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("a")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OpsError, match="symlink"):
        safefs.atomic_write(link, "b")
    assert real.read_text() == "a" and link.is_symlink()
    safefs.atomic_write(link, "c", follow=True)
    assert real.read_text() == "c" and link.is_symlink()


def test_atomic_write_refuses_non_regular(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OpsError, match="not a regular file"):
        safefs.atomic_write(tmp_path / "fifo", "x")


def test_kill_9_never_leaves_a_torn_file(tmp_path: Path) -> None:
    """A writer replacing a 4 MiB file in a loop is killed at random moments: the file
    always holds one complete version."""
    target = tmp_path / "data"
    versions = {bytes([65 + i]) * (4 << 20) for i in range(3)}
    target.write_bytes(b"A" * (4 << 20))
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from mnic_ops.core import safefs
        i = 0
        while True:
            safefs.atomic_write({str(target)!r}, bytes([65 + i % 3]) * (4 << 20))
            i += 1
    """)
    rng = random.Random(7)
    for _ in range(12):
        p = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(rng.uniform(0.15, 0.6))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert target.read_bytes() in versions
    leftovers = [x for x in tmp_path.iterdir() if safefs.is_tmp_name(x.name)]
    # temporaries may be left by the kill; they are recognisable for cleanup
    assert all(x.name.startswith(".data") for x in leftovers)


def test_copy_verified_keeps_mode_and_times(tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.write_bytes(os.urandom(100_000))
    os.chmod(src, 0o604)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_500_000_000_123_456_789))
    dst = tmp_path / "d"
    safefs.copy_verified(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o777 == 0o604
    assert dst.stat().st_mtime_ns == 1_500_000_000_123_456_789


def test_read_nofollow_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "t")
    with pytest.raises(OpsError):
        safefs.read_bytes_nofollow(tmp_path / "l")


def test_lock_is_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with safefs.locked(lock) as got:
        assert got
        code = textwrap.dedent(f"""
            import sys; sys.path.insert(0, {str(REPO)!r})
            from mnic_ops.core import safefs
            with safefs.locked({str(lock)!r}, blocking=False) as got:
                sys.exit(0 if got else 5)
        """)
        assert subprocess.run([sys.executable, "-c", code]).returncode == 5
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_execute_errors_are_clear() -> None:
    with pytest.raises(CommandError, match="command not found"):
        execute.run(["definitely-not-a-command-xyz"])
    with pytest.raises(CommandError, match=r"exited with status 3: boom"):
        execute.run(["sh", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(CommandError, match="timed out"):
        execute.run(["sleep", "5"], timeout=0.2)
    assert execute.run(["sh", "-c", "exit 4"], check=False).returncode == 4
