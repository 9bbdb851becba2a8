#!/usr/bin/python
# Copyright: mnic-ops maintainers
# MIT License (see pyproject.toml)
"""Ansible module: drive mnic-ops through its JSON output (check mode, per-item diffs)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mnic_ops
short_description: Plan and apply mnic-ops changes with check mode and per-item diffs
description:
  - Runs one mnic-ops command (C(provision), C(verify), C(render), C(relocate), C(fstab),
    C(cron), C(watch_unit), C(clean) or C(undo)) on the managed host, reads the one JSON
    document mnic-ops prints, and reports C(changed), the plan's C(items) and C(counts),
    and a before/after C(diff) per changed file as Ansible shows it with C(--diff).
  - In check mode mnic-ops plans and writes nothing (C(--check)); C(changed) then says
    whether anything is pending. With O(config_content) the plan is made against the
    config about to be written, not the one on disk.
  - A run that leaves nothing to do reports C(changed=false), so a second run of the same
    task is quiet.
  - A failure carries mnic-ops's own message (with file and line where it names one).
version_added: "0.1.0"
author:
  - mnic-ops maintainers
options:
  command:
    description:
      - The mnic-ops command to run.
      - C(watch_unit) installs or removes the watcher's systemd unit
        (C(watch --install-unit) / C(watch --remove-unit)).
      - C(verify) changes nothing and fails when the host drifted from what C(provision)
        set, naming each drifted value.
    type: str
    default: provision
    choices: [provision, verify, render, relocate, fstab, cron, watch_unit, clean, undo]
  state:
    description:
      - For O(command=cron) and O(command=watch_unit), V(present) installs and V(absent)
        removes. For O(command=relocate), V(absent) moves relocated data back
        (C(relocate --undo)). Other commands take only V(present).
    type: str
    default: present
    choices: [present, absent]
  projects:
    description:
      - Framework installs (paths) to work on.
      - For C(render), C(relocate), C(clean) and C(watch_unit) they are given as
        arguments (only these installs; C(render) then leaves the system files alone).
      - For C(provision) and C(verify) they replace the C(projects) config key for this
        run (installs managed besides those the search finds). Paths may not contain
        commas there.
    type: list
    elements: path
    default: []
  root:
    description:
      - Work on the host whose C(/) is this folder (mnic-ops's C(--root)).
    type: path
    default: /
  config:
    description:
      - The mnic-ops config file (C(--config)). Default C(<root>/etc/mnic-ops/config.toml).
      - When given, the cron jobs and the watcher unit that mnic-ops writes name it too.
    type: path
  config_content:
    description:
      - Plan (and apply) against this config text instead of the file's content, as if
        it were the config file (C(--config-from)). What mnic-ops writes still names the
        config file.
      - Meant for check mode, where the task that writes the config changed nothing yet,
        for example C({{ lookup('ansible.builtin.template', 'config.toml.j2') }}).
    type: str
  binary:
    description:
      - The mnic-ops executable on the managed host.
      - In check mode a missing executable is not an error, since the install is still
        pending; the module then reports C(changed) without a plan.
    type: path
    default: /opt/mnic-ops/bin/mnic-ops
  apply_fstab:
    description:
      - C(provision) writes noatime into fstab and remounts (C(--apply-fstab)).
      - C(fstab) applies its proposal (C(--apply)). Without it C(fstab) only proposes,
        C(changed) stays false and C(proposed) tells whether a change is waiting.
    type: bool
    default: false
  remount:
    description:
      - With O(command=fstab) and O(apply_fstab), remount each changed mount point with
        noatime (C(--remount)).
    type: bool
    default: true
  mount_points:
    description:
      - With O(command=fstab), exactly these mount points (C(--mount-point)), instead of
        the filesystems that hold framework data; empty for those.
    type: list
    elements: path
    default: []
  ssd_path:
    description:
      - Where sessions and checkpoints move to. It replaces the C(ssd_path) config key
        for this run (environment C(MNIC_OPS_SSD_PATH)); empty keeps the config's value.
    type: str
  host_class:
    description:
      - Host class override for C(provision), C(verify) and C(render) (C(--host-class)).
    type: str
    choices: [laptop, workstation, server]
  force:
    description:
      - With O(command=relocate), accept a rotational target and move data already on an
        SSD (C(--force)).
    type: bool
    default: false
  only:
    description:
      - With O(command=clean), only compress or only expire archives (C(--only)).
    type: str
    choices: [compress, expire]
  user:
    description:
      - With O(command=cron), that user's crontab instead of C(/etc/cron.d/mnic-ops).
    type: str
  change:
    description:
      - With O(command=undo), what to revert, newest first. V(all), V(last), or a journal
        entry id or change id (see C(mnic-ops undo --list)). Required for C(undo).
    type: str
attributes:
  check_mode:
    support: full
    description: mnic-ops plans with C(--check) and writes nothing.
  diff_mode:
    support: full
    description: One before/after per changed file; other changes as mnic-ops's own diff.
  platform:
    platforms: posix
notes:
  - Exit codes of mnic-ops are 0 (ok), 1 (failure), 2 (bad input) and 3 (changes pending
    with C(--check)); 3 is not a failure.
  - Every change mnic-ops applies is journalled; O(command=undo) reverts it.
requirements:
  - mnic-ops on the managed host (the mnic_ops role installs it).
seealso:
  - name: mnic-ops README
    description: Commands, exit codes, configuration.
    link: https://github.com/mnic-ops/mnic-ops#readme
"""

