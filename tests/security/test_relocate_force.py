"""Issue 15, attack 2: `relocate --force` moved what a user's link pointed at.

A plain user points a data folder of her install at another user's home, or at
/root; an admin then runs `relocate --force` (as one does for an SSD whose kind is
unknown, loop devices and VMs). On main the other home (or /root) was moved into a
folder on the SSD that she owns. Now such a link is reported and left alone whatever
the flags, in both directions, and --force never moves a folder the install's owner
does not own. The race version (a folder of hers swapped with a link to the other home
during moves) reaches nothing outside her tree either.

In a private mount namespace (tests/security/nshost.py) with users from useradd; /root
there is a tmpfs of the test's own, checked to be one before anything runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fsenv import diff_snapshots, snapshot
from tests.security.nshost import NsHost, ns_host, tree_files
from tests.security.users import User, chown_tree, plain_users, python_as, spawn_as

pytestmark = [pytest.mark.root, pytest.mark.slow]

POINT_AT = ("import os, shutil, sys\nshutil.rmtree(sys.argv[1])\n"
            "os.symlink(sys.argv[2], sys.argv[1])")

FLIPPER = r"""
import os, sys
flip, where, stop, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
folder, spare = flip + ".real", flip + ".link"
os.symlink(where, spare)
n = 0
while not os.path.exists(stop) and n < limit:
    os.rename(flip, folder)
    os.rename(spare, flip)
    os.path.exists(stop)
    os.rename(flip, spare)
    os.rename(folder, flip)
    n += 1
os.unlink(spare)
print(n, flush=True)
"""


@pytest.fixture(scope="module")
def host() -> Iterator[NsHost]:
    with ns_host("links-force-") as h:
        yield h


@pytest.fixture(scope="module")
def users(host: NsHost) -> Iterator[dict[str, User]]:
    with plain_users("links", "alice", "carol") as u:
        yield u


def _home(host: NsHost, user: User, tag: str) -> Path:
    """A home folder with private files, as a user keeps one."""
    home = host.hdd.mnt / "home" / f"{user.name}-home-{tag}"
    (home / "secret").mkdir(parents=True)
    (home / "secret/notes.txt").write_text(f"{user.name}'s notes\n")
    (home / ".profile").write_text("umask 077\n")
    chown_tree(home, user)
    os.chmod(home, 0o700)
    return home


def _owned_by(top: Path, uid: int) -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(top):
        for n in [*dirs, *files]:
            p = os.path.join(dirpath, n)
            if os.lstat(p).st_uid == uid:
                out.append(p)
    return out


RUNS = (("--force", "--to", "{x}"), ("--to", "{x}"), ("--undo", "--force"), ("--undo",))


def test_force_never_moves_another_users_home(host: NsHost, users: dict[str, User]) -> None:
    alice, carol = users["alice"], users["carol"]
    a = host.install(alice, "f1")
    victim = _home(host, carol, "f1")
    before = snapshot(victim)
    link = a.root / ".claude/checkpoints"
    python_as(alice, POINT_AT, str(link), str(victim))
    x = host.target("force-mnic")
    cfg = host.config("force", [a])
    for run in RUNS:
        args = [s.format(x=x) for s in run]
        r = host.mnic(cfg, "relocate", *args)
        assert victim.is_dir() and not victim.is_symlink(), (args, r.out, r.err)
        assert diff_snapshots(before, snapshot(victim)) == [], args
        assert os.readlink(link) == str(victim), args
        assert r.code == 0, (args, r.out, r.err)
        line = next(ln for ln in r.out.splitlines() if str(link) in ln)
        assert "not made by mnic-ops" in line and "with or without --force" in line, line
    assert not x.exists() or _owned_by(x, carol.uid) == []


def _python_under_root() -> bool:
    """Does the interpreter running mnic-ops live below /root (pyenv, say)? Then /root
    cannot be covered by a tmpfs of the test's own."""
    paths = {os.path.realpath(sys.executable), sys.prefix, sys.base_prefix,
             os.path.realpath(sys.base_prefix)}
    return any(p == "/root" or p.startswith("/root/") for p in paths)


@contextmanager
def _roots_home(host: NsHost) -> Iterator[Path]:
    """root's home for the attack: /root itself, covered in this namespace by a tmpfs of
    the test's own (checked to be one before anything runs); where the interpreter lives
    below /root, a root-owned 0700 folder elsewhere stands in (same owner and mode)."""
    if _python_under_root():
        home = host.top / "root-home"
        home.mkdir(mode=0o700)
        print("the interpreter lives below /root: a root-owned 0700 folder stands in")
        yield home
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "links-test-root", "/root"],
                   check=True)
    try:
        assert os.stat("/root").st_dev != os.stat("/").st_dev
        assert os.listdir("/root") == []
        yield Path("/root")
    finally:
        subprocess.run(["umount", "/root"], check=False)


