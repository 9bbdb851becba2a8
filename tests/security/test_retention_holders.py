"""Another user's process does not stop an install's retention (the reviewer's finding 8
on issue 14's retention).

A framework process working in an install makes the classes with an index skip (no
second writer of the index). On main any process counted: Alice, sitting in Bob's
install (``cd /home/bob/app; sleep``), kept Bob's checkpoints from ever expiring. Now
only processes of the install's owner or root count. Real plain user, real clean.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.security.inputs_support import (
    BOB_UID,
    USER_PYTHON,
    User,
    host_tree,
    mnic,
    plain_user,
    two_installs,
)

SIT = "import os, sys, time; os.chdir(sys.argv[1]); print('in', flush=True); time.sleep(120)"


@pytest.fixture
def alice() -> Iterator[User]:
    with plain_user("alice") as u:
        yield u


def _sit(uid: int, gid: int, where: str) -> subprocess.Popen[str]:
    # its own session, as a framework or another user's shell has: mnic-ops does not
    # count its own process group (the shell or pipeline that ran it)
    p = subprocess.Popen([USER_PYTHON, "-c", SIT, where], user=uid, group=gid,
                         extra_groups=[], stdout=subprocess.PIPE, text=True, cwd="/",
                         start_new_session=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "in"
    return p


def _store_status(root: object, b: str) -> dict:
    r = mnic(root, "--json", "clean", "--check", "--only", "expire", b)  # type: ignore[arg-type]
    assert r.code in (0, 3), r.out + r.err
    return json.loads(r.out)["projects"][0]["kinds"]["checkpoint_store"]["retention"]


@pytest.mark.parametrize(("who", "counts"), [("alice", False), ("bob", True),
                                             ("root", True)])
def test_only_the_owners_or_roots_processes_count(alice: User, who: str,
                                                  counts: bool) -> None:
    with host_tree() as root:
        _a, b = two_installs(root, alice)
        where = str(root / b.lstrip("/"))
        uid, gid = {"alice": (alice.uid, alice.gid), "bob": (BOB_UID, BOB_UID),
                    "root": (0, 0)}[who]
        proc = _sit(uid, gid, where)
        try:
            ret = _store_status(root, b)
        finally:
            proc.kill()
            proc.wait()
        print(who, ret["status"], ret.get("reason", ""))
        if counts:
            assert ret["status"] == "skipped" and f"pid {proc.pid}" in ret["reason"], ret
        else:
            assert ret["status"] == "done", ret
