"""Issue 15, attack 1, and issue 14 item 4: which links root's passes follow.

A plain user links a data folder of her install onto the shared SSD folder, where
relocate put another user's data, and gives her install a short retention: root's
`clean` must not compress or expire anything there on her policy. The same user racing
(her data folder flipped between her folder and that link during the passes) gets no
further. And the positive side: data `relocate --to X` moved is maintained on X by
clean, watch and doctor with no extra setting, because mnic-ops made that link itself.

Everything runs in a private mount namespace (tests/security/nshost.py) with real
users from useradd (tests/security/users.py), as root would run it from cron.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.security.nshost import NsHost, ns_host, tree_files
from tests.security.users import User, plain_users, python_as, spawn_as

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Alice's move, as herself: her thinking logs become a link to the given folder, and her
# own framework config asks for compression and expiry after one day.
LINK_AND_POLICY = r"""
import json, os, shutil, sys
root, where = sys.argv[1], sys.argv[2]
tl = os.path.join(root, ".claude/thinking-logs")
shutil.rmtree(tl)
os.symlink(where, tl)
with open(os.path.join(root, ".claude/config/extended-thinking-config.json"), "w") as fh:
    json.dump({"logging": {"retention_days": 1, "compression": "gzip_after_1_days"}}, fh)
"""

# Alice racing: her thinking-logs folder and a link to `where` swap places again and
# again until the stop file appears (or `limit` flips); prints the number of flips.
FLIPPER = r"""
import os, sys
tl, where, stop, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
folder, spare = tl + ".real", tl + ".link"
os.symlink(where, spare)
n = 0
while not os.path.exists(stop) and n < limit:  # each state held for about as long
    os.rename(tl, folder)
    os.rename(spare, tl)
    os.path.exists(stop)
    os.rename(tl, spare)
    os.rename(folder, tl)
    n += 1
