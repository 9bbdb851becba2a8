"""The config's schema: every key with its type, default, bounds and one line of
documentation, and the rules its string values follow.

The schema is also the reference documentation (``mnic-ops config --schema``, from
:func:`schema_doc`). Checking values against it is :mod:`mnic_ops.core.configvalidate`;
loading a config is :mod:`mnic_ops.core.config`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnic_ops.core import quoting
from mnic_ops.core.framework_map import DATA_KINDS

HOST_CLASSES = ("laptop", "workstation", "server")
MAX_DAYS = 36500.0  # a hundred years: beyond that a number of days is a typo


@dataclass(frozen=True)
class Rule:
    """A check on a string value beyond its type: what it must be (for the schema
    documentation) and a function that returns what is wrong, or None."""

    doc: str
    problem: Callable[[str], str | None]


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, allowed values and one line of documentation.

    For ``list[str]`` keys, ``choices`` and ``rule`` apply to every item."""

    type: str  # str | int | float | bool | list[str] | table | scalar
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    rule: Rule | None = None
    noun: str = ""  # names a list item outside ``choices``: "unknown <noun> 'x'"


Schema = dict[str, "Key | Section"]


@dataclass(frozen=True)
class Section:
    keys: Schema
    doc: str = ""
    open_keys: Key | Section | None = None  # schema for keys not listed (e.g. per tier)
    fill: bool = True  # False: holds only what the config sets (no defaults filled in)
    each: str = ""  # keys that all share one Section are documented once as <each>


# --- rules -------------------------------------------------------------------------------

def _absolute(v: str) -> str | None:
    return None if v.startswith("/") else "not an absolute path (expected one starting with /)"


def _absolute_or_empty(v: str) -> str | None:
    return None if v == "" else _absolute(v)


def _pattern(v: str) -> str | None:
    if not v:
        return "expected a non-empty glob"
    if v.startswith("/"):
        return ("expected a name or a path below the data folder (a pattern starting "
                "with / never matches)")
    return None


def _unsafe(fn: Callable[[str], object]) -> str | None:
    """The quoting layer's refusal of a value, without its "what: " prefix (the config
    error names the key itself)."""
    try:
        fn("value")
    except quoting.UnsafeValue as exc:
        return exc.message.removeprefix("value: ")
    return None


def _cron_log(v: str) -> str | None:
    if v == "syslog":
        return None
    return _absolute(v) or _unsafe(
        lambda what: quoting.cron_command(v, what))  # the same characters as its shell word


def _cron_command(v: str) -> str | None:
    try:
        words = shlex.split(v)
    except ValueError as exc:
        return f"not a valid command line ({exc})"
    if not words:
        return "expected a command line"
    return _unsafe(lambda what: quoting.cron_command(v, what))


def _cron_schedule(v: str) -> str | None:
    return _unsafe(lambda what: quoting.cron_schedule(v, what))


ABSOLUTE = Rule("absolute path", _absolute)
ABSOLUTE_OR_EMPTY = Rule("absolute path, or empty", _absolute_or_empty)
PATTERN = Rule("glob", _pattern)
CRON_LOG = Rule("absolute path or syslog", _cron_log)
CRON_COMMAND = Rule("shell command line", _cron_command)
CRON_SCHEDULE = Rule("cron schedule", _cron_schedule)


def _days(doc: str) -> Key:
    return Key("float", None, doc, minimum=0, maximum=MAX_DAYS)


def _policy_keys() -> Schema:
    return {
        "patterns": Key("list[str]", None, "Names to gzip (globs; with a `/` they match "
                        "the path below the data folder). Unset: the built-in default.",
                        rule=PATTERN),
        "compress_after_days": _days("Gzip matching files not modified for this many "
                                     "days; 0 turns compression off."),
        "expire_patterns": Key("list[str]", None, "Archives to delete when old "
                               "(default: each pattern + `.gz`).", rule=PATTERN),
        "delete_after_days": _days("Delete matching archives older than this many days; "
                                   "0 keeps them forever."),
    }


def _clean_kinds(fill: bool) -> Section:
    """The per-class policy tables of ``[clean]``."""
    return Section({
        kind: Section(_policy_keys(), f"Policy for {kind} (unset keys: tier, then the "
                      "framework's own config, then the built-in default).", fill=fill)
        for kind in DATA_KINDS}, fill=fill)


