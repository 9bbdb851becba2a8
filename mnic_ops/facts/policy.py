"""What is due: the one rule ``clean``, ``watch`` and ``doctor`` use for which files of a
data class are compressed or expired, and when.

Per install and data class the policy is the built-in default < the tier's
``[tiers.<class>.clean]`` < what the framework's own config declares < the mnic-ops
config's ``[clean.<class>]``, bounded by the data map (:mod:`mnic_ops.core.framework_map`):

- a file the framework reads back by exact name is never compressed nor expired by a
  pattern, whatever the policy says;
- a file it finds by a glob (thinking logs: ``*.json``) is compressed only where the
  framework's config declares compression for that class (``logging.compression:
  gzip_after_N_days``), and expired only by the retention the framework declares
  (:mod:`mnic_ops.engines.retention`);
- a configured pattern that would cover a whole family of read-back files
  (``metadata/<id>.json``, ``daily/<date>.json``...) is refused when the config loads
  (:func:`check_patterns`), with file:line.

Declared values are read bounded, with file:line, and checked (:mod:`mnic_ops.facts.fwconfig`);
a value out of bounds leaves that class of that install untouched.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnic_ops.core import framework_map
from mnic_ops.core.patterns import COMPRESSION_DECLARED, RETENTION_KINDS, match
from mnic_ops.facts import fwconfig

if TYPE_CHECKING:
    import os

    from mnic_ops.core.app import AppContext
    from mnic_ops.core.config import Config
    from mnic_ops.facts.projects import Project

DAY = 86400.0


# Built-in policy (the guide's recipes, bounded by the data map): patterns, compress
# after (days), delete archives after (days).
DEFAULTS: dict[str, tuple[tuple[str, ...], float, float]] = {
    "sessions": (("*.json", "*.md"), 7, 30),
    "claude_sessions": (("*.json", "*.md"), 7, 30),
    "checkpoints": (("*.json",), 7, 30),
    # every file of the store is read back by name: its expiry is the retention engine's
    "checkpoint_store": ((), 0, 0),
    # compressed only as the framework's extended-thinking-config.json declares
    "thinking_logs": (("*.json",), 0, 0),
    # daily/<date>.json is read back by name (CostTracker._archive_records)
    "cost_records": ((), 0, 0),
    "logs": ((), 0, 0),  # not in the guide's policy: off unless configured
    "task_results": ((), 0, 0),  # results/<id>.json: read back; expired by retention
    "task_logs": ((), 0, 0),
}
POLICY_KEYS = ("patterns", "compress_after_days", "expire_patterns", "delete_after_days")


@dataclass
class Policy:
    kind: str
    patterns: tuple[str, ...]
    compress_after_days: float
    expire_patterns: tuple[str, ...]
    delete_after_days: float
    sources: dict[str, str] = field(default_factory=dict)
    note: str = ""  # why compression is off although patterns are set, for example

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"patterns": list(self.patterns),
                             "compress_after_days": self.compress_after_days,
                             "expire_patterns": list(self.expire_patterns),
                             "delete_after_days": self.delete_after_days,
                             "sources": self.sources}
        if self.note:
            d["note"] = self.note
        return d


# --- matching --------------------------------------------------------------------------

_NUMBERED = re.compile(r"^(?P<base>.+)\.(?P<n>[1-9][0-9]{0,5})\.gz$", re.S)


def match_expire(patterns: tuple[str, ...] | list[str], name: str, rel: str) -> bool:
    """Like :func:`match`, and a numbered archive (``NAME.N.gz``, kept when a collision
    was resolved, see :func:`mnic_ops.engines.archives.keep_numbered`) expires like ``NAME.gz``."""
    if match(patterns, name, rel):
        return True
    m = _NUMBERED.match(name)
    if m is None:
        return False
    alt = m["base"] + ".gz"
    return match(patterns, alt, rel[: len(rel) - len(name)] + alt)


def protected(kind: str, name: str, rel: str) -> framework_map.FileRule | None:
    """The data-map rule that keeps this file as it is, or None: a file the framework
    reads back by exact name. (Glob-read files: :func:`glob_read`.)"""
    return framework_map.by_name(kind, name, rel)


def glob_read(kind: str, name: str, rel: str) -> framework_map.FileRule | None:
    """The rule when the framework finds this file by a glob that a ``.gz`` drops out of
    (thinking logs: ``*.json``), or None. Such a file is compressed only where the
    framework's config declares compression for its class, and never expired by a
    pattern: its expiry is the retention the framework declares."""
    r = framework_map.read_back(kind, name, rel)
    return r if r is not None and r.read == framework_map.BY_GLOB else None


def compresses(pol: Policy) -> bool:
    return pol.compress_after_days > 0 and bool(pol.patterns)


def expires(pol: Policy) -> bool:
    return pol.delete_after_days > 0 and bool(pol.expire_patterns)


def compress_wanted(pol: Policy, name: str, rel: str) -> bool:
    """Is this a file the policy compresses once old enough (the watcher's test)?"""
    if name.endswith(".gz") or not compresses(pol):
        return False
    if protected(pol.kind, name, rel) is not None:
        return False
    if glob_read(pol.kind, name, rel) is not None and pol.kind not in COMPRESSION_DECLARED:
        return False
    return match(pol.patterns, name, rel)


@dataclass
class Due:
    # "compress" | "expire"; or, for a file the policy matched but nothing can do:
    # "protected" (read back by name by the framework), "hard_links" (the engine
    # refuses files with several links)
    action: str
    rule: str  # what decided it, for reports

    @property
    def actionable(self) -> bool:
        return self.action in ("compress", "expire")


def due(pol: Policy, name: str, rel: str, st: os.stat_result, now: float,
        only: str | None = None) -> Due | None:
    """What the policy wants done to this regular file now, or None.

    ``only``: ``"compress"`` or ``"expire"`` limits it to one action (the cron jobs).
    The one rule for clean (which acts on it), watch (which asks
    :func:`compress_wanted` first and waits for the file to settle) and doctor (which
    counts what clean would do, so its fix can clear its finding)."""
    do_c = compresses(pol) and only != "expire"
    do_e = expires(pol) and only != "compress"
    want_c = do_c and not name.endswith(".gz") and match(pol.patterns, name, rel)
    want_e = do_e and match_expire(pol.expire_patterns, name, rel)
    if not (want_c or want_e) or not stat.S_ISREG(st.st_mode):
        return None
    if protected(pol.kind, name, rel) is not None:
        return Due("protected", "read back by name by the framework")
    glob = glob_read(pol.kind, name, rel)
    if glob is not None:
        # the same rule as the config's load-time refusal: compressed only where the
        # framework's config declares it (the policy says so), never expired by a pattern
        want_c = want_c and pol.kind in COMPRESSION_DECLARED
        want_e = False
        if not want_c:
            return Due("protected", "read back by a glob by the framework; expired only by "
                                    "the retention it declares")
    old_c = want_c and st.st_mtime < now - pol.compress_after_days * DAY
    old_e = not old_c and want_e and st.st_mtime < now - pol.delete_after_days * DAY
    if not (old_c or old_e):
        return None
    if st.st_nlink != 1:
        return Due("hard_links", "has more than one hard link")
    if old_c:
        return Due("compress", f"not modified for {pol.compress_after_days:g} days "
                               f"({pol.sources.get('compress_after_days', 'default')})")
    return Due("expire", f"archive older than {pol.delete_after_days:g} days "
                         f"({pol.sources.get('delete_after_days', 'default')})")


# --- what the framework declares ---------------------------------------------------

@dataclass
class Declared:
    """Per class: the values the install's framework config declares (``values``, with
    ``where`` each came from) or why that class is left untouched (``errors``)."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    where: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def set(self, kind: str, key: str, value: Any, where: str) -> None:
        self.values.setdefault(kind, {})[key] = value
        self.where.setdefault(kind, {})[key] = where


CHECKPOINT_LEVELS = ("agent_execution", "quality_gate", "commit_preparation", "manual")
# CheckpointEngine._get_default_config (no checkpoint-config.json): only "manual" has
# values; _cleanup_old_checkpoints uses retention_count 100 for any level without one.
FRAMEWORK_DEFAULT_LEVELS = {"manual": {"retention_count": 200, "retention_days": 90.0}}
FRAMEWORK_DEFAULT_COUNT = 100
_FW_DEFAULT = ".ai-tools/checkpoint/core/checkpoint_engine.py built-in default"

_GZIP_AFTER = re.compile(r"gzip_after_(?P<n>\d{1,6}(?:\.\d{1,6})?)_days?")
_OFF = ("none", "off", "disabled", "false", "no")


def declared(project: Project) -> Declared:
    """Retention and compression the framework's own configs declare for this install
    (and that nothing in the framework enforces). Missing files and keys mean the
    framework's built-in defaults; a file that does not parse or a value out of bounds
    leaves that class untouched, with file:line."""
    d = Declared()
    _checkpoints(project, d)
    _thinking(project, d)
    cfg = project.framework_config(framework_map.COST_CONFIG)
    if cfg.error:
        d.errors["cost_records"] = cfg.error
    elif cfg.present:
        try:
            v = fwconfig.days(cfg, "costTracking.retentionDays")
        except fwconfig.BadValue as exc:
            d.errors["cost_records"] = exc.message
        else:
            if v is not None:
                d.set("cost_records", "retention_days", v,
                      cfg.where("costTracking.retentionDays"))
    cfg = project.framework_config(framework_map.BACKGROUND_CONFIG)
    if cfg.error:
        d.errors["task_results"] = cfg.error
    elif cfg.present:
        try:
            v = fwconfig.days(cfg, "storage.retention_days")
            state = fwconfig.relpath(cfg, "storage.task_state_file")
        except fwconfig.BadValue as exc:
            d.errors["task_results"] = exc.message
        else:
            if v is not None:
                d.set("task_results", "retention_days", v, cfg.where("storage.retention_days"))
            if state is not None:
                d.set("task_results", "state_file", state,
                      cfg.where("storage.task_state_file"))
    return d


def _checkpoints(project: Project, d: Declared) -> None:
    cfg = project.framework_config(framework_map.CHECKPOINT_CONFIG)
    kind = "checkpoint_store"
    if cfg.error:
        d.errors[kind] = cfg.error
        return
    if not cfg.present:
        for level in CHECKPOINT_LEVELS:
            vals = FRAMEWORK_DEFAULT_LEVELS.get(level, {})
            d.set(kind, f"{level}.retention_count",
                  vals.get("retention_count", FRAMEWORK_DEFAULT_COUNT), _FW_DEFAULT)
            if "retention_days" in vals:
                d.set(kind, f"{level}.retention_days", vals["retention_days"], _FW_DEFAULT)
        return
    try:
        levels = cfg.get("checkpointLevels")
        if levels is not None and not isinstance(levels, dict):
            raise fwconfig.BadValue(cfg, "checkpointLevels", "expected an object")
        for level in CHECKPOINT_LEVELS:
            base = f"checkpointLevels.{level}"
            lv = cfg.get(base)
            if lv is not None and not isinstance(lv, dict):
                raise fwconfig.BadValue(cfg, base, "expected an object")
            n = fwconfig.count(cfg, f"{base}.retention_count")
            days = fwconfig.days(cfg, f"{base}.retention_days")
            d.set(kind, f"{level}.retention_count", FRAMEWORK_DEFAULT_COUNT if n is None
                  else n, cfg.where(f"{base}.retention_count") if n is not None
                  else _FW_DEFAULT)
            if days is not None:
                d.set(kind, f"{level}.retention_days", days,
                      cfg.where(f"{base}.retention_days"))
        gb = fwconfig.gigabytes(cfg, "storage.max_total_storage_gb")
        if gb is not None:
            d.set(kind, "max_total_storage_gb", gb, cfg.where("storage.max_total_storage_gb"))
    except fwconfig.BadValue as exc:
        d.values.pop(kind, None)
        d.where.pop(kind, None)
        d.errors[kind] = exc.message


def _thinking(project: Project, d: Declared) -> None:
    cfg = project.framework_config(framework_map.THINKING_CONFIG)
    kind = "thinking_logs"
    if cfg.error:
        d.errors[kind] = cfg.error
        return
    if not cfg.present:
        return
    try:
        lg = cfg.get("logging")
        if lg is not None and not isinstance(lg, dict):
            raise fwconfig.BadValue(cfg, "logging", "expected an object")
        days = fwconfig.days(cfg, "logging.retention_days")
        comp = cfg.get("logging.compression")
        after: float | None = None
        if comp is False or (isinstance(comp, str) and comp.strip().lower() in _OFF):
            after = 0.0
        elif isinstance(comp, str):
            m = _GZIP_AFTER.fullmatch(comp.strip())
            if m is None:
                raise fwconfig.BadValue(cfg, "logging.compression", "expected "
                                        f"gzip_after_N_days or none, got {comp[:40]!r}")
            after = float(m["n"])
            if not fwconfig.DAYS_FLOOR <= after <= fwconfig.DAYS_CEILING:
                raise fwconfig.BadValue(cfg, "logging.compression", f"expected "
                                        f"{fwconfig.DAYS_FLOOR:g} to "
                                        f"{fwconfig.DAYS_CEILING:g} days, got {after:g}")
        elif comp is not None:
            raise fwconfig.BadValue(cfg, "logging.compression",
                                    "expected gzip_after_N_days or none")
    except fwconfig.BadValue as exc:
        d.errors[kind] = exc.message
        return
    if days is not None:
        d.set(kind, "retention_days", days, cfg.where("logging.retention_days"))
    if after is not None:
        d.set(kind, "compress_after_days", after, cfg.where("logging.compression"))


# --- the policy of one install -------------------------------------------------------------

def resolve_policy(cfg: Config, project: Project, tier: dict[str, Any] | None = None,
                   decl: Declared | None = None) -> dict[str, Policy]:
    """Per class: built-in default < tier < the framework's own config < mnic-ops config,
    then bounded by the data map (see the module's docstring)."""
    decl = decl if decl is not None else declared(project)
    out: dict[str, Policy] = {}
    for kind in framework_map.DATA_KINDS:
        pats, comp, dele = DEFAULTS[kind]
        vals: dict[str, Any] = {"patterns": pats, "compress_after_days": comp,
                                "expire_patterns": None, "delete_after_days": dele}
        src = {k: "default" for k in vals}
        fw: dict[str, Any] = {}
        if kind == "thinking_logs" and "compress_after_days" in decl.values.get(kind, {}):
            fw["compress_after_days"] = decl.values[kind]["compress_after_days"]
        layers: list[tuple[str, Mapping[str, Any]]] = [
            ("tier", (tier or {}).get(kind) or {}),
            ("framework", fw),
            ("config", cfg.get(f"clean.{kind}") or {}),
        ]
        for name, layer in layers:
            for k, v in layer.items():
                if k in vals and v is not None:
                    vals[k] = tuple(v) if isinstance(v, list) else v
                    src[k] = name
        patterns = tuple(vals["patterns"])
        expire = vals["expire_patterns"]
        if expire is None:
            # mnic-ops's own archives expire after delete_after_days; where the
            # framework declares retention, the retention engine does that instead
            expire = () if kind in RETENTION_KINDS else tuple(p + ".gz" for p in patterns)
            src["expire_patterns"] = src["patterns"]
        pol = Policy(kind, patterns, float(vals["compress_after_days"]), tuple(expire),
                     float(vals["delete_after_days"]), src)
        if kind in COMPRESSION_DECLARED:
            rel, key = COMPRESSION_DECLARED[kind]
            if kind in decl.errors:
                pol.compress_after_days = 0.0
                pol.note = f"left untouched: {decl.errors[kind]}"
            elif "compress_after_days" not in decl.values.get(kind, {}):
                if pol.patterns:
                    pol.note = (f"not compressed: the framework reads these files by a glob "
                                f"and {rel} declares no {key} for this install")
                pol.compress_after_days = 0.0
            elif decl.values[kind]["compress_after_days"] == 0:
                pol.compress_after_days = 0.0
                pol.note = f"not compressed: {decl.where[kind]['compress_after_days']} turns " \
                           "compression off"
        out[kind] = pol
    return out


def tier_clean(app: AppContext) -> dict[str, Any] | None:
    """``[tiers.<class>.clean]`` from the config, when one is set for this host's class
    (host-class detection only runs when such a table exists)."""
    tiers = app.config.get("tiers") or {}
    if not any(isinstance(t, dict) and "clean" in t for t in tiers.values()):
        return None
    from mnic_ops.facts.hostclass import detect

    decision, _ = detect(app)
    t = tiers.get(decision.host_class) or {}
    c = t.get("clean") if isinstance(t, dict) else None
    return c if isinstance(c, dict) else None
