"""`mnic-ops render` against copies of the framework's real config files."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, REPO, require, run_mnic, write_tree

CONFIGS = FIXTURES / "framework-configs"
OVERLAID = ("parallel-agents-config.json", "parallel-agents.json", "cost-optimization.json",
            "background-tasks.json")
TIERS = tomllib.loads((REPO / "templates" / "tiers.toml").read_text())

# Managed value -> how it follows from the tier on a machine too big to cap anything.
# (Written from the list of knobs, independently of the templates.)
def expected_managed(t: dict[str, Any]) -> dict[str, dict[tuple[str, ...], Any]]:
    agents, mem = t["max_agents"], t["memory_limit_mb"]
    per_agent = mem // agents
    per_label = f"{per_agent // 1024}GB" if per_agent % 1024 == 0 else f"{per_agent}MB"
    caching = t["caching"] != "off"
    return {
        "parallel-agents-config.json": {
            ("maxParallelAgents",): agents,
            ("execution", "workerPool", "maxWorkers"): agents,
            ("execution", "workerPool", "minWorkers"): min(t["min_workers"], agents),
            ("execution", "workerPool", "autoScale"): t["load_balancing"],
            ("strategies", "concurrent", "maxConcurrency"): agents,
            ("resourceManagement", "memory", "maxMemoryMB"): mem,
            ("resourceManagement", "memory", "perAgentLimitMB"): per_agent,
            ("performance", "caching"): caching,
        },
        "parallel-agents.json": {
            ("parallelExecution", "maxConcurrentAgents"): agents,
            ("workloadDistribution", "balancing"):
                "dynamic" if t["load_balancing"] else "static",
            ("performanceOptimization", "memoryLimit"): per_label + "_per_agent",
            ("performanceOptimization", "caching"): caching,
            ("scalingRules", "autoscale"): t["load_balancing"],
            ("scalingRules", "maxAgents"): agents,
        },
        "cost-optimization.json": {
            ("optimizationStrategies", "intelligentCaching", "enabled"): caching,
            ("advancedOptimization", "parallelExecution", "enabled"): t["parallel_execution"],
            ("advancedOptimization", "parallelExecution", "maxConcurrentAgents"): agents,
        },
        "background-tasks.json": {
            ("execution", "max_concurrent_tasks"): t["background_tasks"],
            ("resource_limits", "max_memory_mb"): min(t["background_memory_mb"], mem // 2),
            ("resource_limits", "max_cpu_percent"): t["background_cpu_percent"],
        },
    }


def host(root: Path, *, cpus: int = 64, mem_gib: int = 256) -> Path:
    """Facts for a fake host: CPU count and memory under <root>/proc and /sys."""
    write_tree(root, {
        "proc/meminfo": f"MemTotal: {mem_gib * 1024 * 1024} kB\n",
        "proc/cpuinfo": "".join(f"processor\t: {i}\n\n" for i in range(cpus)),
        "sys/devices/system/cpu/online": f"0-{cpus - 1}\n",
    })
    for d in ("etc/profile.d", "etc/sysctl.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def install(root: Path, rel: str, files: tuple[str, ...] = OVERLAID) -> Path:
    p = root / rel.lstrip("/")
    (p / ".claude/agents").mkdir(parents=True)
    (p / ".ai-tools").mkdir()
    cfg = p / ".claude/config"
    cfg.mkdir()
    for name in files:
        shutil.copyfile(CONFIGS / name, cfg / name)
    return p


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int, int, int]]:
    """Every file under root (outside mnic-ops' own state) with bytes, owner, mode and
    modification time (an undo puts the times back too)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        if "/var/lib/mnic-ops" in dirpath or "/var/log" in dirpath:
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            data = Path(p).read_bytes() if not os.path.islink(p) else os.readlink(p).encode()
            out[p] = (hashlib.sha256(data).digest(), st.st_uid, st.st_gid, st.st_mode,
                      st.st_mtime_ns)
    return out


def without(doc: Any, paths: list[tuple[str, ...]]) -> Any:
    doc = json.loads(json.dumps(doc))
    for path in paths:
        cur = doc
        for k in path[:-1]:
            cur = cur.get(k, {})
        cur.pop(path[-1], None)
    return doc


def get(doc: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def render(root: Path, *args: str) -> Any:
    return run_mnic("--root", str(root), "render", *args)


@pytest.mark.parametrize("tier", ["laptop", "workstation", "server"])
def test_render_sets_managed_values_and_keeps_everything_else(fake_root: Path,
                                                               tier: str) -> None:
    root = host(fake_root)
    proj = install(root, "/home/alice/proj")
    before = {n: (proj / ".claude/config" / n).read_text() for n in OVERLAID}
    r = render(root, "--host-class", tier)
    assert r.code == 0, r.err + r.out
    want = expected_managed(TIERS[tier])
    for name in OVERLAID:
        text = (proj / ".claude/config" / name).read_text()
        old, new = json.loads(before[name]), json.loads(text)  # output parses
        managed = list(want[name])
        # Every key the overlay does not manage: unchanged (deep comparison).
        assert without(new, managed) == without(old, managed), name
        # Every managed key: at the tier's value, with its JSON type.
        for path, value in want[name].items():
            got = get(new, path)
            assert got == value and type(got) is type(value), (name, path, got, value)
        # The text around them is byte-identical: only lines of managed keys differ.
        changed = [line for line in difflib.ndiff(before[name].splitlines(),
                                                  text.splitlines())
                   if line.startswith(("- ", "+ "))]
        leaf_keys = {f'"{p[-1]}"' for p in managed}
        assert all(any(k in line for k in leaf_keys) for line in changed), changed
        assert text.endswith("\n") == before[name].endswith("\n")
    perf = json.loads((proj / ".claude/config/mnic-ops-performance.json").read_text())
    assert perf["tier"] == tier
    assert perf["performance"]["maxConcurrentAgents"] == TIERS[tier]["max_agents"]
    assert perf["performance"]["modelProfile"] == TIERS[tier]["model_profile"]
    # Second run: nothing to do, --check says so with 0, and no byte moves.
    snap = snapshot(root)
    r = render(root, "--host-class", tier, "--check")
    assert r.code == 0, r.out + r.err
    r = render(root, "--host-class", tier)
    assert r.code == 0 and "changed=0" in r.out
    assert snapshot(root) == snap


def test_check_diff_and_undo(fake_root: Path) -> None:
    root = host(fake_root)
    proj = install(root, "/srv/team/p")
    snap = snapshot(root)
    r = render(root, "--host-class", "laptop", "--check", "--diff")
    assert r.code == 3, r.err
    assert '-  "maxParallelAgents": 5,\n+  "maxParallelAgents": 2,' in r.out
    assert "+++ b/etc/sysctl.d/60-mnic-ops.conf" in r.out
    assert snapshot(root) == snap  # --check writes nothing
    assert render(root, "--host-class", "laptop").code == 0
    assert json.loads((proj / ".claude/config/parallel-agents.json").read_text())[
        "parallelExecution"]["maxConcurrentAgents"] == 2
    r = run_mnic("--root", str(root), "undo", "--all")
    assert r.code == 0, r.err
    assert snapshot(root) == snap


def test_values_are_capped_by_the_machine(fake_root: Path) -> None:
    root = host(fake_root, cpus=2, mem_gib=3)
    proj = install(root, "/home/bob/p")
    r = run_mnic("--root", str(root), "--json", "render", "--host-class", "server")
    assert r.code == 0, r.err
    derived = json.loads(r.out)["derived"]
    t = TIERS["server"]
    cfg = json.loads((proj / ".claude/config/parallel-agents-config.json").read_text())
    mem = cfg["resourceManagement"]["memory"]
    agents = cfg["maxParallelAgents"]
    assert mem["maxMemoryMB"] <= 3 * 1024 * t["memory_share"] < t["memory_limit_mb"]
    assert 1 <= agents <= min(t["max_agents"], mem["maxMemoryMB"] // t["min_agent_memory_mb"])
    assert cfg["execution"]["workerPool"]["maxWorkers"] <= 2
    assert cfg["execution"]["workerPool"]["minWorkers"] <= \
        cfg["execution"]["workerPool"]["maxWorkers"]
    assert mem["perAgentLimitMB"] * agents <= mem["maxMemoryMB"]
    bg = json.loads((proj / ".claude/config/background-tasks.json").read_text())
    assert bg["execution"]["max_concurrent_tasks"] <= 2
    assert derived["agents"] == agents and derived["cpus"] == 2
    watches = int((root / "etc/sysctl.d/60-mnic-ops.conf").read_text().split("=")[-1])
    assert 8192 <= watches <= 3 * 1024**3 * t["inotify_memory_percent"] / 100 / 1024


def test_config_overrides_a_tier_value(fake_root: Path) -> None:
    root = host(fake_root)
    proj = install(root, "/home/alice/p")
    write_tree(root, {"etc/mnic-ops/config.toml":
                      "[tiers.workstation]\nmax_agents = 3\ncaching = \"off\"\n"})
    assert render(root, "--host-class", "workstation").code == 0
    cfg = json.loads((proj / ".claude/config/parallel-agents-config.json").read_text())
    assert cfg["maxParallelAgents"] == 3 and cfg["performance"]["caching"] is False


def test_missing_framework_files_are_not_created(fake_root: Path) -> None:
    root = host(fake_root)
    proj = install(root, "/home/alice/p", files=("parallel-agents-config.json",))
    r = render(root, "--host-class", "server")
    assert r.code == 0, r.err
    assert "skipped: [file:/home/alice/p/.claude/config/parallel-agents.json]" in r.out
    assert "(not in this install)" in r.out
    assert sorted(os.listdir(proj / ".claude/config")) == [
        "mnic-ops-performance.json", "parallel-agents-config.json"]


def test_malformed_json_refuses_that_project_only(fake_root: Path) -> None:
    root = host(fake_root)
    bad = install(root, "/home/alice/bad")
    good = install(root, "/home/alice/good")
    f = bad / ".claude/config/cost-optimization.json"
    text = f.read_text().replace('"enabled": true,\n    "currency"', '"enabled": true,,\n'
                                 '    "currency"')
    assert text != f.read_text()
    f.write_text(text)
    line = text[: text.index(",,")].count("\n") + 1
    bad_snap = {k: v for k, v in snapshot(root).items() if "/bad/" in k}
    r = render(root, "--host-class", "server")
    # One install's bad file fails that install (exit 1), the other is rendered.
    assert r.code == 1
    assert f"/home/alice/bad/.claude/config/cost-optimization.json:{line}:" in r.err
    assert "not valid JSON" in r.err and "Traceback" not in r.err
    assert {k: v for k, v in snapshot(root).items() if "/bad/" in k} == bad_snap
    assert json.loads((good / ".claude/config/parallel-agents.json").read_text())[
        "parallelExecution"]["maxConcurrentAgents"] == TIERS["server"]["max_agents"]


@pytest.mark.parametrize("template,needle", [
    ("{\n  \"maxParallelAgents\": {{ d.agents }\n}\n", ":2: template syntax error"),
    ("{\n\n  \"maxParallelAgents\": {{ d.no_such_value }}\n}\n",
     ":3: undefined variable"),
    ("{\n  \"maxParallelAgents\": {{ d.agents }},\n}\n", "renders invalid JSON"),
])
def test_broken_template_writes_nothing(fake_root: Path, template: str, needle: str) -> None:
    root = host(fake_root)
    install(root, "/home/alice/p")
    write_tree(root, {"srv/tpl/overlays/parallel-agents-config.json.j2": template,
                      "etc/mnic-ops/config.toml": 'templates_dir = "/srv/tpl"\n'})
    snap = snapshot(root)
    r = render(root, "--host-class", "laptop")
    assert r.code == 2, r.out
    assert f"{root}/srv/tpl/overlays/parallel-agents-config.json.j2" in r.err
    assert needle in r.err and "Traceback" not in r.err
    assert snapshot(root) == snap


def test_custom_template_is_used(fake_root: Path) -> None:
    root = host(fake_root)
    install(root, "/home/alice/p")
    write_tree(root, {"srv/tpl/system/sysctl.conf.j2":
                      "# mine\nfs.inotify.max_user_watches = {{ d.inotify_watches * 2 }}\n",
                      "etc/mnic-ops/config.toml": 'templates_dir = "/srv/tpl"\n'})
    assert render(root, "--host-class", "workstation").code == 0
    text = (root / "etc/sysctl.d/60-mnic-ops.conf").read_text()
    assert text.startswith("# mine\n") and text.endswith("\n")


@pytest.mark.parametrize("config,line,needle", [
    ("[tiers.laptop]\nmax_agents = 2\nmax_agentz = 3\n", 3, "unknown tier key"),
    ("\n[tiers.server]\nmax_agents = \"lots\"\n", 3, "expected integer, got string"),
    ("[tiers.server]\ncaching = \"extreme\"\n", 2, "expected one of off, normal"),
    ("[tiers.server]\nmax_agents = 0\n", 2, "expected a value >= 1"),
    ("[tiers.desktop]\nmax_agents = 2\n", 1, "unknown key"),
])
def test_bad_tier_config_writes_nothing(fake_root: Path, config: str, line: int,
                                        needle: str) -> None:
    root = host(fake_root)
    install(root, "/home/alice/p")
    cfg = write_tree(root, {"etc/mnic-ops/config.toml": config}) / "etc/mnic-ops/config.toml"
    snap = snapshot(root)
    # A typo under another tier is caught too, not only the host's own.
    r = render(root, "--host-class", "workstation")
    assert r.code == 2, r.out
    assert r.err.startswith(f"mnic-ops: error: {cfg}:{line}:"), r.err
    assert needle in r.err
    assert snapshot(root) == snap


def test_bad_tiers_file(fake_root: Path) -> None:
    root = host(fake_root)
    install(root, "/home/alice/p")
    table = (REPO / "templates/tiers.toml").read_text().replace(
        "[server]\nmax_agents = 10\n", "[server]\n")
    write_tree(root, {"srv/tpl/tiers.toml": table,
                      "etc/mnic-ops/config.toml": 'templates_dir = "/srv/tpl"\n'})
    snap = snapshot(root)
    r = render(root, "--host-class", "laptop")
    assert r.code == 2 and f"{root}/srv/tpl/tiers.toml" in r.err
    assert "max_agents is missing" in r.err
    assert snapshot(root) == snap


def test_owner_and_mode_preserved_when_root_renders(fake_root: Path) -> None:
    require("root")
    root = host(fake_root)
    proj = install(root, "/home/alice/p")
    for dirpath, dirs, files in os.walk(root / "home"):
        for n in [*dirs, *files]:
            os.lchown(os.path.join(dirpath, n), 4242, 4343)
    for name in OVERLAID:
        os.chmod(proj / ".claude/config" / name, 0o640)
    r = render(root, "--host-class", "server")
    assert r.code == 0, r.err
    for name in OVERLAID:
        st = (proj / ".claude/config" / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4242, 4343, 0o640), name
    st = (proj / ".claude/config/mnic-ops-performance.json").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4242, 4343, 0o644)
    st = (root / "etc/profile.d/mnic-ops.sh").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    profile = (root / "etc/profile.d/mnic-ops.sh").read_text()
    assert '"$(id -u)" in\n    4242)\n        export PYTHONOPTIMIZE=2' in profile
    # No temp files left behind in the user's folder.
    assert not [n for n in os.listdir(proj / ".claude/config") if "mnic-ops-tmp" in n]


def test_symlinks_in_a_project_are_not_followed(fake_root: Path) -> None:
    root = host(fake_root)
    proj = install(root, "/home/alice/p")
    elsewhere = root / "etc/secret"
    elsewhere.mkdir()
    shutil.copyfile(CONFIGS / "parallel-agents-config.json",
                    elsewhere / "parallel-agents-config.json")
    shutil.rmtree(proj / ".claude/config")
    (proj / ".claude/config").symlink_to(elsewhere)
    snap = snapshot(root)
    r = render(root, "--host-class", "laptop", "/home/alice/p")
    assert r.code == 1  # that install's failure (mnic_ops.core.installfail), not bad usage
    assert "symlink" in r.err and "nothing done for it" in r.err
    assert snapshot(root) == snap
    # A link as the file itself is refused too.
    (proj / ".claude/config").unlink()
    (proj / ".claude/config").mkdir()
    (proj / ".claude/config/background-tasks.json").symlink_to(
        elsewhere / "parallel-agents-config.json")
    snap = snapshot(root)
    r = render(root, "--host-class", "laptop", "/home/alice/p")
    assert r.code == 1 and "symlink" in r.err
    assert snapshot(root) == snap


def test_project_selection_and_json(fake_root: Path) -> None:
    root = host(fake_root)
    a = install(root, "/home/alice/a")
    b = install(root, "/home/alice/b")
    r = run_mnic("--root", str(root), "--json", "render", "--host-class", "laptop", "b")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["tier"] == "laptop" and out["projects"] == ["/home/alice/b"]
    assert out["derived"]["agents"] == 2 and out["reasons"]
    assert not (root / "etc/sysctl.d/60-mnic-ops.conf").exists()  # PROJECT: no system files
    assert (b / ".claude/config/mnic-ops-performance.json").exists()
    assert not (a / ".claude/config/mnic-ops-performance.json").exists()
    r = render(root, "--host-class", "laptop", "nope")
    assert r.code == 2 and "nope: no such framework install" in r.err


def test_detected_class_is_used(fake_root: Path) -> None:
    root = host(fake_root, cpus=8, mem_gib=16)
    write_tree(root, {"sys/class/dmi/id/chassis_type": "23\n"})  # rack mount -> server
    proj = install(root, "/srv/p")
    r = render(root)
    assert r.code == 0, r.err
    assert "tier server (dmi)" in r.out
    perf = json.loads((proj / ".claude/config/mnic-ops-performance.json").read_text())
    assert perf["tier"] == "server"


def test_jinja2_is_imported_only_when_rendering() -> None:
    import subprocess
    import sys

    code = ("import sys, mnic_ops.capabilities.render, mnic_ops.capabilities.host, "
            "mnic_ops.facts.projects; "
            "assert 'jinja2' not in sys.modules, 'jinja2 imported at module level'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
