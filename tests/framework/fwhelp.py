"""The real framework as the client: find it, install it into a test host the way its
users do (its own copy script), run its code as a plain uid, and ask it what it reads.

The framework is used in place from ``../shared/framework`` (or ``MNIC_OPS_FRAMEWORK_DIR``
pointing at a folder holding ``v3.10.0/`` and ``v3.3.0/``, or at one checkout of the
framework); tests skip with the reason where it is absent.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Result, run_mnic

DRIVER = Path(__file__).with_name("driver.py")
DAY = 86400.0
VERSIONS = ("v3.10.0", "v3.3.0")


def framework_root() -> tuple[Path | None, str]:
    """(folder with the framework's versions, or None, and why not)."""
    env = os.environ.get("MNIC_OPS_FRAMEWORK_DIR")
    if env:
        p = Path(env)
        return (p, "") if p.is_dir() else (None, f"MNIC_OPS_FRAMEWORK_DIR={env} is no folder")
    for cand in (REPO.parent / "shared/framework", REPO.parent.parent / "shared/framework",
                 Path("/work/shared/framework")):
        if cand.is_dir():
            return cand, ""
    return None, ("the framework is not here: put its checkouts (v3.10.0/, v3.3.0/) in "
                  "../shared/framework or set MNIC_OPS_FRAMEWORK_DIR")


def framework_dir(version: str) -> Path:
    """The checkout of ``version``; skips the test with the reason when absent."""
    base, why = framework_root()
    if base is None:
        pytest.skip(why)
    for cand in (base / version, base):
        if (cand / "copy_framework_to_project.sh").exists() and (
                cand / "CHANGELOG.md").exists() and version.lstrip("v") in (
                cand / "CHANGELOG.md").read_text(errors="replace")[:4000]:
            return cand
    pytest.skip(f"framework {version} not found under {base}")
    raise AssertionError  # unreachable


def user_python() -> str:
    """The host's python3, which the framework runs with in the test host (the test venv
    may sit under /root, where a plain user cannot run it)."""
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no /usr/bin/python3 for the framework to run with")
    return "/usr/bin/python3"


# --- a plain user -------------------------------------------------------------------

@dataclass
class User:
    name: str
    uid: int
    gid: int


@contextmanager
def plain_user(role: str) -> Iterator[User]:
    """A real plain uid (useradd), removed afterwards with its group."""
    from tests.conftest import require

    require("root", "unshare")
    if not shutil.which("chroot"):
        pytest.skip("chroot not installed")
    if not shutil.which("useradd"):
        pytest.skip("useradd not installed")
    name = f"framework-{role}-{secrets.token_hex(3)}"[:31]
    subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        import pwd

        pw = pwd.getpwnam(name)
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


# --- a test host --------------------------------------------------------------------

MOUNTINFO = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
             "23 22 8:17 / /srv/ssd rw,noatime shared:2 - ext4 /dev/sdb1 rw\n")


