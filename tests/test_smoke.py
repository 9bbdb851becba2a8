from tests.conftest import run_mnic


def test_version_and_help() -> None:
    r = run_mnic("--version")
    assert r.code == 0 and "mnic-ops" in r.out
    r = run_mnic("--help")
    assert r.code == 0 and "Exit codes" in r.out
