"""The watcher's data folders, built and prepared in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cleanhelp import make_project, write_config


def _app(root: Path) -> Any:
    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

    return AppContext(root=HostRoot.open(root), config_path=None)


def test_network_filesystems_are_polled(fake_root: Path) -> None:
    from mnic_ops.capabilities import watchroots
    from mnic_ops.facts.hostfacts import Mount
    from mnic_ops.facts.projects import find_projects

    make_project(fake_root, files=0)
    write_config(fake_root)
    app = _app(fake_root)
    roots = watchroots.build_roots(app, find_projects(app.root, app.config), None)
    nfs = [Mount("/", "/dev/vda", "ext4", ["rw"], [], "254:0"),
           Mount("/home/alice/proj/project_archive", "srv:/archive", "nfs4", ["rw"], [],
                 "0:55")]
    for r in roots:
        watchroots.prepare_root(app, r, nfs, False)
    by_kind = {r.kind: r for r in roots}
    assert by_kind["sessions"].network and by_kind["sessions"].poll
    assert not by_kind["checkpoints"].network and not by_kind["checkpoints"].poll
    assert by_kind["checkpoints"].state == watchroots.READY