EXAMPLES = r"""
- name: Provision the host (check mode plans against the config about to be written)
  mnic_ops:
    command: provision
    apply_fstab: true
    config_content: >-
      {{ lookup('ansible.builtin.template', 'config.toml.j2')
         if ansible_check_mode else omit }}

- name: Fail when the host drifted from what provision set
  mnic_ops:
    command: verify

- name: Render the workstation tier into one install only
  mnic_ops:
    command: render
    host_class: workstation
    projects: [/srv/agents/app]

- name: Move sessions and checkpoints of all installs onto the SSD
  mnic_ops:
    command: relocate
    ssd_path: /mnt/ssd/my-name-is-claude

- name: Show the noatime proposal without applying it
  mnic_ops:
    command: fstab
  register: fstab_plan

- name: Remove the cleanup cron jobs
  mnic_ops:
    command: cron
    state: absent

- name: Revert everything mnic-ops did on the host
  mnic_ops:
    command: undo
    change: all
"""

RETURN = r"""
changed:
  description: Whether mnic-ops changed something (in check mode, would change).
  returned: always
  type: bool
items:
  description:
    - The plan, one entry per change as mnic-ops reports it. C(state) is ok, changed,
      pending (check mode), failed or skipped; C(verify) uses drift for a mismatch.
    - C(clean) and C(undo) items are built from their reports (per install and data
      class, per journal entry).
  returned: when mnic-ops printed its JSON document
  type: list
  elements: dict
  sample:
    - id: file:/etc/cron.d/mnic-ops
      description: cleanup jobs in /etc/cron.d/mnic-ops
      state: changed
      diff: "--- a/etc/cron.d/mnic-ops\n+++ b/etc/cron.d/mnic-ops\n..."
counts:
  description: Items per state.
  returned: when mnic-ops printed its JSON document
  type: dict
  sample: {ok: 7, changed: 3, failed: 0, skipped: 2, pending: 0}
diff:
  description:
    - One entry per changed (or pending) item. File changes have C(before), C(after) and
      their headers; other changes (moves, fstab, units) carry mnic-ops's own unified
      diff as C(prepared).
  returned: in diff mode, when something changed
  type: list
  elements: dict
proposed:
  description:
    - A noatime change is waiting (shown in C(items)) that was only proposed, not
      applied, because O(apply_fstab) is false (O(command=fstab) or C(provision)).
  returned: always
  type: bool
drift:
  description: Number of drifted items (O(command=verify)).
  returned: when O(command=verify)
  type: int
report:
  description:
    - The rest of the JSON document mnic-ops printed (without C(items) and C(counts)),
      for example the host class and its source, the installs, clean's totals.
  returned: when mnic-ops printed one
  type: dict
cmd:
  description: The command line that was run.
  returned: always
  type: list
  elements: str
rc:
  description: mnic-ops's exit code (3, changes pending in check mode, is a success).
  returned: when mnic-ops ran
  type: int
stderr:
  description: What mnic-ops printed on stderr (warnings, or its error).
  returned: when mnic-ops ran
  type: str
msg:
  description: A one-line summary, or mnic-ops's own error message on failure.
  returned: always
  type: str
"""

import json
import os
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = dict(
    command=dict(type="str", default="provision",
                 choices=["provision", "verify", "render", "relocate", "fstab", "cron",
                          "watch_unit", "clean", "undo"]),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    projects=dict(type="list", elements="path", default=[]),
    root=dict(type="path", default="/"),
    config=dict(type="path"),
    config_content=dict(type="str"),
    binary=dict(type="path", default="/opt/mnic-ops/bin/mnic-ops"),
    apply_fstab=dict(type="bool", default=False),
    remount=dict(type="bool", default=True),
    mount_points=dict(type="list", elements="path", default=[]),
    ssd_path=dict(type="str"),
    host_class=dict(type="str", choices=["laptop", "workstation", "server"]),
    force=dict(type="bool", default=False),
    only=dict(type="str", choices=["compress", "expire"]),
    user=dict(type="str"),
    change=dict(type="str"),
)

