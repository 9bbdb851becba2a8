"""Real plain users for the adversarial tests in tests/security/: made with ``useradd``
under unique names, removed after; what they do runs with their own uid and gid and no
other group. Plain functions (no fixtures), so that every module here can use them.

    with plain_users("links", "alice", "bob") as u:
        run_as(u["alice"], ["ln", "-s", "/root", "/srv/p/.claude/checkpoints"])
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

USER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def why_no_users() -> str | None:
    """None when this machine can make real users for a test, else the reason."""
    if os.geteuid() != 0:
        return "needs root (useradd)"
    for tool in ("useradd", "userdel"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if user_python() is None:
        return "no python3 a plain user can run (/usr/bin/python3)"
    return None


def require_users() -> None:
    why = why_no_users()
    if why:
        pytest.skip(why)


def user_python() -> str | None:
    """A Python interpreter every user may run (the system one; the test's own may sit
    in root's home)."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.access(cand, os.X_OK) and _world_reachable(os.path.realpath(cand)):
            return cand
    return None


def _world_reachable(path: str) -> bool:
    p = Path(path)
    for d in [*p.parents][::-1]:
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(p).st_mode & stat.S_IXOTH)


def add_user(prefix: str) -> User:
    """``useradd`` a new plain user named ``<prefix>-<random>`` (no home, no login)."""
    name = f"{prefix}-{secrets.token_hex(3)}"[:32]
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--user-group", name], check=True,
                   capture_output=True)
    pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid)


def remove_user(user: User) -> None:
    subprocess.run(["userdel", user.name], capture_output=True)
    if shutil.which("groupdel"):
        subprocess.run(["groupdel", user.name], capture_output=True)


@contextmanager
def plain_users(branch: str, *labels: str) -> Iterator[dict[str, User]]:
    """One new user per label (``<branch>-<label>-<random>``), all removed at the end."""
    made: dict[str, User] = {}
    try:
        for label in labels:
            made[label] = add_user(f"{branch}-{label}")
        yield made
    finally:
        for u in made.values():
            remove_user(u)


def run_as(user: User, argv: Sequence[str], *, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (uid, gid, no supplementary groups, a minimal
    environment, cwd /)."""
    p = subprocess.run(list(argv), user=user.uid, group=user.gid, extra_groups=[],
                       env=USER_ENV, cwd="/", capture_output=True, text=True,
                       timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"as {user.name}: {argv} -> {p.returncode}\n{p.stdout}\n"
                             f"{p.stderr}")
    return p


def python_as(user: User, code: str, *args: str, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet as ``user`` with the system interpreter (``-I``)."""
    py = user_python()
    assert py is not None
    return run_as(user, [py, "-I", "-c", code, *args], check=check, timeout=timeout)


def spawn_as(user: User, code: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python snippet as ``user`` in the background (a racing attacker)."""
    py = user_python()
    assert py is not None
    return subprocess.Popen([py, "-I", "-c", code, *args], user=user.uid, group=user.gid,
                            extra_groups=[], env=USER_ENV, cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shared_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that every user can traverse (pytest's own tmp_path is
    root's alone). The caller removes it."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


def chown_tree(top: Path, user: User) -> None:
    """Give a whole tree (the top included, links themselves) to ``user``."""
    os.lchown(top, user.uid, user.gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, n), user.uid, user.gid)
