"""Which framework release an install is, and what each of its files says.

The framework ships a stale ``VERSION`` file, so the release is read from the release
notes first, then the configs (:func:`read_versions`). Every file is read beneath the
install root, bounded, never through a symlink.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from mnic_ops.core import beneathfs, framework_map
from mnic_ops.core.errors import OpsError


def _read_beneath(base: Path, rel: str, limit: int = 1 << 20,
                  ident: beneathfs.Ident | None = None) -> bytes | None:
    try:
        fd = beneathfs.open_beneath(base, rel, base_ident=ident)
    except (OSError, OpsError):
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(limit)


_VERSION_RE = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.]+)?")
# FRAMEWORK_README.md: "**Current Version:** 3.10.0" and the "Version-3.10.0" badge.
_README_VERSION_RE = re.compile(
    r"(?:Current Version:?\**:?\s*|badge/Version-|framework_version\W+|"
    r"FRAMEWORK_VERSION\W+)v?(\d+\.\d+\.\d+)")
# FRAMEWORK_CHANGELOG.md (Keep a Changelog): the first "## [3.10.0] - date".
_CHANGELOG_RE = re.compile(r"^##\s*\[v?(\d+\.\d+\.\d+)\]", re.M)
# Config files whose "framework_version" names the release (3.10.0 writes it).
_VERSIONED_CONFIGS = ("extended-thinking-config.json", "diagnostic-framework-integration.json",
                      "skills-conversion-mapping.json")
# Component versions in config files: the release that introduced the component, so
# the install is at least that release.
_COMPONENT_CONFIGS = ("parallel-agents-config.json", "checkpoint-config.json",
                      "background-tasks.json")


def _newest(versions: list[str]) -> str | None:
    keyed = [(k, v) for v in versions if (k := framework_map.version_key(v)) is not None]
    return max(keyed)[1] if keyed else None


def read_versions(path: Path, ident: beneathfs.Ident | None = None
                  ) -> tuple[str | None, dict[str, str]]:
    """The framework version of an install and what each source says.

    The framework ships a stale ``VERSION`` file (3.2.1 in 3.3.0 and 3.10.0), so the
    release comes from ``FRAMEWORK_README.md`` and ``FRAMEWORK_CHANGELOG.md`` (the copy
    script installs both), then the configs' ``framework_version``, then their component
    versions (a lower bound), and only last from ``VERSION``."""
    sources: dict[str, str] = {}
    for rel, rx in (("FRAMEWORK_README.md", _README_VERSION_RE),
                    ("FRAMEWORK_CHANGELOG.md", _CHANGELOG_RE),
                    ("CHANGELOG.md", _CHANGELOG_RE)):
        raw = _read_beneath(path, rel, 64 * 1024, ident)
        if raw:
            m = rx.search(raw.decode(errors="replace"))
            if m:
                sources[rel] = m.group(1)
    for rel in ("VERSION", ".claude/VERSION"):
        raw = _read_beneath(path, rel, 256, ident)
        if raw:
            m = _VERSION_RE.search(raw.decode(errors="replace"))
            if m:
                sources[rel] = m.group(0)
    docs = [v for k, v in sources.items() if k.endswith(".md")]
    if docs:
        return _newest(docs), sources
    found: list[str] = []
    for name, key in ([(n, "framework_version") for n in _VERSIONED_CONFIGS]
                      + [(n, "version") for n in _COMPONENT_CONFIGS]):
        raw = _read_beneath(path, f"{framework_map.CONFIG_DIR}/{name}", 256 * 1024, ident)
        if not raw:
            continue
        m = re.search(rf'"{key}"\s*:\s*"v?(\d+\.\d+\.\d+)"', raw.decode(errors="replace"))
        if m and (framework_map.version_key(m.group(1)) or (0,)) >= (3,):
            sources[f"{framework_map.CONFIG_DIR}/{name} {key}"] = m.group(1)
            found.append(m.group(1))
    if found:
        return _newest(found), sources
    return next((sources[k] for k in ("VERSION", ".claude/VERSION") if k in sources),
                None), sources


def read_version(path: Path) -> str | None:
    """The framework version of the install at ``path`` (see :func:`read_versions`)."""
    return read_versions(path)[0]
