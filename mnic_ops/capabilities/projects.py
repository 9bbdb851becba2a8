"""``mnic-ops projects``: list the framework installs and their data folders (read-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK
from mnic_ops.facts.projects import human, select_projects

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext


def _text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no framework installs found (see search_paths and projects in the config)"
    lines: list[str] = []
    for r in rows:
        lines.append(f"{r['root']}  owner {r['user']}:{r['group']}  "
                     f"version {r['version'] or 'unknown'}  layout {r['layout']}"
                     + ("" if r["has_config"] else "  (no .claude/config/)"))
        lines.extend(f"  note: {n}" for n in r["notes"])
        for kind, d in r["data"].items():
            if not d["exists"]:
                state = "absent"
            else:
                state = f"{human(d['bytes'])} in {d['files']} files"
                if d["is_link"]:
                    state += f" (link -> {d['link_target']}"
                    state += ", not followed: not made by mnic-ops)" \
                        if d.get("link_state") == "refused" else ")"
            lines.append(f"  {kind:<17} {d['path']}: {state}")
    return "\n".join(lines)


@click.command("projects", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (same as "
              "the global --json).")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def projects_cmd(app: AppContext, as_json: bool, names: tuple[str, ...]) -> int:
    """List framework installs: root, owner, version, data folders with size and file
    count (read-only). PROJECT narrows the list to installs named by path or folder name.
    """
    from mnic_ops.core.app import emit

    if as_json:
        app.json = True

    rows = [p.to_json(sizes=True) for p in select_projects(app, names)]
    emit(app, {"projects": rows}, lambda: _text(rows))
    return EXIT_OK
