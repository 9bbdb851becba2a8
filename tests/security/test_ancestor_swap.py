"""A folder ABOVE the install root, swapped while root's pass runs (the reviewer's
finding on issues 14 and 15).

Alice's install is ``~/work/app``; ``~/work`` is hers. During root's pass she runs
``mv ~/work ~/work.real; ln -s /home/bob/work ~/work``: the install's path now leads to
Bob's install. On main, relocate moved Bob's sessions into a folder Alice owns on the
SSD, and ``clean --only expire`` applied Alice's ``logging.retention_days: 1`` (read
when the install was found) to Bob's thinking logs and deleted them. The install root's
identity (device, inode, owner), recorded when the data map is built, is now checked on
every descriptor that reaches it: the pass refuses Alice's install (reported, exit 1)
and never touches Bob's data.

Real plain users (useradd), root's real commands, a private mount namespace with loop
filesystems (tests/security/nshost.py). The races are driven by inotify events of
root's own pass, a bounded number of tries, counted in the output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.nshost import Install, NsHost, ns_host, tree_files
from tests.security.users import User, plain_users, python_as, run_as, spawn_as

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Alice, as herself: wait for one inotify event (mask) on `watched`, then swap her
# ~/work (`work`) for a link to another folder (`other`).
RACER = r"""
import ctypes, os, sys
watched, mask, work, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
assert libc.inotify_add_watch(fd, watched.encode(), mask) >= 0
print("ready", flush=True)
os.read(fd, 4096)
os.rename(work, work + ".real")
os.symlink(other, work)
print("swapped", flush=True)
"""
IN_OPEN = 0x20
IN_CREATE = 0x100

# Alice's own framework config: expire thinking logs after one day.
SHORT_RETENTION = r"""
import json, sys
with open(sys.argv[1], "w") as fh:
    json.dump({"logging": {"retention_days": 1}}, fh)
