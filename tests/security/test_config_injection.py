"""Attack 4 (issue 15): a newline in a config value became a root cron line.

``[cron] log = "/var/log/x\\n* * * * * root touch /tmp/PWNED"`` passed ``mnic-ops
config`` and ``cron install`` wrote the extra job into /etc/cron.d/mnic-ops (breaking
both real ones); a ``--config`` path with a newline did the same. Now the config is
refused with file:line (exit 2, so the role's ``validate:`` refuses it), and whatever
reaches the cron file or the unit goes through the quoting layer."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_mnic
from tests.security.inputs_support import host_tree, mnic

CRON = "etc/cron.d/mnic-ops"
PWNED = "* * * * * root touch /tmp/PWNED"


@pytest.fixture
def root() -> Iterator[Path]:
    with host_tree() as r:
        yield r


def job_lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln.strip() and not ln.startswith("#")
            and not re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*=", ln)]


def test_newline_in_cron_log_is_refused_with_file_and_line(root: Path) -> None:
    cfg = root / "etc/mnic-ops/config.toml"
    cfg.write_text('search_paths = []\n[cron]\nlog = "/var/log/x\\n' + PWNED + '"\n')
    r = mnic(root, "config")
    assert r.code == 2, r.out + r.err
    assert f"{cfg}:3: cron.log:" in r.err and "newline" in r.err
    # the role validates with --config FILE: same answer
    r = run_mnic("--config", str(cfg), "config")
    assert r.code == 2 and f"{cfg}:3:" in r.err
    r = mnic(root, "cron", "install", "--system")
    assert r.code == 2 and "internal error" not in r.err
    assert not (root / CRON).exists()


def test_newline_in_an_environment_override_is_refused(root: Path) -> None:
    r = run_mnic("--root", str(root), "cron", "install", "--system",
                 env={"MNIC_OPS_CRON__LOG": "/var/log/x\n" + PWNED})
    assert r.code == 2 and "environment MNIC_OPS_CRON__LOG: cron.log:" in r.err
    assert not (root / CRON).exists()


def test_cron_file_holds_exactly_the_two_jobs(root: Path) -> None:
    """A log path with blanks, quotes and % is fine: it stays one shell word, and the
    file has our two jobs and nothing else."""
    log = "/var/log/mnic ops \"100%\" 'x'.log"
    (root / "etc/mnic-ops/config.toml").write_text(
        'search_paths = []\n[cron]\nlog = "' + log.replace('"', '\\"') + '"\n')
    from mnic_ops.core import quoting

    r = mnic(root, "cron", "install", "--system")
    assert r.code == 0, r.err
    text = (root / CRON).read_text()
    jobs = job_lines(text)
    assert len(jobs) == 2, text
    for line in jobs:
        fields = line.split(None, 6)
        assert fields[5] == "root"
        field = re.sub(r" # mnic-ops:(compress|expire)$", "", fields[6])
        cmd, stdin = quoting.cron_unescape(field)
        assert stdin is None
        assert shlex.split(cmd)[-2:] == [">>" + log, "2>&1"]


def test_config_path_with_a_newline_writes_no_cron_line_and_no_unit(root: Path) -> None:
    cfg = root / "etc/mnic-ops" / "c\n* * * * * root touch PWNED\n.toml"  # a file name
    cfg.write_text("search_paths = []\n")
    r = mnic(root, "--config", str(cfg), "cron", "install", "--system")
    assert r.code == 2, r.out + r.err
    assert "--config" in r.err and "newline" in r.err and "internal error" not in r.err
    assert not (root / CRON).exists()
    r = mnic(root, "--config", str(cfg), "watch", "--install-unit", "--check")
    assert r.code == 2, r.out + r.err
    assert "newline" in r.err and "internal error" not in r.err
    assert not (root / "etc/systemd/system/mnic-ops-watch.service").exists()


def test_a_value_cron_cannot_carry_is_refused_not_altered(root: Path) -> None:
    (root / "etc/mnic-ops/config.toml").write_text(
        'search_paths = []\n[cron]\nlog = "/var/log/a\\\\%b"\n')
    r = mnic(root, "config")
    assert r.code == 2 and "config.toml:3: cron.log:" in r.err and "backslash" in r.err
    assert not (root / CRON).exists()
