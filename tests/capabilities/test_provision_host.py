"""Issue 8 end to end on a throwaway test host (overlay of / in a private mount
namespace, chroot): the Ansible role installs mnic-ops from wheels built here and
provisions; the testinfra suite checks the host; a second run changes nothing;
verify finds a hand-made drift; undo --all restores /etc and the project byte for byte.
Nothing of the real machine changes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.testhost import TestHost, tree_hash

pytestmark = pytest.mark.slow
PROJECT = "/home/alice/proj"
MNIC = "/opt/mnic-ops/bin/mnic-ops"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnic-ops and its dependencies as wheels, so the test host installs offline."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[TestHost]:
    for cap in ("root", "unshare", "loop"):
        require(cap)
    if not (BIN / "ansible-playbook").exists():
        pytest.skip("ansible-playbook not installed (test extra)")
    th = TestHost(tmp_path_factory.mktemp("testhost"))
    try:
        th.start()
        th.add_ssd()
        th.add_project(PROJECT)
        wheels = th.root / "tmp" / "wheels"
        wheels.mkdir()
        for w in wheelhouse.iterdir():
            (wheels / w.name).write_bytes(w.read_bytes())
        yield th
    finally:
        th.stop()


def _playbook(th: TestHost, *flags: str, **extra: object) -> subprocess.CompletedProcess[str]:
    wheel = next(p.name for p in (th.root / "tmp/wheels").iterdir()
                 if p.name.startswith("mnic_ops-"))
    ev = {"mnic_ops_install_source": f"/tmp/wheels/{wheel}",
          "mnic_ops_pip_extra_args": "--no-index --find-links /tmp/wheels",
          "mnic_ops_projects": [PROJECT], "mnic_ops_ssd_path": "/mnt/ssd/my-name-is-claude",
          "mnic_ops_apply_fstab": True, **extra}
    env = {"ANSIBLE_HOME": "/tmp/ansible-home", "ANSIBLE_CONFIG": f"{REPO}/ansible.cfg",
           "ANSIBLE_ROLES_PATH": f"{REPO}/roles", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": "/tmp/ansible-local"}
    return th.chroot([str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,",
                      "-e", json.dumps(ev), *flags, f"{REPO}/playbooks/site.yml"], env=env,
                     check=False)


def _recap(out: str) -> dict[str, int]:
    m = re.search(r"localhost\s*:\s*(.*)", out)
    assert m, out
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


# The test host's /etc is an overlay over this machine's live /etc: when something else
# on the machine adds or removes a user, the shadow tools' backup files change under
# the overlay. Neither mnic-ops nor the role touches them.
SHADOW_BACKUPS = tuple(f"etc/{n}-" for n in ("passwd", "group", "shadow", "gshadow",
                                             "subuid", "subgid"))


def _hashes(th: TestHost) -> dict[str, object]:
    return {"etc": tree_hash(th.root, "/etc", skip=SHADOW_BACKUPS),
            "project": tree_hash(th.root, PROJECT)}


def test_end_to_end(host: TestHost) -> None:
    th = host
    # 1. The role installs the tool and its config only.
    r = _playbook(th, mnic_ops_provision=False)
    assert r.returncode == 0, r.stdout + r.stderr
    before = _hashes(th)

    # 1b. A bad setting fails the role with mnic-ops's own error; the config stays.
    r = _playbook(th, mnic_ops_provision=False, mnic_ops_settings={"cron": {"bogus": 1}})
    assert r.returncode != 0
    assert "bogus: unknown key" in r.stdout + r.stderr, r.stdout + r.stderr
    assert _hashes(th) == before

    # 2. --check on the fresh host: exit 3, nothing changes.
    c = th.chroot([MNIC, "--json", "provision", "--check"], check=False)
    assert c.returncode == 3, c.stdout + c.stderr
    assert json.loads(c.stdout)["counts"]["pending"] > 0
    assert _hashes(th) == before

    # 2b. The role in check mode with --diff: the module plans against the config the
    # role would write (a changed setting shows up in the diff of the cron file it
    # would write), shows each file's diff, and nothing changes.
    r = _playbook(th, "--check", "--diff",
                  mnic_ops_settings={"cron": {"compress_schedule": "17 4 * * *"}})
    assert r.returncode == 0, r.stdout + r.stderr
    assert _recap(r.stdout)["changed"] >= 1
    assert "+++ after: /etc/cron.d/mnic-ops" in r.stdout, r.stdout
    assert "+17 4 * * * root " in r.stdout, r.stdout
    assert f"+++ after: {PROJECT}/.claude/config/parallel-agents-config.json" in r.stdout
    assert _hashes(th) == before

    # 3. The role provisions; the testinfra suite checks what it promises.
    r = _playbook(th)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _recap(r.stdout)["changed"] >= 1
    t = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"{REPO}/tests/infra", "--connection=chroot", f"--hosts={th.root}"],
                       capture_output=True, text=True, cwd=REPO, timeout=900,
                       env={**os.environ, "MNIC_OPS_BIN": MNIC})
    assert t.returncode == 0, t.stdout + t.stderr
    assert "passed" in t.stdout and "skipped" not in t.stdout, t.stdout

    # 4. A second role run changes nothing; verify is clean.
    r = _playbook(th)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _recap(r.stdout)["changed"] == 0, r.stdout
    assert th.chroot([MNIC, "verify"], check=False).returncode == 0

    # 5. A hand-made drift is named with expected and actual; exit 1.
    cfg = th.root / PROJECT.lstrip("/") / ".claude/config/parallel-agents-config.json"
    good = cfg.read_bytes()
    cfg.write_bytes(re.sub(rb'"maxParallelAgents": \d+', b'"maxParallelAgents": 77', good))
    v = th.chroot([MNIC, "verify"], check=False)
    assert v.returncode == 1
    assert "maxParallelAgents: expected" in v.stdout and "actual 77" in v.stdout, v.stdout
    st = os.stat(cfg)
    cfg.write_bytes(good)
    os.chown(cfg, st.st_uid, st.st_gid)

    # 6. undo --all: /etc and the project are byte-identical to before provisioning.
    u = th.chroot([MNIC, "undo", "--all"], check=False)
    assert u.returncode == 0, u.stdout + u.stderr
    after = _hashes(th)
    for part in ("etc", "project"):
        a, b = before[part], after[part]
        assert isinstance(a, dict) and isinstance(b, dict)
        diff = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert not diff, f"{part} differs after undo --all: {sorted(diff)[:20]}"
