"""`mnic-ops clean`: policy, report, safety on hostile trees, locking, kill -9."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mnic_ops.core.config import load
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import cleanjobs, dirlock, tempfiles
from mnic_ops.facts.policy import resolve_policy
from mnic_ops.facts.projects import PROTECTED_NAMES, load_project
from tests.cleanhelp import (
    DAY,
    PROJECT,
    assert_nothing_lost,
    content_of,
    make_project,
    snapshot,
    write_config,
)
from tests.conftest import REPO, require, run_mnic
from tests.linkhelp import relocate_by_hand

FW = Path("/work/shared/fixtures/framework-configs")
FW_CONFIGS = next((p for p in (REPO.parent / "shared/fixtures/framework-configs", FW)
                   if p.is_dir()), FW)


def run_clean(root: Path, *args: str, timeout: float = 120) -> tuple[int, dict, str]:
    r = run_mnic("--root", str(root), "clean", "--json", *args, timeout=timeout)
    try:
        data = json.loads(r.out) if r.out.strip() else {}
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {r.out!r} {r.err!r}") from None
    return r.code, data, r.err


def kinds(data: dict) -> dict[str, dict]:
    return data["projects"][0]["kinds"]


def test_check_changes_nothing_then_apply_compresses_aged_only(fake_root: Path) -> None:
    files = make_project(fake_root, files=30)
    young = fake_root / PROJECT.lstrip("/") / "project_archive/sessions/young.json"
    young.write_text("{}")
    files[PROJECT + "/project_archive/sessions/young.json"] = b"{}"
    write_config(fake_root)
    before = snapshot(fake_root / "home")
    code, data, err = run_clean(fake_root, "--check")
    assert code == 3, err
    assert data["totals"]["would_compress"] == 30
    assert snapshot(fake_root / "home") == before
    code, data, err = run_clean(fake_root)
    assert code == 0, err
    t = data["totals"]
    assert t["compressed"] == 30 and t["failed"] == 0
    assert t["bytes_after"] < t["bytes_before"]
    # SESSION_CURRENT.md (*.md) and the thinking logs' index.json (*.json) match a
    # pattern and are read back by name; the checkpoint store and cost records have none
    assert t["skipped"]["protected"] == 2
    assert_nothing_lost(fake_root, files)
    for host in files:
        plain, packed = content_of(fake_root, host)
        name = os.path.basename(host)
        if name in PROTECTED_NAMES or name == "young.json":
            assert plain is not None and packed is None, host
        else:
            assert plain is None and packed is not None, host
    # nothing left to do: --check is clean again
    code, data, _ = run_clean(fake_root, "--check")
    assert code == 0 and data["totals"]["would_compress"] == 0


def test_expiry_per_class_and_framework_retention(fake_root: Path) -> None:
    base = fake_root / PROJECT.lstrip("/")
    make_project(fake_root, files=0)
    shutil.copy(FW_CONFIGS / "extended-thinking-config.json", base / ".claude/config/")
    now = time.time()
    ages = {"project_archive/sessions/s.json.gz": 40,  # sessions: 30 days
            "project_archive/sessions/t.json.gz": 20,
            ".claude/thinking-logs/core/arch/a.json.gz": 60,  # thinking: 90 (its config)
            ".claude/thinking-logs/core/arch/b.json.gz": 100,
            ".ai-tools/checkpoint/storage/checkpoints/cp_1.dat.gz": 400,  # framework's own
            ".claude/checkpoints/manual/user.tar.gz": 400}  # not one of our archives
    for rel, days in ages.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        os.utime(p, (now - days * DAY, now - days * DAY))
    write_config(fake_root)
    code, data, err = run_clean(fake_root, "--only", "expire")
    assert code == 0, err
    left = {rel for rel in ages if (base / rel).exists()}
    assert left == set(ages) - {"project_archive/sessions/s.json.gz",
                                ".claude/thinking-logs/core/arch/b.json.gz"}
    k = kinds(data)
    ret = k["thinking_logs"]["retention"]
    assert ret["rules"] == {"retention_days": 90} and ret["expired"] == 1
    assert ret["items"][0]["path"] == "core/arch/b.json.gz"
    assert "logging.retention_days 90" in ret["items"][0]["rule"]
    assert "extended-thinking-config.json:" in ret["items"][0]["rule"]


def test_policy_layers(fake_root: Path) -> None:
    base = fake_root / PROJECT.lstrip("/")
    make_project(fake_root, files=0)
    (base / ".claude/config/extended-thinking-config.json").write_text(json.dumps(
        {"logging": {"retention_days": 45, "compression": "gzip_after_3_days"}}))
    write_config(fake_root, "[clean.thinking_logs]\ndelete_after_days = 60\n"
                            "[clean.sessions]\npatterns = ['*.txt']\n")
    root = HostRoot.open(fake_root)
    cfg = load(root, env={})
    pol = resolve_policy(cfg, load_project(root, PROJECT, "project"))
    th = pol["thinking_logs"]
    assert (th.compress_after_days, th.delete_after_days) == (3, 60)
    assert th.sources["compress_after_days"] == "framework"
    assert th.sources["delete_after_days"] == "config"
    # the thinking logs' own expiry is the retention the framework declares (45 days,
    # kept consistent with their index): the config's days apply to expire_patterns
    assert th.expire_patterns == ()
    assert pol["sessions"].patterns == ("*.txt",)
    assert pol["sessions"].expire_patterns == ("*.txt.gz",)
    # read back by name by the framework (CostTracker._archive_records): not compressed
    assert pol["cost_records"].patterns == ()


def test_textfile_is_written_atomically(fake_root: Path) -> None:
    make_project(fake_root, files=10)
    tdir = fake_root / "var/lib/node-exporter"
    tdir.mkdir(parents=True)
    write_config(fake_root, '[clean]\ntextfile = "/var/lib/node-exporter/clean.prom"\n')
    code, data, err = run_clean(fake_root)
    assert code == 0, err
    text = (tdir / "clean.prom").read_text()
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        assert fam.type == "gauge" and fam.documentation, fam
        for s in fam.samples:
            metrics[(s.name, frozenset(s.labels.items()))] = s.value
    total = frozenset[tuple[str, str]]()
    assert metrics[("mnic_ops_clean_files_compressed", total)] == 10
    assert metrics[("mnic_ops_clean_bytes_saved", total)] == \
        data["totals"]["bytes_saved"] > 0
    assert metrics[("mnic_ops_clean_bytes_saved", frozenset({("project", PROJECT)}))] == \
        data["totals"]["bytes_saved"]
    assert metrics[("mnic_ops_clean_errors", total)] == 0
    assert abs(metrics[("mnic_ops_clean_last_run_timestamp_seconds", total)]
               - time.time()) < 120
    assert metrics[("mnic_ops_clean_skipped", frozenset({("reason", "protected")}))] >= 1
    assert stat.S_IMODE(os.stat(tdir / "clean.prom").st_mode) == 0o644
    assert os.listdir(tdir) == ["clean.prom"]  # no temporary left


def test_textfiles_come_from_the_runtime_dependency() -> None:
    """prometheus_client writes the textfiles of clean and doctor, and croniter computes
    cron show's next runs: both must install with mnic-ops itself, not with the test
    extras (the test host and the VMs install from the wheel's dependencies)."""
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("-", "_")
            for d in meta["dependencies"]}
    assert {"prometheus_client", "croniter"} <= deps, deps


