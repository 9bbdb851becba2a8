from tests.conftest import run_mnic


def test_version_and_help() -> None:
    r = run_mnic("--version")
    assert r.code == 0 and "mnic-ops" in r.out
    r = run_mnic("--help")
    assert r.code == 0 and "Exit codes" in r.out


def test_fast_commands_import_no_heavy_modules() -> None:
    """--help, --version and detect stay fast: no jinja2, watchdog, crontab (or yaml)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    for args in (["--help"], ["--version"], ["detect"], ["--json", "detect"]):
        code = (f"import sys, runpy; sys.argv = ['mnic-ops', *{args!r}]\n"
                "try:\n    runpy.run_module('mnic_ops', run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "heavy = [m for m in sys.modules if m.split('.')[0] in "
                "('jinja2', 'watchdog', 'crontab', 'yaml', 'psutil')]\n"
                "print('HEAVY', heavy)\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=REPO)
        assert "HEAVY []" in p.stdout, (args, p.stdout, p.stderr)
