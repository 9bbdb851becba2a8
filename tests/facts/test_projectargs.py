"""PROJECT arguments (issue 16 item 2): relative paths and ``.`` are resolved against
the current directory (under ``--root``: inside the root, mapped to the host path); a
bare name is an install's folder name unless ``./NAME`` is itself an install."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import projectargs
from tests.conftest import run_mnic
from tests.facts.test_projects import make_install, write_config


def _host(fake_root: Path) -> Path:
    make_install(fake_root / "home/alice/app", version="3.10.0")
    make_install(fake_root / "srv/team/app", version="3.10.0")   # found by the search
    make_install(fake_root / "srv/team/other", version="3.10.0")
    write_config(fake_root, 'search_paths = ["/srv"]\nhost_class = "server"\n')
    return fake_root


def _roots(r: object) -> list[str]:
    out = r.out  # type: ignore[attr-defined]
    return [p["root"] for p in json.loads(out)["projects"]]


@pytest.mark.parametrize("cmd", [["projects"], ["clean", "--check"],
                                 ["doctor"]])
def test_dot_inside_an_install(fake_root: Path, cmd: list[str]) -> None:
    """`mnic-ops clean .` inside an install: main answered "no such framework install"."""
    root = _host(fake_root)
    r = run_mnic("--root", str(root), *cmd, ".", "--json",
                 cwd=str(root / "srv/team/other"))
    assert r.code in (0, 1, 3), r.out + r.err
    doc = json.loads(r.out)
    assert "no such framework install" not in r.out + r.err
    named = [p.get("root") or p.get("project") for p in doc["projects"]]
    assert named == ["/srv/team/other"], doc["projects"]


def test_relative_paths_and_dotdot(fake_root: Path) -> None:
    root = _host(fake_root)
    r = run_mnic("--root", str(root), "projects", "--json", "team/other", "./team/app",
                 cwd=str(root / "srv"))
    assert r.code == 0, r.err
    assert _roots(r) == ["/srv/team/other", "/srv/team/app"]
    sub = root / "srv/team/other/project_archive"
    r = run_mnic("--root", str(root), "projects", "--json", "..", cwd=str(sub))
    assert r.code == 0, r.err
    assert _roots(r) == ["/srv/team/other"]


def test_a_folder_inside_an_install_is_named_with_its_install(fake_root: Path) -> None:
    root = _host(fake_root)
    r = run_mnic("--root", str(root), "projects", ".",
                 cwd=str(root / "srv/team/other/project_archive"))
    assert r.code == 2
    assert "/srv/team/other/project_archive" in r.err
    assert "inside the install /srv/team/other" in r.err


def test_bare_name_precedence(fake_root: Path) -> None:
    """`app` in /home/alice, where ./app is an install the search does not find, is that
    install; elsewhere `app` is the install the search found with that folder name; a
    folder ./NAME that is no install does not hide the install named NAME."""
    root = _host(fake_root)
    r = run_mnic("--root", str(root), "projects", "--json", "app",
                 cwd=str(root / "home/alice"))
    assert r.code == 0, r.err
    assert _roots(r) == ["/home/alice/app"]
    r = run_mnic("--root", str(root), "projects", "--json", "app", cwd=str(root / "etc"))
    assert _roots(r) == ["/srv/team/app"]
    (root / "home/bob/other").mkdir(parents=True)  # a plain folder named like an install
    r = run_mnic("--root", str(root), "projects", "--json", "other",
                 cwd=str(root / "home/bob"))
    assert _roots(r) == ["/srv/team/other"]
    r = run_mnic("--root", str(root), "projects", "nothere", cwd=str(root / "home/bob"))
    assert r.code == 2 and "no such framework install" in r.err
    (root / "home/bob/nothere").mkdir()
    r = run_mnic("--root", str(root), "projects", "nothere", cwd=str(root / "home/bob"))
    assert r.code == 2 and "./nothere is a folder but not a framework install" in r.err


def test_relative_path_outside_the_root_is_refused(fake_root: Path, tmp_path: Path) -> None:
    root = _host(fake_root)
    outside = tmp_path / "elsewhere"
    make_install(outside / "app")
    r = run_mnic("--root", str(root), "projects", "./app", cwd=str(outside))
    assert r.code == 2
    assert "outside --root" in r.err and str(outside / "app") in r.err
    # a bare name from outside the root is still an install name
    r = run_mnic("--root", str(root), "projects", "--json", "other", cwd=str(outside))
    assert r.code == 0 and _roots(r) == ["/srv/team/other"]


def test_host_path_of_a_root_given_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "srv/x").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    hr = HostRoot.open(tmp_path / "alias")
    assert projectargs.host_path_of(hr, ".", cwd=str(real / "srv/x")) == "/srv/x"
    assert projectargs.host_path_of(hr, "..", cwd=str(real / "srv")) == "/"
    with pytest.raises(InputError):
        projectargs.host_path_of(hr, "x", cwd=str(tmp_path))
    assert projectargs.host_path_of(HostRoot(Path("/")), "b/../c", cwd="/a") == "/a/c"


def test_watch_unit_gets_host_paths_not_relative_ones(fake_root: Path) -> None:
    """The unit runs from /: a relative PROJECT on `watch --install-unit` is written
    into ExecStart as the host path it stands for."""
    root = _host(fake_root)
    r = run_mnic("--root", str(root), "watch", "--install-unit", "--check", "--json", ".",
                 cwd=str(root / "srv/team/other"))
    assert r.code == 3, r.out + r.err
    doc = json.loads(r.out)
    unit = next(i for i in doc["items"] if i["id"].startswith("file:"))
    execs = [ln for ln in unit["diff"].splitlines() if ln.startswith("+ExecStart=")]
    assert execs and execs[0].endswith(" -- /srv/team/other"), execs
    assert os.path.basename(execs[0]) != "."
