"""Relocated data its owner can reach (the reviewer's finding 4 on issue 15's relocate).

relocate creates the target folder (root's, 0755) and, in it, the install's folder
(the install owner's, with the install root's mode). On main both came out wrong and
relocate still said ok: under root's ``umask 077`` the target was 0700 (``mkdir``'s mode
is masked), and a rerun after a ``kill -9`` between making the install's folder (root's,
0700) and giving it to the owner took that root-only folder as it was. Either way the
owner could no longer read her own sessions. Real plain user, real relocate, a private
mount namespace with loop filesystems.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator

import pytest

from tests.security.nshost import NsHost, ns_host
from tests.security.users import User, plain_users, run_as

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def host() -> Iterator[NsHost]:
    with ns_host("reach-sec-") as h:
        yield h


@pytest.fixture(scope="module")
def alice(host: NsHost) -> Iterator[User]:
    with plain_users("harden", "alice") as u:
        yield u["alice"]


@pytest.mark.parametrize("case", ["umask077", "killed_after_mkdir", "killed_before_rename"])
def test_the_owner_reaches_her_relocated_data(host: NsHost, alice: User, case: str) -> None:
    a = host.install(alice, f"{case}/app")
    os.chmod(a.root, 0o750)
    cfg = host.config(case, [a])
    target = host.target(f"t-{case}")
    r = host.mnic(cfg, "--json", "relocate", "--check", "--to", str(target))
    m = re.search(r"/t-[a-z0-9_]+/([^/\"]+)/sessions", r.out)
    assert m, r.out
    slug = target / m.group(1)
    if case != "umask077":
        # what a kill -9 left: the target, and in it the install's folder as root's
        # (an older relocate: mkdir, killed before fchown) or a temporary of it (now)
        target.mkdir(mode=0o755)
        made = slug if case == "killed_after_mkdir" else \
            target / f".{slug.name}.mnic-ops-tmp.999999.0badc0de"
        made.mkdir(mode=0o700)
    old = os.umask(0o077 if case == "umask077" else 0o022)
    try:
        r = host.mnic(cfg, "--json", "relocate", "--to", str(target))
    finally:
        os.umask(old)
    assert r.code == 0, r.out + r.err
    modes = {p: (os.lstat(os.path.join(d, p)).st_uid,
                 stat.S_IMODE(os.lstat(os.path.join(d, p)).st_mode))
             for d, ds, _fs in os.walk(target) for p in ds}
    print(json.dumps({str(k): v for k, v in modes.items()}))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    st = os.stat(slug)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o750), modes
    assert [n for n in os.listdir(target) if n != slug.name] == []  # no temporary left
    sess = a.data("project_archive/sessions")
    assert sess.is_symlink()
    one = sorted(os.listdir(sess))[0]
    got = run_as(alice, ["cat", str(sess / one)], check=False)
    assert got.returncode == 0, f"alice cannot read her own relocated sessions: {got.stderr}"
