"""testinfra suite for a host provisioned by mnic-ops, wherever the host is:
`pytest tests/infra --hosts=ssh://... ` (Vagrant, the qemu VMs) or
`--connection=chroot --hosts=/path/to/root` (the CI test host).

Only runs when pointed at a host (``--hosts``); a plain `pytest` of the repository
skips it, since the local machine is not a provisioned host."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

MNIC = os.environ.get("MNIC_OPS_BIN", "/opt/mnic-ops/bin/mnic-ops")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("hosts", default=None):
        return
    skip = pytest.mark.skip(reason="testinfra suite: pass --hosts (and --connection) to "
                                   "point it at a provisioned host")
    for item in items:
        if "tests/infra/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def mnic_json(host: Any, *args: str) -> Any:
    out = host.run(" ".join([MNIC, "--json", *args]))
    assert out.rc in (0, 1, 3), f"mnic-ops {' '.join(args)}: rc={out.rc} {out.stderr}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def projects(host: Any) -> list[dict[str, Any]]:
    found = mnic_json(host, "projects")
    return found["projects"] if isinstance(found, dict) else found


@pytest.fixture(scope="module")
def settings(host: Any) -> dict[str, Any]:
    return mnic_json(host, "config")["values"]
