"""The framework release of an install: the release notes over the stale VERSION file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.facts.test_projects import find, make_install

README_3_10 = ("# Claude Code Multi-Agent Framework\n\n[![Version](https://img.shields.io/"
               "badge/Version-3.10.0-FF6B35)](CHANGELOG.md)\n\n**Current Version:** 3.10.0 "
               "| **Release Date:** October 17, 2025\n")
CHANGELOG_3_10 = "# Changelog\n\n## [3.10.0] - 2025-10-17\n\n## [3.9.0] - 2025-01-16\n"


@pytest.mark.parametrize(("files", "version", "sources"), [
    # as the copy script installs it: the stale VERSION beside the real release notes
    ({"VERSION": "3.2.1\n", "FRAMEWORK_README.md": README_3_10,
      "FRAMEWORK_CHANGELOG.md": CHANGELOG_3_10}, "3.10.0",
     {"FRAMEWORK_README.md": "3.10.0", "FRAMEWORK_CHANGELOG.md": "3.10.0", "VERSION": "3.2.1"}),
    # the README gone: the changelog's newest entry
    ({"VERSION": "3.2.1\n", "FRAMEWORK_CHANGELOG.md": "## [3.3.0] - 2025-10-05\n"}, "3.3.0",
     {"FRAMEWORK_CHANGELOG.md": "3.3.0", "VERSION": "3.2.1"}),
    # only configs: framework_version, else the newest component version (a lower bound)
    ({"VERSION": "3.2.1\n", ".claude/config/extended-thinking-config.json":
      '{"version": "1.0.0", "framework_version": "3.10.0"}'}, "3.10.0",
     {".claude/config/extended-thinking-config.json framework_version": "3.10.0",
      "VERSION": "3.2.1"}),
    ({".claude/config/checkpoint-config.json": '{"version": "3.7.0"}',
      ".claude/config/parallel-agents-config.json": '{"version": "3.8.0"}'}, "3.8.0",
     {".claude/config/checkpoint-config.json version": "3.7.0",
      ".claude/config/parallel-agents-config.json version": "3.8.0"}),
    ({"VERSION": "3.2.1\n"}, "3.2.1", {"VERSION": "3.2.1"}),  # nothing better to go by
    ({}, None, {}),
])
def test_version_comes_from_the_release_notes_not_the_stale_version_file(
        fake_root: Path, files: dict[str, str], version: str | None,
        sources: dict[str, str]) -> None:
    make_install(fake_root / "home/alice/p", extra=files)
    (p,) = find(fake_root)
    assert p.version == version
    assert p.version_sources == sources
    stale = [n for n in p.notes if n.startswith("VERSION says")]
    assert bool(stale) == (version not in (None, "3.2.1") and "VERSION" in files)
