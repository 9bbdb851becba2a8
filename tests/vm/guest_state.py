"""Runs inside a test VM (``python3 - ROOT...`` over SSH, stdlib only): prints, as JSON,
{path: [content sha256 | "->target" | "dir" | "other", mode, uid, gid, mtime_ns]} for
every entry under each ROOT, not following symlinks; ``--skip NAME`` (repeatable) leaves
out entries whose name starts with NAME. The tests compare two snapshots for
"nothing else changed" checks (undo --all, a reboot)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys


def entry(path: str) -> list[object]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        what = "->" + os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        what = "dir"
    elif stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        what = h.hexdigest()
    else:
        what = "other"
    return [what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns]


def main(argv: list[str]) -> int:
    skip: list[str] = []
    roots: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--skip":
            skip.append(next(it))
        else:
            roots.append(arg)
    prefixes = tuple(skip)

    def keep(name: str) -> bool:
        return not (prefixes and name.startswith(prefixes))

    out: dict[str, list[object]] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        out[root] = entry(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if keep(d)]
            for name in dirnames + [f for f in filenames if keep(f)]:
                path = os.path.join(dirpath, name)
                out[path] = entry(path)
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