def test_textfile_labels_survive_hostile_install_names(fake_root: Path) -> None:
    odd = '/home/alice/we"ird\\name'
    make_project(fake_root, files=4, host_path=odd)
    tdir = fake_root / "var/lib/node-exporter"
    tdir.mkdir(parents=True)
    write_config(fake_root, '[clean]\ntextfile = "/var/lib/node-exporter/clean.prom"\n',
                 host_path=odd.replace("\\", "\\\\").replace('"', '\\"'))
    code, data, err = run_clean(fake_root)
    assert code == 0 and data["totals"]["compressed"] == 4, err
    fams = {f.name: f for f in text_string_to_metric_families(
        (tdir / "clean.prom").read_text())}
    labels = [s.labels for s in fams["mnic_ops_clean_bytes_saved"].samples if s.labels]
    assert labels == [{"project": cleanjobs.printable(odd)}], labels


def test_second_pass_skips_while_the_lock_is_held(fake_root: Path) -> None:
    files = make_project(fake_root, files=5)
    write_config(fake_root)
    lock = dirlock.lock_path(HostRoot.open(fake_root), PROJECT)
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = run_mnic("--root", str(fake_root), "clean")
        assert r.code == 0, r.err
        assert "skipped: another pass holds its lock" in r.out
        assert all(content_of(fake_root, h)[1] is None for h in files)
    finally:
        os.close(fd)


