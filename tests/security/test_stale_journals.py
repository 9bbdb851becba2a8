"""Issue 15, attack 8: journals of interrupted moves.

A move is killed half-way (kill -9), then its user deletes the install. On main the
journal then failed every later relocate (and provision) on the host with "No such
file or directory", or was "completed" and reported changed, and recovery ran for
installs the admin did not name. Now recovery is scoped to the installs of the run,
a journal that cannot be finished is reported and skipped, `relocate --list-pending`
shows each journal and what it left on disk, and `relocate --forget ID` discards one
once nothing of it is left (journalled, undoable).

In a private mount namespace (tests/security/nshost.py), users from useradd.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fsenv import diff_snapshots, snapshot
from tests.security.nshost import NsHost, ns_host
from tests.security.users import User, plain_users, run_as

pytestmark = [pytest.mark.root, pytest.mark.slow]
JOURNALS = Path("/var/lib/mnic-ops/relocate")  # private: /var is the namespace's own


@pytest.fixture(scope="module")
def host() -> Iterator[NsHost]:
    with ns_host("links-jrnl-") as h:
        yield h


@pytest.fixture(scope="module")
def users(host: NsHost) -> Iterator[dict[str, User]]:
    with plain_users("links", "dave", "erin", "frank") as u:
        yield u


@pytest.fixture(autouse=True)
def no_journals_left(host: NsHost) -> Iterator[None]:
    """Each test starts with no journal (the namespace's private /var is shared by the
    module): one a failing test left must not decide the next test's outcome."""
    shutil.rmtree(JOURNALS, ignore_errors=True)
    yield


def _journals() -> list[str]:
    return sorted(p.name for p in JOURNALS.glob("move-*.json")) if JOURNALS.is_dir() else []


def _items(out: str) -> list[dict]:
    return json.loads(out)["items"]


def _pending(host: NsHost, cfg: Path) -> list[dict]:
    r = host.mnic(cfg, "--json", "relocate", "--list-pending")
    assert r.code == 0, r.out + r.err
    return json.loads(r.out)["pending"]


def _crash(host: NsHost, cfg: Path, point: str, *args: str) -> None:
    r = host.mnic(cfg, "relocate", *args, env={"MNIC_OPS_TEST_CRASH_AT": point})
    assert r.code == -signal.SIGKILL, (r.code, r.out, r.err)


def test_journal_of_a_deleted_install_blocks_nothing(host: NsHost,
                                                     users: dict[str, User]) -> None:
    dave, erin = users["dave"], users["erin"]
    d = host.install(dave, "d1")
    e = host.install(erin, "e1")
    x = host.target("jrnl-mnic")
    cfg = host.config("deleted", [d, e], f'ssd_path = "{x}"')
    _crash(host, cfg, "copy-copied", "--to", str(x), str(d.root))
    assert len(_journals()) == 1
    run_as(dave, ["rm", "-rf", str(d.root)])  # the user deletes the install

    r = host.mnic(cfg, "--json", "relocate", "--to", str(x))
    assert r.code == 0, r.out + r.err
    items = _items(r.out)
    stale = [i for i in items if i["id"].startswith("recover:")]
    assert [i["state"] for i in stale] == ["skipped"], stale
    assert "nothing to finish" in stale[0]["reason"], stale
    assert "--forget" in stale[0]["reason"]
    assert not [i for i in items if str(d.root) in i["id"] and i["state"] != "skipped"]
    assert (e.root / "project_archive/sessions").is_symlink()  # erin's move went on
    assert all(i["state"] == "changed" for i in items if str(e.root) in i["id"])

    r = host.mnic(cfg, "relocate", "--check", "--to", str(x))
    assert r.code == 0, r.out + r.err  # nothing pending: the stale journal is no change
    r = host.mnic(cfg, "--json", "provision", "--check")
    assert r.code in (0, 3), r.out + r.err
    prov = _items(r.out)
    assert not [i for i in prov if i["state"] == "failed"], prov
    assert [i["state"] for i in prov if i["id"].startswith("recover:")] == ["skipped"]

    (pm,) = _pending(host, cfg)
    assert pm["status"] == "install_missing" and pm["phase"] == "copy", pm
    assert len(pm["leftovers"]) == 1 and pm["leftovers"][0].startswith(str(x)), pm
    staging = Path(pm["leftovers"][0])
    assert staging.is_dir()
    r = host.mnic(cfg, "relocate", "--list-pending")
    assert pm["id"] in r.out and "install missing" in r.out and str(staging) in r.out

    # Something of the move is still on disk: not forgotten, and it says what.
    r = host.mnic(cfg, "relocate", "--forget", pm["id"])
    assert r.code == 1 and "still on disk" in r.out + r.err and str(staging) in r.out + r.err
    assert _journals() == [pm["id"] + ".json"]
    shutil.rmtree(staging)  # the admin decides: the partial copy of a deleted install goes
    r = host.mnic(cfg, "relocate", "--forget", pm["id"], "--check")
    assert r.code == 3, r.out + r.err
    assert _journals() == [pm["id"] + ".json"]
    r = host.mnic(cfg, "relocate", "--forget", pm["id"])
    assert r.code == 0, r.out + r.err
    assert _journals() == [] and _pending(host, cfg) == []
    # journalled: undo puts the journal back, and it can be forgotten again
    r = host.mnic(cfg, "undo", "--list")
    assert f"forget:{pm['id']}" in r.out, r.out
    r = host.mnic(cfg, "undo", "--last")
    assert r.code == 0, r.out + r.err
    assert _journals() == [pm["id"] + ".json"]
    assert host.mnic(cfg, "relocate", "--forget", pm["id"]).code == 0
    assert _journals() == []


