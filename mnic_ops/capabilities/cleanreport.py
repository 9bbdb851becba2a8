"""What ``clean`` says after a pass: totals and counts, the text report, the
node_exporter textfile, the log lines, and when a pass off a terminal says nothing."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from mnic_ops.core import metrics
from mnic_ops.core.errors import EXIT_OK, InputError
from mnic_ops.engines import inplace
from mnic_ops.engines.cleanjobs import printable
from mnic_ops.engines.cleanpass import MAX_COLLISIONS, MAX_EXAMPLES, KindReport, ProjectReport
from mnic_ops.facts import policy
from mnic_ops.facts.projects import human

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

log = logging.getLogger(__name__)


_TOTAL_FIELDS = ("compressed", "finished", "bytes_before", "bytes_after", "expired",
                 "expired_bytes", "recovered", "failed", "would_compress",
                 "would_compress_bytes", "would_expire", "would_expire_bytes")


def totals(reports: list[ProjectReport], check: bool = False) -> dict[str, Any]:
    t: Counter[str] = Counter({f: 0 for f in _TOTAL_FIELDS})
    t["projects_locked"] = 0
    t["collisions"] = 0
    t["retention_failed"] = 0
    ret, ret_bytes, restored, kept = 0, 0, 0, 0
    skipped: Counter[str] = Counter()
    for r in reports:
        t["projects_locked"] += r.status == "locked"
        for k in r.kinds.values():
            for f in _TOTAL_FIELDS:
                t[f] += getattr(k, f)
            skipped.update(k.skipped)
            t["collisions"] += k.collisions
            t["retention_failed"] += k.retention_failed
            ret += k.retention_count
            ret_bytes += k.retention_bytes
            restored += len(k.retention.restored) if k.retention is not None else 0
            kept += len(k.retention.kept) if k.retention is not None else 0
    out: dict[str, Any] = dict(t)
    key = "retention_would_expire" if check else "retention_expired"
    out[key], out[key + "_bytes"] = ret, ret_bytes
    out["retention_would_restore" if check else "retention_restored"] = restored
    out["retention_would_keep" if check else "retention_kept"] = kept
    out["bytes_saved"] = t["bytes_before"] - t["bytes_after"] + t["expired_bytes"] + (
        0 if check else ret_bytes)
    out["skipped"] = dict(sorted(skipped.items()))
    return out


def counts(reports: list[ProjectReport], check: bool, failed_installs: int
            ) -> dict[str, int]:
    """Installs by outcome, in the words of every plan's ``counts`` (a script reads
    ``counts.pending``/``counts.failed`` the same way for clean as for provision):
    locked -> skipped; a file or class that failed -> failed; --check with work to do
    -> pending; something compressed, expired or restored -> changed; else ok.
    ``failed_installs``: those that failed before their pass (data map)."""
    c = {"ok": 0, "changed": 0, "failed": failed_installs, "skipped": 0, "pending": 0}
    for r in reports:
        t = totals([r], check)
        if r.status == "locked":
            state = "skipped"
        elif t["failed"] or t["retention_failed"]:
            state = "failed"
        elif check:
            state = "pending" if (t["would_compress"] or t["would_expire"]
                                  or t["retention_would_expire"]
                                  or t["retention_would_restore"]) else "ok"
        else:
            state = "changed" if (t["compressed"] + t["finished"] + t["expired"]
                                  + t["recovered"] + t["retention_expired"]
                                  + t["retention_restored"]) else "ok"
        c[state] += 1
    return c


def _retention_lines(k: KindReport, check: bool, verbose: int) -> list[str]:
    r = k.retention
    if r is None or (r.status == "off" and not verbose and not r.restored and not r.kept):
        return []
    if r.status in ("skipped", "failed") or (r.status == "off" and verbose):
        return [f"    retention: {r.status}: {r.reason}"]
    verb = "would expire" if check else "expired"
    lines = [f"    retention: {verb} {r.count} ({human(r.bytes)})"
             + (f", finished {r.recovered} files of an interrupted pass" if r.recovered
                else "")]
    show = r.items if (check or verbose) else r.items[:3]
    for g in show:
        if g.level is not None:
            lines.append(f"      {g.what}  {g.level}, recorded {g.recorded}, "
                         f"{g.age_days:.1f} days old: {g.rule}")
        else:
            age = "" if g.age_days is None else f"{g.age_days:.1f} days old: "
            lines.append(f"      {printable(g.what)}  {age}{g.rule}")
    if len(show) < len(r.items):
        lines.append(f"      ... and {len(r.items) - len(show)} more (-v lists them)")
    if r.restored:
        shown_r = ", ".join(printable(x) for x in r.restored[: (len(r.restored) if verbose
                                                                  else 3)])
        more = "" if verbose or len(r.restored) <= 3 else ", ..."
        lines.append(f"      {'would restore' if check else 'restored'} {len(r.restored)} "
                     f"files the framework reads by name from the .gz an earlier pass "
                     f"made: {shown_r}{more}")
    for kp in r.kept[: (len(r.kept) if verbose else 3)]:
        lines.append(f"      {printable(kp['file'])}: an older archive beside the current "
                     f"file (other content): {'would be kept' if check else 'kept'} as "
                     f"{printable(kp['kept_as'])}, once; nothing reads it")
    ix = r.index
    if ix.get("dangling_removed") or ix.get("references_removed") or \
            ix.get("entries_removed"):
        n = ix.get("dangling_removed") or ix.get("references_removed") or \
            ix.get("entries_removed")
        state = "rewritten" if ix.get("rewritten") else ("would be rewritten" if check
                                                         else "not rewritten")
        lines.append(f"      index {ix['file']}: {state} ({n} stale mentions)")
    for e in r.errors[: (len(r.errors) if verbose else 3)]:
        lines.append(f"      note: {e}")
    return lines


def text(reports: list[ProjectReport], totals: dict[str, Any], check: bool,
          verbose: int, wait: float = 0.0) -> str:
    lines: list[str] = []
    for r in reports:
        if r.status == "locked":
            waited = f" (waited {wait:g} s for it)" if wait else " (--wait SECONDS waits)"
            lines.append(f"{r.project}: skipped: another pass holds its lock{waited}")
            continue
        lines.append(f"{r.project}:")
        for kind, k in r.kinds.items():
            busy = k.retention is not None and (k.retention.count or k.retention.restored
                                                or k.retention.status in ("skipped",
                                                                          "failed"))
            if k.note and not (k.compressed or k.expired or k.skipped or k.would_compress
                               or busy):
                if verbose or k.note not in ("absent", "no policy (compression and expiry "
                                                       "off)"):
                    lines.append(f"  {kind:<17} {k.note}")
                lines.extend(_retention_lines(k, check, verbose))
                continue
            if not (policy.compresses(k.policy) or policy.expires(k.policy) or k.skipped
                    or k.collisions):
                lines.append(f"  {kind:<17} " + (k.note or "no compression or expiry "
                                                          "policy"))
                lines.extend(_retention_lines(k, check, verbose))
                continue
            if check:
                head = (f"would compress {k.would_compress} ({human(k.would_compress_bytes)})"
                        f", would expire {k.would_expire} ({human(k.would_expire_bytes)})")
            else:
                head = (f"compressed {k.compressed + k.finished} "
                        f"({human(k.bytes_before)} -> {human(k.bytes_after)}), "
                        f"expired {k.expired} ({human(k.expired_bytes)})")
                if k.recovered:
                    head += f", recovered {k.recovered} temporaries"
                if k.failed:
                    head += f", FAILED {k.failed}"
            lines.append(f"  {kind:<17} {head}")
            if k.note:
                lines.append(f"    note: {k.note}")
            for reason, n in sorted(k.skipped.items()):
                ex = k.examples.get(reason, [])
                shown = ", ".join(ex[: (MAX_EXAMPLES if verbose else 3)])
                more = "" if n <= len(ex[: (MAX_EXAMPLES if verbose else 3)]) else ", ..."
                lines.append(f"    skipped {n}: {inplace.REASONS.get(reason, reason)}: "
                             f"{shown}{more}")
            for c in k.collision_files[: (MAX_COLLISIONS if verbose else 3)]:
                lines.append(f"    {c['file']}.gz had other content: kept as "
                             f"{c['kept_as']}, {c['file']} compressed")
            if k.collisions > 3 and not verbose:
                lines.append(f"    ... {k.collisions} collisions resolved (-v lists them)")
            lines.extend(_retention_lines(k, check, verbose))
    if check:
        lines.append(f"would compress {totals['would_compress']} files "
                     f"({human(totals['would_compress_bytes'])}), would expire "
                     f"{totals['would_expire']} archives and "
                     f"{totals['retention_would_expire']} items by the framework's "
                     "declared retention")
    else:
        lines.append(f"compressed {totals['compressed'] + totals['finished']} files "
                     f"({human(totals['bytes_before'])} -> {human(totals['bytes_after'])}), "
                     f"expired {totals['expired']} archives "
                     f"({human(totals['expired_bytes'])}) and "
                     f"{totals['retention_expired']} items by declared retention "
                     f"({human(totals['retention_expired_bytes'])}), saved "
                     f"{human(totals['bytes_saved'])}, skipped "
                     f"{sum(totals['skipped'].values())}, failed {totals['failed']}"
                     + (f", retention failed for {totals['retention_failed']} classes"
                        if totals["retention_failed"] else ""))
    return "\n".join(lines)


def textfile_body(reports: list[ProjectReport], totals: dict[str, Any], started: float,
                  duration: float) -> metrics.Textfile:
    """The node_exporter textfile of a pass (``mnic_ops_clean_*`` gauges)."""
    m = metrics.Textfile()

    def metric(name: str, help_: str, rows: list[tuple[dict[str, str], float]]) -> None:
        m.family(f"mnic_ops_clean_{name}", help_)
        for labels, value in rows:
            m.add(f"mnic_ops_clean_{name}", help_, value, labels)

    def per_project(fn: Any) -> list[tuple[dict[str, str], float]]:
        return [({"project": printable(r.project)}, fn(r)) for r in reports
                if r.status == "done"]

    metric("last_run_timestamp_seconds", "When the last pass started (Unix time).",
           [({}, round(started, 3))])
    metric("duration_seconds", "How long the last pass took.", [({}, round(duration, 3))])
    metric("bytes_saved", "Bytes freed by the last pass (compression and expiry).",
           [({}, totals["bytes_saved"]), *per_project(
               lambda r: sum(k.bytes_before - k.bytes_after + k.expired_bytes
                             for k in r.kinds.values()))])
    metric("files_compressed", "Files compressed by the last pass.",
           [({}, totals["compressed"] + totals["finished"])])
    metric("archives_expired", "Archives deleted by the last pass.",
           [({}, totals["expired"])])
    metric("errors", "Files the last pass failed on (I/O errors, no space).",
           [({}, totals["failed"]), *per_project(
               lambda r: sum(k.failed for k in r.kinds.values()))])
    metric("skipped", "Files the last pass skipped, by reason.",
           [({"reason": printable(k)}, v) for k, v in totals["skipped"].items()])
    metric("projects_locked", "Projects skipped because another pass held their lock.",
           [({}, totals["projects_locked"])])
    return m


def write_textfile(app: AppContext, body: metrics.Textfile) -> str | None:
    """Write the textfile atomically when its folder exists; the path written or None."""
    path = str(app.config.get("clean.textfile") or "")
    if not path:
        return None
    if not path.startswith("/"):
        raise InputError(f"clean.textfile: {path!r} is not an absolute path")
    real = app.root.path(path)
    if not real.parent.is_dir():
        log.debug("%s: folder absent (node_exporter not installed?); textfile not written",
                  real.parent)
        return None
    body.write(real)
    return path

def did_nothing(totals: dict[str, Any]) -> bool:
    """A pass that changed nothing and met nothing wrong: nothing compressed, expired,
    recovered or restored, no failure, no install skipped for its lock."""
    return not any(totals.get(k) for k in (
        "compressed", "finished", "expired", "recovered", "failed", "collisions",
        "projects_locked", "retention_expired", "retention_restored", "retention_failed"))


def quiet(app: AppContext, check: bool, rc: int, totals: dict[str, Any]) -> bool:
    """Say nothing: a real pass (not --check) run off a terminal (cron) without --json
    or -v that did nothing (:func:`did_nothing`) and failed nothing, no install
    included. Errors and real work always print; a person at a terminal always gets the
    report; a script that asked for --json always gets its document."""
    if check or app.json or app.verbose or rc != EXIT_OK or app.failures:
        return False
    try:
        if sys.stdout.isatty():
            return False
    except (AttributeError, ValueError):
        pass
    return did_nothing(totals)


def log_project(r: ProjectReport) -> None:
    if r.status == "locked":
        log.info("clean %s: skipped, another pass holds the lock", r.project)
        return
    c = sum(k.compressed + k.finished for k in r.kinds.values())
    e = sum(k.expired for k in r.kinds.values())
    f = sum(k.failed for k in r.kinds.values())
    s = sum(sum(k.skipped.values()) for k in r.kinds.values())
    if c or e or f:
        log.info("clean %s: compressed %d, expired %d, skipped %d, failed %d",
                 printable(r.project), c, e, s, f)
    for kind, k in r.kinds.items():
        ret = k.retention
        if ret is None:
            continue
        if ret.status in ("skipped", "failed"):
            log.warning("clean %s: %s retention %s: %s", printable(r.project), kind,
                        ret.status, ret.reason)
        for g in ret.items if ret.status == "done" else ():
            log.info("clean %s: %s: expired %s (%s%s)", printable(r.project), kind,
                     printable(g.what), f"{g.level}, " if g.level else "", g.rule)
        for x in ret.restored if ret.status == "done" else ():
            log.info("clean %s: %s: restored %s from its .gz (read back by name)",
                     printable(r.project), kind, printable(x))
        if ret.index.get("rewritten"):
            log.info("clean %s: %s: rewrote %s", printable(r.project), kind,
                     printable(ret.index["file"]))