def _tree(top: Path) -> dict[str, tuple[int, int, bytes | None]]:
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in [*dirnames, *filenames]:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(top))] = (st.st_mode, st.st_mtime_ns, p.read_bytes()
                                            if stat.S_ISREG(st.st_mode) else None)
    return out


def test_check_writes_nothing(fake_root: Path) -> None:
    """clean --check changes nothing anywhere: no lock file or folder in
    /var/lib/mnic-ops (on main it created locks/<install>.lock), no state, no log; a lock
    another pass holds is still reported."""
    make_project(fake_root, files=5)
    write_config(fake_root)
    before = _tree(fake_root)
    r = run_mnic("--root", str(fake_root), "--json", "clean", "--check")
    assert r.code == 3, r.out + r.err
    assert _tree(fake_root) == before
    assert not (fake_root / "var/lib/mnic-ops").exists()
    lock = dirlock.lock_path(HostRoot.open(fake_root), PROJECT)
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = run_mnic("--root", str(fake_root), "--json", "clean", "--check")
        assert json.loads(r.out)["projects"][0]["status"] == "locked", r.out
    finally:
        os.close(fd)
    r = run_mnic("--root", str(fake_root), "--json", "clean", "--check")
    assert json.loads(r.out)["projects"][0]["status"] == "done", r.out


@pytest.mark.slow
def test_two_passes_at_once_one_works_one_skips(fake_root: Path) -> None:
    files = make_project(fake_root, files=3000)
    write_config(fake_root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "mnic_ops", "--root", str(fake_root), "clean", "--json"]
    # the first pass has the lock for well over a second; the second starts meanwhile
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lock = dirlock.lock_path(HostRoot.open(fake_root), PROJECT)
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(lock):
            probe = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(probe, fcntl.LOCK_UN)
            except BlockingIOError:
                break  # the first pass holds it
            finally:
                os.close(probe)
        time.sleep(0.01)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out1, _ = first.communicate(timeout=120)
    r1, r2 = json.loads(out1), json.loads(second.stdout)
    assert first.returncode == 0 and second.returncode == 0
    assert [p["status"] for p in r1["projects"]] == ["done"]
    assert [p["status"] for p in r2["projects"]] == ["locked"]
    assert r1["totals"]["compressed"] == 3000
    assert_nothing_lost(fake_root, files)


