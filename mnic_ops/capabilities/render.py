"""``mnic-ops render``: write the host's tier into every framework install.

Facts (host class, CPUs, memory, installs) -> tier values (tiers.toml + config, fitted
to the machine) -> Jinja templates -> a plan of file items: overlays merged into the
framework's own JSON files (only managed values change, the text around them stays
byte-identical), plus files the tool owns whole. Every write goes through
``filechange.file_item`` beneath the install root: atomic, backed up, undoable, owner and
mode kept, and no symlink in a user's tree can redirect it.

jinja2 is imported here only, when rendering, so ``detect`` and ``--help`` stay fast.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mnic_ops.capabilities import tiers
from mnic_ops.capabilities.protocol import ProvisionContext, ProvisionStep
from mnic_ops.changes.model import SKIPPED, Item, Plan, failed_item
from mnic_ops.core import beneathfs, installfail, quoting, userjson
from mnic_ops.core.configschema import HOST_CLASSES
from mnic_ops.core.errors import EXIT_CODES_HELP, InputError, OpsError
from mnic_ops.engines import datatree, jsonedit
from mnic_ops.facts import linkrecords, projects

if TYPE_CHECKING:
    from jinja2 import Environment

    from mnic_ops.core.app import AppContext
    from mnic_ops.core.hostroot import HostRoot

CONFIG_DIR = ".claude/config"
# (template, file in the install): overlays merged into the framework's own files,
# each only where the install has that file.
OVERLAYS = (
    ("overlays/parallel-agents-config.json.j2", f"{CONFIG_DIR}/parallel-agents-config.json"),
    ("overlays/parallel-agents.json.j2", f"{CONFIG_DIR}/parallel-agents.json"),
    ("overlays/cost-optimization.json.j2", f"{CONFIG_DIR}/cost-optimization.json"),
    ("overlays/background-tasks.json.j2", f"{CONFIG_DIR}/background-tasks.json"),
)
# Files the tool owns whole.
PROJECT_FILES = (
    ("project/mnic-ops-performance.json.j2", f"{CONFIG_DIR}/mnic-ops-performance.json"),
)
SYSTEM_FILES = (
    ("system/profile.sh.j2", "/etc/profile.d/mnic-ops.sh"),
    ("system/sysctl.conf.j2", "/etc/sysctl.d/60-mnic-ops.conf"),
)


# --- templates ---------------------------------------------------------------------

class TemplateError(InputError):
    """A template that does not render: names the template file and line."""


class Templates:
    """A strict Jinja environment whose every error names the template file and line."""

    def __init__(self, dirs: list[Path]) -> None:
        import jinja2

        self.dirs = dirs
        self.env: Environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
            autoescape=False, auto_reload=False)  # noqa: S701 - JSON/shell, not HTML
        self.env.filters["mb_label"] = tiers.mb_label
        # Values in the system files (shell, sysctl.d) go through the one quoting layer.
        self.env.filters.update(quoting.JINJA_FILTERS)

    def render(self, name: str, ctx: dict[str, Any]) -> str:
        import jinja2

        try:
            tpl = self.env.get_template(name)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {name} not found in "
                             + ", ".join(map(str, self.dirs))) from None
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or name
            raise TemplateError(f"{where}:{exc.lineno}: template syntax error: {exc.message}"
                             ) from None
        try:
            return tpl.render(ctx)
        except jinja2.TemplateError as exc:
            line = _template_line(exc, tpl.filename)
            where = f"{tpl.filename}:{line}" if line else str(tpl.filename)
            kind = "undefined variable" if isinstance(exc, jinja2.UndefinedError) \
                else "template error"
            raise TemplateError(f"{where}: {kind}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            line = _template_line(exc, tpl.filename)
            where = f"{tpl.filename}:{line}" if line else str(tpl.filename)
            raise TemplateError(f"{where}: template error: {type(exc).__name__}: {exc}"
                             ) from None

    def render_json(self, name: str, ctx: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Render a template that must produce a JSON object."""
        text = self.render(name, ctx)
        path = self.env.get_template(name).filename or name
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{path}: renders invalid JSON at output line {exc.lineno} "
                             f"column {exc.colno}: {exc.msg}") from None
        if not isinstance(value, dict):
            raise TemplateError(f"{path}: must render a JSON object, got "
                             f"{type(value).__name__}")
        return text, value


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """The template line where a render error happened (jinja2 puts template frames,
    with the template's own file name and line, into the traceback)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --- planning ------------------------------------------------------------------------

@dataclass
class Context:
    tier: str
    values: dict[str, Any]
    derived: dict[str, Any]
    reasons: list[str]
    source: str

    def base(self) -> dict[str, Any]:
        return {"tier": self.tier, "t": self.values, "d": self.derived}

    def project(self, proj: projects.Project | None) -> dict[str, Any]:
        info = {"root": "/nonexistent", "user": "nobody", "group": "nogroup",
                "version": None, "layout": "project"}
        if proj is not None:
            info = {"root": proj.host_path, "user": proj.user, "group": proj.group,
                    "version": proj.version, "layout": proj.layout}
        return {**self.base(), "project": info}

    def system(self, found: list[projects.Project]) -> dict[str, Any]:
        users = sorted({(p.uid, p.user) for p in found if p.uid != 0})
        return {**self.base(),
                "framework_users": [{"uid": uid, "name": name} for uid, name in users]}


def check_templates(tpl: Templates, ctx: Context, found: list[projects.Project]) -> None:
    """Render every template once before planning, so that a broken one stops the run
    whether or not any install has the file it is for."""
    for template, _ in (*OVERLAYS, *PROJECT_FILES):
        tpl.render_json(template, ctx.project(found[0] if found else None))
    for template, _ in SYSTEM_FILES:
        tpl.render(template, ctx.system(found))


def _is_dir_beneath(base: Path, rel: str) -> bool:
    cur = base
    for part in rel.split("/"):
        cur = cur / part
        try:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                return False
        except OSError:
            return False
    return True


def plan_project(app: AppContext, proj: projects.Project, tpl: Templates, ctx: Context
                 ) -> list[Item]:
    """Items for one install. Any file that cannot be merged (not JSON, a symlink in the
    way) refuses the whole install: one failed item, recorded as that install's failure
    (:mod:`mnic_ops.core.installfail`), nothing written there."""
    root = app.root
    items: list[Item] = []
    pctx = ctx.project(proj)
    if not proj.has_config:
        # The framework's copy_framework_to_project.sh does not install .claude/config/:
        # such an install runs on the framework's built-in defaults, and mnic-ops writes
        # no config files the framework did not have.
        return [Item(id=f"project:{proj.host_path}",
                     description=f"render {ctx.tier} tier into {proj.host_path}",
                     state=SKIPPED, reason=(
                         "no .claude/config/ in this install (the framework's "
                         "copy_framework_to_project.sh does not copy it; the framework runs "
                         "on its built-in defaults): copy the framework's .claude/config/ "
                         f"into {proj.host_path}/.claude/, then run mnic-ops render"))]
    try:
        for template, rel in OVERLAYS:
            host = f"{proj.host_path}/{rel}"
            got = beneathfs.read_beneath(proj.path, rel, max_bytes=userjson.MAX_BYTES,
                                      source=host, base_ident=proj.ident)
            if got is None:
                items.append(Item(id=f"file:{host}", description=f"merge tier into {host}",
                                  state=SKIPPED, reason="not in this install"))
                continue
            old = got[0]
            # bytes that are not UTF-8 survive as surrogates, so that the bounded parser
            # in the merge refuses them with their line and column
            text = old.decode("utf-8", "surrogateescape")
            _, overlay = tpl.render_json(template, pctx)
            new = jsonedit.merge(text, overlay, host)
            item = _file_item(root, host, new, proj, existing=True,
                              description=f"merge {ctx.tier} tier into {host}")
            again = beneathfs.read_beneath(proj.path, rel, max_bytes=userjson.MAX_BYTES,
                                        source=host, base_ident=proj.ident)
            if again is None or again[0] != old:
                raise OpsError(f"{host}: changed while planning; run again")
            items.append(item)
        for template, rel in PROJECT_FILES:
            host = f"{proj.host_path}/{rel}"
            if not _is_dir_beneath(proj.path, os.path.dirname(rel)):
                items.append(Item(id=f"file:{host}", description=f"write {host}",
                                  state=SKIPPED, reason=f"no {os.path.dirname(rel)}/ "
                                  "folder in this install"))
                continue
            text, _ = tpl.render_json(template, pctx)
            exists = beneathfs.read_beneath(proj.path, rel, max_bytes=userjson.MAX_BYTES,
                                         source=host, base_ident=proj.ident) is not None
            items.append(_file_item(root, host, text, proj, existing=exists))
    except TemplateError:
        raise  # a broken template is everyone's problem: stop before any write
    except installfail.INSTALL_ERRORS as exc:
        return [failed_item(
            app, proj.host_path, exc, "render",
            description=f"render {ctx.tier} tier into {proj.host_path}")]
    return items


def _file_item(root: Any, host: str, data: str, proj: projects.Project, *, existing: bool,
               description: str | None = None) -> Item:
    from mnic_ops.changes.filechange import file_item

    if existing:  # keep the file's own owner, group and mode
        return file_item(root, host, data, beneath=proj.host_path, description=description,
                         beneath_ident=proj.ident)
    return file_item(root, host, data, beneath=proj.host_path, description=description,
                     mode=0o644, uid=proj.uid, gid=proj.gid, beneath_ident=proj.ident)


def plan_system(root: Any, found: list[projects.Project], tpl: Templates, ctx: Context
                ) -> list[Item]:
    from mnic_ops.changes.filechange import file_item

    sctx = ctx.system(found)
    items: list[Item] = []
    for template, host in SYSTEM_FILES:
        text = tpl.render(template, sctx)
        folder = root.path(os.path.dirname(host))
        if not folder.is_dir():
            items.append(Item(id=f"file:{host}", description=f"write {host}", state=SKIPPED,
                              reason=f"no {os.path.dirname(host)}/ on this host"))
            continue
        exists = os.path.lexists(root.path(host))
        items.append(file_item(root, host, text, mode=None if exists else 0o644,
                               uid=None if exists else 0, gid=None if exists else 0))
    return items


def count_watch_dirs(root: HostRoot, found: list[projects.Project]) -> int:
    """Folders the watcher would watch: every folder in every install's data folders
    (where :func:`mnic_ops.facts.linkrecords.locate` puts them), counted as the watcher counts
    (:func:`mnic_ops.engines.datatree.count_folders`)."""
    n = 0
    for p in found:
        for kind in p.data:
            loc = linkrecords.locate(root, p, kind)
            if loc.state not in (linkrecords.FOLDER, linkrecords.RELOCATED):
                continue
            try:
                top = linkrecords.open_location(root, loc)
            except OSError:
                continue
            try:
                n += datatree.count_folders(top)
            finally:
                os.close(top)
    return n


def build(app: AppContext, host_class: str | None, names: Sequence[str]
          ) -> tuple[Plan, Context, list[projects.Project]]:
    """The whole plan; raises InputError (nothing written) for bad config, tier values or
    templates."""
    from mnic_ops.facts.hostclass import detect

    cfg = app.config
    decision, facts = detect(app, host_class)
    dirs = tiers.template_dirs(app.root, cfg)
    table = tiers.load_table(dirs)
    values = tiers.effective(table, decision.host_class, cfg)
    every = projects.find_projects(app.root, cfg)
    found = installfail.usable(app, every)  # a failed install is reported, not rendered
    selected = projects.select_projects(app, names) if names else found
    derived, reasons = tiers.derive(
        values, cpus=facts.get("cpu", {}).get("logical"),
        memory_bytes=facts.get("memory", {}).get("total_bytes"),
        watch_dirs=count_watch_dirs(app.root, found))
    ctx = Context(decision.host_class, values, derived, reasons, decision.source)
    tpl = Templates(dirs)
    check_templates(tpl, ctx, found)
    plan = Plan()
    for proj in selected:
        plan.extend(plan_project(app, proj, tpl, ctx))
    if not names and cfg.get("render.system_files", True):
        # every install's owner, failed or not: one user's bad file must not change
        # what the system files say about the others (or about that user)
        plan.extend(plan_system(app.root, every, tpl, ctx))
    elif not names:
        plan.add(Item(id="system", description="system files", state=SKIPPED,
                      reason="render.system_files = false"))
    return plan, ctx, selected


@click.command("render", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Show what would change; write nothing.")
@click.option("--diff", is_flag=True, help="Show a unified diff per file.")
@click.option("--host-class", type=click.Choice(HOST_CLASSES), default=None,
              help="Render this tier instead of the detected host class.")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def render_cmd(app: AppContext, check: bool, diff: bool, host_class: str | None,
               names: tuple[str, ...]) -> int:
    """Render the host's tier into framework installs (all found, or each PROJECT given
    by path or folder name) and, without PROJECT, into the system files.

    Only managed values change in the framework's JSON files; every other key, the key
    order, indentation and trailing newline stay as they are.
    """
    from mnic_ops.changes.run import run_plan

    plan, ctx, selected = build(app, host_class, names)
    title = (f"tier {ctx.tier} ({ctx.source}) for {len(selected)} install(s)"
             + ("".join(f"\n  {r}" for r in ctx.reasons) if app.verbose else ""))
    extra = {"tier": ctx.tier, "source": ctx.source, "values": ctx.values,
             "derived": ctx.derived, "reasons": ctx.reasons,
             "projects": [p.host_path for p in selected]}
    # An install that could not be planned is in the plan as failed and on
    # app.failures: the CLI names it and exits 1 (the others are rendered).
    return run_plan(app, plan, check=check, diff=diff, command="render", title=title,
                    extra=extra)


PROVISION = ProvisionStep(10, "render")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    plan, _rctx, _selected = build(ctx.app, ctx.host_class, ())
    return plan.items
