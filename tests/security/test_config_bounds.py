"""Attack 6 (issue 15): config values are checked when the config is loaded.

On main: ``patterns = "*.json"`` under a tier became the patterns ``*``, ``.``, ``j``...;
``inf`` and ``nan`` passed (``watch.poll_seconds = inf`` killed the observer thread);
``ssd_path = "relative"`` crashed relocate; ``clean.level = 12`` passed ``config`` and
failed later without file:line; only the first of several errors was reported. Every
case here is refused by ``config.load`` (so by ``mnic-ops config`` and the role's
``validate:``) with file:line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnic_ops.core import config, configvalidate
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from tests.conftest import run_mnic


def _cfg(root: Path, text: str) -> Path:
    p = root / "etc" / "mnic-ops" / "config.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


CASES = [
    ('[tiers.server.clean.sessions]\npatterns = "*.json"\n', 2, "expected list[str]"),
    ("[tiers.laptop.clean]\nsessions = {patterns = \"*.json\"}\n", 2, "expected list[str]"),
    ("clean = {sessions = 5}\n", 1, "expected a table, got integer"),
    ("[tiers.workstation]\nclean = 5\n", 2, "expected a table"),
    ('[clean.sessions]\ncompress_after_days = "x"\n', 2, "expected float, got string"),
    ("[clean.sessions]\npatterns = [1, 2]\n", 2, "expected list[str], got integer"),
    ('[clean.sessions]\npatterns = [""]\n', 2, "non-empty glob"),
    ('[clean.sessions]\npatterns = ["/abs/*.json"]\n', 2, "never matches"),
    ("[watch]\npoll_seconds = inf\n", 2, "expected a finite number, got inf"),
    ("[watch]\ncheck_seconds = nan\n", 2, "finite"),
    ("[watch.settle_seconds]\nsessions = -inf\n", 2, "finite"),
    ("[watch]\npoll_seconds = 0.0\n", 2, ">= 0.1"),
    ('ssd_path = "relative"\n', 1, "not an absolute path"),
    ('templates_dir = "tpl"\n', 1, "not an absolute path"),
    ('projects = ["/srv/a", "b"]\n', 1, "item 2"),
    ('[fstab]\nmount_points = ["data"]\n', 2, "not an absolute path"),
    ('[doctor]\nmetrics_file = "m.prom"\n', 2, "not an absolute path"),
    ("[clean]\nlevel = 12\n", 2, "expected a value <= 9, got 12"),
    ("[clean]\nlevel = 0\n", 2, ">= 1"),
    ("[clean.thinking_logs]\ndelete_after_days = 1e300\n", 2, "<= 36500"),
    ("[doctor]\nprobe_timeout = 1e308\n", 2, "<= 3600"),
    ("search_depth = 100000\n", 1, "<= 64"),
    ('[relocate]\nkinds = ["sessions", "everything"]\n', 2,
     "unknown kind 'everything'; expected one of sessions"),
    ('[cron]\nexpire_schedule = "61 * * * *"\n', 2, "not a valid cron schedule"),
    ('[tiers.laptop.cron]\ncompress_schedule = "* * *"\n', 2, "not a valid cron schedule"),
    ('[tiers.server]\nmax_agents = [1]\n', 2, "expected a string, number or boolean"),
    ('[tiers.server]\nmax_agents = nan\n', 2, "finite"),
    ('[cron]\ncommand = "/usr/bin/mnic-ops # x"\n', 2, "blank before '#'"),
    ('[cron]\ncommand = "\'unbalanced"\n', 2, "not a valid command line"),
    ('ssd_path = "/mnt/\\u0000x"\n', 1, "a NUL byte"),
    ('ssd_path = "/mnt/\\u001bx"\n', 1, "control character"),
    ('host_class = "server\\r"\n', 1, "carriage return"),
]


@pytest.mark.parametrize(("text", "line", "needle"), CASES)
def test_bad_values_are_refused_at_load_with_file_and_line(
        fake_root: Path, text: str, line: int, needle: str) -> None:
    p = _cfg(fake_root, text)
    with pytest.raises(InputError) as ei:
        config.load(HostRoot.open(fake_root), env={})
    msg = ei.value.message
    assert msg.startswith(f"{p}:{line}: "), msg
    assert needle in msg, msg


def test_every_error_is_reported_at_once(fake_root: Path) -> None:
    p = _cfg(fake_root, 'ssd_path = "rel"\n\n[clean]\nlevel = 12\nworkers = -1\n\n'
                        '[watch]\npoll_seconds = inf\n\n[tiers.server.clean.sessions]\n'
                        'patterns = "*.json"\n')
    r = run_mnic("--root", str(fake_root), "config")
    assert r.code == 2, r.out
    lines = r.err.strip().split("\n")
    assert [ln.split(": ", 3)[2] for ln in lines] == [
        f"{p}:1", f"{p}:4", f"{p}:5", f"{p}:8", f"{p}:11"], r.err
    assert all(ln.startswith("mnic-ops: error: ") for ln in lines)
    assert "Traceback" not in r.err and "internal error" not in r.err


def test_environment_overrides_get_the_same_checks(fake_root: Path) -> None:
    env = {"MNIC_OPS_WATCH__POLL_SECONDS": "inf", "MNIC_OPS_SSD_PATH": "relative",
           "MNIC_OPS_CLEAN__LEVEL": "12", "MNIC_OPS_CRON__LOG": "/x\ny"}
    with pytest.raises(InputError) as ei:
        config.load(HostRoot.open(fake_root), env=env)
    msg = ei.value.message
    for name in env:
        assert f"environment {name}: " in msg, msg
    assert len(msg.split("\n")) == 4


def test_valid_values_still_load(fake_root: Path) -> None:
    _cfg(fake_root, 'ssd_path = ""\n[clean]\nlevel = 9\ntextfile = ""\n'
                    '[clean.sessions]\npatterns = ["*.md", "sub/*.json"]\n'
                    '[tiers.server]\nmax_agents = 4\ncaching = "off"\n'
                    '[tiers.server.clean.sessions]\ncompress_after_days = 3\n'
                    '[tiers.server.cron]\nexpire_schedule = "*/15 * * * *"\n'
                    '[cron]\ncommand = "env PYTHONPATH=/opt/x /usr/bin/python3 -m mnic_ops"\n'
                    'log = "syslog"\n')
    c = config.load(HostRoot.open(fake_root), env={})
    assert c["tiers.server.clean.sessions.compress_after_days"] == 3.0
    assert c["clean.level"] == 9 and c["ssd_path"] == ""
    # the tier's clean/cron tables are not tier values: render accepts them
    from mnic_ops.capabilities import tiers

    table = tiers.load_table([tiers.shipped_templates()])
    assert tiers.effective(table, "server", c)["max_agents"] == 4


def test_checks_after_the_schema_pass_name_file_and_line(
        fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The place for cross-key checks (config.CHECKS): they report through
    Problems.add and get the key's file:line, or its environment variable."""
    def no_index(cfg: config.Config, problems: configvalidate.Problems) -> None:
        for kind in ("sessions", "checkpoints"):
            if "index.json" in (cfg.get(f"clean.{kind}.patterns") or []):
                problems.add(f"clean.{kind}.patterns", "covers a file the framework "
                             "reads back")

    monkeypatch.setattr(config, "CHECKS", [*config.CHECKS, no_index])
    p = _cfg(fake_root, '[clean.checkpoints]\npatterns = ["index.json"]\n')
    with pytest.raises(InputError) as ei:
        config.load(HostRoot.open(fake_root), env={})
    assert ei.value.message == (f"{p}:2: clean.checkpoints.patterns: covers a file the "
                                "framework reads back")
    with pytest.raises(InputError, match=r"^environment MNIC_OPS_CLEAN__SESSIONS__PATTERNS: "):
        config.load(HostRoot.open(fake_root), env={
            "MNIC_OPS_CLEAN__SESSIONS__PATTERNS": "a.json,index.json"})


def test_line_of_finds_quoted_dotted_and_inline_keys() -> None:
    text = ('a = 1\n[clean]\n"level" = 3\nsessions.patterns = ["x"]\n'
            '[ "tiers" . server ]\nmax_agents = 2\nclean = { sessions = 5 }\n')
    assert configvalidate.line_of(text, ["clean", "level"]) == 3
    assert configvalidate.line_of(text, ["clean", "sessions", "patterns"]) == 4
    assert configvalidate.line_of(text, ["tiers", "server", "max_agents"]) == 6
    assert configvalidate.line_of(text, ["tiers", "server", "clean", "sessions"]) == 7
    assert configvalidate.line_of(text, ["nosuch"]) is None
