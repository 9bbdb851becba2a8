"""doctor's report: the guide's levels, the figures and checks (findings with their
fixes) an install or the host gets, and the report rendered as text for the terminal and
as node_exporter textfile metrics (``mnic_ops_doctor_*``)."""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.core import metrics
from mnic_ops.core.errors import OpsError
from mnic_ops.facts.projects import human

if TYPE_CHECKING:
    from mnic_ops.core.hostroot import HostRoot

MIB = 1024 * 1024


# --- levels --------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """Upper bounds (exclusive) of the levels: below ``excellent`` is excellent, below
    ``good`` good, below ``target`` meets the target, anything else missed."""

    label: str
    unit: str  # "s" or "bytes"
    target: float
    good: float
    excellent: float


# The guide's table (docs/advanced/performance-optimization.md, "Expected Performance
# Metrics"): activation <2 s / <1 s / <0.5 s, context <5 s / <3 s / <1 s, memory
# <200 / <150 / <100 MB. The guide measures memory with `ps aux` RSS / 1024, i.e. MiB.
FIGURES: dict[str, Threshold] = {
    "agent_activation": Threshold("agent activation", "s", 2.0, 1.0, 0.5),
    "context_loading": Threshold("context loading", "s", 5.0, 3.0, 1.0),
    "memory": Threshold("memory", "bytes", 200 * MIB, 150 * MIB, 100 * MIB),
}
# The watcher's own budget: issue 7's idle goal (40 MB) is the target.
WATCHER = Threshold("watcher memory", "bytes", 40 * MIB, 30 * MIB, 20 * MIB)

LEVELS = ("excellent", "good", "target", "missed")
LEVEL_VALUE = {"excellent": 3, "good": 2, "target": 1, "missed": 0, "unknown": -1}
_LEVEL_COLOURS = {"excellent": "green", "good": "green", "target": "yellow",
                  "missed": "red", "unknown": "magenta"}
_STATUS_COLOURS = {"ok": "green", "fail": "red", "warn": "yellow", "skip": "cyan"}


def level(value: float | None, th: Threshold) -> str:
    if value is None or math.isnan(value):
        return "unknown"
    if value < th.excellent:
        return "excellent"
    if value < th.good:
        return "good"
    if value < th.target:
        return "target"
    return "missed"


@dataclass
class Figure:
    name: str
    value: float | None
    th: Threshold
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> str:
        return level(self.value, self.th)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.th.unit, "level": self.level,
                "target": self.th.target, "good": self.th.good,
                "excellent": self.th.excellent, "details": self.details}


@dataclass
class Check:
    """One troubleshooting check: ok, fail (counts for the exit code), warn or skip."""

    id: str
    status: str
    finding: str = ""
    fix: str = ""
    command: str | None = None  # the mnic-ops command that fixes it, when there is one
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.finding:
            out["finding"] = self.finding
        if self.fix:
            out["fix"] = self.fix
        out["command"] = self.command
        if self.details:
            out["details"] = self.details
        return out


def fix_command(root: HostRoot, *args: str) -> str:
    """The command line an admin types to fix something (with --root when not /)."""
    pre = ["mnic-ops"] + ([] if root.live else ["--root", str(root.root)])
    return shlex.join([*pre, *args])


def short(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --- node_exporter textfile -------------------------------------------------------------

class _Metrics:
    """The doctor's gauges, all named ``mnic_ops_doctor_*``."""

    def __init__(self) -> None:
        self.file = metrics.Textfile()

    def add(self, name: str, help_: str, value: float,
            labels: dict[str, str] | None = None) -> None:
        self.file.add(f"mnic_ops_doctor_{name}", help_, float(value), labels)


_FIGURE_METRIC = {
    "agent_activation": ("agent_activation_seconds", "Seconds to discover and parse every "
                         "agent definition, measured in a fresh process."),
    "context_loading": ("context_loading_seconds", "Seconds to read the newest session "
                        "files and the checkpoint index, measured in a fresh process."),
    "memory": ("memory_bytes", "Resident memory of the processes running inside the "
               "install."),
}