class Host:
    """A host tree for ``--root`` that a plain user can traverse: /home on a rotational
    disk, /srv/ssd on a non-rotational one (the facts relocate reads), the folders
    provision writes into, and the driver where the user can read it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mnic-fw-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        for d in ("etc/cron.d", "etc/profile.d", "etc/sysctl.d", "etc/systemd/system",
                  "etc/mnic-ops", "var/lib", "var/log", "home", "srv/ssd", "run", "opt/fw",
                  "proc/self", "proc/sys/fs/inotify"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for d in ("home", "srv", "srv/ssd", "opt", "opt/fw"):
            os.chmod(self.root / d, 0o755)
        (self.root / "proc/self/mountinfo").write_text(MOUNTINFO)
        (self.root / "proc/sys/fs/inotify/max_user_watches").write_text("524288\n")
        for disk, dev, part, rot in (("sda", "8:0", "8:1", "1"), ("sdb", "8:16", "8:17", "0")):
            b = self.root / "sys/block" / disk
            (b / "queue").mkdir(parents=True)
            (b / "dev").write_text(dev + "\n")
            (b / "queue/rotational").write_text(rot + "\n")
            (b / f"{disk}1").mkdir()
            (b / f"{disk}1/partition").write_text("1\n")
            (b / f"{disk}1/dev").write_text(part + "\n")
        shutil.copy(DRIVER, self.root / "opt/fw/driver.py")
        os.chmod(self.root / "opt/fw/driver.py", 0o644)
        self.config = self.root / "etc/mnic-ops/config.toml"
        # What the framework needs to run in this tree (chroot): the machine's /usr
        # (bound read-only, in a private mount namespace, per run), /dev, the time zone.
        self.binds: list[str] = ["usr", "dev"]
        for d in ("usr", "dev", "tmp"):
            (self.root / d).mkdir(exist_ok=True)
        os.chmod(self.root / "tmp", 0o1777)
        for d in ("bin", "lib", "lib64", "sbin"):
            real = Path("/") / d
            if real.is_symlink():
                (self.root / d).symlink_to(os.readlink(real))
            elif real.is_dir():
                (self.root / d).mkdir()
                self.binds.append(d)
        if os.path.islink("/etc/localtime"):
            (self.root / "etc/localtime").symlink_to(os.readlink("/etc/localtime"))
        # What provision needs to find before it plans cron jobs and the watcher's unit,
        # as on an installed host: a cron daemon, systemd running (hidden under the
        # per-run bind of /usr, where the framework runs).
        (self.root / "usr/sbin").mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/true", self.root / "usr/sbin/cron")
        (self.root / "run/systemd/system").mkdir(parents=True, exist_ok=True)

    def write_config(self, projects: list[str], extra: str = "") -> None:
        self.config.write_text(
            f"projects = {json.dumps(projects)}\nsearch_paths = []\nhost_class = \"server\"\n"
            f"ssd_path = \"/srv/ssd/mnic\"\n[clean]\nworkers = 1\n{extra}")

    def mnic(self, *args: str, timeout: float = 300) -> Result:
        return run_mnic("--root", str(self.root), "--config", str(self.config), *args,
                        timeout=timeout)

    def mnic_json(self, *args: str, ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
        r = self.mnic("--json", *args)
        assert r.code in ok, f"mnic-ops {' '.join(args)}: exit {r.code}\n{r.out}\n{r.err}"
        assert "Traceback" not in r.err, r.err
        return json.loads(r.out)

    def path(self, host: str) -> Path:
        return self.root / host.lstrip("/")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def host() -> Iterator[Host]:
    h = Host()
    try:
        yield h
    finally:
        h.remove()


# --- the framework in an install -------------------------------------------------------

@dataclass
class Install:
    host: Host
    host_path: str  # e.g. /home/<user>/proj
    user: User
    version: str
    with_config: bool
    python: str

    @property
    def path(self) -> Path:
        return self.host.path(self.host_path)

    def command(self, *args: str) -> list[str]:
        """``driver.py ARGS`` as the install's owner, in the install root, on the test
        host: chrooted into it, so that the host paths of relocated data's links resolve
        as on that host; the machine's /usr and /dev bound in a private mount namespace
        that ends with the process."""
        r = str(self.host.root)
        binds = "; ".join(f"mount --bind /{d} {r}/{d}" for d in self.host.binds)
        inner = f"cd {shlex.quote(self.host_path)} && exec {self.python} " \
                f"/opt/fw/driver.py {' '.join(shlex.quote(a) for a in args)}"
        script = (f"set -e; {binds}; mount -o remount,bind,ro {r}/usr; exec chroot "
                  f"--userspec={self.user.uid}:{self.user.gid} --groups={self.user.gid} "
                  f"{r} /usr/bin/env -i PATH=/usr/bin:/bin HOME={self.host_path} "
                  f"LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 /bin/sh -c {shlex.quote(inner)}")
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]

    def run(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        """``driver.py ARGS`` (see :meth:`command`); its JSON result."""
        p = subprocess.run(self.command(*args), capture_output=True, text=True,
                           timeout=timeout)
        out = p.stdout.rpartition("@@RESULT@@")[2]
        assert p.returncode == 0 and out, f"driver {args}: exit {p.returncode}\n" \
                                          f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        res: dict[str, Any] = json.loads(out)
        res["_stderr"] = p.stderr
        return res

    def populate(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = f"spec-{secrets.token_hex(4)}.json"
        f = self.host.root / "opt/fw" / name
        f.write_text(json.dumps(spec))
        os.chmod(f, 0o644)
        try:
            return self.run("populate", f"/opt/fw/{name}")
        finally:
            f.unlink()

    def inspect(self) -> dict[str, Any]:
        return self.run("inspect")

    @property
    def store(self) -> Path:
        return self.path / ".ai-tools/checkpoint/storage"


def install(h: Host, version: str, user: User, *, with_config: bool,
            name: str = "proj") -> Install:
    """Install the framework with its own copy script (``--force``), as root into the
    user's home, then give it to the user. The snapshot is read-only, so the copy is
    made writable (a user's checkout would be); ``.claude/config/`` only when asked,
    as the copy script does not install it."""
    src = framework_dir(version)
    home = h.path(f"/home/{user.name}")
    home.mkdir(parents=True, exist_ok=True)
    target = home / name
    target.mkdir()
    r = subprocess.run(["bash", "copy_framework_to_project.sh", str(target), "--force"],
                       cwd=src, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TERM": "dumb"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (target / ".claude/agents").is_dir() and (target / ".ai-tools").is_dir()
    assert not (target / ".claude/config").exists()  # as the framework documents
    if with_config:
        shutil.copytree(src / ".claude/config", target / ".claude/config")
    for p in [home, *home.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, stat.S_IMODE(p.lstat().st_mode) | stat.S_IWUSR)
        os.lchown(p, user.uid, user.gid)
    os.chmod(home, 0o755)
    return Install(h, f"/home/{user.name}/{name}", user, version, with_config,
                   user_python())


# --- what the framework's data must look like ------------------------------------------

def index_problems(store: Path) -> list[str]:
    """Inconsistencies between checkpoint_index.json and the store's files: ids in
    categories/tags/timeline that are not in checkpoints, metadata files the index does
    not list, listed checkpoints without metadata."""
    idx_file = store / "checkpoint_index.json"
    if not idx_file.exists():
        return []
    idx = json.loads(idx_file.read_text())
    cps = set(idx["checkpoints"])
    out = []
    for cat, ids in idx.get("categories", {}).items():
        out += [f"categories[{cat}]: {i}" for i in ids if i not in cps]
    for tag, ids in idx.get("tags", {}).items():
        out += [f"tags[{tag}]: {i}" for i in ids if i not in cps]
    out += [f"timeline: {e.get('checkpoint_id')}" for e in idx.get("timeline", [])
            if e.get("checkpoint_id") not in cps]
    meta = {p.name[:-5] for p in (store / "metadata").glob("*.json")} \
        if (store / "metadata").is_dir() else set()
    out += [f"metadata not in the index: {m}" for m in sorted(meta - cps)]
    out += [f"listed without metadata: {c}" for c in sorted(cps - meta)]
    return out


def gzipped_read_back(inst: Install) -> list[str]:
    """Files the framework reads back by name that exist only as .gz (or at all as .gz)."""
    base = inst.path
    out = []
    for rel in (".ai-tools/checkpoint/storage", ".ai-tools/model-config/data",
                "project_archive/background-tasks", ".claude/sessions",
                "project_archive/sessions"):
        top = base / rel
        if not top.exists():
            continue
        for p in top.rglob("*.gz"):
            r = p.relative_to(base).as_posix()
            if r.endswith(".dat.gz") and "/checkpoints/" in r:
                continue  # the framework's own gzip files
            name = p.name[:-3]
            if rel.endswith("sessions") and name not in (
                    "SESSION_CURRENT.md", "SESSION_STATE.md", "SESSION_TODOS.md",
                    "CONTINUATION_CONTEXT.md"):
                continue  # old session files: compressed by design
            out.append(r)
    return out


def framework_view(seen: dict[str, Any]) -> dict[str, Any]:
    """The parts of the driver's inspect output that must not change (warnings aside)."""
    return {k: v for k, v in seen.items() if k not in ("warnings", "_stderr")}


def mnic_python() -> str:
    return sys.executable
