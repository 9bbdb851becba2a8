"""A host for the link and relocate attacks, in a private mount namespace of the test
process: a rotational ext4 loop device for the installs, a non-rotational one as the
SSD, /var replaced by a private folder (mnic-ops's journal, link records and log), all
below a folder every test user can traverse. Nothing of the machine's own mounts, /var
or /etc changes; the mounts go when the module's fixture ends.

mnic-ops runs as root with the live root ``/`` of the namespace and an explicit
``--config``, so that real ``relocate`` (mounts, rotational flags, free space) and the
passes that follow are the ones an admin runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Result, require, run_mnic
from tests.fsenv import Loop, private_mounts
from tests.security.users import User, chown_tree, require_users, shared_dir

DAY = 86400


@dataclass
class Install:
    root: Path
    owner: User

    def data(self, rel: str) -> Path:
        return self.root / rel


@dataclass
class NsHost:
    top: Path
    hdd: Loop
    ssd: Loop

    def install(self, owner: User, name: str, *, files: int = 12, age_days: float = 10
                ) -> Install:
        """A framework install owned by ``owner`` (its home folder too), with aged
        files in sessions, checkpoints, the checkpoint store and thinking logs."""
        home = self.hdd.mnt / "home" / owner.name
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.hdd.mnt / "home", 0o755)
        root = home / name
        old = time.time() - age_days * DAY
        for d in (".claude/agents", ".claude/config", ".ai-tools"):
            (root / d).mkdir(parents=True)
        (root / ".claude/agents/a.md").write_text("---\nname: a\n---\nbody\n")
        layout = {
            "project_archive/sessions": ("session_{i:03}.json", "SESSION_SUMMARY_{i:03}.md"),
            ".claude/checkpoints/manual": ("cp_{i:03}.json",),
            ".ai-tools/checkpoint/storage/metadata": ("cp_20250101_0000{i:02}_deadbeef.json",),
            ".claude/thinking-logs/core/arch": ("2025-01-01-0000{i:02}-d.json",),
        }
        for rel, names in layout.items():
            (root / rel).mkdir(parents=True)
            for i in range(files):
                pat = names[i % len(names)]
                p = root / rel / pat.format(i=i)
                p.write_text(json.dumps({"owner": owner.name, "i": i, "pad": "x" * 900}))
                os.utime(p, (old, old))
        chown_tree(home, owner)
        os.chmod(home, 0o755)
        return Install(root, owner)

    def config(self, name: str, installs: list[Install], extra: str = "") -> Path:
        cfg = self.top / f"{name}.toml"
        cfg.write_text(f"projects = {json.dumps([str(i.root) for i in installs])}\n"
                       f"search_paths = []\n{extra}\n[relocate]\nmin_free_mib = 1\n")
        return cfg

    def target(self, name: str) -> Path:
        return self.ssd.mnt / name

    def mnic(self, cfg: Path, *args: str, env: dict[str, str] | None = None) -> Result:
        return run_mnic("--config", str(cfg), *args, env=env)


@contextmanager
def ns_host(prefix: str) -> Iterator[NsHost]:
    require("root", "unshare", "loop")
    require_users()
    top = shared_dir(prefix)
    try:
        with ExitStack() as stack:
            stack.enter_context(private_mounts())
            var = top / "var"
            (var / "lib").mkdir(parents=True)
            (var / "log").mkdir()
            subprocess.run(["mount", "--bind", str(var), "/var"], check=True)
            stack.callback(subprocess.run, ["umount", "/var"], check=False)
            hdd = stack.enter_context(Loop(top / "hdd.img", top / "hdd", 96,
                                           rotational=True))
            ssd = stack.enter_context(Loop(top / "ssd.img", top / "ssd", 96,
                                           rotational=False))
            for m in (hdd.mnt, ssd.mnt):
                os.chmod(m, 0o755)
            yield NsHost(top, hdd, ssd)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def tree_files(top: Path) -> dict[str, bytes]:
    """{path relative to top: content} of every regular file, a ``.gz`` counted as its
    original (name and bytes): what must survive a pass."""
    import gzip

    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(top):
        for n in names:
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                continue
            rel = str(p.relative_to(top))
            data = p.read_bytes()
            if rel.endswith(".gz"):
                rel, data = rel[:-3], gzip.decompress(data)
            out[rel] = data
    return out