def metrics_text(report: dict[str, Any]) -> metrics.Textfile:
    """The report as node_exporter textfile metrics (``mnic_ops_doctor_*``)."""
    m = _Metrics()
    lvl_help = ("Level of a figure against the guide's table: 3 excellent, 2 good, "
                "1 meets the target, 0 missed, -1 not measured.")
    for r in report["projects"]:
        proj = r["project"]
        for fname, f in r["figures"].items():
            metric, help_ = _FIGURE_METRIC[fname]
            if f["value"] is not None:
                m.add(metric, help_, f["value"], {"project": proj})
    for r in report["projects"]:
        proj = r["project"]
        a = r["figures"]["agent_activation"]["details"]
        c = r["figures"]["context_loading"]["details"]
        mem = r["figures"]["memory"]["details"]
        m.add("agents", "Agent definitions the framework loads (valid front matter).",
              a.get("agents", 0), {"project": proj})
        m.add("agent_largest_bytes", "Size of the largest agent definition.",
              max([x["bytes"] for x in a.get("largest", [])] or [0]), {"project": proj})
        m.add("context_bytes", "Bytes read by the context loading measurement.",
              c.get("bytes", 0), {"project": proj})
        m.add("processes", "Processes running inside the install.",
              mem.get("processes", 0), {"project": proj})
        m.add("watch_dirs", "Data folders (inotify watches) of the install.",
              r.get("watch_dirs", 0), {"project": proj})
    for r in report["projects"]:
        for fname, f in r["figures"].items():
            m.add("level", lvl_help, LEVEL_VALUE[f["level"]],
                  {"project": r["project"], "figure": fname})
    for fname, f in report["host"]["figures"].items():
        m.add("level", lvl_help, LEVEL_VALUE[f["level"]], {"figure": fname})
    chk_help = "1 when the check failed (see `mnic-ops doctor` for the finding and fix)."
    for r in report["projects"]:
        for c in r["checks"]:
            if c["status"] != "skip":
                m.add("check_failed", chk_help, int(c["status"] == "fail"),
                      {"project": r["project"], "check": c["id"]})
    for c in report["host"]["checks"]:
        if c["status"] != "skip":
            m.add("check_failed", chk_help, int(c["status"] == "fail"), {"check": c["id"]})
    wm = report["host"]["figures"].get("watcher_memory")
    if wm is not None:
        m.add("watcher_memory_bytes", "Resident memory of the running mnic-ops watch.",
              wm["value"])
    for c in report["host"]["checks"]:
        if c["id"] == "inotify" and "max_user_watches" in c.get("details", {}):
            m.add("inotify_max_user_watches", "fs.inotify.max_user_watches.",
                  c["details"]["max_user_watches"])
        if c["id"] == "inotify":
            m.add("inotify_watches_needed", "Folders the watcher needs to watch.",
                  c.get("details", {}).get("watches_needed", 0))
    m.add("projects", "Framework installs checked.", len(report["projects"]))
    m.add("ok", "1 when every figure meets its target and no check failed.",
          int(report["ok"]))
    m.add("duration_seconds", "How long the doctor run took.", report["duration_seconds"])
    m.add("last_run_timestamp_seconds", "When the doctor last ran (Unix time).",
          round(report["started"], 3))
    return m.file


def write_metrics(root: HostRoot, host_path: str, text: metrics.Textfile) -> Path:
    real = root.path(host_path)
    if not real.parent.is_dir():
        raise OpsError(f"--metrics {host_path}: folder {os.path.dirname(host_path)} does "
                       "not exist (node_exporter's --collector.textfile.directory)")
    return text.write(real)


# --- text report ------------------------------------------------------------------------

def _value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return human(int(v))


def _bound(v: float, unit: str) -> str:
    return f"<{v:g} s" if unit == "s" else f"<{v / MIB:g} MiB"


def _figure_note(name: str, f: dict[str, Any]) -> str:
    d = f["details"]
    if name == "agent_activation":
        lg = d.get("largest") or []
        big = f", largest {lg[0]['path']} {human(lg[0]['bytes'])}" if lg else ""
        return f"{d.get('agents', 0)} agents{big}"
    if name == "context_loading":
        return f"{len(d.get('files', []))} files, {human(d.get('bytes', 0))}"
    if name == "memory":
        return d.get("note") or f"{d.get('processes', 0)} processes"
    if name == "watcher_memory":
        return f"pid {', '.join(str(x) for x in d.get('pids', []))}"
    return ""


def report_text(report: dict[str, Any], colour: bool) -> str:
    def lv(s: str) -> str:
        return click.style(f"{s:<9}", fg=_LEVEL_COLOURS.get(s)) if colour else f"{s:<9}"

    def st(s: str) -> str:
        t = s.upper() if s == "fail" else s
        return click.style(f"{t:<5}", fg=_STATUS_COLOURS.get(s), bold=s == "fail") \
            if colour else f"{t:<5}"

    lines: list[str] = []
    if not report["projects"]:
        lines.append("no framework installs found (see search_paths and projects in the "
                     "config)")

    def figure_rows(figs: dict[str, Any]) -> None:
        lines.append(f"  {'measurement':<17} {'value':>10}  {'level':<9}  "
                     f"{'target':>9} {'good':>9} {'excellent':>10}  notes")
        for name, f in figs.items():
            label = FIGURES[name].label if name in FIGURES else WATCHER.label
            lines.append(f"  {label:<17} {_value(f['value'], f['unit']):>10}  "
                         f"{lv(f['level'])}  {_bound(f['target'], f['unit']):>9} "
                         f"{_bound(f['good'], f['unit']):>9} "
                         f"{_bound(f['excellent'], f['unit']):>10}  {_figure_note(name, f)}")

    def check_rows(checks: list[dict[str, Any]]) -> None:
        oks = [c["id"] for c in checks if c["status"] == "ok"]
        for c in checks:
            if c["status"] == "ok":
                continue
            lines.append(f"  {st(c['status'])} {c['id']}: {c.get('finding', '')}")
            if c["status"] in ("fail", "warn"):
                if c.get("command"):
                    lines.append(f"        fix: {c['command']}")
                    if c.get("fix"):
                        lines.append(f"             {c['fix']}")
                elif c.get("fix"):
                    lines.append(f"        fix: {c['fix']}")
        if oks:
            lines.append(f"  {st('ok')} {', '.join(oks)}")

    for r in report["projects"]:
        ver = f", framework {r['version']}" if r.get("version") else ""
        lines.append(f"{r['project']} (owner {r['user']}{ver})")
        figure_rows(r["figures"])
        check_rows(r["checks"])
        lines.append("")
    host = report["host"]
    if host["figures"] or host["checks"]:
        lines.append("host")
        if host["figures"]:
            figure_rows(host["figures"])
        check_rows(host["checks"])
        lines.append("")
    verdict = "every figure meets its target, no check failed" if report["ok"] else \
        "figures below target or failed checks (exit 1)"
    n = len(report["projects"])
    lines.append(f"doctor: {n} install{'' if n == 1 else 's'}, {verdict}")
    if report.get("metrics_file"):
        lines.append(f"metrics written to {report['metrics_file']}")
    return "\n".join(lines)
