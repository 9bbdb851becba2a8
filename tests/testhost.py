"""A throwaway test host built on this machine: an overlay of ``/`` in a private mount
namespace, with a loop-device SSD and a framework project inside, reachable with
``chroot``. Writes land in a tmpfs upper layer; the machine's own files, fstab and
mounts never change, and everything goes when the namespace's holder process ends.

The test process joins the namespace (``setns``) for the host's lifetime, so it can
write into the overlay and start chroot, ansible-playbook and testinfra in it; it
returns to its own namespace in :meth:`TestHost.stop`.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE_CONFIGS = REPO / "tests" / "fixtures" / "framework-configs"
_CLONE_NEWNS = 0x00020000
# mnic-ops's own files under /etc (relative): a test host starts without them.
OWN_ETC_FILES = ("mnic-ops", "cron.d/mnic-ops", "systemd/system/mnic-ops-watch.service",
                 "systemd/system/multi-user.target.wants/mnic-ops-watch.service",
                 "sysctl.d/60-mnic-ops.conf", "profile.d/mnic-ops.sh",
                 "logrotate.d/mnic-ops")


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class TestHost:
    base: Path
    holder: subprocess.Popen[bytes] | None = None
    loops: list[str] = field(default_factory=list)
    _home_ns: int = -1
    _cwd: str = "/"

    __test__ = False  # not a pytest class

    @property
    def root(self) -> Path:
        return self.base / "merged"

    def start(self) -> None:
        """Make the namespace, join it, and build the overlay root with fresh /tmp,
        /run and crontab spool."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        self._cwd = os.getcwd()
        self._home_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
        mine = os.readlink("/proc/self/ns/mnt")
        for _ in range(500):
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != mine:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        fd = os.open(f"/proc/{self.holder.pid}/ns/mnt", os.O_RDONLY)
        try:
            _setns_fd(fd)
        finally:
            os.close(fd)
        os.chdir(self._cwd)
        b = self.base
        self.sh(f"""
            mkdir -p {b}/layers {b}/merged
            mount -t tmpfs -o size=4g tmpfs {b}/layers
            mkdir {b}/layers/upper {b}/layers/work
            mount -t overlay overlay \\
                -o lowerdir=/,upperdir={b}/layers/upper,workdir={b}/layers/work {b}/merged
            for d in proc sys dev; do mount --rbind /$d {b}/merged/$d; done
            mount -t tmpfs tmpfs {b}/merged/tmp
            mount -t tmpfs tmpfs {b}/merged/run
            mkdir -p {b}/merged/var/spool/cron/crontabs
            mount -t tmpfs tmpfs {b}/merged/var/spool/cron/crontabs
        """)
        self._own_state()
        # The checkout and the Python running the tests stay visible (read-only) in the
        # test host even where they live below the fresh /tmp.
        for keep in sorted({str(REPO), sys.prefix, sys.base_prefix}):
            if keep.startswith(("/tmp/", "/run/")):
                dst = f"{b}/merged{keep}"
                self.sh(f"mkdir -p '{dst}' && mount --bind '{keep}' '{dst}' "
                        f"&& mount -o remount,bind,ro '{dst}'")

    def _own_state(self) -> None:
        """The test host gets its own /etc, /var/log and /var/lib/mnic-ops, so that
        nothing of this machine's mnic-ops state (a journal of an interrupted move, a
        config, cron file, unit or log) is seen by the tool under test: /etc is a copy
        of the machine's on a tmpfs without mnic-ops's own files, /var/log an empty
        tmpfs, /var/lib/mnic-ops absent (hidden in the overlay, never deleted below)."""
        m = f"{self.base}/merged"
        own = " ".join(f"'{m}/etc/{p}'" for p in OWN_ETC_FILES)
        self.sh(f"""
            mkdir -p {self.base}/etc-copy
            mount -t tmpfs -o mode=0755 tmpfs {self.base}/etc-copy
            cp -a /etc/. {self.base}/etc-copy/
            mount --bind {self.base}/etc-copy {m}/etc
            rm -rf {own} {m}/etc/fstab.mnic-ops.*
            mount -t tmpfs -o mode=0755 tmpfs {m}/var/log
            rm -rf {m}/var/lib/mnic-ops
        """)

    def stop(self) -> None:
        if self.holder is not None:
            _setns_fd(self._home_ns)
            os.close(self._home_ns)
            os.chdir(self._cwd)
            # Ending the holder ends the namespace and every mount in it.
            self.holder.send_signal(signal.SIGKILL)
            self.holder.wait()
            self.holder = None
        for dev in self.loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.loops.clear()

    def sh(self, script: str, *, check: bool = True, timeout: float = 600
           ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["sh", "-euc", script], capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{script}\n-> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def chroot(self, argv: Sequence[str], *, check: bool = True, timeout: float = 900,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        e = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        p = subprocess.run(["chroot", str(self.root), *argv], capture_output=True,
                           text=True, timeout=timeout, env=e)
        if check and p.returncode != 0:
            raise AssertionError(f"{argv} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def add_ssd(self, mount_point: str = "/mnt/ssd", size_mb: int = 512,
                rotational: int = 0) -> str:
        """An ext4 loop device flagged non-rotational, mounted at ``mount_point`` with
        relatime and an fstab line (what an admin's playbook would leave)."""
        img = self.base / f"ssd{len(self.loops)}.img"
        with open(img, "wb") as fh:
            fh.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                             capture_output=True, text=True).stdout.strip()
        self.loops.append(dev)
        Path(f"/sys/block/{os.path.basename(dev)}/queue/rotational").write_text(
            f"{rotational}\n")
        mp = self.root / mount_point.lstrip("/")
        self.sh(f"mkdir -p {mp} && mount -o relatime {dev} {mp}")
        fstab = self.root / "etc" / "fstab"
        fstab.write_text(fstab.read_text() + f"{dev}\t{mount_point}\text4\tdefaults\t0\t2\n")
        return dev

    def add_project(self, host_path: str = "/home/alice/proj", uid: int = 4242,
                    gid: int = 4242, user: str = "alice") -> Path:
        """A framework install with the real config files, sessions and checkpoints,
        owned by a user."""
        p = self.root / host_path.lstrip("/")
        write_project(p)
        passwd, group = self.root / "etc/passwd", self.root / "etc/group"
        passwd.write_text(passwd.read_text() + f"{user}:x:{uid}:{gid}::/home/{user}:/bin/sh\n")
        group.write_text(group.read_text() + f"{user}:x:{gid}:\n")
        home = self.root / "home" / user
        for dirpath, dirnames, filenames in os.walk(home):
            for n in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, n), uid, gid)
        os.lchown(home, uid, gid)
        return p


