"""A whole host as a folder for ``--root``: a mount table with a rotational root disk and
an SSD at /mnt/ssd, an fstab, users, a config, and one framework install with aged
data. ``provision`` works on it for real (the relocation is a rename: both "disks" are
folders of one filesystem), so the same tree serves as a fresh host and, provisioned,
as a healthy one."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tests.cleanhelp import make_project
from tests.conftest import write_tree

PROJECT = "/home/alice/proj"
MOUNTINFO = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
             "27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
             "40 27 8:17 / /mnt/ssd rw,relatime - ext4 /dev/sdb1 rw\n")
CONFIG = ('host_class = "server"\nsearch_paths = ["/home"]\nssd_path = "/mnt/ssd/mnic"\n'
          "[relocate]\nmin_free_mib = 1\n")


def build_host(root: Path, *, config: str = CONFIG, files: int = 20) -> Path:
    for d in ("etc/cron.d", "etc/systemd/system", "proc", "sys", "run/systemd/system",
              "var/lib", "home", "opt", "srv", "root", "mnt/ssd", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # a cron daemon and a running systemd, as provision requires by default
    shutil.copy("/bin/true", root / "usr/sbin/cron")
    disks: dict[str, str | bytes] = {}
    for disk, major_minor, rot in (("sda", 0, "1"), ("sdb", 16, "0")):
        disks.update({f"sys/block/{disk}/dev": f"8:{major_minor}\n",
                      f"sys/block/{disk}/queue/rotational": f"{rot}\n",
                      f"sys/block/{disk}/{disk}1/partition": "1\n",
                      f"sys/block/{disk}/{disk}1/dev": f"8:{major_minor + 1}\n",
                      f"dev/{disk}1": ""})
    write_tree(root, {
        **disks,
        "proc/self/mountinfo": MOUNTINFO,
        "etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n/dev/sdb1 /mnt/ssd ext4 defaults 0 2\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n",
        "etc/group": "root:x:0:\nalice:x:4242:\n",
        "etc/mnic-ops/config.toml": config,
    })
    make_project(root, files=files, host_path=PROJECT)
    return root


def break_install(root: Path, host_path: str = PROJECT) -> Path:
    """A user's file that fails the install (the checkpoint store's location cannot be
    read): one failed install, exit 1, the others go on."""
    cfg = root / host_path.lstrip("/") / ".claude/config/checkpoint-config.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[" * 1000)
    return cfg


def pending_journal(root: Path, host_path: str = PROJECT, *, phase: str = "copy") -> str:
    """The journal of a move killed half-way (as movejournal writes it); returns its id."""
    jdir = root / "var/lib/mnic-ops/relocate"
    jdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    real = str(root / host_path.lstrip("/"))
    data = {"version": 1, "op": "out", "phase": phase, "method": "copy",
            "public": {"base": real, "rel": "project_archive/sessions"},
            "dest": {"base": str(root / "mnt/ssd/mnic"), "rel": "proj-x/sessions"},
            "link_text": "/mnt/ssd/mnic/proj-x/sessions", "pid": 999999,
            "started": time.time() - 60, "updated": time.time() - 30,
            "meta": {"project": host_path, "public": f"{host_path}/project_archive/sessions"}}
    path = jdir / "move-0123456789abcdef0123.json"
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    return path.name.removesuffix(".json")


def watch_state(root: Path, *, heartbeat_age: float, state: str = "running",
                observers: dict[str, str | None] | None = None) -> Path:
    """The watcher service's liveness record, as it writes it."""
    now = time.time()
    data = {"pid": os.getpid(), "state": state, "started": now - 3600,
            "heartbeat": now - heartbeat_age, "heartbeat_seconds": 30.0,
            "observers": observers or {"inotify": "running", "polling": None},
            "folders": {"inotify": 8, "polling": 0, "not_watched": 0},
            "inotify_watches": 8, "pending": 3, "compressed": 41, "bytes_saved": 123456,
            "last_compressed": now - 100, "events": 500, "last_event": now - 10,
            "overflows": 0, "observer_restarts": 0, "polled_after_storm": 0,
            "last_problem": None}
    p = root / "run/mnic-ops/watch-state.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data))
    return p
