"""What a terminal gets: colour only where it belongs (NO_COLOR, TERM=dumb, --color),
shell completion and the man page, generated from the commands themselves."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_mnic

ESC = "\x1b["


def _on_pty(args: list[str], env: dict[str, str]) -> str:
    """Run mnic-ops with stdout on a pseudo-terminal; everything it printed."""
    master, slave = pty.openpty()
    e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")
         and k not in ("NO_COLOR", "TERM")}
    e.update({"PYTHONPATH": str(REPO), "TERM": "xterm", **env})
    p = subprocess.Popen([sys.executable, "-m", "mnic_ops", *args], stdout=slave,
                         stderr=subprocess.DEVNULL, env=e)
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=60)
    os.close(master)
    return out.decode(errors="replace")


@pytest.fixture
def plan_args(fake_root: Path) -> list[str]:
    (fake_root / "etc/cron.d").mkdir(parents=True)
    return ["--root", str(fake_root), "cron", "install", "--check"]


@pytest.mark.parametrize(("env", "extra", "coloured"), [
    ({}, [], True),
    ({"NO_COLOR": "1"}, [], False),
    ({"TERM": "dumb"}, [], False),
    ({}, ["--color=never"], False),
    ({"NO_COLOR": "1"}, ["--color=always"], True),
])
def test_colour_on_a_terminal(plan_args: list[str], env: dict[str, str],
                              extra: list[str], coloured: bool) -> None:
    out = _on_pty([*extra, *plan_args], env)
    assert "would change" in out, out
    assert (ESC in out) is coloured, repr(out[:300])


def test_colour_off_a_terminal_unless_always(plan_args: list[str]) -> None:
    assert ESC not in run_mnic(*plan_args).out
    r = run_mnic("--color", "always", *plan_args)
    assert ESC in r.out and "would change" in r.out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    r = run_mnic("completion", shell)
    assert r.code == 0 and "_MNIC_OPS_COMPLETE" in r.out, r.err


def test_bash_completion_completes_commands_and_options() -> None:
    if not shutil.which("bash"):
        pytest.skip("bash not installed")
    e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    e.update(PYTHONPATH=str(REPO), _MNIC_OPS_COMPLETE="bash_complete",
             COMP_WORDS="mnic-ops rel", COMP_CWORD="1")
    p = subprocess.run([sys.executable, "-m", "mnic_ops"], env=e, capture_output=True,
                       text=True, timeout=60)
    assert "plain,relocate" in p.stdout.splitlines(), p.stdout
    e.update(COMP_WORDS="mnic-ops clean --on", COMP_CWORD="2")
    p = subprocess.run([sys.executable, "-m", "mnic_ops"], env=e, capture_output=True,
                       text=True, timeout=60)
    assert "plain,--only" in p.stdout.splitlines(), p.stdout


def test_manpage_is_valid_roff_and_covers_every_command() -> None:
    r = run_mnic("manpage")
    assert r.code == 0 and r.out.startswith(".TH MNIC-OPS 1"), r.err
    for cmd in ("provision", "verify", "relocate", "cron install", "watch", "undo",
                "completion"):
        assert f"\\fB{cmd}\\fR" in r.out, cmd
    if not shutil.which("groff") and not shutil.which("nroff"):
        pytest.skip("no groff/nroff to render the page")
    tool = shutil.which("groff") or "nroff"
    args = [tool, "-man", "-Tutf8", "-ww", "-z"] if tool.endswith("groff") else [tool, "-man"]
    p = subprocess.run(args, input=r.out, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