STATES = ("ok", "changed", "failed", "skipped", "pending")
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_PENDING = 3  # --check: changes pending (not a failure)
# Commands whose "absent" means something.
WITH_STATE = ("cron", "watch_unit", "relocate")
# Commands that take installs as arguments (the others get MNIC_OPS_PROJECTS).
PROJECT_ARGS = ("render", "relocate", "clean", "watch_unit")
FSTAB_PROPOSAL = "proposal only"


class Invocation:
    """The argv and environment for one mnic-ops run, built from the module's params."""

    def __init__(self, params: dict[str, Any], check: bool, diff: bool,
                 config_from: str | None = None) -> None:
        self.params = params
        self.check = check
        self.diff = diff
        self.config_from = config_from

    def argv(self) -> list[str]:
        p = self.params
        argv = [p["binary"], "--root", p["root"]]
        if p["config"]:
            argv += ["--config", p["config"]]
        if self.config_from:
            argv += ["--config-from", self.config_from]
        # The global flag: every mnic-ops version takes it before the command.
        argv.append("--json")
        return argv + self.command_args()

    def command_args(self) -> list[str]:
        p, cmd = self.params, self.params["command"]
        check = ["--check"] if self.check else []
        diff = ["--diff"] if self.diff else []
        hc = ["--host-class", p["host_class"]] if p["host_class"] else []
        # "--": an install's path is never taken for an option.
        projects = ["--", *p["projects"]] if cmd in PROJECT_ARGS and p["projects"] else []
        if cmd == "provision":
            return (["provision", *check, *diff, *hc]
                    + (["--apply-fstab"] if p["apply_fstab"] else []))
        if cmd == "verify":
            return ["verify", *hc]
        if cmd == "render":
            return ["render", *check, *diff, *hc, *projects]
        if cmd == "relocate":
            return (["relocate", *check, *diff]
                    + (["--undo"] if p["state"] == "absent" else [])
                    + (["--force"] if p["force"] else []) + projects)
        if cmd == "fstab":
            mps = [a for mp in p["mount_points"] for a in ("--mount-point", mp)]
            if p["apply_fstab"] and not self.check:
                return ["fstab", "--apply", *(["--remount"] if p["remount"] else []), *mps]
            return ["fstab", "--check", *mps]
        if cmd == "cron":
            target = ["--user", p["user"]] if p["user"] else ["--system"]
            return ["cron", "install" if p["state"] == "present" else "remove", *target,
                    *check, *diff]
        if cmd == "watch_unit":
            if p["state"] == "present":
                return ["watch", "--install-unit", *check, *projects]
            return ["watch", "--remove-unit", *check]
        if cmd == "clean":
            return ["clean", *check, *(["--only", p["only"]] if p["only"] else []),
                    *projects]
        if cmd == "undo":
            which = p["change"]
            target = ["--" + which] if which in ("all", "last") else [which]
            return ["undo", *target, *check]
        raise ValueError(cmd)

    def environ(self) -> dict[str, str]:
        p, env = self.params, {}
        if p["projects"] and p["command"] in ("provision", "verify"):
            env["MNIC_OPS_PROJECTS"] = ",".join(p["projects"])
        if p["ssd_path"]:
            env["MNIC_OPS_SSD_PATH"] = p["ssd_path"]
        return env


def validate(params: dict[str, Any]) -> str | None:
    """The message for a combination of options that makes no sense, else None."""
    cmd = params["command"]
    if params["state"] == "absent" and cmd not in WITH_STATE:
        return f"state=absent applies to {', '.join(WITH_STATE)}, not to {cmd}"
    if cmd == "undo" and not params["change"]:
        return "command=undo needs change (all, last, or a change id from undo --list)"
    if params["change"] and cmd != "undo":
        return "change applies to command=undo only"
    if cmd == "undo" and params["change"].startswith("-"):
        return f"change={params['change']!r}: give all, last or a change id"
    if params["command"] in ("provision", "verify") and \
            any("," in x for x in params["projects"]):
        return ("projects for provision/verify may not contain commas (they go into "
                "MNIC_OPS_PROJECTS); list such installs in the config instead")
    return None


