"""Tier values: the shipped table, config overrides, machine-fitted derivation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnic_ops.capabilities import tiers
from mnic_ops.core.config import load
from mnic_ops.core.configschema import HOST_CLASSES
from mnic_ops.core.errors import InputError
from mnic_ops.core.hostroot import HostRoot
from tests.conftest import write_tree

GIB = 1024**3


def table() -> tiers.TierTable:
    return tiers.load_table([tiers.shipped_templates()])


def test_shipped_table_follows_the_guide() -> None:
    t = table().tiers
    assert [t[c]["max_agents"] for c in HOST_CLASSES] == [2, 5, 10]
    assert [t[c]["memory_limit_mb"] for c in HOST_CLASSES] == [2048, 8192, 16384]
    assert [t[c]["caching"] for c in HOST_CLASSES] == ["aggressive", "aggressive",
                                                       "distributed"]
    assert [t[c]["model_profile"] for c in HOST_CLASSES] == ["balanced", "quality",
                                                             "dynamic"]
    assert [t[c]["parallel_execution"] for c in HOST_CLASSES] == [False, True, True]
    assert [t[c]["load_balancing"] for c in HOST_CLASSES] == [False, False, True]
    assert t["server"]["inotify_watches"] == 524288


@pytest.mark.parametrize("tier", HOST_CLASSES)
def test_big_machine_caps_nothing(tier: str) -> None:
    v = table().tiers[tier]
    d, why = tiers.derive(v, cpus=256, memory_bytes=1024 * GIB, watch_dirs=10)
    assert d["agents"] == d["workers"] == v["max_agents"]
    assert d["memory_mb"] == v["memory_limit_mb"]
    assert d["inotify_watches"] == v["inotify_watches"]
    assert len(why) >= 6


@pytest.mark.parametrize("cpus,mem_gib", [(1, 1), (2, 3), (4, 6), (1, 0.5)])
def test_small_machines_cap_memory_agents_and_workers(cpus: int, mem_gib: float) -> None:
    v = table().tiers["server"]
    mem = int(mem_gib * GIB)
    d, _ = tiers.derive(v, cpus=cpus, memory_bytes=mem)
    assert d["memory_mb"] <= mem / 1024**2 * v["memory_share"]
    assert 1 <= d["agents"] <= v["max_agents"]
    assert d["agents"] == 1 or d["memory_mb"] // d["agents"] >= v["min_agent_memory_mb"]
    assert d["workers"] <= cpus and d["min_workers"] <= d["workers"]
    assert d["background_tasks"] <= cpus
    assert d["background_memory_mb"] <= max(16, d["memory_mb"] // 2)
    assert d["inotify_watches"] >= tiers.INOTIFY_MIN


def test_watcher_folders_raise_the_watch_count() -> None:
    v = table().tiers["laptop"]
    d, _ = tiers.derive(v, cpus=4, memory_bytes=64 * GIB, watch_dirs=100_000)
    assert d["inotify_watches"] >= 200_000
    # ... but never beyond the memory cap.
    d, why = tiers.derive(v, cpus=4, memory_bytes=2 * GIB, watch_dirs=100_000)
    assert d["inotify_watches"] <= 2 * GIB * v["inotify_memory_percent"] / 100 / 1024
    assert "capped" in why[-1]


def test_unknown_facts_leave_values_uncapped() -> None:
    v = table().tiers["workstation"]
    d, why = tiers.derive(v, cpus=None, memory_bytes=None)
    assert d["memory_mb"] == v["memory_limit_mb"] and d["workers"] == v["max_agents"]
    assert any("unknown" in w for w in why)


def test_overrides_apply_and_are_checked(fake_root: Path) -> None:
    write_tree(fake_root, {"etc/mnic-ops/config.toml":
                           "[tiers.laptop]\nmemory_share = 1\n[tiers.server]\nmax_agents = 7\n"})
    cfg = load(HostRoot.open(fake_root), env={})
    assert tiers.effective(table(), "server", cfg)["max_agents"] == 7
    laptop = tiers.effective(table(), "laptop", cfg)
    assert laptop["memory_share"] == 1.0 and isinstance(laptop["memory_share"], float)
    write_tree(fake_root, {"etc/mnic-ops/config.toml": "[tiers.laptop]\nmax_agents = true\n"})
    cfg = load(HostRoot.open(fake_root), env={})
    with pytest.raises(InputError, match=r"config.toml:2: tiers.laptop.max_agents: expected "
                                         r"integer, got boolean"):
        tiers.effective(table(), "server", cfg)


@pytest.mark.parametrize("name", HOST_CLASSES)
def test_a_few_kib_more_or_less_memory_changes_nothing(name: str) -> None:
    """MemTotal moves by some KiB between boots (seen on the workstation VM: a second
    role run after a reboot rewrote the sysctl file). Within a 64 MiB step every value,
    the capped watch count and the machine memory included, stays the same."""
    v = table().tiers[name]
    base = 4096 * 1024**2 - 130 * 1024**2  # a 4 GiB guest's MemTotal, mid-step
    seen = {repr(tiers.derive(v, cpus=2, memory_bytes=base + delta, watch_dirs=50)[0])
            for delta in (-300 * 1024, -4096, 0, 4096, 300 * 1024)}
    assert len(seen) == 1, seen
    d, _ = tiers.derive(v, cpus=2, memory_bytes=base, watch_dirs=50)
    assert d["inotify_watches"] % 1024 == 0