def _hostile(root: Path, outside: Path) -> tuple[Path, dict[str, bytes]]:
    files = make_project(root, files=10)
    base = root / PROJECT.lstrip("/")
    sess = base / "project_archive/sessions"
    old = time.time() - 20 * DAY
    outside.mkdir()
    for n in ("passwd.json", "a.json"):
        (outside / n).write_text('{"outside": true}')
        os.utime(outside / n, (old, old))
    (outside / "sub").mkdir()
    (outside / "sub/b.json").write_text("{}")
    os.utime(outside / "sub/b.json", (old, old))
    (sess / "evil.json").symlink_to(outside / "passwd.json")
    (sess / "evildir").symlink_to(outside)
    (sess / "evil\nlink.json").symlink_to(outside / "a.json")
    os.mkfifo(sess / "fifo.json")
    os.mknod(sess / "dev.json", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    weird = {"new\nline.json": b'{"n": 1}', "caf\xe9.json": b'{"latin1": 1}'}
    for n, data in weird.items():
        p = os.path.join(os.fsencode(sess), n.encode("latin-1"))
        with open(p, "wb") as fh:
            fh.write(data)
        os.utime(p, (old, old))
        files[PROJECT + "/project_archive/sessions/" + os.fsdecode(n.encode("latin-1"))] = data
    for n, data in {"held.json": b"held", "hard.json": b"hard", "bad.json": b"bad"}.items():
        (sess / n).write_bytes(data)
        os.utime(sess / n, (old, old))
        files[f"{PROJECT}/project_archive/sessions/{n}"] = data
    os.link(sess / "hard.json", sess / "hard-link.json")
    (sess / "bad.json.gz").write_bytes(b"\x1f\x8b\x08\x00corrupt")
    return sess, files


def test_hostile_tree(fake_root: Path, tmp_path: Path) -> None:
    require("root")
    outside = tmp_path / "outside"
    sess, files = _hostile(fake_root, outside)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sess / "sock.json"))
    write_config(fake_root)
    before = snapshot(outside)
    try:
        with open(sess / "held.json", "ab"):
            code, data, err = run_clean(fake_root)
    finally:
        sock.close()
    assert code == 0, err
    assert snapshot(outside) == before
    assert_nothing_lost(fake_root, files)
    # bad.json.gz had other content (a collision): kept as bad.json.1.gz, bad.json
    # compressed; reported per file
    assert not (sess / "bad.json").exists()
    assert (sess / "bad.json.1.gz").read_bytes() == b"\x1f\x8b\x08\x00corrupt"
    assert (sess / "held.json").exists() and (sess / "hard.json").exists()
    for n in ("new\nline.json", os.fsdecode(b"caf\xe9.json")):
        assert not (sess / n).exists() and (sess / (n + ".gz")).exists()
    s = kinds(data)["sessions"]
    assert s["collisions"] == 1
    assert s["collision_files"] == [{"file": "bad.json", "kept_as": "bad.json.1.gz"}]
    assert s["skipped"] == {"hard_links": 2, "not_regular": 3,
                            "open_for_writing": 1, "protected": 1, "symlink": 3}
    ex = s["skipped_examples"]
    # odd names are reported escaped, one line each
    assert sorted(ex["symlink"]) == ["evil.json", "evil\\nlink.json", "evildir"]
    r = run_mnic("--root", str(fake_root), "-v", "clean", "--check")
    assert r.code == 3, r.err  # held.json is a candidate again
    assert "evil\\nlink.json" in r.out


def test_symlink_swapped_in_during_the_walk(fake_root: Path, tmp_path: Path) -> None:
    """A user flips a folder and a symlink to outside back and forth while passes run:
    nothing outside changes, nothing inside is lost."""
    require("root")
    outside = tmp_path / "outside"
    outside.mkdir()
    old = time.time() - 20 * DAY
    for i in range(50):
        (outside / f"o{i}.json").write_text("{}")
        os.utime(outside / f"o{i}.json", (old, old))
    files = make_project(fake_root, files=0)
    write_config(fake_root)
    sess = fake_root / PROJECT.lstrip("/") / "project_archive/sessions"
    real, link, spare = sess / "flip", sess / "flip-real", sess / "flip-link"
    real.mkdir()
    for i in range(50):
        data = f'{{"in": {i}}}'.encode() * 50
        (real / f"i{i}.json").write_bytes(data)
        os.utime(real / f"i{i}.json", (old, old))
        files[f"{PROJECT}/project_archive/sessions/flip/i{i}.json"] = data
    spare.symlink_to(outside)
    before = snapshot(outside)
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            os.rename(real, link)  # folder away ...
            os.rename(spare, real)  # ... symlink to outside in its place
            os.rename(real, spare)
            os.rename(link, real)

    t = threading.Thread(target=flipper)
    t.start()
    try:
        for _ in range(6):
            r = run_mnic("--root", str(fake_root), "clean")
            assert r.code == 0, r.err
    finally:
        stop.set()
        t.join()
    assert snapshot(outside) == before
    assert_nothing_lost(fake_root, files)


def test_unreadable_folder_is_reported(tmp_path: Path) -> None:
    """As the project's owner (not root), a folder it cannot read is skipped and said."""
    require("root")
    if not shutil.which("setpriv"):
        pytest.skip("setpriv not installed")
    top = Path(tempfile.mkdtemp(prefix="mnic-clean-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        root = top / "host"
        files = make_project(root, files=10)
        write_config(root)
        locked = root / PROJECT.lstrip("/") / "project_archive/sessions/private"
        locked.mkdir()
        (locked / "x.json").write_text("{}")
        for dirpath, dirnames, filenames in os.walk(top):
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), 65534, 65534)
        os.chown(top, 65534, 65534)
        locked.chmod(0)
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "mnic_ops", "--root", str(root), "clean", "--json"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        s = kinds(data)["sessions"]
        assert s["skipped"].get("unreadable_dir") == 1
        assert s["skipped_examples"]["unreadable_dir"] == ["private"]
        assert data["totals"]["compressed"] == 10
        locked.chmod(0o700)
        assert (locked / "x.json").read_text() == "{}"
        assert_nothing_lost(root, files)
    finally:
        shutil.rmtree(top, ignore_errors=True)