def write_project(p: Path) -> Path:
    """A framework install at ``p``: the real config files, an agent, session summaries,
    checkpoints and the checkpoint store (owners are the caller's business)."""
    for d in (".claude/agents", ".claude/config", ".claude/checkpoints/manual",
              ".ai-tools/checkpoint/storage/metadata", "project_archive/sessions",
              "project_archive/logs"):
        (p / d).mkdir(parents=True, exist_ok=True)
    (p / ".claude/agents/backend-engineer.md").write_text(
        "---\nname: backend-engineer\ndescription: builds APIs\n---\nBody\n")
    for f in FIXTURE_CONFIGS.glob("*.json"):
        shutil.copy2(f, p / ".claude/config" / f.name)
    for n in range(20):
        (p / f"project_archive/sessions/SESSION_SUMMARY_{n:03}.md").write_text(
            f"session {n}\n" * 200)
    (p / "project_archive/sessions/SESSION_CURRENT.md").write_text("now\n")
    (p / ".claude/checkpoints/manual/cp_1.json").write_text('{"id": 1}\n')
    # shaped as the framework's CheckpointEngine writes them, recorded a day ago (so no
    # declared retention expires it)
    cp, when = "cp_20260101_000000_deadbeef", (
        datetime.datetime.now() - datetime.timedelta(days=1)).isoformat()
    entry = {"timestamp": when, "level": "manual", "category": "unknown",
             "label": "manual_test", "tags": []}
    (p / ".ai-tools/checkpoint/storage/checkpoint_index.json").write_text(json.dumps(
        {"version": "3.7.0", "checkpoints": {cp: entry}, "categories": {"unknown": [cp]},
         "tags": {}, "timeline": [{"checkpoint_id": cp, "timestamp": when,
                                   "label": "manual_test"}]}, indent=2) + "\n")
    (p / f".ai-tools/checkpoint/storage/metadata/{cp}.json").write_text(json.dumps(
        {"checkpoint_id": cp, **entry}, indent=2) + "\n")
    return p


def tree_hash(root: Path, rel: str, *, skip: Sequence[str] = ()
              ) -> dict[str, list[object]]:
    """{path below root: [sha256 | ->target | dir | other, mode, uid, gid, mtime_ns]} of
    a tree (the top folder included, as "."), for identity checks before and after: the
    same record per entry as the VM tests take in their guests (tests/vm/guest_state.py),
    so a fifo or socket is noted, never opened. Folders keep their mtime: undo puts the
    times of every folder a change touched back."""
    from tests.vm.guest_state import entry

    top = root / rel.lstrip("/")
    out: dict[str, list[object]] = {".": entry(str(top))}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames
                       if os.path.relpath(os.path.join(dirpath, d), root) not in skip]
        for n in sorted([*dirnames, *filenames]):
            p = os.path.join(dirpath, n)
            rel_p = os.path.relpath(p, root)
            if rel_p in skip:
                continue
            out[rel_p] = entry(p)
    return out
