"""The one rule for what is due (mnic_ops.facts.policy) and the data map it is bound by."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from mnic_ops.core import framework_map, patterns
from mnic_ops.core.config import Config
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import policy
from mnic_ops.facts.projects import load_project
from tests.conftest import run_mnic, write_tree

DAY = 86400.0
PROJECT = "/home/alice/p"


def project(root: Path, files: dict[str, str] | None = None) -> object:
    write_tree(root / PROJECT.lstrip("/"), {".claude/agents/a.md": "x", ".ai-tools/x": "",
                                            **(files or {})})
    return load_project(HostRoot.open(root), PROJECT, "project")


def test_a_pattern_over_files_the_framework_reads_back_is_refused_at_load(
        fake_root: Path) -> None:
    cfg = fake_root / "etc/mnic-ops/config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("\n".join([
        "[clean.sessions]", 'patterns = ["*.md"]',  # fine: SESSION_CURRENT.md is skipped
        "[clean.checkpoint_store]", 'patterns = ["*.json"]',  # line 4: metadata/<id>.json
        "[clean.cost_records]", 'patterns = ["daily/*.json"]',  # line 6
        "[clean.thinking_logs]", 'patterns = ["*.json"]',  # fine where declared
        'expire_patterns = ["*.json", "*.json.gz"]',  # line 9: deletes glob-read logs
        "[clean.logs]", 'patterns = ["*.log"]',  # fine: background-tasks.log is skipped
        "[tiers.server.clean.task_results]", 'patterns = ["*.json"]',  # line 13
        ""]))
    r = run_mnic("--root", str(fake_root), "config")
    assert r.code == 2, r.out + r.err
    assert re.findall(r"config\.toml:(\d+): ", r.err) == ["4", "6", "9", "13"], r.err
    assert "clean.checkpoint_store.patterns: '*.json' would compress " \
           ".ai-tools/checkpoint/storage/metadata/cp_" in r.err
    assert "CheckpointEngine.get_checkpoint_metadata" in r.err
    assert "CostTracker._archive_records" in r.err
    assert "'*.json' would delete .claude/thinking-logs/" in r.err
    assert "tiers.server.clean.task_results.patterns" in r.err
    assert "Traceback" not in r.err
    # the same through the environment
    r = run_mnic("--root", str(fake_root), "--config", "/dev/null", "config",
                 env={"MNIC_OPS_CLEAN__COST_RECORDS__PATTERNS": "daily/*.json"})
    assert r.code == 2 and "environment MNIC_OPS_CLEAN__COST_RECORDS__PATTERNS: " \
        "clean.cost_records.patterns" in r.err, r.err


@pytest.mark.parametrize(("kind", "key", "pattern", "refused"), [
    ("checkpoint_store", "patterns", "metadata/*", True),
    ("checkpoint_store", "expire_patterns", "checkpoints/*.gz", True),
    ("checkpoint_store", "patterns", "*.txt", False),
    ("cost_records", "expire_patterns", "daily/*.json.gz", False),  # our own archives
    ("task_results", "expire_patterns", "*", True),
    ("thinking_logs", "patterns", "core/*/*.json", False),
    ("thinking_logs", "expire_patterns", "*.json", True),
    ("sessions", "patterns", "*", False),  # exact names are skipped at run time
    # decided on the patterns, not on sample names (the reviewer's finding 7): a 2026
    # log is a thinking log like the 2025 sample
    ("thinking_logs", "expire_patterns", "core/*/2026*", True),
    ("thinking_logs", "expire_patterns", "[a-z]*/*/*.js?n", True),
    ("thinking_logs", "expire_patterns", "core/*/2026*.gz", False),
    ("thinking_logs", "expire_patterns", "*.json.gz", False),
    ("cost_records", "patterns", "daily/2026-*", True),
    ("cost_records", "patterns", "daily/*.csv", False),
    ("checkpoint_store", "expire_patterns", "metadata/cp_2026*", True),
    ("checkpoint_store", "patterns", "*.md", False),
])
def test_pattern_refusal(kind: str, key: str, pattern: str, refused: bool) -> None:
    assert (patterns.pattern_refusal(kind, key, pattern) is not None) is refused


def test_the_refusal_names_a_file_it_would_have_touched() -> None:
    why = patterns.pattern_refusal("thinking_logs", "expire_patterns", "core/*/2026*")
    assert why is not None and "would delete .claude/thinking-logs/core/x/2026" in why, why
    assert "by a glob" in why and "use a pattern ending in .gz" in why


def test_glob_read_files_are_never_expired_by_a_pattern(tmp_path: Path) -> None:
    """The run-time side of the same rule (a pattern could reach due() from a config
    written before the load-time check knew it): a thinking log the framework globs is
    compressed only where its config declares it, and never expired by a pattern."""
    now = time.time()
    p = tmp_path / "2026-01-01-000000-d.json"
    p.write_text("{}")
    os.utime(p, (now - 10 * DAY,) * 2)
    st = os.stat(p)
    rel = f"core/arch/{p.name}"
    expire = policy.Policy("thinking_logs", (), 0, ("core/*/2026*",), 1)
    d = policy.due(expire, p.name, rel, st, now)
    assert d is not None and d.action == "protected" and "glob" in d.rule, d
    both = policy.Policy("thinking_logs", ("*.json",), 7, ("*",), 1)
    assert policy.due(both, p.name, rel, st, now).action == "compress"
    assert policy.due(both, p.name, rel, st, now, only="expire").action == "protected"
    gz = tmp_path / "2026-01-01-000000-d.json.gz"
    gz.write_text("x")
    os.utime(gz, (now - 10 * DAY,) * 2)
    assert policy.due(expire, gz.name, rel + ".gz", os.stat(gz), now).action == "expire"
    # a class the framework reads by a glob but whose config can declare no compression
    other = policy.Policy("sessions", ("*.md",), 7, (), 0)
    assert policy.compress_wanted(other, "a.md", "a.md")


def test_glob_meet_agrees_with_fnmatch() -> None:
    """globmeet's answer against brute force over every short string of an alphabet
    that every pattern below can tell apart."""
    import fnmatch
    import itertools

    from mnic_ops.core import globmeet

    pats = ["*", "a*", "*b", "a?b", "[ab]*", "[!a]*", "*/*.j", "a/*", "?/?", "*.j",
            "[a-b]/b*", "[!/]*", "a*b*a", "b", "", "[", "[]a]*", "*a*"]
    alphabet = "ab/.j]["
    strings = [""] + ["".join(t) for n in range(1, 5)
                      for t in itertools.product(alphabet, repeat=n)]
    for p, q in itertools.product(pats, repeat=2):
        w = globmeet.witness(p, q)
        brute = any(fnmatch.fnmatchcase(s, p) and fnmatch.fnmatchcase(s, q)
                    for s in strings)
        if w is not None:
            assert fnmatch.fnmatchcase(w, p) and fnmatch.fnmatchcase(w, q), (p, q, w)
        else:
            assert not brute, (p, q)


def test_numbered_archives_expire_like_the_archive() -> None:
    assert policy.match_expire(["*.json.gz"], "h.json.3.gz", "a/h.json.3.gz")
    assert policy.match_expire(["a/*.json.gz"], "h.json.12.gz", "a/h.json.12.gz")
    assert not policy.match_expire(["*.json.gz"], "h.json.x.gz", "h.json.x.gz")
    assert not policy.match_expire(["*.md.gz"], "h.json.3.gz", "h.json.3.gz")


def test_due_is_one_rule(tmp_path: Path) -> None:
    pol = policy.Policy("sessions", ("*.md",), 7, ("*.md.gz",), 30)
    now = time.time()

    def st(name: str, age: float, links: int = 1) -> os.stat_result:
        p = tmp_path / name
        p.write_text("x")
        for i in range(1, links):
            os.link(p, tmp_path / f"{name}.{i}")
        os.utime(p, (now - age * DAY,) * 2)
        return os.stat(p)

    assert policy.due(pol, "a.md", "a.md", st("a.md", 8), now).action == "compress"
    assert policy.due(pol, "b.md", "b.md", st("b.md", 6), now) is None
    assert policy.due(pol, "c.md.gz", "c.md.gz", st("c.md.gz", 31), now).action == "expire"
    assert policy.due(pol, "d.md.gz", "d.md.gz", st("d.md.gz", 29), now) is None
    assert policy.due(pol, "SESSION_CURRENT.md", "SESSION_CURRENT.md",
                      st("SESSION_CURRENT.md", 99), now).action == "protected"
    assert policy.due(pol, "h.md", "h.md", st("h.md", 9, links=2), now).action == \
        "hard_links"
    assert policy.due(pol, "a.md", "a.md", st("a.md", 8), now, only="expire") is None
    assert policy.due(pol, "c.md.gz", "c.md.gz", st("c.md.gz", 31), now,
                      only="compress") is None


def test_declared_values_and_their_bounds(fake_root: Path) -> None:
    p = project(fake_root)
    d = policy.declared(p)  # type: ignore[arg-type]
    # no config: the checkpoint engine's built-in defaults, nothing else declared
    assert d.values["checkpoint_store"]["manual.retention_days"] == 90
    assert d.values["checkpoint_store"]["manual.retention_count"] == 200
    assert d.values["checkpoint_store"]["agent_execution.retention_count"] == 100
    assert "agent_execution.retention_days" not in d.values["checkpoint_store"]
    assert "thinking_logs" not in d.values and not d.errors

    cfg = {"checkpointLevels": {"manual": {"retention_days": 90, "retention_count": 5}},
           "storage": {"max_total_storage_gb": 5}}
    p = project(fake_root, {".claude/config/checkpoint-config.json": json.dumps(cfg, indent=2),
                            ".claude/config/extended-thinking-config.json": json.dumps(
                                {"logging": {"retention_days": 30,
                                             "compression": "gzip_after_3_days"}}),
                            ".claude/config/cost-optimization.json":
                                '{"costTracking": {"retentionDays": 60}}'})
    d = policy.declared(p)  # type: ignore[arg-type]
    assert d.values["checkpoint_store"]["manual.retention_count"] == 5
    assert d.values["checkpoint_store"]["max_total_storage_gb"] == 5
    assert d.where["checkpoint_store"]["manual.retention_days"].endswith(
        "checkpoint-config.json:4")
    assert d.values["thinking_logs"] == {"retention_days": 30, "compress_after_days": 3}
    assert d.values["cost_records"] == {"retention_days": 60}


@pytest.mark.parametrize(("rel", "text", "kind", "why"), [
    (".claude/config/cost-optimization.json", '{\n"costTracking": {\n"retentionDays": -1}}',
     "cost_records", "cost-optimization.json:3: costTracking.retentionDays: expected 1"),
    (".claude/config/cost-optimization.json", '{"costTracking": {"retentionDays": 1e999}}',
     "cost_records", "not usable JSON"),
    (".claude/config/checkpoint-config.json",
     '{"checkpointLevels": {"manual": {"retention_count": 2.5}}}', "checkpoint_store",
     "retention_count: expected a whole number"),
    (".claude/config/checkpoint-config.json",
     '{"storage": {"max_total_storage_gb": 1e12}}', "checkpoint_store",
     "max_total_storage_gb: expected 0.001 to"),
    (".claude/config/extended-thinking-config.json",
     '{"logging": {"compression": "gzip_after_0_days"}}', "thinking_logs",
     "logging.compression: expected 1 to 36500 days, got 0"),
    (".claude/config/extended-thinking-config.json",
     '{"logging": {"compression": "zstd"}}', "thinking_logs",
     "expected gzip_after_N_days or none"),
    (".claude/config/background-tasks.json", '{"storage": {"retention_days": "7"}}',
     "task_results", "storage.retention_days: expected a number of days, got '7'"),
    (".claude/config/cost-optimization.json", "[" * 100, "cost_records",
     "nested more than 64 levels"),
])
def test_a_bad_declared_value_leaves_that_class_untouched(
        fake_root: Path, rel: str, text: str, kind: str, why: str) -> None:
    p = project(fake_root, {rel: text})
    d = policy.declared(p)  # type: ignore[arg-type]
    assert why in d.errors[kind], d.errors
    assert not d.values.get(kind)
    pols = policy.resolve_policy(Config(values={}), p)  # type: ignore[arg-type]
    if kind == "thinking_logs":
        assert pols[kind].compress_after_days == 0 and "left untouched" in pols[kind].note


def test_thinking_logs_compress_only_as_declared(fake_root: Path) -> None:
    cfg = Config(values={"clean": {"thinking_logs": {"compress_after_days": 2}}})
    p = project(fake_root)
    assert policy.resolve_policy(cfg, p)["thinking_logs"].compress_after_days == 0  # type: ignore[arg-type]
    p = project(fake_root, {".claude/config/extended-thinking-config.json":
                            '{"logging": {"compression": "gzip_after_7_days"}}'})
    th = policy.resolve_policy(cfg, p)["thinking_logs"]  # type: ignore[arg-type]
    assert th.compress_after_days == 2 and th.sources["compress_after_days"] == "config"
    p = project(fake_root, {".claude/config/extended-thinking-config.json":
                            '{"logging": {"compression": "none"}}'})
    th = policy.resolve_policy(cfg, p)["thinking_logs"]  # type: ignore[arg-type]
    assert th.compress_after_days == 0 and "turns compression off" in th.note


def test_the_map_names_every_reader_it_protects() -> None:
    store = framework_map.FOLDERS["checkpoint_store"]
    assert store.config == (framework_map.CHECKPOINT_CONFIG, "storage.base_path")
    names = {r.pattern for r in store.rules}
    assert {"checkpoint_index.json", "agent_coordination.json", "quality_gate_history.json",
            "trigger_history.json", "metadata/*.json", "checkpoints/*.dat.gz"} <= names
    for f in framework_map.FOLDERS.values():
        for r in f.rules:
            assert r.reader and r.samples and all(r.covers(s.rsplit("/", 1)[-1], s)
                                                  for s in r.samples), r
    assert framework_map.by_name("sessions", "state.json", "state.json") is not None
    assert framework_map.by_name("thinking_logs", "x.json", "core/a/x.json") is None  # a glob
    assert framework_map.written_by("checkpoint_store", "3.3.0") is False
    assert framework_map.written_by("checkpoint_store", "3.10.0") is True


def test_an_admin_pattern_over_glob_read_logs_deletes_nothing(fake_root: Path) -> None:
    """The reviewer's case: `[clean.thinking_logs] expire_patterns = ["core/*/2026*"]`
    with delete_after_days = 1 passed `config` (its samples were 2025 names) and clean
    deleted plain thinking logs the framework globs. Refused at load with file:line;
    nothing is deleted."""
    stamp = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(time.time() - 5 * DAY))
    log = f".claude/thinking-logs/core/arch/{stamp}-d.json"  # within its 90 days
    project(fake_root, {log: "{}", ".claude/config/extended-thinking-config.json":
                        json.dumps({"logging": {"retention_days": 90}})})
    path = fake_root / PROJECT.lstrip("/") / log
    os.utime(path, (time.time() - 10 * DAY,) * 2)
    cfg = fake_root / "etc/mnic-ops/config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    month = stamp[:7]  # this month's logs: no sample name of the data map is one
    cfg.write_text(f'projects = ["{PROJECT}"]\n[clean.thinking_logs]\n'
                   f'expire_patterns = ["core/*/{month}*"]\ndelete_after_days = 1\n')
    r = run_mnic("--root", str(fake_root), "clean")
    assert r.code == 2, r.out + r.err
    assert re.search(r"config\.toml:3: clean\.thinking_logs\.expire_patterns: "
                     rf"'core/\*/{month}\*' would delete \.claude/thinking-logs/core/x/"
                     rf"{month}",
                     r.err), r.err
    assert path.exists()