def _cron_schedules(fill: bool) -> Section:
    return Section({
        "compress_schedule": Key("str", None, "Cron schedule of the daily compress+expire "
                                 "pass (default: from the tier).", rule=CRON_SCHEDULE),
        "expire_schedule": Key("str", None, "Cron schedule of the expiry pass (default: "
                               "from the tier; the guide's */30 * * * *).",
                               rule=CRON_SCHEDULE),
    }, fill=fill)


_TIER_POLICY = Section(_policy_keys(), "Policy for one data class on hosts of this class, "
                       "as in [clean.<kind>] (which it yields to).", fill=False)
_TIER = Section({
    "clean": Section({kind: _TIER_POLICY for kind in DATA_KINDS}, "Clean policy for hosts "
                     "of this class.", fill=False, each="kind"),
    "cron": Section(_cron_schedules(False).keys, "Cron schedules for hosts of this class "
                    "(below [cron]).", fill=False),
}, "Override tier values of templates/tiers.toml (keys and bounds: docs/tiers.md; "
   "checked against that file when rendering).",
    open_keys=Key("scalar", None, "A tier value (string, number or boolean)."), fill=False)

SCHEMA: Schema = {
    "host_class": Key("str", None, "Force the host class instead of detecting it.",
                      choices=HOST_CLASSES),
    "projects": Key("list[str]", [], "Framework install folders to manage, as host paths.",
                    rule=ABSOLUTE),
    "search_paths": Key(
        "list[str]", ["/opt/my-name-is-claude", "/srv", "/home/*", "/root"],
        "Where `projects` searches for installs (globs allowed).", rule=ABSOLUTE),
    "search_depth": Key("int", 3, "How many folder levels below each search path to look.",
                        minimum=0, maximum=64),
    "ssd_path": Key("str", "/mnt/ssd/my-name-is-claude",
                    "Where `relocate` moves sessions and checkpoints (empty: the SSD mount "
                    "with the most free space).", rule=ABSOLUTE_OR_EMPTY),
    "templates_dir": Key("str", None, "Use these templates instead of the shipped ones.",
                         rule=ABSOLUTE_OR_EMPTY),
    "detect": Section({
        "server_min_cpus": Key("int", 32, "Resources fallback: at least this many logical "
                               "CPUs makes a server.", minimum=1, maximum=1 << 20),
        "server_min_memory_gib": Key("float", 48.0, "Resources fallback: at least this much "
                                     "memory (GiB) makes a server.", minimum=0,
                                     maximum=1 << 30),
        "laptop_max_cpus": Key("int", 4, "Resources fallback: at most this many CPUs and ...",
                               minimum=0, maximum=1 << 20),
        "laptop_max_memory_gib": Key("float", 8.0, "... at most this much memory (GiB) "
                                     "makes a laptop-sized host; anything else is a "
                                     "workstation.", minimum=0, maximum=1 << 30),
    }, "Host-class detection thresholds."),
    # Sections below are owned by their capability modules.
    "tiers": Section({name: _TIER for name in HOST_CLASSES},
                     "Per-tier overrides (tier: laptop, workstation or server).",
                     each="tier"),
    "render": Section({
        "system_files": Key("bool", True, "`render` without PROJECT also writes "
                            "/etc/profile.d/mnic-ops.sh and /etc/sysctl.d/60-mnic-ops.conf."),
    }, "Tier config rendering."),
    "relocate": Section({
        "kinds": Key("list[str]", ["sessions", "checkpoints", "checkpoint_store"],
                     "Data folders `relocate` moves, by data-map kind.", choices=DATA_KINDS,
                     noun="kind"),
        "margin_percent": Key("float", 10.0, "Free space the target must have beyond the "
                              "data's size, in percent of that size.", minimum=0,
                              maximum=1000),
        "min_free_mib": Key("int", 256, "Free space (MiB) that must remain on the target "
                            "after a move.", minimum=0, maximum=1 << 40),
        "verify_from_disk": Key("bool", True, "Drop the copy from the page cache before "
                                "comparing it with the source, so the check reads what "
                                "reached the disk, not what is still in memory."),
    }, "Moving data to an SSD."),
    "fstab": Section({
        "mount_points": Key("list[str]", [], "Mount points `fstab` always considers, besides "
                            "those holding framework data and any --mount-point.",
                            rule=ABSOLUTE),
        "nodiratime": Key("bool", False, "Also add nodiratime. Redundant on Linux, where "
                          "noatime already implies it; for admins whose checklists ask."),
        "include_network": Key("bool", False, "Also propose noatime for network filesystems "
                               "(nfs, cifs, ...); off because atime there is the server's "
                               "business and a remount can hang on a dead server."),
    }, "noatime proposals for /etc/fstab."),
    "clean": Section({
        **_clean_kinds(True).keys,
        "workers": Key("int", 0, "Compressing processes; 0 = two per CPU (one compresses "
                       "while the other waits for its batch's sync), at most 8.", minimum=0,
                       maximum=256),
        "level": Key("int", 5, "gzip level 1-9; zlib-ng at 5 is as small as gzip -6 "
                     "(within 2 %) and a third faster.", minimum=1, maximum=9),
        "compressor": Key("str", "auto", "Deflate implementation; auto prefers zlib-ng "
                          "(same output format, faster) and falls back to zlib.",
                          choices=("auto", "zlib-ng", "isal", "zlib")),
        "batch_files": Key("int", 256, "Files written before one filesystem sync makes "
                           "them durable together.", minimum=1, maximum=1 << 20),
        "follow_links_under": Key("list[str]", [], "Deprecated, no effect (a warning "
                                  "says so): a data folder's symlink is followed only when "
                                  "`relocate` made it (/var/lib/mnic-ops/links.json), never "
                                  "because of where it points.", rule=ABSOLUTE),
        "restore_max_mib": Key("int", 256, "At most this many MiB of files an earlier "
                               "mnic-ops gzipped and the framework reads by name are made "
                               "again per install and run (the rest the next run); 0 = "
                               "none.", minimum=0, maximum=1 << 20),
        "textfile": Key("str", "/var/lib/prometheus/node-exporter/mnic_ops_clean.prom",
                        "node_exporter textfile written after each pass (when its folder "
                        "exists); empty = none.", rule=ABSOLUTE_OR_EMPTY),
    }, "Maintenance pass policy."),
    "cron": Section({
        **_cron_schedules(True).keys,
        "command": Key("str", None, "How jobs invoke mnic-ops (default: the installed "
                       "mnic-ops found by absolute path).", rule=CRON_COMMAND),
        "lock_wait_seconds": Key("int", 1500, "How long a job waits for an install's lock "
                                 "when the other job or the watcher holds it (`clean "
                                 "--wait`); 0 = skip that install at once.", minimum=0,
                                 maximum=86400),
        "log": Key("str", None, "Where job output goes: an absolute file path or `syslog` "
                   "(default: /var/log/mnic-ops-cron.log for --system, syslog for "
                   "--user).", rule=CRON_LOG),
    }, "Cleanup cron jobs."),
    "watch": Section({
        "settle_seconds": Section({
            kind: Key("float", minutes * 60.0, f"Seconds a {kind.replace('_', ' ')} file must "
                      f"stay quiet after its writer closed it before it is gzipped (default "
                      f"{minutes:g} minutes{why}).", minimum=0, maximum=31 * 86400)
            for kind, minutes, why in (
                ("sessions", 60, ": a session summary untouched for an hour is finished"),
                ("claude_sessions", 60, ": as sessions"),
                ("checkpoints", 15, ": each checkpoint is written once"),
                ("checkpoint_store", 15, ": each metadata file is written once"),
                ("thinking_logs", 10, ": each decision record is written once"),
                ("cost_records", 1500, ": daily/DATE.json is rewritten all day, so it is "
                 "left until its day is over"),
                ("logs", 60, ""),
                ("task_results", 60, ""),
                ("task_logs", 60, ""))
        }, "Per data class; which files and classes are compressed at all is the "
           "[clean] policy (patterns; compress_after_days = 0 turns a class off)."),
        "poll": Key("bool", False, "Always use the polling observer (as --poll); it is "
                    "used anyway for network filesystems."),
        "poll_seconds": Key("float", 30.0, "Interval of the polling observer.", minimum=0.1,
                            maximum=86400),
        "check_seconds": Key("float", 5.0, "How often each data folder is checked to still "
                             "be the folder watched (deleted, re-created, relinked).",
                             minimum=0.1, maximum=86400),
        "rescan_minutes": Key("float", 60.0, "Safety net: re-list the watched folders this "
                              "often for files written since start that no event announced "
                              "(after an inotify queue overflow one runs at once); 0 = only "
                              "after overflows.", minimum=0, maximum=7 * 1440),
    }, "Auto-compression watcher (`mnic-ops watch`)."),
    "doctor": Section({
        "metrics_file": Key("str", None, "Write the figures as a node_exporter textfile here "
                            "(host path, e.g. /var/lib/prometheus/node-exporter/"
                            "mnic_ops.prom) on every run; --metrics overrides.",
                            rule=ABSOLUTE),
        "session_max_mb": Key("float", 10.0, "A session file larger than this (MiB) is a "
                              "finding (the guide prunes sessions at 10 MB).", minimum=0,
                              maximum=1 << 20),
        "agent_max_kib": Key("float", 100.0, "An agent definition larger than this (KiB) is "
                             "a finding (the shipped agents are 5-30 KiB).", minimum=0,
                             maximum=1 << 20),
        "context_files": Key("int", 5, "How many of the newest session files the context "
                             "measurement reads (besides SESSION_CURRENT.md).", minimum=1,
                             maximum=1000),
        "probe_timeout": Key("float", 60.0, "Seconds a measurement process may take before "
                             "it counts as failed.", minimum=1, maximum=3600),
    }, "Health checks and baseline measurements (`mnic-ops doctor`)."),
    "provision": Section({
        "relocate": Key("bool", True, "Move sessions and checkpoints to ssd_path when an "
                        "SSD target exists."),
        "apply_fstab": Key("bool", False, "Write noatime into fstab and remount (else only "
                           "propose the diff)."),
        "cron": Key("bool", True, "Install the cleanup cron jobs."),
        "watcher": Key("bool", True, "Install the auto-compression watcher unit."),
        "logrotate": Key("bool", True, "Install /etc/logrotate.d/mnic-ops for the logs "
                         "mnic-ops writes (when logrotate is installed)."),
        "missing_cron": Key("str", "fail", "No cron daemon on the host (see README): "
                            "`fail` the cron item, naming the fix, or `skip` it.",
                            choices=("fail", "skip")),
        "missing_systemd": Key("str", "fail", "systemd is not the host's init: `fail` "
                               "the watcher item, naming the fix, or `skip` it.",
                               choices=("fail", "skip")),
    }, "What `mnic-ops provision` does."),
}


