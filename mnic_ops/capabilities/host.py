"""Commands about the host itself: ``facts``, ``detect``, ``config`` and ``undo``."""

from __future__ import annotations

import json
from typing import Any

import click

from mnic_ops import capabilities
from mnic_ops.core.app import AppContext, emit
from mnic_ops.core.configschema import HOST_CLASSES
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, EXIT_PENDING, InputError
from mnic_ops.facts import hostfacts
from mnic_ops.facts.hostclass import detect


def _flatten(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict):
        if not data and prefix:
            return [f"{prefix}: -"]
        out: list[str] = []
        for k, v in data.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list):
        if not data:
            return [f"{prefix}: (none)"]
        if all(not isinstance(x, dict | list) for x in data):
            return [f"{prefix}: {', '.join(map(str, data))}"]
        out = []
        for i, v in enumerate(data):
            out.extend(_flatten(v, f"{prefix}[{i}]"))
        return out
    return [f"{prefix}: {data}"]


def _facts_text(data: dict[str, Any]) -> str:
    lines = []
    for section, value in data.items():
        if section in ("absent", "root"):
            continue
        if section == "mounts":
            lines.append("mounts:")
            for m in value:
                ssd = {True: "ssd", False: "rotational", None: "-"}[m["ssd"]]
                lines.append(f"  {m['mount_point']:<28} {m['fstype']:<10} {m['source']:<24} "
                             f"{ssd:<10} {','.join(m['options'])}")
            continue
        if section == "block_devices":
            lines.append("block_devices:")
            for name, bd in value.items():
                rot = {True: "rotational", False: "non-rotational", None: "?"}[
                    bd["rotational"]]
                lines.append(f"  {name:<12} {bd['kind']:<5} {bd['dev']:<8} {rot}"
                             + (f" slaves={','.join(bd['slaves'])}" if bd["slaves"] else ""))
            continue
        lines.extend(_flatten(value, section))
    if data.get("absent"):
        lines.append("absent:")
        lines.extend(f"  {k}: {v}" for k, v in data["absent"].items())
    return "\n".join(lines)


@click.command("facts", epilog=EXIT_CODES_HELP)
@click.pass_obj
def facts_cmd(app: AppContext) -> int:
    """Print everything mnic-ops knows about the host (read-only)."""
    data = hostfacts.gather(app.root)
    emit(app, data, lambda: _facts_text(data))
    return EXIT_OK


@click.command("detect", epilog=EXIT_CODES_HELP)
@click.option("--host-class", type=click.Choice(HOST_CLASSES), default=None,
              help="Override the detected class (like config host_class).")
@click.pass_obj
def detect_cmd(app: AppContext, host_class: str | None) -> int:
    """Print the host class (laptop, workstation or server) and why."""
    decision, data = detect(app, host_class)
    emit(app, decision.to_json(data), lambda: "\n".join(
        [decision.host_class, f"source: {decision.source}"]
        + [f"  - {r}" for r in decision.reasons]))
    return EXIT_OK


@click.command("config", epilog=EXIT_CODES_HELP)
@click.option("--schema", is_flag=True, help="Print the documented schema instead.")
@click.pass_obj
def config_cmd(app: AppContext, schema: bool) -> int:
    """Validate and print the effective configuration."""
    from mnic_ops.core import configschema

    if schema:
        rows = configschema.schema_doc()
        emit(app, {"keys": [dict(zip(("key", "type", "default", "doc"), r, strict=True))
                            for r in rows]},
             lambda: "\n".join(f"{k:<34} {t:<30} {d:<24} {doc}" for k, t, d, doc in rows))
        return EXIT_OK
    cfg = app.config
    data = {"file": str(cfg.path), "loaded": cfg.loaded, "values": cfg.values}
    emit(app, data, lambda: f"# {cfg.path} ({'loaded' if cfg.loaded else 'absent'})\n"
         + json.dumps(cfg.values, indent=2))
    return EXIT_OK


@click.command("undo", epilog=EXIT_CODES_HELP)
@click.option("--last", "which", flag_value="last", help="Revert the newest change.")
@click.option("--all", "which", flag_value="all", help="Revert every recorded change.")
@click.option("--list", "list_only", is_flag=True, help="List recorded changes.")
@click.option("--check", is_flag=True, help="Say what would be reverted; change nothing.")
@click.argument("change_id", required=False)
@click.pass_obj
def undo_cmd(app: AppContext, which: str | None, list_only: bool, check: bool,
             change_id: str | None) -> int:
    """Revert recorded changes, newest first (--last, --all or one CHANGE-ID).

    CHANGE-ID is a journal entry id or a change id such as file:/etc/x; every entry
    of that change is reverted.
    """
    from mnic_ops.changes import model

    entries = [e for e in model.read_journal(app.root) if not e.get("undone")]
    if list_only or (which is None and change_id is None):
        emit(app, {"entries": entries}, lambda: "\n".join(
            f"{e['entry']}  {e['change']}  {e['description']}" for e in entries)
            or "no recorded changes")
        return EXIT_OK
    if which and change_id:
        raise InputError("give --last, --all or a CHANGE-ID, not several")
    if which == "last":
        chosen = entries[-1:]
    elif which == "all":
        chosen = entries
    else:
        chosen = [e for e in entries if change_id in (e["entry"], e["change"])]
        if not chosen:
            raise InputError(f"{change_id}: no such recorded change (see `mnic-ops undo "
                             "--list`)")
    order = sorted(chosen, key=lambda e: e["time"], reverse=True)  # as undo reverts
    if check:
        items = [_undo_item(e, "pending") for e in order]
        emit(app, {"check": True, "items": items, "counts": _counts(items)},
             lambda: "\n".join(f"would revert: {e['entry']} {e['change']} "
                               f"{e['description']}" for e in order)
             or "nothing to revert")
        return EXIT_PENDING if chosen else EXIT_OK
    capabilities.load_undo_handlers()  # handlers live with their capability
    results = model.undo_entries(app.root, chosen)
    done = {r["entry"]: r["result"] for r in results}
    items = [_undo_item(e, "changed", done[e["entry"]]) if e["entry"] in done
             else _undo_item(e, "failed") for e in order]
    emit(app, {"check": False, "items": items, "counts": _counts(items)}, lambda: "\n".join(
        f"reverted: {r['change']}: {r['result']}" for r in results) or "nothing to revert")
    return EXIT_OK if len(results) == len(chosen) else EXIT_FAILURE


def _undo_item(e: dict[str, Any], state: str, result: str | None = None) -> dict[str, Any]:
    """A journal entry as a plan item (the shape of every --check): id is the entry id
    (what ``undo CHANGE-ID`` takes), ``data`` names the change it reverts."""
    data = {k: e.get(k) for k in ("entry", "change", "command", "time", "kind")}
    if result is not None:
        data["result"] = result
    return {"id": e["entry"], "description": f"revert {e['change']}: {e['description']}",
            "state": state, "data": data}


def _counts(items: list[dict[str, Any]]) -> dict[str, int]:
    c = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "pending": 0}
    for i in items:
        c[i["state"]] += 1
    return c
