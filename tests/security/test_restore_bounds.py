"""A user's gzip bombs are not root's writes (the reviewer's finding 5 on issue 15).

clean makes again the files an earlier mnic-ops gzipped that the framework reads back
by name. On main it gunzipped every ``*.json.gz`` in the task results, as root, then
chowned the result: 1.2 MB of a user's files became 1.2 GB written by root, past her
quota. Now only an archive of a name the framework reads (a result ``state.json``
lists), shaped as mnic-ops's engine writes one, made before this host's first restoring
pass, is restored, and at most ``clean.restore_max_mib`` per install and run. The user
below crafts the strongest bombs she can: the engine's exact gzip header (name, mtime).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.inputs_support import User, as_user, host_tree, mnic, plain_user, two_installs

RESULTS = "project_archive/background-tasks/results"
STATE = "project_archive/background-tasks/state.json"
MIB = 1 << 20

# Alice, as herself: N results listed in her state.json, each only as results/<id>.json.gz
# that decompresses to SIZE bytes of zeros, its header exactly the engine's.
BOMBS = r"""
import datetime, json, os, struct, sys, zlib
base, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = os.path.join(base, "project_archive/background-tasks/results")
os.makedirs(res, exist_ok=True)
now = datetime.datetime.now().isoformat()
state = {"task_results": {}}
for i in range(n):
    tid = f"task-{i:04d}"
    name = tid + ".json"
    mtime = 1700000000
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body, crc, chunk = [], 0, b"\0" * (1 << 20)
    for _ in range(size >> 20):
        body.append(c.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    body.append(c.flush())
    head = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + name.encode() + b"\0"
    gz = os.path.join(res, name + ".gz")
    with open(gz, "wb") as fh:
        fh.write(head + b"".join(body) + struct.pack("<II", crc, size & 0xFFFFFFFF))
    os.utime(gz, (mtime, mtime))
    state["task_results"][tid] = {"task_id": tid, "end_time": now, "status": "completed"}
with open(os.path.join(base, "project_archive/background-tasks/state.json"), "w") as fh:
    json.dump(state, fh)
"""


@pytest.fixture
def alice() -> Iterator[User]:
    with plain_user("alice") as u:
        yield u


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _restored(doc: dict) -> list[str]:
    k = doc["projects"][0]["kinds"]["task_results"]["retention"]
    return list(k.get("restored", []))


def test_bombs_planted_after_the_first_pass_are_never_restored(alice: User) -> None:
    with host_tree() as root:
        a, _b = two_installs(root, alice)
        base = root / a.lstrip("/")
        r = mnic(root, "--json", "clean", a)  # this host's first pass of this mnic-ops
        assert r.code == 0, r.out + r.err
        as_user(alice, BOMBS, str(base), "6", str(16 * MIB))
        before = _bytes(base / RESULTS)
        r = mnic(root, "--json", "clean", a)
        doc = json.loads(r.out)
        written = _bytes(base / RESULTS) - before
        print(f"6 bombs of 16 MiB ({before} bytes of gzip): root wrote {written} bytes")
        assert written == 0 and _restored(doc) == [], (written, _restored(doc))
        errors = doc["projects"][0]["kinds"]["task_results"]["retention"]["errors"]
        assert sum("made after mnic-ops stopped compressing" in e for e in errors) == 6, errors
        assert not list((base / RESULTS).glob("*.json"))


def test_archives_from_before_are_restored_within_the_cap(alice: User) -> None:
    """Archives that predate this host's first restoring pass may be an earlier
    mnic-ops's: restored, but at most clean.restore_max_mib per install and run."""
    with host_tree() as root:
        a, _b = two_installs(root, alice)
        base = root / a.lstrip("/")
        cfg = root / "etc/mnic-ops/config.toml"
        cfg.write_text(cfg.read_text() + "[clean]\nrestore_max_mib = 16\n")
        as_user(alice, BOMBS, str(base), "5", str(6 * MIB))
        r = mnic(root, "--json", "clean", a)
        doc = json.loads(r.out)
        restored = _restored(doc)
        made = list((base / RESULTS).glob("*.json"))
        print(f"restored {len(restored)} of 5 (6 MiB each) with restore_max_mib 16")
        assert len(restored) == len(made) == 2, (restored, r.out[-2000:])
        assert all(p.stat().st_uid == alice.uid for p in made)
        errors = doc["projects"][0]["kinds"]["task_results"]["retention"]["errors"]
        assert any("reached clean.restore_max_mib (16 MiB)" in e for e in errors), errors
        r = mnic(root, "--json", "clean", a)  # the next run goes on
        assert len(_restored(json.loads(r.out))) == 2