# --- the schema as documentation --------------------------------------------------------

def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _type_doc(spec: Key) -> str:
    t = spec.type
    if spec.choices:
        t += f" ({'|'.join(spec.choices)})"
    if spec.minimum is not None or spec.maximum is not None:
        lo = "" if spec.minimum is None else _num(spec.minimum)
        hi = "" if spec.maximum is None else _num(spec.maximum)
        t += f" {lo}..{hi}"
    if spec.rule is not None:
        t += f" ({spec.rule.doc})"
    return t


def schema_doc(schema: Schema = SCHEMA, prefix: str = "", each: str = ""
               ) -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for the documentation. The keys of a section that
    all share one sub-section (the tiers, a tier's clean policy per kind) are documented
    once, as ``<tier>`` or ``<kind>``."""
    rows: list[tuple[str, str, str, str]] = []
    items = list(schema.items())
    if each and len(items) > 1 and all(s is items[0][1] for _, s in items):
        items = [(f"<{each}>", items[0][1])]
    for name, spec in items:
        full = f"{prefix}{name}"
        if isinstance(spec, Section):
            rows.append((f"[{full}]", "table", "", spec.doc))
            rows.extend(schema_doc(spec.keys, full + ".", spec.each))
            if isinstance(spec.open_keys, Key):
                rows.append((f"{full}.<key>", _type_doc(spec.open_keys), "",
                             spec.open_keys.doc))
        else:
            rows.append((full, _type_doc(spec), repr(spec.default), spec.doc))
    return rows