"""


@pytest.fixture(scope="module")
def host() -> Iterator[NsHost]:
    with ns_host("swap-sec-") as h:
        yield h


@pytest.fixture(scope="module")
def users(host: NsHost) -> Iterator[dict[str, User]]:
    with plain_users("harden", "alice", "bob") as u:
        yield u


def _unswap(alice: User, work: Path) -> None:
    """Alice puts her ~/work back (as herself)."""
    if work.is_symlink():
        run_as(alice, ["rm", str(work)])
    if os.path.lexists(str(work) + ".real"):
        run_as(alice, ["mv", str(work) + ".real", str(work)])


def _race(host: NsHost, alice: User, watched: Path, mask: int, work: Path, other: Path,
          cfg: Path, *args: str) -> tuple[bool, object]:
    racer = spawn_as(alice, RACER, str(watched), str(mask), str(work), str(other))
    assert racer.stdout is not None
    assert racer.stdout.readline().strip() == "ready"
    try:
        r = host.mnic(cfg, *args)
    finally:
        racer.kill()
        out, _err = racer.communicate()
    return "swapped" in out, r


def test_relocate_never_moves_the_other_users_data(host: NsHost,
                                                   users: dict[str, User]) -> None:
    """The swap lands when root creates the install's folder on the SSD (IN_CREATE in
    the target): the moves that follow start from the install root and find another
    folder there."""
    alice, bob = users["alice"], users["bob"]
    a = host.install(alice, "rel/app")
    b = host.install(bob, "rel/app")
    bob_before = tree_files(b.root)
    target = host.target("rel-t")
    target.mkdir()
    os.chmod(target, 0o755)
    cfg = host.config("rel", [a, b])
    landed, r = _race(host, alice, target, IN_CREATE, a.root.parent, b.root.parent, cfg,
                      "--json", "relocate", "--to", str(target), str(a.root))
    try:
        print(f"race landed: {landed}; relocate exit {r.code}")  # type: ignore[attr-defined]
        assert landed
        assert not (b.root / "project_archive/sessions").is_symlink(), \
            "bob's sessions were moved into alice's folder on the SSD"
        assert tree_files(b.root) == bob_before
        owners = {os.lstat(os.path.join(d, n)).st_uid for d, ds, fs in os.walk(target)
                  for n in ds + fs}
        assert bob.uid not in owners, owners  # nothing of bob's on the SSD
        doc = json.loads(r.out)  # type: ignore[attr-defined]
        assert r.code == 1, r.out  # type: ignore[attr-defined]
        failed = [i for i in doc["items"] if i["state"] == "failed"]
        assert failed and "was replaced since mnic-ops found it" in failed[0]["error"], failed
    finally:
        _unswap(alice, a.root.parent)
    # her install, back in place, moves as before
    r2 = host.mnic(cfg, "relocate", "--to", str(target), str(a.root))
    assert r2.code == 0, r2.out + r2.err
    assert (a.root / "project_archive/sessions").is_symlink()


@pytest.mark.parametrize("only", [("--only", "expire"), ()])
def test_clean_never_applies_one_users_policy_to_the_others_data(
        host: NsHost, users: dict[str, User], only: tuple[str, ...]) -> None:
    """The swap lands when root's pass opens Alice's sessions folder (IN_OPEN), the
    first data class it walks; her thinking logs (later in the pass) expire after one
    day by her own config. Bob's logs are ten days old and his config declares no
    retention: whatever Alice does, they stay."""
    alice, bob = users["alice"], users["bob"]
    name = "cl" + "".join(only).replace("-", "")
    a = host.install(alice, f"{name}/app")
    b = host.install(bob, f"{name}/app")
    python_as(alice, SHORT_RETENTION,
              str(a.root / ".claude/config/extended-thinking-config.json"))
    cfg = host.config(name, [a, b])
    bob_logs = b.root / ".claude/thinking-logs"
    bob_before = tree_files(bob_logs)
    assert len(bob_before) == 12
    tries, landed, refused = 0, 0, 0
    while tries < 8 and refused < 2:
        tries += 1
        hit, r = _race(host, alice, a.root / "project_archive/sessions", IN_OPEN,
                       a.root.parent, b.root.parent, cfg, "--json", "clean", *only,
                       str(a.root))
        try:
            landed += hit
            assert tree_files(bob_logs) == bob_before, \
                f"try {tries}: bob's thinking logs changed on alice's policy"
            doc = json.loads(r.out)  # type: ignore[attr-defined]
            failed = {f["install"]: f["error"] for f in doc["failed_installs"]}
            if str(a.root) in failed:
                assert "was replaced since mnic-ops found it" in failed[str(a.root)]
                assert r.code == 1  # type: ignore[attr-defined]
                refused += 1
        finally:
            _unswap(alice, a.root.parent)
    print(f"{tries} tries: the swap landed in {landed}, the pass refused the replaced "
          f"install in {refused}")
    assert refused >= 1, "the race never landed before a later open: nothing was shown"


def _swap(alice: User, a: Install, b: Install) -> None:
    run_as(alice, ["mv", str(a.root.parent), str(a.root.parent) + ".real"])
    run_as(alice, ["ln", "-s", str(b.root.parent), str(a.root.parent)])


def test_every_open_of_a_replaced_install_is_refused(host: NsHost,
                                                     users: dict[str, User]) -> None:
    """Deterministic: the install is found, then Alice swaps the folder above it, then
    each consumer of the install root opens it: the link records' locations (clean,
    doctor, fstab, projects), clean's worker reopen, retention's task index, render's
    reads and writes (filechange beneath=), relocate's places (treemove), doctor's
    measuring child, the watcher, and a framework config read after the swap. All
    refuse (ESTALE, "replaced"), and Bob's install is byte for byte as it was."""
    from mnic_ops.capabilities import doctor, watchroots
    from mnic_ops.changes import filechange
    from mnic_ops.core import beneathfs, installroot
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot
    from mnic_ops.engines import cleanjobs, cleanpass, moveplace, retention
    from mnic_ops.facts import fwconfig, linkrecords
    from mnic_ops.facts.policy import Declared
    from mnic_ops.facts.projects import select_projects

    alice, bob = users["alice"], users["bob"]
    a = host.install(alice, "det/app")
    b = host.install(bob, "det/app")
    (a.root / "project_archive/background-tasks/results").mkdir(parents=True)
    (b.root / "project_archive/background-tasks/results").mkdir(parents=True)
    (b.root / "project_archive/background-tasks/state.json").write_text("{}")
    cfg = host.config("det", [a, b])
    app = AppContext(root=HostRoot.open("/"), config_path=str(cfg))
    [proj] = select_projects(app, [str(a.root)])
    assert proj.ident is not None and proj.ident[2] == alice.uid
    bob_before = tree_files(b.root)
    _swap(alice, a, b)
    try:
        root = app.root
        refusals: dict[str, str] = {}

        def refused(what: str, fn: object) -> None:
            try:
                fn()  # type: ignore[operator]
            except installroot.Replaced as exc:
                refusals[what] = exc.strerror or ""
                return
            raise AssertionError(f"{what}: opened the replaced install")

        loc = linkrecords.locate(root, proj, "thinking_logs")
        assert loc.state == linkrecords.FOLDER and loc.owner == alice.uid
        refused("locate/open_location", lambda: linkrecords.open_location(root, loc))
        refused("clean worker", lambda: cleanjobs.open_tree(root, proj.host_path,
                                                         ("project_archive",), proj.ident))
        refused("pass", lambda: cleanpass.Pass(app, check=False, only="expire").run_project(
            proj, None))
        decl = Declared()
        decl.set("task_results", "retention_days", 1.0, "test")
        keep = retention.Retention(root, proj, decl, check=False)
        empty = host.top / "det-empty"
        empty.mkdir()
        store = retention.Store("task_results", os.open(empty, os.O_RDONLY), str(empty),
                                str(empty), os.stat(empty).st_dev)
        try:
            rep = keep.run("task_results", store)
        finally:
            os.close(store.fd)
        assert rep.status == "failed" and "replaced" in rep.reason, rep
        refused("render read", lambda: beneathfs.read_beneath(
            proj.path, ".claude/agents/a.md", base_ident=proj.ident))
        refused("render write", lambda: filechange.file_item(
            root, f"{proj.host_path}/.claude/config/x.json", "{}", beneath=proj.host_path,
            beneath_ident=proj.ident))
        refused("relocate place", lambda: moveplace.Place(
            str(proj.path), "project_archive/sessions", proj.ident).open_parent())
        row = doctor.doctor_project(app, proj, [], [], set())
        assert "was replaced since mnic-ops found it" in json.dumps(row["checks"]), row
        roots = watchroots.build_roots(app, [proj], None)
        ready = [r for r in roots if r.prefix is not None and r.state != watchroots.REFUSED]
        assert ready
        for r in ready:
            watchroots.prepare_root(app, r, [], False)
            assert r.state in (watchroots.REFUSED, watchroots.ABSENT), (r.kind, r.state, r.note)
        c = fwconfig.read(proj.path, proj.host_path,  # read after the swap: not bob's
                          ".claude/config/extended-thinking-config.json",
                          base_ident=proj.ident)
        assert c.error and "replaced" in c.error, c
        print("refused:", sorted(refusals))
    finally:
        _unswap(alice, a.root.parent)
    assert tree_files(b.root) == bob_before


def test_a_data_folder_of_someone_else_inside_the_install_is_left_alone(
        host: NsHost, users: dict[str, User]) -> None:
    """However it got there (moved in from a folder Bob left writable), a data folder
    inside Alice's install that belongs to Bob is not cleaned on Alice's policy: plain
    data folders carry the install owner's uid too, checked on the opened descriptor."""
    alice, bob = users["alice"], users["bob"]
    a = host.install(alice, "own/app")
    python_as(alice, SHORT_RETENTION,
              str(a.root / ".claude/config/extended-thinking-config.json"))
    logs = a.root / ".claude/thinking-logs"
    for dirpath, dirnames, filenames in os.walk(logs):
        for n in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, n), bob.uid, bob.gid)
    os.lchown(logs, bob.uid, bob.gid)
    before = tree_files(logs)
    cfg = host.config("own", [a])
    r = host.mnic(cfg, "--json", "clean", "--only", "expire")
    assert tree_files(logs) == before, "bob's logs expired on alice's policy"
    kinds = json.loads(r.out)["projects"][0]["kinds"]
    assert f"owned by uid {bob.uid}, not by the install's owner" in \
        kinds["thinking_logs"]["note"], kinds["thinking_logs"]
