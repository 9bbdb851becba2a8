"""Which configured clean patterns would cover files the framework reads back.

The rule the config loader applies to every ``[clean.<kind>]`` and
``[tiers.<tier>.clean.<kind>]`` pattern (each refused with its file:line), on the data map
(:mod:`mnic_ops.core.framework_map`); pattern matching as the data-folder policy
(:mod:`mnic_ops.facts.policy`) applies it at run time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from mnic_ops.core import framework_map, globmeet

# Classes whose expiry is the framework's declared retention, kept consistent with the
# framework's indexes by mnic_ops.engines.retention (not by expire patterns on mtimes).
RETENTION_KINDS = ("checkpoint_store", "thinking_logs", "cost_records", "task_results")
# Classes read by a glob where the framework's config may declare compression.
COMPRESSION_DECLARED = {"thinking_logs": (framework_map.THINKING_CONFIG, "logging.compression")}


def match(patterns: tuple[str, ...] | list[str], name: str, rel: str) -> bool:
    """Does a name (``rel``: its path below the data folder) match one of ``patterns``?
    A pattern with a ``/`` matches the path, any other the name."""
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


# --- configured patterns that would cover read-back files --------------------------

def _family(rule: framework_map.FileRule) -> bool:
    """A family of files (metadata/<id>.json...), not one exact name: no runtime skip by
    name can make a pattern over it safe."""
    return any(c in rule.pattern for c in "*?[")


def _covered(pattern: str, rule: framework_map.FileRule) -> str | None:
    """A path below the data folder that both the configured ``pattern`` and the
    read-back ``rule`` cover (each matched as :func:`match` does: with a ``/`` against
    the path, else against the name), or None when they share none: decided on the
    patterns themselves, not on sample names."""
    for sample in rule.samples:  # a real name reads best in the message
        if match([pattern], sample.rsplit("/", 1)[-1], sample):
            return sample
    p, r = pattern, rule.pattern
    if "/" in p and "/" not in r:
        # the rule matches the file's name, at any depth
        return globmeet.witness(p, r) or globmeet.witness(p, "*/" + r)
    if "/" not in p and "/" in r:
        last = r.rsplit("/", 1)[-1]
        w = globmeet.witness(p, last)
        return None if w is None else r.rsplit("/", 1)[0].replace("*", "x") + "/" + w
    return globmeet.witness(p, r)


def pattern_refusal(kind: str, key: str, pattern: str) -> str | None:
    """Why a configured pattern of ``[clean.<kind>]`` (``key``: patterns or
    expire_patterns) is refused, or None. Exact names the framework reads back are
    skipped at run time whatever the pattern; a pattern that shares a match with a whole
    family of them is refused (compressing or expiring it would break the framework),
    and so is an expire pattern over a family read back by a glob (their expiry is the
    retention the framework declares; :func:`due` refuses such a file at run time too).
    A compress pattern over a glob-read family is allowed: it applies only where the
    framework's own config declares compression for that class."""
    folder = framework_map.FOLDERS.get(kind)
    if folder is None:
        return None
    for rule in folder.rules:
        if not _family(rule):
            continue
        if key == "patterns" and rule.read == framework_map.BY_GLOB and \
                kind in COMPRESSION_DECLARED:
            continue  # applied only where the framework's config declares compression
        hit = _covered(pattern, rule)
        if hit is None and key == "expire_patterns" and pattern.endswith(".gz"):
            # NAME.N.gz (a kept older archive) expires like NAME.gz
            hit = _covered(pattern[:-3] + ".[0-9]*.gz", rule)
        if hit is not None:
            how = "by exact name" if rule.read == framework_map.BY_NAME else "by a glob"
            verb = "compress" if key == "patterns" else "delete"
            return (f"{pattern!r} would {verb} {folder.default}/{hit}, which the "
                    f"framework reads back {how} ({rule.reader})"
                    + ("; its expiry is the retention the framework declares"
                       if key == "expire_patterns" and kind in RETENTION_KINDS else "")
                    + ("; to expire archives mnic-ops made, use a pattern ending in .gz"
                       if rule.read == framework_map.BY_GLOB and key == "expire_patterns" else ""))
    return None


def pattern_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, why) for every configured clean pattern (``[clean.<kind>]`` and
    ``[tiers.<tier>.clean.<kind>]``) that covers files the framework reads back; the
    config loader reports each with its file:line."""
    found: list[tuple[str, str]] = []

    def check(section: Any, prefix: str) -> None:
        if not isinstance(section, Mapping):
            return
        for kind, table in section.items():
            if not isinstance(table, Mapping) or kind not in framework_map.FOLDERS:
                continue
            for key in ("patterns", "expire_patterns"):
                pats = table.get(key)
                if not isinstance(pats, list | tuple):
                    continue
                for p in pats:
                    if isinstance(p, str) and (why := pattern_refusal(kind, key, p)):
                        found.append((f"{prefix}.{kind}.{key}", why))

    check(values.get("clean"), "clean")
    tiers = values.get("tiers")
    if isinstance(tiers, Mapping):
        for cls, t in tiers.items():
            if isinstance(t, Mapping):
                check(t.get("clean"), f"tiers.{cls}.clean")
    return found
