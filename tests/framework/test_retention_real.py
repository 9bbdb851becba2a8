"""Declared retention on data the real framework made: kill -9 at random points of an
expiry pass, a framework process working in the install, bad declared values and an
index that does not parse."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.framework.fwhelp import Host, Install, host, index_problems, install, plain_user

pytestmark = pytest.mark.root


@pytest.fixture
def fw_host() -> Iterator[Host]:
    with host() as h:
        yield h


def listed(inst: Install) -> set[str]:
    return set(json.loads((inst.store / "checkpoint_index.json").read_text())["checkpoints"])


def journal_dir(h: Host) -> Path:
    return h.root / "var/lib/mnic-ops/retention"


def test_kill_9_during_expiry_then_rerun_is_consistent(fw_host: Host) -> None:
    """kill -9 at random points of ``clean --only expire`` (half of them right after its
    journal appears, inside the rewrite-then-delete window), then a rerun: the index and
    the files agree, exactly the expired checkpoints are gone, the framework reads all
    the others."""
    h = fw_host
    with plain_user("kill") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        h.write_config([inst.host_path])
        spec = [{"how": "engine", "level": "manual", "age_days": 91 + i % 30}
                for i in range(90)]
        spec += [{"how": "engine", "level": "commit_preparation", "age_days": i % 25}
                 for i in range(30)]
        inst.populate({"checkpoints": spec})
        before = inst.inspect()["checkpoints"]
        expired = {c for c, v in before.items() if v["level"] == "manual"}
        keep = set(before) - expired
        assert len(expired) == 90 and len(keep) == 30
        pristine = h.root / "pristine"
        shutil.copytree(inst.store, pristine, symlinks=True)

        def reset() -> None:
            shutil.rmtree(inst.store)
            shutil.copytree(pristine, inst.store, symlinks=True)
            for p in [inst.store, *inst.store.rglob("*")]:
                os.lchown(p, user.uid, user.gid)

        env = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
        env["PYTHONPATH"] = str(REPO)
        argv = [sys.executable, "-m", "mnic_ops", "--root", str(h.root), "--config",
                str(h.config), "clean", "--only", "expire"]
        t0 = time.monotonic()
        assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
        full = time.monotonic() - t0
        assert listed(inst) == keep
        rnd = random.Random(int(os.environ.get("MNIC_OPS_TEST_SEED", "14")))
        tries = killed_in_window = 0
        for n in range(16):
            reset()
            tries += 1
            p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            if n % 2:  # right after the journal appears
                end = time.monotonic() + full * 3 + 5
                while time.monotonic() < end and p.poll() is None and not (
                        journal_dir(h).is_dir() and any(journal_dir(h).iterdir())):
                    time.sleep(0.0005)
                time.sleep(rnd.uniform(0, 0.02))
            else:
                time.sleep(rnd.uniform(0, full))
            in_window = journal_dir(h).is_dir() and any(journal_dir(h).iterdir())
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed_in_window += in_window and p.returncode == -signal.SIGKILL
            r = subprocess.run(argv, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            assert listed(inst) == keep, f"try {tries}"
            assert not index_problems(inst.store), (tries, index_problems(inst.store))
            assert not any(journal_dir(h).iterdir())
            assert not [q for q in inst.store.rglob("*") if ".mnic-ops-" in q.name]
        print(f"kill -9 tries: {tries}, inside the journal window: {killed_in_window}")
        assert killed_in_window >= 1
        seen = inst.inspect()
        assert set(seen["checkpoints"]) == keep
        assert all(c["readable"] and c["rollback"] for c in seen["checkpoints"].values())


def test_a_framework_process_in_the_install_skips_its_checkpoint_store(fw_host: Host
                                                                       ) -> None:
    h = fw_host
    with plain_user("busy") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        h.write_config([inst.host_path])
        inst.populate({"checkpoints": [{"how": "engine", "level": "manual", "age_days": 95},
                                       {"how": "engine", "level": "manual", "age_days": 1}],
                       "cost": [{"age_days": 100}, {"age_days": 0}]})
        before = listed(inst)
        index = (inst.store / "checkpoint_index.json").read_bytes()
        # started apart, as a framework is (its own terminal or service): not in the
        # process group of whoever runs mnic-ops
        holder = subprocess.Popen(inst.command("hold", "120"), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True,
                                  start_new_session=True)
        try:
            assert holder.stdout is not None
            assert "@@READY@@" in holder.stdout.readline()
            r = h.mnic_json("clean")
            ret = r["projects"][0]["kinds"]["checkpoint_store"]["retention"]
            assert ret["status"] == "skipped"
            assert f"pid {holder.pid}" in ret["reason"] and "run again" in ret["reason"]
            assert (inst.store / "checkpoint_index.json").read_bytes() == index
            assert listed(inst) == before
            # the daily cost records have no index: their expiry goes on
            assert r["projects"][0]["kinds"]["cost_records"]["retention"]["expired"] == 1
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        r = h.mnic_json("clean")
        assert r["projects"][0]["kinds"]["checkpoint_store"]["retention"]["expired"] == 1
        assert len(listed(inst)) == 1 and not index_problems(inst.store)


def test_clean_run_from_a_shell_inside_the_install_still_expires(fw_host: Host) -> None:
    """The admin's own shell sitting in the install (``cd ~alice/proj && mnic-ops clean .
    | cat``) is not a framework process: the shell, sudo-like parents and the pipeline
    beside mnic-ops do not hold the checkpoint store's expiry back."""
    h = fw_host
    with plain_user("cwd") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        h.write_config([inst.host_path])
        inst.populate({"checkpoints": [{"how": "engine", "level": "manual", "age_days": 95},
                                       {"how": "engine", "level": "manual", "age_days": 1}]})
        e = {k: v for k, v in os.environ.items() if not k.startswith("MNIC_OPS_")}
        e["PYTHONPATH"] = str(REPO)
        inner = " ".join([sys.executable, "-m", "mnic_ops", "--root", str(h.root),
                          "--config", str(h.config), "--json", "clean"])
        # a shell that stays alive (it waits for the pipeline), in the install, with a
        # second pipeline member there too
        r = subprocess.run(["sh", "-c", f"cd {inst.path} && {inner} | cat; exit $?"],
                           env=e, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        ret = json.loads(r.stdout)["projects"][0]["kinds"]["checkpoint_store"]["retention"]
        assert ret.get("status") != "skipped", ret
        assert ret["expired"] == 1, ret
        assert len(listed(inst)) == 1 and not index_problems(inst.store)


BAD = [("-5", "expected 1 to 36500 days"), ('"90"', "expected a number of days"),
       ("0.5", "expected 1 to 36500 days"), ("1e300", "expected 1 to 36500 days")]


@pytest.mark.parametrize(("value", "why"), BAD, ids=[b[0] for b in BAD])
def test_bad_declared_retention_leaves_that_install_untouched(fw_host: Host, value: str,
                                                              why: str) -> None:
    h = fw_host
    with plain_user("bad") as alice, plain_user("good") as bob:
        a = install(h, "v3.10.0", alice, with_config=True)
        b = install(h, "v3.10.0", bob, with_config=True)
        h.write_config([a.host_path, b.host_path])
        data = {"checkpoints": [{"how": "engine", "level": "manual", "age_days": 95},
                                {"how": "engine", "level": "manual", "age_days": 1}]}
        a.populate(data)
        b.populate(data)
        cfg = a.path / ".claude/config/checkpoint-config.json"
        text = cfg.read_text()
        lines = text.splitlines()
        manual = next(i for i, ln in enumerate(lines) if '"manual": {' in ln)
        at = next(i for i in range(manual, len(lines)) if '"retention_days"' in lines[i])
        lines[at] = re.sub(r'("retention_days":\s*)[^,\n]+', rf"\g<1>{value}", lines[at])
        cfg.write_text("\n".join(lines) + "\n")
        a_before = {p: p.read_bytes() for p in a.store.rglob("*") if p.is_file()}
        r = h.mnic("--json", "clean")
        assert r.code == 1, r.out + r.err  # that install's maintenance failed
        data_out = json.loads(r.out)
        pa, pb = data_out["projects"]
        ret = pa["kinds"]["checkpoint_store"]["retention"]
        assert ret["status"] == "failed"
        where = f"{a.host_path}/.claude/config/checkpoint-config.json:{at + 1}"
        assert where in ret["reason"] and why in ret["reason"], ret["reason"]
        assert {p: p.read_bytes() for p in a.store.rglob("*") if p.is_file()} == a_before
        # the other install went on
        assert pb["kinds"]["checkpoint_store"]["retention"]["expired"] == 1
        assert len(listed(b)) == 1


def test_a_config_that_does_not_parse_fails_that_install(fw_host: Host) -> None:
    """NaN makes checkpoint-config.json unusable JSON: it also says where the checkpoint
    store is (storage.base_path), so nothing is done for that install (it is reported,
    with file:line, exit 1) and the other install goes on."""
    h = fw_host
    with plain_user("nan") as alice, plain_user("good") as bob:
        a = install(h, "v3.10.0", alice, with_config=True)
        b = install(h, "v3.10.0", bob, with_config=True)
        h.write_config([a.host_path, b.host_path])
        data = {"checkpoints": [{"how": "engine", "level": "manual", "age_days": 95},
                                {"how": "engine", "level": "manual", "age_days": 1}]}
        a.populate(data)
        b.populate(data)
        cfg = a.path / ".claude/config/checkpoint-config.json"
        lines = cfg.read_text().splitlines()
        at = next(i for i, ln in enumerate(lines) if '"retention_days"' in ln)
        lines[at] = re.sub(r'("retention_days":\s*)[^,\n]+', r"\g<1>NaN", lines[at])
        cfg.write_text("\n".join(lines) + "\n")
        a_before = {p: p.read_bytes() for p in a.path.rglob("*") if p.is_file()}
        r = h.mnic("--json", "clean")
        assert r.code == 1, r.out + r.err
        doc = json.loads(r.out)
        [failed] = doc["failed_installs"]
        assert failed["install"] == a.host_path
        assert f"{a.host_path}/.claude/config/checkpoint-config.json:{at + 1}" in \
            failed["error"] and "NaN" in failed["error"], failed
        assert [p["project"] for p in doc["projects"]] == [b.host_path]
        assert {p: p.read_bytes() for p in a.path.rglob("*") if p.is_file()} == a_before
        assert len(listed(b)) == 1


def test_an_index_that_does_not_parse_is_never_rewritten(fw_host: Host) -> None:
    h = fw_host
    with plain_user("torn") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        h.write_config([inst.host_path])
        inst.populate({"checkpoints": [{"how": "engine", "level": "manual", "age_days": 95},
                                       {"how": "engine", "level": "manual", "age_days": 1}],
                       "tasks": [{"age_days": 10}]})
        idx = inst.store / "checkpoint_index.json"
        torn = idx.read_bytes()[:-40]  # as a framework killed in its plain open('w') leaves
        idx.write_bytes(torn)
        state = inst.path / "project_archive/background-tasks/state.json"
        state.write_text('{"task_results": {"task-0000": ')
        tops = (inst.store, inst.path / "project_archive/background-tasks")
        files = {p: p.read_bytes() for t in tops for p in t.rglob("*") if p.is_file()}
        r = h.mnic("--json", "clean")
        assert r.code == 1, r.out + r.err
        k = json.loads(r.out)["projects"][0]["kinds"]
        ret = k["checkpoint_store"]["retention"]
        assert ret["status"] == "failed" and "not rewritten" in ret["reason"]
        assert re.search(r"checkpoint_index\.json:\d+:\d+: not valid JSON", ret["reason"])
        assert k["task_results"]["retention"]["status"] == "failed"
        assert "state.json:1:" in k["task_results"]["retention"]["reason"]
        after = {p: p.read_bytes() for p in files}
        assert after == files
        assert not [p for p in inst.path.rglob("*") if ".mnic-ops-" in p.name]
        r = h.mnic("clean", "--check")
        assert r.code == 1 and "not rewritten" in r.out


def test_what_an_earlier_pass_gzipped_is_readable_again(fw_host: Host) -> None:
    """An earlier mnic-ops gzipped files the framework reads by name (metadata/<id>.json,
    quality_gate_history.json, daily/<date>.json, results/<id>.json): the checkpoints
    were unreadable and the histories empty. clean makes them again from the archives."""
    from mnic_ops.engines import compress, inplace

    h = fw_host
    with plain_user("healed") as user:
        inst = install(h, "v3.10.0", user, with_config=True)
        h.write_config([inst.host_path])
        inst.populate({"checkpoints": [{"how": "gate", "age_days": 3},
                                       {"how": "engine", "level": "manual", "age_days": 2}],
                       "cost": [{"age_days": 20}, {"age_days": 0}],
                       "tasks": [{"age_days": 3}]})
        base = inst.inspect()
        victims = [*inst.store.glob("metadata/*.json"),
                   inst.store / "quality_gate_history.json",
                   *(inst.path / ".ai-tools/model-config/data/daily").glob("*.json"),
                   *(inst.path / "project_archive/background-tasks/results").glob("*.json")]
        for v in victims:  # what the old pass did: its own engine made NAME.gz
            dfd = os.open(v.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                o = compress.compress_at(dfd, v.name, inplace.Options(dev=os.fstat(dfd).st_dev))
            finally:
                os.close(dfd)
            assert o.state == inplace.COMPRESSED and not v.exists(), o
        broken = inst.inspect()
        assert not all(c["readable"] for c in broken["checkpoints"].values())
        r = h.mnic("clean", "--check")
        assert r.code == 3 and "would restore" in r.out, r.out
        r = h.mnic_json("clean")
        restored = [x for k in r["projects"][0]["kinds"].values()
                    for x in (k.get("retention") or {}).get("restored", [])]
        assert len(restored) == len(victims)
        assert r["totals"]["retention_restored"] == len(victims)
        seen = inst.inspect()
        assert {k: v for k, v in seen.items() if k not in ("warnings", "_stderr")} == \
            {k: v for k, v in base.items() if k not in ("warnings", "_stderr")}
        assert all(c["readable"] and c["rollback"] for c in seen["checkpoints"].values())
        assert not [v for v in victims if not v.exists() or v.stat().st_uid != user.uid]
        assert not list(inst.store.rglob("*.json.gz"))