def test_recovery_runs_only_for_the_installs_in_this_run(host: NsHost,
                                                         users: dict[str, User]) -> None:
    erin, frank = users["erin"], users["frank"]
    f = host.install(frank, "f1")
    e = host.install(erin, "e2")
    x = host.target("jrnl-scope")
    cfg = host.config("scope", [e, f])
    _crash(host, cfg, "out-swapped", "--to", str(x), str(f.root))
    frank_state = snapshot(f.root)

    r = host.mnic(cfg, "--json", "relocate", "--to", str(x), str(e.root))
    assert r.code == 0, r.out + r.err
    items = _items(r.out)
    rec = [i for i in items if i["id"].startswith("recover:")]
    assert [i["state"] for i in rec] == ["skipped"], rec
    assert "not in this run" in rec[0]["reason"]
    assert not [i for i in items if str(f.root) in i["id"] and i["state"] == "changed"]
    assert diff_snapshots(frank_state, snapshot(f.root)) == []  # not touched
    (pm,) = _pending(host, cfg)
    assert pm["status"] == "recoverable" and pm["project"] == str(f.root)

    # Named, it is finished (and recorded, so that undo can revert it).
    r = host.mnic(cfg, "--json", "relocate", "--to", str(x), str(f.root))
    assert r.code == 0, r.out + r.err
    rec = [i for i in _items(r.out) if i["id"].startswith("recover:")]
    assert [i["state"] for i in rec] == ["changed"], rec
    assert _pending(host, cfg) == []
    assert (f.root / "project_archive/sessions").is_symlink()


def test_journal_whose_target_is_gone(host: NsHost, users: dict[str, User]) -> None:
    erin = users["erin"]
    e = host.install(erin, "e3")
    gone = host.target("jrnl-gone")
    cfg = host.config("gone", [e])
    before = snapshot(e.root / "project_archive/sessions")
    _crash(host, cfg, "copy-copied", "--to", str(gone), str(e.root))
    shutil.rmtree(gone)  # the SSD folder went (reformatted, unplugged)
    other = host.target("jrnl-other")
    r = host.mnic(cfg, "--json", "relocate", "--to", str(other))
    assert r.code == 0, r.out + r.err
    items = {i["id"]: i for i in _items(r.out)}
    sess = str(e.root / "project_archive/sessions")
    assert items[f"recover:{sess}"]["state"] == "skipped"
    assert "no longer exists" in items[f"recover:{sess}"]["reason"]
    assert items[f"relocate:{sess}"]["state"] == "skipped"
    assert "cannot be finished" in items[f"relocate:{sess}"]["reason"]
    (pm,) = _pending(host, cfg)
    assert pm["status"] == "target_missing" and pm["leftovers"] == []
    assert diff_snapshots(before, snapshot(sess)) == []  # the data never left
    assert host.mnic(cfg, "relocate", "--forget", pm["id"]).code == 0
    r = host.mnic(cfg, "relocate", "--to", str(other))
    assert r.code == 0, r.out + r.err
    assert Path(sess).is_symlink()
    assert diff_snapshots(before, snapshot(sess)) == []
