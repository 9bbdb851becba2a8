"""Config: schema validation with file:line messages, precedence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnic_ops.core import config
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from tests.conftest import run_mnic


def _cfg(root: Path, text: str) -> Path:
    p = root / "etc" / "mnic-ops" / "config.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,line,needle", [
    ('ssd_path = "/x"\n[detect]\nserver_min_cpu = 3\n', 3, "unknown key"),
    ('ssd_path = "/x"\n\n[detect]\nserver_min_cpus = "many"\n', 4, "expected int, got string"),
    ('host_class = "lapton"\n', 1, "expected one of laptop, workstation, server"),
    ('search_depth = -1\n', 1, "expected a value >= 0"),
    ('projects = "/srv/p"\n', 1, "expected list[str], got string"),
    ('ssd_path = "/x\n', 1, "TOML syntax error"),
    ('detect = 3\n', 1, "expected a table"),
])
def test_errors_name_file_line_and_expectation(fake_root: Path, text: str, line: int,
                                               needle: str) -> None:
    p = _cfg(fake_root, text)
    with pytest.raises(InputError) as ei:
        config.load(HostRoot.open(fake_root), env={})
    msg = ei.value.message
    assert msg.startswith(f"{p}:{line}"), msg
    assert needle in msg


def test_cli_bad_config_exits_2_without_traceback(fake_root: Path) -> None:
    _cfg(fake_root, "[detect]\nlaptop_max_cpus = true\n")
    r = run_mnic("--root", str(fake_root), "detect")
    assert r.code == 2
    assert "config.toml:2" in r.err and "Traceback" not in r.err
    # --help still works with a broken config
    assert run_mnic("--root", str(fake_root), "detect", "--help").code == 0


def test_absent_default_config_is_fine_but_explicit_missing_is_not(fake_root: Path) -> None:
    c = config.load(HostRoot.open(fake_root), env={})
    assert not c.loaded and c["ssd_path"] == "/mnt/ssd/my-name-is-claude"
    with pytest.raises(InputError, match="not found"):
        config.load(HostRoot.open(fake_root), str(fake_root / "missing.toml"), env={})


def test_precedence_env_over_file_over_default(fake_root: Path) -> None:
    _cfg(fake_root, 'ssd_path = "/from/file"\n[detect]\nserver_min_cpus = 8\n')
    c = config.load(HostRoot.open(fake_root), env={})
    assert c["ssd_path"] == "/from/file" and c["detect.server_min_cpus"] == 8
    assert c["detect.laptop_max_cpus"] == 4  # default kept beside the file's value
    c = config.load(HostRoot.open(fake_root), env={"MNIC_OPS_SSD_PATH": "/from/env",
                                                   "MNIC_OPS_DETECT__SERVER_MIN_CPUS": "64",
                                                   "MNIC_OPS_SEARCH_PATHS": "/a, /b"})
    assert c["ssd_path"] == "/from/env" and c["detect.server_min_cpus"] == 64
    assert c["search_paths"] == ["/a", "/b"]
    with pytest.raises(InputError, match="MNIC_OPS_DETECT__SERVER_MIN_CPUS"):
        config.load(HostRoot.open(fake_root), env={"MNIC_OPS_DETECT__SERVER_MIN_CPUS": "x"})


def test_config_command_shows_values_and_schema(fake_root: Path) -> None:
    _cfg(fake_root, 'search_depth = 5\n')
    r = run_mnic("--root", str(fake_root), "--json", "config")
    assert r.code == 0
    assert json.loads(r.out)["values"]["search_depth"] == 5
    r = run_mnic("--root", str(fake_root), "config", "--schema")
    assert "detect.server_min_cpus" in r.out


def test_non_utf8_config(fake_root: Path) -> None:
    p = fake_root / "etc" / "mnic-ops" / "config.toml"
    p.parent.mkdir(parents=True)
    p.write_bytes(b'ssd_path = "\xff"\n')
    with pytest.raises(InputError, match="not UTF-8"):
        config.load(HostRoot.open(fake_root), env={})