os.unlink(spare)
print(n, flush=True)
"""


@pytest.fixture(scope="module")
def host() -> Iterator[NsHost]:
    with ns_host("links-sec-") as h:
        yield h


@pytest.fixture(scope="module")
def users(host: NsHost) -> Iterator[dict[str, User]]:
    with plain_users("links", "alice", "bob", "carol", "dave") as u:
        yield u


def _slug(base: Path, install: str) -> Path:
    found = [d for d in base.iterdir() if d.name.startswith(install + "-")]
    assert len(found) == 1, found
    return found[0]


def _kinds(doc: dict, root: Path) -> dict[str, dict]:
    return next(p["kinds"] for p in doc["projects"] if p["project"] == str(root))


def test_link_onto_the_shared_ssd_folder_steers_nothing(host: NsHost,
                                                        users: dict[str, User]) -> None:
    alice, bob = users["alice"], users["bob"]
    a = host.install(alice, "a1")
    b = host.install(bob, "b1")
    ssd_path = host.target("my-name-is-claude")
    cfg = host.config("attack1", [a, b], f'ssd_path = "{ssd_path}"')
    r = host.mnic(cfg, "relocate")  # the default target: ssd_path
    assert r.code == 0, r.out + r.err
    assert (b.root / "project_archive/sessions").is_symlink()
    bob_dir = _slug(ssd_path, "b1")
    bob_before = tree_files(bob_dir)
    assert len(bob_before) >= 30

    python_as(alice, LINK_AND_POLICY, str(a.root), str(ssd_path))
    docs = []
    for args in (("clean",), ("clean", "--only", "expire"), ("clean",),
                 ("clean", "--only", "expire")):
        r = host.mnic(cfg, "--json", *args)
        docs.append((r.code, r.out, r.err))
    # Bob's relocated data is all there (his own pass may have gzipped it: same bytes).
    after = tree_files(bob_dir)
    assert len(after) == len(bob_before), f"bob: {len(bob_before)} files -> {len(after)}"
    assert after == bob_before
    for code, out, err in docs:
        assert code == 0, out + err
        tl = _kinds(json.loads(out), a.root)["thinking_logs"]
        assert "not followed" in tl.get("note", ""), tl
        assert tl.get("compressed", 0) == tl.get("expired", 0) == 0, tl
    # and the watcher would not watch through Alice's link either
    r = host.mnic(cfg, "--json", "watch", "--check")
    roots = json.loads(r.out)["roots"]
    tl_root = next(x for x in roots if x["project"] == str(a.root)
                   and x["kind"] == "thinking_logs")
    assert tl_root["state"] == "refused" and "not followed" in tl_root["note"], tl_root


def test_flipping_the_link_during_passes_steers_nothing(host: NsHost,
                                                        users: dict[str, User]) -> None:
    """The race version: Alice swaps her data folder with a link onto Bob's relocated
    folder as fast as she can while root runs clean passes."""
    alice, bob = users["alice"], users["bob"]
    a = host.install(alice, "a2")
    b = host.install(bob, "b2")
    target = host.target("race-mnic")
    cfg = host.config("race", [a, b], f'ssd_path = "{target}"')
    r = host.mnic(cfg, "relocate", str(b.root))
    assert r.code == 0, r.out + r.err
    bob_sessions = _slug(target, "b2") / "sessions"
    bob_before = tree_files(bob_sessions.parent)
    python_as(alice, LINK_AND_POLICY.replace("shutil.rmtree(tl)\nos.symlink(where, tl)",
                                             "pass"), str(a.root), str(bob_sessions))
    stop = host.top / "stop-flipping"
    flipper = spawn_as(alice, FLIPPER, str(a.root / ".claude/thinking-logs"),
                       str(bob_sessions), str(stop), "10000000")
    passes = 0
    try:
        time.sleep(0.2)
        for args in (("clean",), ("clean", "--only", "expire")) * 4:
            r = host.mnic(cfg, *args)
            assert r.code == 0, r.out + r.err
            passes += 1
    finally:
        stop.touch()
        out, err = flipper.communicate(timeout=60)
        stop.unlink()
    flips = int(out.strip() or 0)
    print(f"{flips} flips by alice during {passes} root passes")
    assert flipper.returncode == 0, err
    assert flips > passes  # the race really ran while the passes did
    assert tree_files(bob_sessions.parent) == bob_before


def test_relocated_data_is_maintained_on_its_target(host: NsHost,
                                                    users: dict[str, User]) -> None:
    """Issue 14 item 4: after `relocate --to X` (X named by no setting), clean compresses
    the relocated sessions and checkpoints on X exactly as it would have in place; watch
    and doctor look there too. Dave's hand-made link to the same folder is not followed.
    """
    carol, dave = users["carol"], users["dave"]
    c = host.install(carol, "c1")
    d = host.install(dave, "d1")
    x = host.target("nvme-mnic")
    cfg = host.config("item4", [c, d])
    r = host.mnic(cfg, "--json", "clean", "--check", str(c.root))
    assert r.code == 3, r.out + r.err
    relocated = ("sessions", "checkpoints", "checkpoint_store")
    due = {k: v["would_compress"] for k, v in _kinds(json.loads(r.out), c.root).items()
           if k in relocated}
    assert sum(due.values()) > 0, due

    r = host.mnic(cfg, "relocate", "--to", str(x), str(c.root))
    assert r.code == 0, r.out + r.err
    slug = _slug(x, "c1")
    assert os.readlink(c.root / "project_archive/sessions") == str(slug / "sessions")
    r = host.mnic(cfg, "--json", "clean", "--check", str(c.root))
    kinds = _kinds(json.loads(r.out), c.root)
    assert {k: kinds[k]["would_compress"] for k in relocated} == due, kinds
    python_as(dave, "import os, shutil, sys\nshutil.rmtree(sys.argv[1])\n"
              "os.symlink(sys.argv[2], sys.argv[1])",
              str(d.root / "project_archive/sessions"), str(slug / "sessions"))

    # doctor reads the relocated data where it is now
    r = host.mnic(cfg, "--json", "doctor", str(c.root), str(d.root))
    doc = json.loads(r.out)
    rows = {p["project"]: {ch["id"]: ch for ch in p["checks"]} for p in doc["projects"]}
    unc = rows[str(c.root)]["uncompressed"]
    examples = [e for k in unc.get("details", {}).get("kinds", {}).values()
                for e in k["examples"]]
    assert examples and all(e.startswith(str(slug)) for e in examples
                            if "sessions" in e), unc
    assert "links" not in rows[str(c.root)]
    assert rows[str(d.root)]["links"]["status"] == "warn"

    # watch would watch it on X; not through Dave's link
    r = host.mnic(cfg, "--json", "watch", "--check")
    roots = {(x_["project"], x_["kind"]): x_ for x_ in json.loads(r.out)["roots"]}
    assert roots[(str(c.root), "sessions")]["watched"] == str(slug / "sessions")
    assert roots[(str(c.root), "sessions")]["state"] == "ready"
    assert roots[(str(d.root), "sessions")]["state"] == "refused"

    carol_before = tree_files(slug)
    r = host.mnic(cfg, "--json", "clean")
    assert r.code == 0, r.out + r.err
    doc = json.loads(r.out)
    kinds = _kinds(doc, c.root)
    done = {k: kinds[k]["compressed"] + kinds[k]["finished"] for k in relocated}
    assert done == due, (done, due, kinds)
    for k in relocated:
        assert not kinds[k].get("note"), kinds[k]
    gz = [p for p in slug.rglob("*.gz")]
    assert len(gz) == sum(due.values())
    assert all(os.stat(p).st_uid == carol.uid for p in gz)
    assert tree_files(slug) == carol_before  # compressed in place, nothing lost
    dk = _kinds(doc, d.root)["sessions"]
    assert "not followed" in dk["note"] and dk["compressed"] == 0, dk


def test_watcher_follows_no_link_swapped_in(host: NsHost, users: dict[str, User]) -> None:
    """Race against the watcher: inside her sessions Alice swaps a folder with a link
    onto Bob's relocated sessions (where Bob keeps writing) while `watch` compresses her
    finished files. Hers get compressed; nothing of Bob's is ever touched."""
    alice, bob = users["alice"], users["bob"]
    a = host.install(alice, "a3", files=2)
    b = host.install(bob, "b3", files=2)
    target = host.target("watch-race")
    # polling every half second where the inotify limits are taken (parallel runs)
    cfg = host.config("watch-race", [a, b], "[watch]\npoll_seconds = 0.5\n"
                      "[watch.settle_seconds]\nsessions = 0.3\n")
    r = host.mnic(cfg, "relocate", "--to", str(target), str(b.root))
    assert r.code == 0, r.out + r.err
    bob_sessions = _slug(target, "b3") / "sessions"
    sessions = a.root / "project_archive/sessions"
    python_as(alice, "import os, sys\nos.mkdir(sys.argv[1])\nos.mkdir(sys.argv[2])",
              str(sessions / "flip"), str(sessions / "keep"))
    bob_before = {p.name for p in bob_sessions.iterdir()}
    stop = host.top / "stop-watch-race"
    # paced (about 500 swaps a second): a storm of events is attack 5's business (the
    # watcher's own tests); this one is about which folders the watcher can reach
    flipper = spawn_as(alice, FLIPPER.replace("    n += 1\n", "    n += 1\n"
                                              "    __import__('time').sleep(0.002)\n"),
                       str(sessions / "flip"), str(bob_sessions), str(stop), "10000000")
    writer = spawn_as(bob, "import json, os, sys, time\nstop = sys.argv[2]\nn = 0\n"
                      "while not os.path.exists(stop) and n < 4000:\n"
                      "    p = os.path.join(sys.argv[1], f'late_{n:04}.json')\n"
                      "    with open(p, 'w') as fh: json.dump({'bob': n}, fh)\n"
                      "    n += 1\n    time.sleep(0.005)\nprint(n)",
                      str(bob_sessions), str(stop))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    watcher = subprocess.Popen([sys.executable, "-m", "mnic_ops", "--config", str(cfg),
                                "--json", "watch", str(a.root)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    keep = sessions / "keep"
    try:
        time.sleep(2.0)
        for i in range(30):  # Alice's own finished files, as the framework writes them
            python_as(alice, "import sys\nopen(sys.argv[1], 'w').write('{}')",
                      str(keep / f"mine_{i:03}.json"))
        end = time.time() + 30
        while time.time() < end and len(list(keep.glob("*.gz"))) < 30:
            time.sleep(0.2)
        time.sleep(1.0)  # the race goes on a little after the last one
    finally:
        stop.touch()
        out_f, err_f = flipper.communicate(timeout=60)
        out_w, _ = writer.communicate(timeout=60)
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
        stop.unlink()
    flips = int(out_f.strip() or 0)
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    done = [e["path"] for e in events if e.get("event") == "compressed"]
    print(f"{flips} flips by alice, {out_w.strip()} files by bob, {len(done)} compressed")
    assert watcher.returncode == 0, err
    assert flipper.returncode == 0, err_f
    assert flips > 100
    assert not [p for p in bob_sessions.rglob("*.gz")]
    assert bob_before <= {p.name for p in bob_sessions.iterdir()}
    assert all(p.startswith(str(sessions)) for p in done), done
    assert len([p for p in done if "/keep/" in p]) == 30, (out[-3000:], err)