def test_force_never_moves_root_s_home(host: NsHost, users: dict[str, User]) -> None:
    alice = users["alice"]
    a = host.install(alice, "f2")
    with _roots_home(host) as home:
        (home / "marker").write_text("the host's /root\n")
        (home / ".ssh").mkdir(mode=0o700)
        (home / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAA test\n")
        before = snapshot(home)
        link = a.root / ".claude/checkpoints"
        python_as(alice, POINT_AT, str(link), str(home))
        x = host.target("force-root")
        cfg = host.config("force-root", [a])
        for run in RUNS:
            args = [s.format(x=x) for s in run]
            r = host.mnic(cfg, "relocate", *args)
            assert (home / "marker").is_file(), (args, r.out, r.err)
            assert diff_snapshots(before, snapshot(home)) == [], args
            assert os.readlink(link) == str(home)
            assert r.code == 0, (args, r.out, r.err)
            assert "not made by mnic-ops" in r.out, r.out
        assert not x.exists() or not list(x.rglob("authorized_keys"))


def test_force_never_moves_a_folder_of_someone_else(host: NsHost,
                                                    users: dict[str, User]) -> None:
    """A data folder inside her install that belongs to another user (it got there
    through a shared folder, say) is not moved into the folder she owns on the SSD."""
    alice, carol = users["alice"], users["carol"]
    a = host.install(alice, "f3")
    theirs = a.root / "project_archive/sessions"
    chown_tree(theirs, carol)
    before = snapshot(theirs)
    x = host.target("force-owner")
    cfg = host.config("force-owner", [a])
    r = host.mnic(cfg, "relocate", "--force", "--to", str(x))
    assert r.code == 0, r.out + r.err
    assert theirs.is_dir() and not theirs.is_symlink()
    assert diff_snapshots(before, snapshot(theirs)) == []
    line = next(ln for ln in r.out.splitlines() if str(theirs) in ln)
    assert f"owned by uid {carol.uid}, not by the install's owner" in line, line
    assert (a.root / ".claude/checkpoints").is_symlink()  # hers: moved


def test_folder_swapped_with_a_link_during_moves(host: NsHost,
                                                 users: dict[str, User]) -> None:
    """Race: a folder inside her sessions and a link to another user's home swap places
    as fast as she can while root moves her sessions out and back. Whatever each move
    does (done, or refused because the tree changed), the other home is untouched and
    none of her files is lost."""
    alice, carol = users["alice"], users["carol"]
    a = host.install(alice, "f4")
    victim = _home(host, carol, "f4")
    victim_before = snapshot(victim)
    sessions = a.root / "project_archive/sessions"
    (sessions / "flip").mkdir()
    for i in range(20):
        (sessions / f"flip/f{i}.json").write_text(f'{{"i": {i}}}')
    chown_tree(sessions, alice)
    mine = tree_files(sessions)
    x = host.target("race-move")
    cfg = host.config("race-move", [a], '[relocate]\nkinds = ["sessions"]')
    cfg.write_text(cfg.read_text().replace("\n[relocate]\nmin_free_mib = 1\n", "\n")
                   .replace('kinds = ["sessions"]', 'kinds = ["sessions"]\nmin_free_mib = 1'))
    stop = host.top / "stop-move-race"
    flipper = spawn_as(alice, FLIPPER, str(sessions / "flip"), str(victim), str(stop),
                       "10000000")
    outcomes: list[int] = []
    try:
        time.sleep(0.2)
        for i in range(8):
            args = ("relocate", "--to", str(x)) if i % 2 == 0 else ("relocate", "--undo")
            r = host.mnic(cfg, *args)
            outcomes.append(r.code)
            assert r.code in (0, 1), r.out + r.err
            assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    finally:
        stop.touch()
        out, err = flipper.communicate(timeout=60)
        stop.unlink()
    flips = int(out.strip() or 0)
    print(f"{flips} flips by alice during {len(outcomes)} moves (exit codes {outcomes})")
    assert flipper.returncode == 0, err
    assert flips > len(outcomes)
    assert diff_snapshots(victim_before, snapshot(victim)) == []
    assert tree_files(sessions) == mine
    assert _owned_by(sessions, carol.uid) == []
