"""Shared by the input-side security tests (issue 15, attacks 3, 4 and 6): a real plain
user, a host tree under ``--root`` with two framework installs, running mnic-ops in a
fresh process or in this one. Plain functions (no conftest): other suites in this
package bring their own."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Result, require, run_mnic
from tests.testhost import write_project

DAY = 86400
BOB_UID = 4243  # the other install's owner: a uid only, no account needed
# The plain user cannot run the test venv's interpreter (under /root): the system one.
USER_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@dataclass
class User:
    name: str
    uid: int
    gid: int


@contextlib.contextmanager
def plain_user(role: str = "alice") -> Iterator[User]:
    """A real account (``inputs-<role>-<random>``) for the length of the block, removed
    after, whatever happened."""
    require("root")
    name = f"inputs-{role}-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell",
                    "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        import pwd

        pw = pwd.getpwnam(name)
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def as_user(user: User, code: str, *args: str) -> None:
    """Run Python ``code`` as ``user`` (real uid and gid, no supplementary groups)."""
    subprocess.run([USER_PYTHON, "-c", code, *args], user=user.uid, group=user.gid,
                   extra_groups=[], check=True, capture_output=True, timeout=120,
                   cwd="/")


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for n in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, n), uid, gid)
    os.lchown(path, uid, gid)


@contextlib.contextmanager
def host_tree() -> Iterator[Path]:
    """An empty host root that a plain user can traverse (pytest's own tmp_path lives in
    a root-only folder), removed after."""
    top = Path(tempfile.mkdtemp(prefix="mnic-inputs-"))
    os.chmod(top, 0o755)
    root = top / "host"
    try:
        for d in ("etc/cron.d", "etc/profile.d", "etc/sysctl.d", "etc/systemd/system",
                  "etc/mnic-ops", "proc", "sys", "run", "var/lib", "var/log", "home",
                  "opt", "srv", "root", "mnt"):
            (root / d).mkdir(parents=True)
        os.chmod(root / "home", 0o755)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        yield root
    finally:
        shutil.rmtree(top, ignore_errors=True)


def add_account(root: Path, name: str, uid: int, gid: int) -> None:
    with open(root / "etc/passwd", "a") as fh:
        fh.write(f"{name}:x:{uid}:{gid}::/home/{name}:/bin/sh\n")
    with open(root / "etc/group", "a") as fh:
        fh.write(f"{name}:x:{gid}:\n")


def two_installs(root: Path, alice: User) -> tuple[str, str]:
    """Host paths of alice's install (owned by the real user) and bob's (uid 4243),
    both with the framework's real config files and session files ten days old."""
    add_account(root, alice.name, alice.uid, alice.gid)
    add_account(root, "bob", BOB_UID, BOB_UID)
    paths = []
    for who, uid, gid in ((alice.name, alice.uid, alice.gid), ("bob", BOB_UID, BOB_UID)):
        home = root / "home" / who
        proj = write_project(home / "app")
        old = time.time() - 10 * DAY
        for f in (proj / "project_archive/sessions").iterdir():
            if f.name != "SESSION_CURRENT.md":
                os.utime(f, (old, old))
        chown_tree(home, uid, gid)
        os.chmod(home, 0o755)
        paths.append(f"/home/{who}/app")
    (root / "etc/mnic-ops/config.toml").write_text('search_paths = ["/home/*"]\n')
    return paths[0], paths[1]


def mnic(root: Path, *args: str, timeout: float = 300) -> Result:
    return run_mnic("--root", str(root), *args, timeout=timeout)


def mnic_inprocess(*argv: str) -> Result:
    """Run the CLI in this process (fast enough for property tests): exit code, stdout
    and stderr."""
    from mnic_ops import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def snapshot(top: Path) -> dict[str, tuple[bytes | str, int, int, int]]:
    """Every entry below ``top``: content (or link target, or "dir"), mode, uid, gid."""
    out: dict[str, tuple[bytes | str, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in [*dirnames, *filenames]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.islink(p):
                what: bytes | str = "->" + os.readlink(p)
            elif os.path.isdir(p):
                what = "dir"
            else:
                what = Path(p).read_bytes()
            out[os.path.relpath(p, top)] = (what, st.st_mode, st.st_uid, st.st_gid)
    return out