def parse_document(stdout: str) -> dict[str, Any] | None:
    """The JSON document mnic-ops printed, or None (old versions print nothing on an
    error; anything that is not one JSON object is not ours)."""
    text = (stdout or "").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def plan_items(command: str, doc: dict[str, Any], check: bool
               ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(items, counts) in the plan shape, whatever the command's own report looks like:
    plan commands have them; verify, clean and undo are mapped onto them."""
    if command == "verify":
        items = [dict(i) for i in doc.get("items", [])]
    elif command == "clean" and "items" not in doc:
        items = clean_items(doc, check)
    elif command == "undo" and "items" not in doc:
        items = undo_items(doc, check)
    else:
        items = [dict(i) for i in doc.get("items", [])]
    counts = doc.get("counts") if command != "verify" else None
    if not isinstance(counts, dict):
        counts = {s: 0 for s in STATES}
        for i in items:
            state = "pending" if i.get("state") == "drift" else i.get("state")
            counts[state] = counts.get(state, 0) + 1
    return items, counts


def clean_items(doc: dict[str, Any], check: bool) -> list[dict[str, Any]]:
    items = []
    for proj in doc.get("projects", []):
        name = proj.get("project", "?")
        if proj.get("status") == "locked":
            items.append({"id": f"clean:{name}", "description": f"clean {name}",
                          "state": "skipped", "reason": "another pass holds its lock"})
            continue
        for kind, k in sorted(proj.get("kinds", {}).items()):
            item = {"id": f"clean:{name}:{kind}", "description": f"clean {kind} of {name}",
                    "data": k}
            if check:
                n = (k.get("would_compress", 0), k.get("would_expire", 0))
                item["state"] = "pending" if any(n) else "ok"
                if any(n):
                    item["diff"] = (f"{k.get('path', kind)}: would compress {n[0]} file(s), "
                                    f"expire {n[1]} archive(s)\n")
            else:
                n = (k.get("compressed", 0) + k.get("finished", 0), k.get("expired", 0))
                item["state"] = ("failed" if k.get("failed") else
                                 "changed" if any(n) else "ok")
                if any(n):
                    item["diff"] = (f"{k.get('path', kind)}: compressed {n[0]} file(s), "
                                    f"expired {n[1]} archive(s)\n")
                if k.get("failed"):
                    item["error"] = f"{k['failed']} file(s) failed"
            items.append(item)
    return items


def undo_items(doc: dict[str, Any], check: bool) -> list[dict[str, Any]]:
    if check:
        return [{"id": e.get("change", e.get("entry", "?")), "description":
                 e.get("description", ""), "state": "pending",
                 "diff": f"would revert {e.get('entry')}: {e.get('change')} "
                         f"({e.get('description', '')})\n", "data": e}
                for e in doc.get("would_revert", [])]
    return [{"id": r.get("change", r.get("entry", "?")), "description": r.get("result", ""),
             "state": "changed", "diff": f"reverted {r.get('entry')}: {r.get('change')}: "
                                         f"{r.get('result', '')}\n", "data": r}
            for r in doc.get("reverted", [])]


def item_diffs(items: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Ansible's diff list: before/after for a file change mnic-ops gave whole, else its
    own unified diff as ``prepared``."""
    out = []
    for item in items:
        if item.get("state") not in ("changed", "pending"):
            continue
        data = item.get("data")
        where = (data.get("path") if isinstance(data, dict) else None) or item.get("id", "")
        if "before" in item and "after" in item:
            out.append({"before_header": where, "after_header": where,
                        "before": item["before"], "after": item["after"]})
        elif item.get("diff"):
            text = item["diff"]
            out.append({"prepared": text if text.endswith("\n") else text + "\n"})
    return out


def error_message(doc: dict[str, Any] | None, items: list[dict[str, Any]], stderr: str,
                  rc: int) -> str:
    """mnic-ops's own words for a failure: the document's errors (with file:line), else
    its ``error:`` lines on stderr, else the failed items' errors."""
    msgs = []
    for e in (doc or {}).get("errors") or []:
        if isinstance(e, dict):
            where = e.get("file")
            if where and e.get("line"):
                where = f"{where}:{e['line']}"
            text = str(e.get("message", ""))
            # mnic-ops's message often names its file:line already: say it once
            msgs.append(f"{where}: {text}" if where and not text.startswith(str(where))
                        else text)
        else:
            msgs.append(str(e))
    if not msgs:
        for line in (stderr or "").splitlines():
            m = re.match(r"^mnic-ops: (?:error|internal error|ERROR): ?(.*)$", line)
            if m:
                msgs.append(m.group(1))
    if not msgs:
        msgs = [f"[{i.get('id')}] {i.get('error')}" for i in items
                if i.get("state") == "failed" and i.get("error")]
    if not msgs:
        tail = [ln for ln in (stderr or "").splitlines() if ln.strip()][-5:]
        msgs = tail or [f"mnic-ops exited with code {rc}"]
    return "; ".join(msgs)


def drift_message(items: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for i in items:
        if i.get("state") not in ("drift", "pending"):
            continue
        found = i.get("mismatches") or []
        if found:
            parts.extend(f"{m.get('what')}: expected {m.get('expected')!r}, actual "
                         f"{m.get('actual')!r}" for m in found)
        else:
            parts.append(f"[{i.get('id')}] {i.get('description')}")
    return f"{len(parts)} drifted: " + "; ".join(parts)


def summary(counts: dict[str, int]) -> str:
    line = " ".join(f"{s}={counts.get(s, 0)}" for s in ("ok", "changed", "failed",
                                                          "skipped"))
    return line + (f" pending={counts['pending']}" if counts.get("pending") else "")


def run(module: AnsibleModule) -> None:
    p = module.params
    why = validate(p)
    if why:
        module.fail_json(msg=why)
    check, diff = module.check_mode, module._diff
    result: dict[str, Any] = dict(changed=False, proposed=False, cmd=[])

    def fail(msg: str, **extra: Any) -> None:
        module.fail_json(**{**result, **extra, "msg": msg})

    config_from = None
    if p["config_content"] is not None:
        config_from = os.path.join(module.tmpdir, "mnic-ops-config-content.toml")
        fd = os.open(config_from, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(p["config_content"])
    inv = Invocation(p, check, diff, config_from)
    argv = inv.argv()
    result["cmd"] = argv
    if not os.path.exists(p["binary"]):
        if check:
            # The role installs mnic-ops in the same run; check mode installed nothing.
            result.update(changed=p["command"] not in ("verify", "fstab"), msg=(
                f"{p['binary']} is not installed yet: in check mode nothing is, so "
                "there is no plan to show; everything is pending"))
            module.exit_json(**result)
            return
        fail(f"{p['binary']}: mnic-ops not found (install it first, e.g. with the "
             "mnic_ops role)")

    rc, out, err = module.run_command(argv, environ_update=inv.environ(),
                                      check_rc=False)
    if config_from:  # name the option, not the temporary file, in messages
        out, err = (out.replace(config_from, "config_content"),
                    err.replace(config_from, "config_content"))
    result.update(rc=rc, stderr=err)
    doc = parse_document(out)
    if doc is None and rc in (EXIT_OK, EXIT_PENDING):
        fail("mnic-ops printed no JSON document", stdout=out)
    items, counts = plan_items(p["command"], doc or {}, check) if doc is not None \
        else ([], {s: 0 for s in STATES})
    result.update(items=[{k: v for k, v in i.items() if k not in ("before", "after")}
                         for i in items], counts=counts)
    if doc is not None:  # the rest of it: class, source, projects, totals...
        result["report"] = {k: v for k, v in doc.items() if k not in ("items", "counts")}
    for line in err.splitlines():
        if line.startswith("mnic-ops: WARNING: "):
            module.warn(line[len("mnic-ops: WARNING: "):])

    if p["command"] == "verify":
        drift = sum(1 for i in items if i.get("state") in ("drift", "pending"))
        result["drift"] = drift
        if drift and rc == EXIT_FAILURE:
            fail(drift_message(items))

    proposal = p["command"] == "fstab" and not p["apply_fstab"]
    failed = (rc not in (EXIT_OK, EXIT_PENDING) or (doc or {}).get("ok") is False
              or (rc == EXIT_PENDING and not check and not proposal)
              or counts.get("failed", 0) > 0)
    if failed:
        fail(error_message(doc, items, err, rc))

    fstab_waiting = [i for i in items if i.get("state") == "skipped"
                     and FSTAB_PROPOSAL in (i.get("reason") or "")]
    if proposal:
        result["proposed"] = counts.get("pending", 0) > 0
        changed = False
    elif p["command"] == "verify":
        changed = False
    elif check:
        changed = counts.get("pending", 0) > 0
    else:
        changed = counts.get("changed", 0) > 0
    result["proposed"] = result["proposed"] or bool(fstab_waiting)
    result["changed"] = changed
    if diff and changed:
        result["diff"] = item_diffs(items)
    result["msg"] = summary(counts) + (" (fstab change proposed, not applied)"
                                       if result["proposed"] else "")
    # Ansible takes a non-zero rc for a failure unless told: 3 (pending) is not one.
    module.exit_json(failed=False, **result)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(module)


if __name__ == "__main__":
    main()
