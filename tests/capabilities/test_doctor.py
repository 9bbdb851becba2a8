"""`mnic-ops doctor` against generated installs: measured figures, findings with their
fixes, node_exporter metrics read back with the real Prometheus parser."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mnic_ops.capabilities.doctorreport import LEVEL_VALUE
from mnic_ops.core.config import Config
from mnic_ops.facts import policy
from mnic_ops.facts._probe import front_matter
from tests.conftest import REPO, require, run_mnic, write_tree

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "doctor"
DAY = 86400


def agent_text(name: str, body_bytes: int = 1500) -> str:
    head = (f"---\nname: {name}\ndescription: \"{name} specialist: builds and reviews\"\n"
            f"category: Development\nagent_type: Core\nframework_version: \"3.10.0\"\n---\n")
    para = f"# {name}\n\nCore competencies, approach and quality gates.\n"
    return head + (para * (body_bytes // len(para) + 1))[:body_bytes]


def make_install(base: Path, *, agents: int = 45, agent_bytes: int = 1500,
                 extra: dict[str, str | bytes] | None = None) -> Path:
    files: dict[str, str | bytes] = {".ai-tools/model-config/data/current_session.json": "{}",
                                     "ai-tools.sh": "#!/bin/sh\n"}
    groups = ("core/development", "core/quality", "enterprise/governance", "custom/desktop")
    for i in range(agents):
        files[f".claude/agents/{groups[i % len(groups)]}/agent-{i:02d}.md"] = \
            agent_text(f"agent-{i:02d}", agent_bytes)
    for i in range(4):
        files[f"project_archive/sessions/session_2025-01-0{i + 1}.json"] = json.dumps(
            {"history": [{"role": "user", "text": "x" * 200}] * 10})
    files["project_archive/sessions/SESSION_CURRENT.md"] = "# current\n" + "notes\n" * 100
    ids = [f"cp_20250101_0000{i:02d}_abcdef01" for i in range(20)]
    files[".ai-tools/checkpoint/storage/checkpoint_index.json"] = json.dumps(  # as 3.10 does
        {"version": "3.7.0", "checkpoints": {i: {
            "timestamp": "2999-01-01T00:00:00", "level": "manual", "category": "unknown",
            "label": i, "tags": []} for i in ids}, "categories": {"unknown": ids},
         "tags": {}, "timeline": [{"checkpoint_id": i, "timestamp": "2999-01-01T00:00:00",
                                   "label": i} for i in ids]}, indent=2)
    files[".ai-tools/checkpoint/storage/metadata/cp_20250101_000000_abcdef01.json"] = "{}"
    files[".claude/thinking-logs/core/backend/2025-01-01-000000-d.json"] = "{}"
    files.update(extra or {})
    write_tree(base, files)
    return base


def healthy_host(root: Path, *, rotational: bool = False, opts: str = "rw,noatime",
                 watches: int = 524288) -> Path:
    """A host root whose mount table, block devices, cron, sysctl and profile are all
    as doctor wants them (each test breaks one thing)."""
    write_tree(root, {
        "proc/self/mountinfo": f"22 1 8:1 / / {opts} shared:1 - ext4 /dev/sda1 rw\n",
        "sys/block/sda/dev": "8:0\n",
        "sys/block/sda/queue/rotational": "1\n" if rotational else "0\n",
        "sys/block/sda/sda1/partition": "1\n",
        "sys/block/sda/sda1/dev": "8:1\n",
        "proc/sys/fs/inotify/max_user_watches": f"{watches}\n",
        "etc/cron.d/mnic-ops": "0 3 * * * root /opt/mnic-ops/bin/mnic-ops clean >/dev/null\n",
        "etc/profile.d/mnic-ops.sh": "export PYTHONOPTIMIZE=2\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n",
        "etc/group": "root:x:0:\nalice:x:4242:\n",
        "etc/mnic-ops/config.toml": 'search_paths = ["/home/*"]\n',
        "var/lib/node_exporter/.keep": "",
        "etc/sysctl.d/99-other.conf": "# another package's\n",
    })
    return root


def render_host(root: Path) -> None:
    """Bring the tier configs in line with the host class (doctor's own fix)."""
    r = run_mnic("--root", str(root), "render")
    assert r.code == 0, r.out + r.err


def chown_tree(top: Path, uid: int) -> None:
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            os.chown(os.path.join(dirpath, n), uid, uid, follow_symlinks=False)
    os.chown(top, uid, uid)


def doctor_json(root: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    r = run_mnic("--root", str(root), "doctor", "--json", *args)
    assert "Traceback" not in r.err, r.err
    try:
        return r.code, json.loads(r.out), r.err
    except ValueError:
        pytest.fail(f"no JSON (exit {r.code}): {r.out[:500]} {r.err[:500]}")


def checks(proj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in proj["checks"]}


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start helper processes; kill exactly those (by PID) afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def _wait_rss(pid: int) -> None:
    import psutil

    for _ in range(100):
        try:
            if psutil.Process(pid).cmdline():
                return
        except psutil.Error:
            pass
        time.sleep(0.02)


# --- the three generated installs -----------------------------------------------------

def test_small_install_is_excellent_everywhere(fake_root: Path, spawn: Any) -> None:
    root = healthy_host(fake_root)
    proj = make_install(root / "home/alice/proj")
    # Something of the framework runs in the install, and the watcher for this root.
    worker = spawn(["sleep", "120"], cwd=proj)
    watcher = spawn([sys.executable, "-c", "import time; time.sleep(120)", "mnic-ops",
                     "--root", str(root), "watch"])
    _wait_rss(worker.pid)
    _wait_rss(watcher.pid)
    render_host(root)

    code, rep, _ = doctor_json(root, "--metrics", "/var/lib/node_exporter/mnic_ops.prom")
    assert [p["project"] for p in rep["projects"]] == ["/home/alice/proj"]
    p = rep["projects"][0]
    figs = p["figures"]
    assert {k: f["level"] for k, f in figs.items()} == {
        "agent_activation": "excellent", "context_loading": "excellent", "memory": "excellent"}
    act = figs["agent_activation"]
    assert act["details"]["agents"] == 45 and act["details"]["files"] == 45
    assert 0 < act["value"] < 0.5
    assert act["details"]["largest"][0]["bytes"] > 1500
    ctx = figs["context_loading"]
    read = {Path(f["path"]).name for f in ctx["details"]["files"]}
    assert "checkpoint_index.json" in read and "SESSION_CURRENT.md" in read
    assert len(read) == 6  # 5 newest session files (one is SESSION_CURRENT.md) + index
    mem = figs["memory"]
    assert mem["details"]["pids"] == [worker.pid]
    assert mem["value"] > 0
    assert rep["host"]["figures"]["watcher_memory"]["details"]["pids"] == [watcher.pid]
    every = p["checks"] + rep["host"]["checks"]
    assert {c["status"] for c in every} <= {"ok", "skip"}, [c for c in every
                                                            if c["status"] != "ok"]
    skipped = {c["id"] for c in every if c["status"] == "skip"}
    # root owns this install, and render leaves root's PYTHONOPTIMIZE alone on purpose
    assert skipped == {"pythonoptimize"}
    assert rep["ok"] is True and code == 0


def test_huge_agents_and_session_get_findings_with_fixes(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    proj = make_install(root / "home/alice/big", agents=10, extra={
        f".claude/agents/core/huge-{i}.md": agent_text(f"huge-{i}", 400 * 1024)
        for i in range(3)})
    session = proj / "project_archive/sessions/session_2025-02-01.md"
    with open(session, "wb") as fh:  # 50 MB of Markdown, sparse on disk
        fh.write(b"# session\n")
        fh.truncate(50 * 1024 * 1024)
    old = time.time() - 10 * DAY
    for f in (proj / "project_archive/sessions").glob("session_2025-01-0*.json"):
        os.utime(f, (old, old))

    code, rep, _ = doctor_json(root)
    assert code == 1 and rep["ok"] is False
    p = rep["projects"][0]
    c = checks(p)
    assert c["agent_size"]["status"] == "fail"
    assert sorted(Path(f["path"]).name for f in c["agent_size"]["details"]["files"]) == [
        "huge-0.md", "huge-1.md", "huge-2.md"]
    assert "reduce agent file size" in c["agent_size"]["fix"]
    assert c["session_size"]["status"] == "fail"
    assert [f["path"] for f in c["session_size"]["details"]["files"]] == [
        "/home/alice/big/project_archive/sessions/session_2025-02-01.md"]
    assert c["session_size"]["command"] == f"mnic-ops --root {root} clean /home/alice/big"
    assert c["uncompressed"]["status"] == "fail"
    assert c["uncompressed"]["details"]["kinds"]["sessions"]["files"] == 4
    assert c["uncompressed"]["command"] == f"mnic-ops --root {root} clean /home/alice/big"
    # Measured all the same: the 50 MB file was read, the 13 agents parsed.
    ctx = p["figures"]["context_loading"]
    assert ctx["details"]["bytes"] >= 50 * 1024 * 1024 and ctx["value"] > 0
    assert p["figures"]["agent_activation"]["details"]["agents"] == 13
    assert p["figures"]["agent_activation"]["details"]["largest"][0]["bytes"] > 400 * 1024
    assert {k for k, v in c.items() if v["status"] == "fail"} == {
        "agent_size", "session_size", "uncompressed"}


@pytest.mark.slow
def test_rotational_loop_device_with_relatime(tmp_path: Path) -> None:
    require("loop", "unshare")
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 not installed (apt-get install e2fsprogs)")
    img = tmp_path / "disk.img"
    with open(img, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        (Path("/sys/block") / Path(dev).name / "queue/rotational").write_text("1")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        cfg = tmp_path / "config.toml"
        cfg.write_text("search_paths = []\n")
        out = tmp_path / "out.json"
        py = sys.executable
        script = f"""
set -e
mount -o relatime {dev} {mnt}
{py} -c 'import sys; from pathlib import Path
from tests.capabilities.test_doctor import make_install
make_install(Path(sys.argv[1]), agents=3)' {mnt}/proj
{py} -m mnic_ops --config {cfg} doctor --json {mnt}/proj > {out} || echo "exit $?"
umount {mnt}
"""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                            script], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stdout.strip() == "exit 1"
        rep = json.loads(out.read_text())
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    c = checks(rep["projects"][0])
    assert c["rotational"]["status"] == "fail"
    assert Path(dev).name in c["rotational"]["finding"]
    assert c["rotational"]["command"] == f"mnic-ops relocate {mnt}/proj"
    assert c["noatime"]["status"] == "fail"
    assert f"{mnt} (ext4, relatime)" in c["noatime"]["finding"]
    assert c["noatime"]["command"] == "mnic-ops fstab"
    assert rep["projects"][0]["figures"]["agent_activation"]["details"]["agents"] == 3


def test_ssd_with_relatime_and_rotational_with_noatime(fake_root: Path) -> None:
    root = healthy_host(fake_root, opts="rw,relatime")
    make_install(root / "home/alice/proj", agents=2)
    _, rep, _ = doctor_json(root)
    c = checks(rep["projects"][0])
    assert c["rotational"]["status"] == "ok" and c["noatime"]["status"] == "fail"
    assert "/ (ext4, relatime)" in c["noatime"]["finding"]

    root2 = healthy_host(fake_root.parent / "host2", rotational=True)
    make_install(root2 / "home/alice/proj", agents=2)
    _, rep, _ = doctor_json(root2)
    c = checks(rep["projects"][0])
    assert c["rotational"]["status"] == "fail" and c["noatime"]["status"] == "ok"
    assert "sessions (/home/alice/proj/project_archive/sessions on sda1)" in \
        c["rotational"]["finding"]
    # relocate is the fix only for what it moves (relocate.kinds); the rest is named
    assert [f.split()[0] for f in c["rotational"]["details"]["folders"]] == [
        "sessions", "checkpoint_store"]
    assert "thinking_logs" in " ".join(c["rotational"]["details"]["not_moved_by_relocate"])
    # relocate moves none of the classes there: a warning, and no relocate command
    cfg = root2 / "etc/mnic-ops/config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text('[relocate]\nkinds = ["checkpoints"]\n')
    _, rep, _ = doctor_json(root2)
    c = checks(rep["projects"][0])
    assert c["rotational"]["status"] == "warn" and c["rotational"]["command"] is None
    assert "[relocate] kinds" in c["rotational"]["fix"]


# --- metrics -----------------------------------------------------------------------------

def test_metrics_file_parses_and_carries_every_figure(fake_root: Path, spawn: Any) -> None:
    root = healthy_host(fake_root)
    make_install(root / "home/alice/a", agents=5)
    make_install(root / 'home/alice/we"ird\\name', agents=7)
    watcher = spawn([sys.executable, "-c", "import time; time.sleep(120)", "mnic-ops",
                     f"--root={root}", "watch"])
    _wait_rss(watcher.pid)
    target = root / "var/lib/node_exporter/mnic_ops.prom"
    target.write_text("old\n")
    _code, rep, _ = doctor_json(root, "--metrics", "/var/lib/node_exporter/mnic_ops.prom")
    text = target.read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(target.parent)) == [".keep", "mnic_ops.prom"]  # no temp left

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("mnic_ops_")
        assert fam.documentation and fam.type == "gauge"
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            assert f"# HELP {line.split()[2]} " in text

    metric = {"agent_activation": "mnic_ops_doctor_agent_activation_seconds",
              "context_loading": "mnic_ops_doctor_context_loading_seconds",
              "memory": "mnic_ops_doctor_memory_bytes"}
    assert len(rep["projects"]) == 2
    for p in rep["projects"]:
        lab = frozenset({("project", p["project"])})
        for name, f in p["figures"].items():
            assert samples[(metric[name], lab)] == pytest.approx(f["value"])
            assert samples[("mnic_ops_doctor_level", lab | {("figure", name)})] == \
                LEVEL_VALUE[f["level"]]
        assert samples[("mnic_ops_doctor_agents", lab)] == \
            p["figures"]["agent_activation"]["details"]["agents"]
        for c in p["checks"]:
            if c["status"] != "skip":
                assert samples[("mnic_ops_doctor_check_failed",
                                lab | {("check", c["id"])})] == (c["status"] == "fail")
    wm = rep["host"]["figures"]["watcher_memory"]
    assert samples[("mnic_ops_doctor_watcher_memory_bytes", frozenset())] == wm["value"]
    assert samples[("mnic_ops_doctor_level", frozenset({("figure", "watcher_memory")}))] \
        == LEVEL_VALUE[wm["level"]]
    assert samples[("mnic_ops_doctor_ok", frozenset())] == int(rep["ok"])
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True)
        assert r.returncode == 0, r.stderr


def test_metrics_from_config_and_missing_folder(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    make_install(root / "home/alice/a", agents=1)
    (root / "etc/mnic-ops/config.toml").write_text(
        'search_paths = ["/home/*"]\n[doctor]\nmetrics_file = "/var/lib/node_exporter/d.prom"\n')
    r = run_mnic("--root", str(root), "doctor")
    assert r.code == 1, r.out + r.err  # no watcher runs for this root
    assert "mnic_ops_doctor_agent_activation_seconds" in \
        (root / "var/lib/node_exporter/d.prom").read_text()
    r = run_mnic("--root", str(root), "doctor", "--metrics", "/nonexistent/dir/d.prom")
    assert r.code == 1 and "Traceback" not in r.err
    assert "/nonexistent/dir does not exist" in r.err
    assert "agent activation" in r.out  # the report still printed
    assert not (root / "nonexistent").exists()


# --- broken installs: findings, never a traceback -----------------------------------------

def test_malformed_front_matter_and_invalid_session_json(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    make_install(root / "home/alice/proj", agents=4, extra={
        ".claude/agents/broken/unterminated.md": (FIX / "unterminated.md").read_text(),
        ".claude/agents/broken/tabs.md": (FIX / "tab-indent.md").read_text(),
        ".claude/agents/broken/list.md": "---\n- just\n- a list\n---\nbody\n",
        ".claude/agents/README.md": "# notes without front matter\n",
        ".claude/agents/latin1.md": b"---\nname: caf\xe9\n---\n",
        "project_archive/sessions/session_zz.json": '{"history": [1, 2,\n  oops]}\n',
        ".ai-tools/checkpoint/storage/checkpoint_index.json": "{trunc",
    })
    code, rep, _ = doctor_json(root)
    assert code == 1
    p = rep["projects"][0]
    c = checks(p)
    fm = c["agent_front_matter"]
    assert fm["status"] == "fail"
    errs = {e["path"]: e["error"] for e in fm["details"]["files"]}
    assert set(errs) == {"broken/unterminated.md", "broken/tabs.md", "broken/list.md",
                         "latin1.md"}
    assert errs["broken/unterminated.md"].startswith("front matter line 4:")
    assert errs["broken/tabs.md"].startswith("front matter line 4:")
    assert "not a mapping" in errs["broken/list.md"]
    assert "not UTF-8" in errs["latin1.md"]
    assert p["figures"]["agent_activation"]["details"]["agents"] == 4
    sf = c["session_files"]
    assert sf["status"] == "fail"
    bad = {e["path"]: e["error"] for e in sf["details"]["files"]}
    assert bad["project_archive/sessions/session_zz.json"].startswith(
        "not valid JSON: line 2 column 3")
    assert ".ai-tools/checkpoint/storage/checkpoint_index.json" in bad


def test_unreadable_install_is_a_finding(fake_root: Path) -> None:
    require("root")
    root = healthy_host(fake_root)
    proj = make_install(root / "home/alice/locked", agents=3)
    make_install(root / "home/alice/open", agents=3)
    chown_tree(proj, 4242)
    # The parents stay root-only (0700 tmp dirs): the probe must still reach the install.
    os.chmod(proj / "project_archive/sessions", 0)
    os.chmod(proj / ".claude/agents/core", 0)
    code, rep, _ = doctor_json(root)
    assert code == 1
    by = {p["project"]: p for p in rep["projects"]}
    c = checks(by["/home/alice/locked"])
    assert c["readable"]["status"] == "fail"
    assert "core/ (permission denied)" in c["readable"]["finding"]
    assert "as alice" in c["readable"]["finding"]
    assert c["session_files"]["status"] == "fail"
    assert "permission denied" in c["session_files"]["finding"]
    # agents 0 and 1 live under the locked core/, agent 2 under enterprise/
    assert by["/home/alice/locked"]["figures"]["agent_activation"]["details"]["agents"] == 1
    assert checks(by["/home/alice/open"])["readable"]["status"] == "ok"

    os.chmod(proj, 0)  # now the whole install
    code, rep, _ = doctor_json(root)
    by = {p["project"]: p for p in rep["projects"]}
    c = checks(by["/home/alice/locked"])
    assert c["readable"]["status"] == "fail" and "permission denied" in c["readable"]["finding"]
    assert by["/home/alice/locked"]["figures"]["agent_activation"]["level"] == "unknown"
    assert code == 1
    os.chmod(proj, 0o755)


def test_symlinks_are_not_followed_out_of_the_install(fake_root: Path, tmp_path: Path
                                                      ) -> None:
    root = healthy_host(fake_root)
    outside = write_tree(tmp_path / "outside", {"secret.md": agent_text("secret"),
                                                 "more/x.md": agent_text("x")})
    proj = make_install(root / "home/alice/proj", agents=2)
    (proj / ".claude/agents/linked.md").symlink_to(outside / "secret.md")
    (proj / ".claude/agents/linkdir").symlink_to(outside / "more")
    _, rep, _ = doctor_json(root)
    p = rep["projects"][0]
    assert p["figures"]["agent_activation"]["details"]["agents"] == 2
    c = checks(p)
    assert c["agent_symlinks"]["status"] == "warn"
    assert sorted(c["agent_symlinks"]["details"]["paths"]) == ["linkdir", "linked.md"]


# --- host checks ----------------------------------------------------------------------------

def test_host_checks_fail_with_their_fixes(fake_root: Path) -> None:
    require("root")  # the install belongs to alice (uid 4242)
    root = healthy_host(fake_root, watches=20)
    proj = make_install(root / "home/alice/proj", agents=1, extra={
        f".claude/thinking-logs/core/agent{i}/x.json": "{}" for i in range(30)})
    chown_tree(proj, 4242)
    (root / "etc/cron.d/mnic-ops").unlink()
    (root / "etc/cron.d/mnic-ops.cron").write_text("0 3 * * * root mnic-ops clean\n")
    (root / "etc/profile.d/mnic-ops.sh").write_text("export PYTHONOPTIMIZE=0\n")
    code, rep, _ = doctor_json(root)
    assert code == 1
    h = {c["id"]: c for c in rep["host"]["checks"]}
    r = f"mnic-ops --root {root}"
    assert h["cron"]["status"] == "fail" and "ignores" in h["cron"]["finding"]
    assert h["cron"]["command"] == f"{r} cron install"
    assert h["watcher"]["status"] == "fail"
    assert h["watcher"]["command"] == f"{r} watch --install-unit"
    ino = h["inotify"]
    assert ino["status"] == "fail" and ino["command"] == f"{r} render"
    assert ino["details"]["max_user_watches"] == 20
    assert ino["details"]["watches_needed"] > 30
    assert "/etc/sysctl.d/60-mnic-ops.conf" in ino["fix"]
    po = h["pythonoptimize"]
    assert po["status"] == "fail" and po["details"]["users"] == ["alice"]
    assert po["command"] == f"{r} render"
    assert h["tier_drift"]["status"] == "fail"
    assert h["tier_drift"]["command"] == f"{r} render"

    # The fixes doctor named: render (profile, sysctl file, tier configs), a cron job.
    render_host(root)
    write_tree(root, {
        "var/spool/cron/crontabs/root": "*/30 * * * * /usr/bin/mnic-ops clean --quiet\n"})
    _, rep, _ = doctor_json(root)
    h = {c["id"]: c for c in rep["host"]["checks"]}
    assert h["cron"]["status"] == "ok" and h["pythonoptimize"]["status"] == "ok"
    assert h["tier_drift"]["status"] == "ok"
    # The sysctl file is there but the running limit is still 20: load it.
    assert h["inotify"]["status"] == "fail"
    assert h["inotify"]["fix"] == "load it: sysctl -p /etc/sysctl.d/60-mnic-ops.conf"
    (root / "proc/sys/fs/inotify/max_user_watches").write_text("524288\n")
    _, rep, _ = doctor_json(root)
    assert {c["id"]: c for c in rep["host"]["checks"]}["inotify"]["status"] == "ok"


def test_terminal_table_coloured_only_on_a_tty(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    make_install(root / "home/alice/proj", agents=3)
    plain = run_mnic("--root", str(root), "doctor")
    assert "\x1b[" not in plain.out
    assert "agent activation" in plain.out and "excellent" in plain.out
    assert "FAIL  watcher" in plain.out
    assert f"fix: mnic-ops --root {root} watch --install-unit" in plain.out

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "mnic_ops", "--root", str(root), "doctor"],
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.wait(timeout=60)
    out = b"".join(chunks).decode()
    assert "\x1b[32mexcellent" in out  # green level
    assert "\x1b[31m" in out  # the failed watcher check in red


def test_no_installs_found(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    r = run_mnic("--root", str(root), "doctor")
    assert r.code == 0 and "no framework installs found" in r.out
    r = run_mnic("--root", str(root), "doctor", "nope")
    assert r.code == 2 and "nope: no such framework install" in r.err


# --- units --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind"), [
    ("---\nname: a\ndescription: b\n---\nbody", "ok"),
    ("# no front matter\n", "none"),
    ("---\r\nname: a\r\n---\r\n", "none"),  # the framework's regex wants \n
    ("---\n\n---\n", "empty"),
    ("---\nname: [unclosed\n---\n", "error"),
    ("---\nname: a\n  bad: indent\n---\n", "error"),
    ("---\n!!python/object:os.system\n---\n", "error"),  # safe_load refuses tags
])
def test_front_matter_rule_matches_the_framework(text: str, kind: str) -> None:
    assert front_matter(text)[0] == kind


def test_compress_policy_is_cleans(fake_root: Path) -> None:
    """doctor asks clean's policy (mnic_ops.facts.policy), per install: the config's section,
    the built-in default, and what the framework's own config declares."""
    from mnic_ops.core.hostroot import HostRoot
    from mnic_ops.facts.projects import load_project

    make_install(fake_root / "home/alice/proj", agents=1)
    cfg = Config(values={"clean": {"sessions": {"compress_after_days": 3}}})
    proj = load_project(HostRoot.open(fake_root), "/home/alice/proj", "project")
    pols = policy.resolve_policy(cfg, proj)
    assert pols["sessions"].compress_after_days == 3
    assert pols["checkpoints"].compress_after_days == 7
    # thinking logs are read by a glob: compressed only where the framework declares it
    assert pols["thinking_logs"].compress_after_days == 0
    assert "declares no logging.compression" in pols["thinking_logs"].note


def test_uncompressed_follows_clean_patterns_and_off_switch(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    proj = make_install(root / "home/alice/proj", agents=1, extra={
        "project_archive/sessions/notes.txt": "x" * 100,
        ".claude/thinking-logs/core/a/old.json": "{}",
        ".claude/thinking-logs/index.json": "{}",  # read back by name: never counted
        ".ai-tools/model-config/data/daily/2025-01-01.json": "{}",
        ".ai-tools/model-config/data/monthly/2025-01.json": "{}",
    })
    old = time.time() - 30 * DAY
    for f in proj.rglob("*"):
        if f.is_file():
            os.utime(f, (old, old))
    _, rep, _ = doctor_json(root)
    c = checks(rep["projects"][0])["uncompressed"]
    kinds = c["details"]["kinds"]
    assert kinds["sessions"]["files"] == 4  # *.json, not SESSION_CURRENT.md or notes.txt
    # what the framework reads back by name (checkpoint metadata, daily cost records)
    # and thinking logs without declared compression: clean never compresses them, so
    # doctor does not ask for it
    assert set(kinds) == {"sessions"}
    assert c["command"] == "mnic-ops --root " + str(root) + " clean /home/alice/proj"
    # the framework declares compression: now thinking logs are due (not index.json)
    cfgdir = proj / ".claude/config"
    cfgdir.mkdir(parents=True)
    (cfgdir / "extended-thinking-config.json").write_text(json.dumps(
        {"logging": {"retention_days": 90, "compression": "gzip_after_7_days"}}))
    _, rep, _ = doctor_json(root)
    kinds = checks(rep["projects"][0])["uncompressed"]["details"]["kinds"]
    assert kinds["thinking_logs"]["files"] == 2
    # ... and turns it off ("none"): nothing due, nothing flagged
    (cfgdir / "extended-thinking-config.json").write_text(json.dumps(
        {"logging": {"retention_days": 90, "compression": "none"}}))
    _, rep, _ = doctor_json(root)
    kinds = checks(rep["projects"][0])["uncompressed"]["details"]["kinds"]
    assert "thinking_logs" not in kinds
    # and the fix clears the finding: after clean, nothing is due
    r = run_mnic("--root", str(root), "clean", "/home/alice/proj")
    assert r.code == 0, r.err
    _, rep, _ = doctor_json(root)
    assert checks(rep["projects"][0])["uncompressed"]["status"] == "ok"


def test_clean_patterns_replace_the_builtin_suffixes(fake_root: Path) -> None:
    from mnic_ops.core.hostroot import HostRoot
    from mnic_ops.facts.projects import load_project

    make_install(fake_root / "home/alice/proj", agents=1)
    proj = load_project(HostRoot.open(fake_root), "/home/alice/proj", "project")
    cfg = Config(values={"clean": {"logs": {"patterns": ["*.log", "archive/*.txt"],
                                            "compress_after_days": 7}}})
    pols = policy.resolve_policy(cfg, proj)
    assert pols["logs"].patterns == ("*.log", "archive/*.txt")
    assert policy.compress_wanted(pols["logs"], "a.log", "x/a.log")
    assert policy.compress_wanted(pols["logs"], "b.txt", "archive/b.txt")
    assert not policy.compress_wanted(pols["logs"], "b.txt", "other/b.txt")
    # written by name by the framework's task runner: never, whatever the pattern
    assert not policy.compress_wanted(pols["logs"], "background-tasks.log",
                                      "background-tasks.log")
    assert policy.compress_wanted(pols["sessions"], "s.md", "s.md")
    assert not policy.compress_wanted(pols["sessions"], "SESSION_CURRENT.md",
                                      "SESSION_CURRENT.md")
    pols = policy.resolve_policy(Config(values={}), proj)
    assert not policy.compress_wanted(pols["logs"], "a.log", "a.log")  # logs: off


def test_opt_layout_without_agents(fake_root: Path) -> None:
    root = healthy_host(fake_root)
    write_tree(root / "opt/my-name-is-claude", {
        "sessions/session_1.json": "{}", "checkpoints/manual/cp.json": "{}",
        "logs/a.log": "x"})
    _, rep, _ = doctor_json(root, "/opt/my-name-is-claude")
    p = rep["projects"][0]
    assert p["project"] == "/opt/my-name-is-claude"
    act = p["figures"]["agent_activation"]
    assert act["details"]["agents"] == 0 and act["level"] == "excellent"
    assert checks(p)["readable"]["status"] == "ok"
    ctx = p["figures"]["context_loading"]["details"]
    assert [f["path"] for f in ctx["files"]] == ["sessions/session_1.json"]