NOSPACE_SCRIPT = r"""
set -e
mount -t tmpfs -o size={size} tmpfs "$1"
"$2" - "$1" "$4" <<'PY'
import os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.cleanhelp import make_project, write_config
root = Path(sys.argv[1])
files = make_project(root, files=60)
write_config(root, '[clean]\nworkers = 1\n')
# fill the filesystem, leaving a few blocks
fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
try:
    while True:
        os.write(fd, b"\1" * 4096)
except OSError:
    pass
os.close(fd)
os.truncate(root / "filler", os.path.getsize(root / "filler") - 24 * 1024)
import json
json.dump({{k: v.hex() for k, v in files.items()}}, open(sys.argv[2], "w"))
PY
PYTHONPATH={repo} "$2" -m mnic_ops --root "$1" clean --json > "$3" || true
"$2" - "$1" "$4" <<'PY'
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.cleanhelp import assert_nothing_lost
from mnic_ops.engines.tempfiles import is_ours
import os
root = Path(sys.argv[1])
files = {{k: bytes.fromhex(v) for k, v in json.load(open(sys.argv[2])).items()}}
assert_nothing_lost(root, files)
left = [n for d, _, fs in os.walk(root) for n in fs if is_ours(n)]
assert not left, left
print("NOSPACE-OK")
PY
"""


def test_no_space_left(tmp_path: Path) -> None:
    require("unshare")
    mnt = tmp_path / "small"
    mnt.mkdir()
    report = tmp_path / "report.json"
    script = NOSPACE_SCRIPT.format(size="2m", repo=str(REPO))
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                        script, "x", str(mnt), sys.executable, str(report),
                        str(tmp_path / "files.json")],
                       capture_output=True, text=True, timeout=180)
    assert "NOSPACE-OK" in r.stdout, r.stdout + r.stderr
    data = json.loads(report.read_text())
    t = data["totals"]
    assert t["skipped"].get("no_space", 0) > 0 and t["failed"] == t["skipped"]["no_space"]
    assert t["compressed"] + t["skipped"]["no_space"] >= 60 - 5


