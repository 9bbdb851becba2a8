"""The role's Ansible module (roles/mnic_ops/library/mnic_ops.py), driven the way Ansible
drives it: with Ansible's own module test utilities (arguments patched in, exit_json and
fail_json caught) against this checkout's mnic-ops on throwaway host trees (``--root``),
and from the command line with ``ansible localhost -m mnic_ops --check --diff``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, require, write_tree
from tests.testhost import tree_hash, write_project

LIBRARY = REPO / "roles" / "mnic_ops" / "library"
PROJECT = "/home/alice/proj"
BIN = Path(sys.executable).parent

testing = pytest.importorskip("ansible.module_utils.testing",
                              reason="ansible-core >= 2.19 (test extra) has the module "
                                     "test utilities")
basic = pytest.importorskip("ansible.module_utils.basic")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mnic_ops_ansible_module",
                                                  LIBRARY / "mnic_ops.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


M = _load()


class Exit(Exception):
    def __init__(self, kind: str, result: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind, self.result = kind, result


@pytest.fixture(autouse=True)
def _catch_exits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """exit_json/fail_json raise instead of printing and exiting (the pattern of
    Ansible's module unit tests); the module's temporary folder is the test's."""
    def exit_json(self: Any, **kw: Any) -> None:
        raise Exit("exit", kw)

    def fail_json(self: Any, msg: str, **kw: Any) -> None:
        raise Exit("fail", {"msg": msg, **kw})

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setenv("ANSIBLE_HOME", str(tmp_path / "ansible-home"))
    for k in [k for k in os.environ if k.startswith("MNIC_OPS_")]:
        monkeypatch.delenv(k)


def run_module(args: dict[str, Any], *, check: bool = False, diff: bool = False,
               tmp: Path | None = None) -> Exit:
    full = {**args, "_ansible_check_mode": check, "_ansible_diff": diff}
    if tmp is not None:
        tmp.mkdir(exist_ok=True)
        full["_ansible_tmpdir"] = str(tmp)
        full["_ansible_remote_tmp"] = str(tmp)
    with testing.patch_module_args(full), pytest.raises(Exit) as caught:
        M.main()
    return caught.value


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    """An executable that runs this checkout's mnic-ops (the module calls it by path)."""
    b = tmp_path / "bin" / "mnic-ops"
    b.parent.mkdir()
    b.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m mnic_ops \"$@\"\n")
    b.chmod(0o755)
    return b


