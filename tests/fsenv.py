"""Real filesystems for tests: ext4 images on loop devices, mounted inside a private
mount namespace of the test process (its children, the mnic-ops runs, inherit it), and
deterministic test trees with a snapshot that compares content and metadata.

Nothing here touches the machine's own mounts: the namespace is private
(``mount --make-rprivate /``), mounts are undone before the test process switches back
to its original namespace, and every loop device attached is detached again.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000


@contextmanager
def private_mounts() -> Iterator[None]:
    """Run the block in a private mount namespace, then return to the original one."""
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        try:
            subprocess.run(["mount", "--make-rprivate", "/"], check=True)
            yield
        finally:
            if libc.setns(orig, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(orig)


class Loop:
    """An ext4 image on a loop device, mounted at ``mnt`` (in the current namespace)."""

    def __init__(self, img: Path, mnt: Path, size_mb: int, rotational: bool) -> None:
        self.img, self.mnt, self.size_mb, self.rotational = img, mnt, size_mb, rotational
        self.dev: str | None = None
        self.mounted = False

    def __enter__(self) -> Loop:
        with open(self.img, "wb") as fh:
            fh.truncate(self.size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E",
                        "lazy_itable_init=0,lazy_journal_init=0", str(self.img)], check=True)
        self.dev = subprocess.run(["losetup", "--find", "--show", str(self.img)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        try:
            name = os.path.basename(self.dev)
            Path(f"/sys/block/{name}/queue/rotational").write_text(
                "1" if self.rotational else "0")
            self.mount()
        except BaseException:
            self.__exit__()
            raise
        return self

    def mount(self, opts: str = "rw") -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        assert self.dev
        subprocess.run(["mount", "-t", "ext4", "-o", opts, self.dev, str(self.mnt)],
                       check=True)
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mnt)], check=False)
            self.mounted = False

    def __exit__(self, *exc: Any) -> None:
        self.umount()
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], check=False)
            self.dev = None
        with suppress(OSError):
            self.img.unlink()


# --- trees ---------------------------------------------------------------------------

def make_tree(base: Path, files: int, seed: int = 1, max_size: int = 6000) -> None:
    """Thousands of files in nested folders, with symlinks (relative, absolute,
    dangling), hardlinks, empty files and folders, a fifo, several owners, modes and
    fixed times."""
    r = random.Random(seed)
    base.mkdir(parents=True)
    dirs = [base]
    for i in range(max(3, files // 40)):
        parent = r.choice(dirs)
        d = parent / f"dir{i:03d}"
        d.mkdir()
        dirs.append(d)
    made: list[Path] = []
    for i in range(files):
        d = r.choice(dirs)
        p = d / (f"SESSION_{i:05d}.md" if i % 3 else f"cp_{i:05d}.json")
        size = 0 if i % 17 == 0 else r.randrange(1, max_size)
        p.write_bytes(r.randbytes(size))
        os.chown(p, 1000 + i % 3, 1000 + i % 2)
        os.chmod(p, (0o600, 0o640, 0o644, 0o755)[i % 4])
        os.utime(p, ns=(1_700_000_000_000_000_000 + i * 7, 1_600_000_000_000_000_000 + i))
        made.append(p)
    for i in range(0, files, 97):
        src = made[i]
        os.link(src, src.parent / f"hardlink_{i}")
    for i in range(0, files, 61):
        d = made[i].parent
        os.symlink(made[i].name, d / f"rel_link_{i}")
    os.symlink("/nonexistent/target", base / "dangling_link")
    os.symlink(str(made[0]), base / "abs_link")
    (base / "empty_dir" / "nested_empty").mkdir(parents=True)
    os.mkfifo(base / "a_fifo")
    for j, d in enumerate(dirs[1:]):
        os.chown(d, 1000 + j % 2, 1000)
        if j % 5 == 0:
            os.chmod(d, 0o750)
        os.utime(d, ns=(1_650_000_000_000_000_000, 1_650_000_000_000_000_000 + j))
    os.utime(base, ns=(1_650_000_000_000_000_000, 1_650_000_000_000_000_000))


def snapshot(top: str | os.PathLike[str]) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top`` (following ``top`` itself if it is a link): type, mode,
    owner, mtime, file atime, size, content hash, link text and hardlink group. Files are
    read with O_NOATIME so taking a snapshot changes nothing."""
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[int, list[str]] = {}
    topfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = os.fstat(topfd)
        out["."] = ("d", st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        _snap_dir(topfd, "", out, groups)
    finally:
        os.close(topfd)
    for names in groups.values():
        g = min(names)
        for n in names:
            out[n] = (*out[n], g)
    return out


def _snap_dir(dfd: int, rel: str, out: dict[str, tuple[Any, ...]],
              groups: dict[int, list[str]]) -> None:
    for name in sorted(os.listdir(dfd)):
        r = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        m = st.st_mode
        if stat.S_ISDIR(m):
            out[r] = ("d", m, st.st_uid, st.st_gid, st.st_mtime_ns)
            cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOATIME,
                          dir_fd=dfd)
            try:
                _snap_dir(cfd, r, out, groups)
            finally:
                os.close(cfd)
        elif stat.S_ISLNK(m):
            out[r] = ("l", os.readlink(name, dir_fd=dfd), st.st_uid, st.st_gid,
                      st.st_mtime_ns)
        elif stat.S_ISREG(m):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME, dir_fd=dfd)
            h = hashlib.sha256()
            try:
                while chunk := os.read(fd, 1 << 20):
                    h.update(chunk)
            finally:
                os.close(fd)
            out[r] = ("f", m, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns,
                      st.st_size, h.hexdigest())
            if st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(r)
        else:
            out[r] = ("s", m, st.st_rdev, st.st_uid, st.st_gid, st.st_mtime_ns)


def diff_snapshots(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> list[str]:
    """Readable differences (empty when identical)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} != {b.get(k)}")
    return out


def tmp_leftovers(*folders: Path) -> list[str]:
    """Temporary names mnic-ops left in these folders (there should be none)."""
    out = []
    for f in folders:
        with suppress(FileNotFoundError):
            out.extend(str(f / n) for n in os.listdir(f) if ".mnic-ops-tmp" in n)
    return out


def tree_sha(top: Path) -> str:
    return hashlib.sha256(repr(sorted(snapshot(top).items())).encode()).hexdigest()