def _kill_run(root: Path, delay: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.Popen([sys.executable, "-m", "mnic_ops", "--root", str(root), "clean"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        # the workers die asynchronously; wait until none of the group runs
        deadline = time.time() + 10
        while time.time() < deadline and _group_running(p.pid):
            time.sleep(0.01)


def _group_running(pgid: int) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        f = raw[raw.rfind(b")") + 2:].split()
        if int(f[2]) == pgid and f[0] not in (b"Z", b"X"):
            return True
    return False


def _tmp_names(root: Path) -> Iterator[str]:
    for _d, _, fs in os.walk(root / "home"):
        yield from (n for n in fs if tempfiles.is_ours(n))


@pytest.mark.slow
def test_kill_9_at_random_points(tmp_path: Path) -> None:
    """30 passes killed with SIGKILL at random instants: after each, every file exists as
    itself or as a .gz holding exactly its bytes; the next pass finishes the work and
    leaves no temporaries."""
    rnd = random.Random(os.getpid())
    # how long a whole pass takes here, to spread the kills over it
    probe = tmp_path / "probe"
    make_project(probe, files=300)
    write_config(probe)
    t0 = time.monotonic()
    _kill_run(probe, 600)
    full = time.monotonic() - t0
    runs = 30
    for i in range(runs):
        root = tmp_path / f"r{i}"
        files = make_project(root, files=200, seed=i)
        write_config(root, "[clean]\nbatch_files = 16\n")
        _kill_run(root, rnd.uniform(0.05, full))
        assert_nothing_lost(root, files)
        code, _data, err = run_clean(root)
        assert code == 0, err
        assert_nothing_lost(root, files)
        assert not list(_tmp_names(root))
        for host in files:
            plain, packed = content_of(root, host)
            if os.path.basename(host) not in PROTECTED_NAMES:
                assert plain is None and packed is not None, host
        shutil.rmtree(root)


def test_relocated_data_folder_is_followed_only_when_relocate_made_it(fake_root: Path) -> None:
    """A link `relocate` made (recorded in mnic-ops's root-owned links.json) is followed.
    A link a user made is not, even into the same ssd_path folder (where the old rule,
    a path prefix, used to follow it), and neither is a recorded link whose text changed.
    """
    files = make_project(fake_root, files=10)
    base = fake_root / PROJECT.lstrip("/")
    ssd = relocate_by_hand(fake_root, PROJECT, "project_archive/sessions",
                           "/mnt/ssd/my-name-is-claude/proj-1/sessions", "sessions")
    # a user-made link into the shared SSD folder (another install's relocated data)
    other = fake_root / "mnt/ssd/my-name-is-claude/other-2/thinking"
    other.parent.mkdir(parents=True)
    os.rename(base / ".claude/thinking-logs", other)
    (base / ".claude/thinking-logs").symlink_to("/mnt/ssd/my-name-is-claude/other-2/thinking")
    # a recorded link, then re-pointed by hand: no longer the one relocate made
    relocate_by_hand(fake_root, PROJECT, ".claude/checkpoints",
                     "/mnt/ssd/my-name-is-claude/proj-1/checkpoints", "checkpoints")
    elsewhere = fake_root / "srv/other/checkpoints"
    elsewhere.parent.mkdir(parents=True)
    os.rename(fake_root / "mnt/ssd/my-name-is-claude/proj-1/checkpoints", elsewhere)
    (base / ".claude/checkpoints").unlink()
    (base / ".claude/checkpoints").symlink_to("/srv/other/checkpoints")
    write_config(fake_root, extra='[clean]\nfollow_links_under = ["/srv"]\n')
    before = snapshot(other), snapshot(elsewhere)
    code, data, err = run_clean(fake_root)
    assert code == 0, err
    assert "follow_links_under is deprecated and has no effect" in err
    k = kinds(data)
    assert k["sessions"]["compressed"] == 2 and not k["sessions"].get("note")
    assert any(n.endswith(".json.gz") for n in os.listdir(ssd))
    assert "not followed" in k["thinking_logs"]["note"]
    assert k["thinking_logs"]["skipped"] == {"symlink": 1}
    assert "not followed" in k["checkpoints"]["note"]
    assert "text changed" in k["checkpoints"]["note"]
    assert (snapshot(other), snapshot(elsewhere)) == before
    moved = {h.replace(f"{PROJECT}/project_archive/sessions",
                       "/mnt/ssd/my-name-is-claude/proj-1/sessions")
             .replace(f"{PROJECT}/.claude/thinking-logs",
                      "/mnt/ssd/my-name-is-claude/other-2/thinking")
             .replace(f"{PROJECT}/.claude/checkpoints", "/srv/other/checkpoints"): d
             for h, d in files.items()}
    assert_nothing_lost(fake_root, moved)


def test_textfile_write_follows_no_planted_link(tmp_path: Path) -> None:
    """prometheus_client's write_to_textfile opens `<path>.<pid>.<thread>` with a plain
    open(): a link planted there by whoever can write the folder would get root's
    write. Ours writes its temporary in a private folder; the planted link and its
    target stay as they were."""
    import threading

    from mnic_ops.core import metrics

    folder = tmp_path / "textfiles"
    folder.mkdir(mode=0o777)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = folder / "x.prom"
    planted = folder / f"x.prom.{os.getpid()}.{threading.current_thread().ident}"
    planted.symlink_to(victim)
    tf = metrics.Textfile()
    tf.add("mnic_ops_test_value", "A value.", 3, {"project": "/a"})
    tf.write(path)
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink()
    fams = list(text_string_to_metric_families(path.read_text()))
    assert [(s.name, s.labels, s.value) for f in fams for s in f.samples] == [
        ("mnic_ops_test_value", {"project": "/a"}, 3.0)]
    assert sorted(os.listdir(folder)) == sorted([path.name, planted.name])