def config_text(**extra: str) -> str:
    lines = [f'projects = ["{PROJECT}"]', "", "[provision]", "relocate = false"]
    return "\n".join(lines) + "\n" + "".join(f"{k} = {v}\n" for k, v in extra.items())


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host tree with a framework install owned by alice (uid 4242), 8 CPUs and
    16 GiB (a workstation by its resources), no fstab and no config file yet."""
    require("root")
    root = tmp_path / "host"
    cpus, mem_gib = 8, 16
    write_tree(root, {
        "proc/meminfo": f"MemTotal: {mem_gib * 1024 * 1024} kB\n",
        "proc/cpuinfo": "".join(f"processor\t: {i}\n\n" for i in range(cpus)),
        "sys/devices/system/cpu/online": f"0-{cpus - 1}\n",
        "etc/passwd": "root:x:0:0::/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n",
        "etc/group": "root:x:0:\nalice:x:4242:\n",
    })
    for d in ("etc/profile.d", "etc/sysctl.d", "etc/cron.d", "etc/systemd/system",
              "var/lib", "var/log", "run/systemd/system", "root", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # a host with a cron daemon and systemd running, as provision requires by default
    shutil.copy("/bin/true", root / "usr/sbin/cron")
    write_project(root / PROJECT.lstrip("/"))
    for dirpath, dirnames, filenames in os.walk(root / "home/alice"):
        for n in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, n), 4242, 4242)
    os.lchown(root / "home/alice", 4242, 4242)
    return root


def snapshot(root: Path) -> dict[str, list[object]]:
    """Content, mode, owner and mtime of every entry (reading leaves atimes behind)."""
    return tree_hash(root, "/")


def install_config(root: Path, text: str) -> Path:
    path = root / "etc/mnic-ops/config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the module on a real host tree -----------------------------------------------------

def test_check_mode_plans_against_config_content_shows_diffs_and_writes_nothing(
        host: Path, binary: Path, tmp_path: Path) -> None:
    # The config in place says laptop; the one about to be written says server.
    install_config(host, 'host_class = "laptop"\n' + config_text())
    before = snapshot(host)
    r = run_module({"root": str(host), "binary": str(binary),
                    "config_content": 'host_class = "server"\n' + config_text()},
                   check=True, diff=True, tmp=tmp_path / "mod-tmp")
    assert r.kind == "exit", r.result
    res = r.result
    assert res["changed"] is True and res["failed"] is False
    assert res["counts"]["pending"] > 0 and res["counts"]["changed"] == 0
    assert res["report"]["class"] == "server"  # the content, not the file, was read
    assert "--check" in res["cmd"] and "--diff" in res["cmd"]
    assert snapshot(host) == before  # check mode wrote nothing
    by_header = {d.get("after_header"): d for d in res["diff"]}
    cron = by_header["/etc/cron.d/mnic-ops"]
    assert cron["before"] == "" and "mnic-ops:compress" in cron["after"]
    # What mnic-ops would write names the config file, never the temporary copy.
    assert "--config" not in cron["after"]
    perf = by_header[f"{PROJECT}/.claude/config/mnic-ops-performance.json"]
    assert json.loads(perf["after"])["tier"] == "server"
    # Every pending item is in the diff list, whole files or mnic-ops's own diff.
    pending = [i for i in res["items"] if i["state"] == "pending"]
    assert len(res["diff"]) == len(pending)
    assert all("before" not in i for i in res["items"])  # texts only in the diff


def test_apply_then_second_run_reports_no_change(host: Path, binary: Path,
                                                 tmp_path: Path) -> None:
    install_config(host, config_text())
    r = run_module({"root": str(host), "binary": str(binary)}, diff=True)
    assert r.kind == "exit", r.result
    assert r.result["changed"] is True and r.result["counts"]["changed"] > 0
    assert r.result["rc"] == 0
    assert (host / "etc/cron.d/mnic-ops").is_file()
    assert any(d.get("after_header") == "/etc/cron.d/mnic-ops" for d in r.result["diff"])
    written = snapshot(host / "etc")
    again = run_module({"root": str(host), "binary": str(binary)}, diff=True)
    assert again.kind == "exit", again.result
    assert again.result["changed"] is False and "diff" not in again.result
    assert again.result["counts"]["changed"] == 0 and again.result["counts"]["pending"] == 0
    assert snapshot(host / "etc") == written
    # verify agrees, and undo takes it all back (once: a second undo finds nothing).
    v = run_module({"root": str(host), "binary": str(binary), "command": "verify"})
    assert v.kind == "exit" and v.result["drift"] == 0 and v.result["changed"] is False
    u = run_module({"root": str(host), "binary": str(binary), "command": "undo",
                    "change": "all"})
    assert u.kind == "exit" and u.result["changed"] is True, u.result
    assert not (host / "etc/cron.d/mnic-ops").exists()
    u2 = run_module({"root": str(host), "binary": str(binary), "command": "undo",
                     "change": "all"})
    assert u2.kind == "exit" and u2.result["changed"] is False, u2.result


def test_verify_fails_naming_the_drifted_value(host: Path, binary: Path) -> None:
    install_config(host, config_text())
    assert run_module({"root": str(host), "binary": str(binary)}).kind == "exit"
    cfg = host / PROJECT.lstrip("/") / ".claude/config/parallel-agents-config.json"
    data = json.loads(cfg.read_text())
    data["maxParallelAgents"] = 77
    cfg.write_text(json.dumps(data, indent=2))
    v = run_module({"root": str(host), "binary": str(binary), "command": "verify"},
                   check=True)
    assert v.kind == "fail"
    assert v.result["drift"] >= 1
    assert "maxParallelAgents" in v.result["msg"] and "actual 77" in v.result["msg"]


def test_bad_config_content_fails_with_mnic_ops_message_and_nothing_written(
        host: Path, binary: Path, tmp_path: Path) -> None:
    before = snapshot(host)
    r = run_module({"root": str(host), "binary": str(binary),
                    "config_content": config_text() + "[cron]\nbogus = 1\n"},
                   check=True, tmp=tmp_path / "mod-tmp")
    assert r.kind == "fail"
    assert "bogus" in r.result["msg"] and "unknown key" in r.result["msg"]
    # the temporary file is named by the option that holds its text
    assert "config_content" in r.result["msg"]
    assert str(tmp_path / "mod-tmp") not in r.result["msg"]
    # the file:line is said once, not once by the module and again by mnic-ops
    assert not re.search(r"(\S+:\d+): \1", r.result["msg"]), r.result["msg"]
    assert snapshot(host) == before


def test_cron_present_then_absent_is_idempotent(host: Path, binary: Path) -> None:
    install_config(host, config_text())
    args = {"root": str(host), "binary": str(binary), "command": "cron"}
    assert run_module(args, check=True).result["changed"] is True
    assert not (host / "etc/cron.d/mnic-ops").exists()
    assert run_module(args).result["changed"] is True
    assert run_module(args).result["changed"] is False
    gone = run_module({**args, "state": "absent"})
    assert gone.result["changed"] is True and not (host / "etc/cron.d/mnic-ops").exists()
    assert run_module({**args, "state": "absent"}).result["changed"] is False


def test_missing_binary(host: Path, tmp_path: Path) -> None:
    args = {"root": str(host), "binary": str(tmp_path / "nowhere/mnic-ops")}
    c = run_module(args, check=True)
    assert c.kind == "exit" and c.result["changed"] is True
    assert "not installed yet" in c.result["msg"]
    a = run_module(args)
    assert a.kind == "fail" and "not found" in a.result["msg"]


# --- the JSON contract, before and after every command prints ok/errors ----------------

def fake_binary(tmp_path: Path, doc: dict[str, Any] | None, rc: int, stderr: str = "") -> Path:
    b = tmp_path / "fake" / "mnic-ops"
    b.parent.mkdir(exist_ok=True)
    out = json.dumps(doc) if doc is not None else ""
    b.write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}\nEOF\nprintf '%s' '{stderr}' >&2\n"
                 f"exit {rc}\n")
    b.chmod(0o755)
    return b


def test_errors_list_gives_the_message_with_file_and_line(tmp_path: Path) -> None:
    doc = {"schema_version": 1, "command": "provision", "ok": False,
           "errors": [{"message": "cron.bogus: unknown key", "file": "/etc/mnic-ops/c.toml",
                       "line": 4}, {"message": "second problem"}]}
    r = run_module({"binary": str(fake_binary(tmp_path, doc, 2))})
    assert r.kind == "fail"
    assert r.result["msg"] == ("/etc/mnic-ops/c.toml:4: cron.bogus: unknown key; "
                               "second problem")


def test_a_message_that_names_its_place_is_not_prefixed_again(tmp_path: Path) -> None:
    doc = {"schema_version": 1, "command": "config", "ok": False,
           "errors": [{"message": "/etc/mnic-ops/c.toml:4: cron.bogus: unknown key",
                       "file": "/etc/mnic-ops/c.toml", "line": 4}]}
    r = run_module({"binary": str(fake_binary(tmp_path, doc, 2))})
    assert r.result["msg"] == "/etc/mnic-ops/c.toml:4: cron.bogus: unknown key"


def test_old_style_error_on_stderr_without_a_document(tmp_path: Path) -> None:
    b = fake_binary(tmp_path, None, 2, "mnic-ops: error: /x/fstab:3: bad field\n")
    r = run_module({"binary": str(b), "command": "render"})
    assert r.kind == "fail" and r.result["msg"] == "/x/fstab:3: bad field"


def test_failed_item_message_and_ok_false_even_with_rc_zero(tmp_path: Path) -> None:
    doc = {"command": "provision", "check": False, "ok": False, "errors": [],
           "items": [{"id": "cron", "description": "d", "state": "failed",
                      "error": "/etc/cron.d: read-only file system"}],
           "counts": {"ok": 0, "changed": 0, "failed": 1, "skipped": 0, "pending": 0}}
    r = run_module({"binary": str(fake_binary(tmp_path, doc, 0))})
    assert r.kind == "fail" and r.result["msg"] == "[cron] /etc/cron.d: read-only file system"


def test_fstab_proposal_is_not_a_change_and_not_a_failure(tmp_path: Path) -> None:
    doc = {"command": "fstab", "check": True,
           "items": [{"id": "fstab:/", "description": "noatime for /", "state": "pending",
                      "diff": "--- a/etc/fstab\n+++ b/etc/fstab\n"}],
           "counts": {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "pending": 1}}
    b = fake_binary(tmp_path, doc, 3)
    r = run_module({"binary": str(b), "command": "fstab"}, diff=True)
    assert r.kind == "exit", r.result
    assert r.result["changed"] is False and r.result["proposed"] is True
    assert r.result["rc"] == 3 and r.result["failed"] is False
    assert r.result["cmd"][-2:] == ["fstab", "--check"]
    # asked to apply, the same answer outside check mode is a failure (nothing applied)
    r = run_module({"binary": str(b), "command": "fstab", "apply_fstab": True})
    assert r.kind == "fail"
    # in check mode with apply_fstab, pending means "would change"
    r = run_module({"binary": str(b), "command": "fstab", "apply_fstab": True},
                   check=True, diff=True)
    assert r.kind == "exit" and r.result["changed"] is True
    assert r.result["diff"] == [{"prepared": "--- a/etc/fstab\n+++ b/etc/fstab\n"}]


def test_clean_report_becomes_items(tmp_path: Path) -> None:
    doc = {"command": "clean", "check": False, "projects": [
        {"project": "/p", "status": "done", "kinds": {
            "sessions": {"path": "/p/s", "compressed": 3, "finished": 0, "expired": 1,
                         "failed": 0},
            "checkpoints": {"path": "/p/c", "compressed": 0, "finished": 0, "expired": 0,
                            "failed": 0}}},
        {"project": "/q", "status": "locked", "kinds": {}}], "totals": {}}
    r = run_module({"binary": str(fake_binary(tmp_path, doc, 0)), "command": "clean"})
    assert r.kind == "exit"
    states = {i["id"]: i["state"] for i in r.result["items"]}
    assert states == {"clean:/p:checkpoints": "ok", "clean:/p:sessions": "changed",
                      "clean:/q": "skipped"}
    assert r.result["changed"] is True and r.result["counts"]["changed"] == 1


def test_printed_no_document_on_success_is_a_failure(tmp_path: Path) -> None:
    r = run_module({"binary": str(fake_binary(tmp_path, None, 0))})
    assert r.kind == "fail" and "no JSON document" in r.result["msg"]


@pytest.mark.parametrize(("args", "check", "want"), [
    ({"command": "cron", "state": "absent"}, False, ["cron", "remove", "--system"]),
    ({"command": "cron", "user": "alice"}, True, ["cron", "install", "--user", "alice",
                                                  "--check"]),
    ({"command": "watch_unit", "projects": ["/p"]}, False, ["watch", "--install-unit", "--", "/p"]),
    ({"command": "watch_unit", "state": "absent"}, True, ["watch", "--remove-unit", "--check"]),
    ({"command": "relocate", "state": "absent", "force": True, "projects": ["/p"]}, False,
     ["relocate", "--undo", "--force", "--", "/p"]),
    ({"command": "undo", "change": "last"}, True, ["undo", "--last", "--check"]),
    ({"command": "undo", "change": "file:/etc/x"}, False, ["undo", "file:/etc/x"]),
    ({"command": "clean", "only": "expire"}, False, ["clean", "--only", "expire"]),
    ({"command": "clean", "projects": ["-odd"]}, True, ["clean", "--check", "--", "-odd"]),
    ({"command": "fstab", "apply_fstab": True, "mount_points": ["/srv"]}, False,
     ["fstab", "--apply", "--remount", "--mount-point", "/srv"]),
    ({"command": "provision", "apply_fstab": True, "host_class": "server"}, True,
     ["provision", "--check", "--host-class", "server", "--apply-fstab"]),
    ({"command": "render", "projects": ["/p"]}, False, ["render", "--", "/p"]),
])
def test_command_lines(args: dict[str, Any], check: bool, want: list[str]) -> None:
    params = {k: v.get("default") for k, v in M.ARGUMENT_SPEC.items()} | args
    inv = M.Invocation(params, check, False)
    assert inv.command_args() == want
    assert inv.argv()[:4] == ["/opt/mnic-ops/bin/mnic-ops", "--root", "/", "--json"]


def test_projects_and_ssd_path_for_provision_go_through_the_environment() -> None:
    params = {k: v.get("default") for k, v in M.ARGUMENT_SPEC.items()} | {
        "projects": ["/a", "/b"], "ssd_path": "/mnt/fast"}
    assert M.Invocation(params, False, False).environ() == {
        "MNIC_OPS_PROJECTS": "/a,/b", "MNIC_OPS_SSD_PATH": "/mnt/fast"}


@pytest.mark.parametrize(("args", "words"), [
    ({"command": "render", "state": "absent"}, "state=absent"),
    ({"command": "undo"}, "needs change"),
    ({"command": "undo", "change": "--all"}, "give all, last"),
    ({"command": "provision", "change": "all"}, "undo only"),
    ({"command": "provision", "projects": ["/a,b"]}, "commas"),
])
def test_nonsense_combinations_fail_before_running_anything(args: dict[str, Any],
                                                            words: str) -> None:
    r = run_module({"binary": "/nonexistent/mnic-ops", **args})
    assert r.kind == "fail" and words in r.result["msg"]


def test_documentation_matches_the_argument_spec() -> None:
    """ansible-doc shows exactly the options the module takes, with the same types,
    defaults and choices."""
    doc = yaml.safe_load(M.DOCUMENTATION)
    yaml.safe_load(M.EXAMPLES)
    ret = yaml.safe_load(M.RETURN)
    opts = doc["options"]
    assert set(opts) == set(M.ARGUMENT_SPEC)
    for name, spec in M.ARGUMENT_SPEC.items():
        o = opts[name]
        assert o["type"] == spec["type"], name
        assert o.get("default") == spec.get("default"), name
        assert o.get("choices") == spec.get("choices"), name
        assert o.get("elements") == spec.get("elements"), name
    assert {"changed", "items", "counts", "diff", "msg"} <= set(ret)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "full"


def test_ansible_doc_renders_the_module(tmp_path: Path) -> None:
    exe = BIN / "ansible-doc"
    if not exe.exists():
        pytest.skip("ansible-doc not installed (test extra)")
    p = subprocess.run([str(exe), "-M", str(LIBRARY), "--json", "mnic_ops"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ANSIBLE_HOME": str(tmp_path / "ah")})
    assert p.returncode == 0, p.stderr
    assert "WARNING" not in p.stderr, p.stderr
    data = json.loads(p.stdout)["mnic_ops"]
    assert set(data["doc"]["options"]) == set(M.ARGUMENT_SPEC)
    assert data["examples"] and data["return"]


# --- ansible localhost -m mnic_ops --check --diff ----------------------------------------

@pytest.fixture
def adhoc(tmp_path: Path) -> Iterator[Any]:
    exe = BIN / "ansible"
    if not exe.exists():
        pytest.skip("ansible not installed (test extra)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "MNIC_OPS_"))}
    env.update(ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))

    def run(module_args: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), "localhost", "-i", "localhost,", "-c", "local", "-M", str(LIBRARY),
             "-e", f"ansible_python_interpreter={sys.executable}", "-m", "mnic_ops",
             "-a", json.dumps(module_args), *flags],
            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    yield run


def test_ansible_adhoc_check_diff_then_apply_then_unchanged(host: Path, binary: Path,
                                                            adhoc: Any) -> None:
    args = {"root": str(host), "binary": str(binary), "config_content": config_text()}
    before = snapshot(host)
    c = adhoc(args, "--check", "--diff")
    assert c.returncode == 0, c.stdout + c.stderr
    assert "localhost | CHANGED" in c.stdout, c.stdout
    # Ansible shows the per-file before/after diffs
    assert "--- before: /etc/cron.d/mnic-ops" in c.stdout
    assert "+++ after: /etc/cron.d/mnic-ops" in c.stdout
    assert f"+++ after: {PROJECT}/.claude/config/parallel-agents-config.json" in c.stdout
    assert '+  "tier": "workstation",' in c.stdout
    assert snapshot(host) == before, "check mode wrote something"

    install_config(host, config_text())
    a = adhoc({"root": str(host), "binary": str(binary)}, "--diff")
    assert a.returncode == 0, a.stdout + a.stderr
    assert "localhost | CHANGED" in a.stdout
    assert (host / "etc/cron.d/mnic-ops").is_file()

    again = adhoc({"root": str(host), "binary": str(binary)}, "--diff")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "localhost | SUCCESS" in again.stdout and '"changed": false' in again.stdout
    assert "+++ after:" not in again.stdout


def test_render_of_named_installs_leaves_the_system_files_alone(host: Path,
                                                                binary: Path) -> None:
    install_config(host, config_text())
    r = run_module({"root": str(host), "binary": str(binary), "command": "render",
                    "projects": [PROJECT], "host_class": "laptop"}, check=True)
    assert r.kind == "exit" and r.result["changed"] is True, r.result
    pending = [i["id"] for i in r.result["items"] if i["state"] == "pending"]
    assert pending and all(i.startswith(f"file:{PROJECT}/") for i in pending), pending
    assert r.result["report"]["tier"] == "laptop"
