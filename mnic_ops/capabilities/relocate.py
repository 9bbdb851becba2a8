"""``mnic-ops relocate``: move sessions and checkpoints to an SSD behind symlinks.

Replaces the guide's ``mkdir`` + ``ln -sf`` recipe (which, run on an existing folder,
puts the link inside it and moves nothing). Each data folder of an install moves to
``<target>/<install>-<hash>/<kind>`` through :mod:`mnic_ops.engines.treemove` (verified copy,
atomic swap, crash journal), and the old path becomes a symlink. ``--undo`` brings the
data back the same way; ``mnic-ops undo`` reverts a recorded move.

Target: ``--to``, else ``ssd_path`` (when set in the config, or when the default's
folder or its parent exists), else the writable local mount on non-rotational disks
with the most free space. A target on rotational disks (unless ``--force``), tmpfs, a
network or pseudo filesystem, or read-only is refused with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from mnic_ops.capabilities.protocol import ProvisionContext, ProvisionStep
from mnic_ops.changes.model import OK, SKIPPED, ApplyContext, Item, Plan, Undo, undo_handler
from mnic_ops.changes.run import run_plan
from mnic_ops.core import beneathfs, installroot, progress, safefs
from mnic_ops.core.app import AppContext, emit
from mnic_ops.core.errors import EXIT_CODES_HELP, EXIT_OK, InputError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.engines import movejournal, moveplace, pendingmoves, treemove, treestat
from mnic_ops.facts import holders, hostfacts, linkrecords
from mnic_ops.facts.projects import DATA_KINDS, DataDir, Project, human, select_projects

log = logging.getLogger(__name__)

JOURNAL_DIR = pendingmoves.JOURNAL_DIR
TARGET_DIRNAME = "my-name-is-claude"
# Filesystems that keep owners, modes, symlinks and hardlinks.
POSIX_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs",
                      "jfs", "reiserfs", "nilfs2"})
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


# --- target --------------------------------------------------------------------------

@dataclass
class Target:
    host_path: str
    real: Path
    why: str  # how it was chosen
    mount: hostfacts.Mount | None = None

    def to_json(self) -> dict[str, Any]:
        m = self.mount
        return {"path": self.host_path, "chosen_by": self.why,
                "mount": None if m is None else {
                    "mount_point": m.mount_point, "source": m.source, "fstype": m.fstype,
                    "ssd": m.ssd, "disks": m.disks}}


def _existing_ancestor(p: Path) -> Path:
    """``p`` or its nearest existing ancestor (where a new target folder would go)."""
    cur = p
    while not os.path.lexists(cur) and cur != cur.parent:
        cur = cur.parent
    return cur


def _free(real: Path) -> tuple[int, int]:
    """(bytes, inodes) an unprivileged writer may still use at ``real``."""
    st = os.statvfs(_existing_ancestor(real))
    return st.f_bavail * st.f_frsize, st.f_favail


def _unique_mounts(mounts: list[hostfacts.Mount]) -> list[hostfacts.Mount]:
    """One entry per filesystem: its first whole mount (root "/"), not bind mounts."""
    seen: set[str] = set()
    out = []
    for m in mounts:
        if m.root != "/" or m.dev in seen:
            continue
        seen.add(m.dev)
        out.append(m)
    return out


def mount_refusal(m: hostfacts.Mount | None, force: bool) -> str | None:
    """Why a mount cannot hold relocated data, or None."""
    if m is None:
        return "no mount holds it"
    if m.fstype in MEMORY_FS:
        return f"it is on {m.fstype} (memory: gone at the next reboot)"
    if m.network:
        return f"it is on a network filesystem ({m.fstype} {m.source})"
    if m.pseudo:
        return f"it is on a pseudo filesystem ({m.fstype})"
    if m.read_only:
        return f"it is on a read-only mount ({m.mount_point})"
    if m.fstype not in POSIX_FS:
        return (f"{m.fstype} on {m.mount_point} cannot keep owners, modes, symlinks and "
                "hardlinks")
    if not force:
        if m.ssd is False:
            disks = ", ".join(m.disks) or m.source
            return (f"it is on rotational storage ({disks} at {m.mount_point}); "
                    "--force to use it anyway")
        if m.ssd is None:
            return (f"the storage under {m.mount_point} ({m.source}) is of unknown kind "
                    "(no rotational flag); --force to use it anyway")
    return None


def choose_target(root: HostRoot, cfg_ssd: str | None, cfg_ssd_default: str, to: str | None,
                  mounts: list[hostfacts.Mount]) -> Target:
    """``--to``, else ``ssd_path``, else the best SSD mount; InputError when none fits."""
    if to:
        if not to.startswith("/"):
            if not root.live:
                raise InputError(f"--to {to}: give an absolute host path with --root")
            to = os.path.abspath(to)
        host = os.path.normpath(to)
        return Target(host, root.path(host), "--to")
    if cfg_ssd:
        host = os.path.normpath(cfg_ssd)
        real = root.path(host)
        explicit = cfg_ssd != cfg_ssd_default
        if explicit or os.path.lexists(real) or os.path.lexists(real.parent):
            return Target(host, real, "config ssd_path")
    best: tuple[int, hostfacts.Mount] | None = None
    rejected: list[str] = []
    for m in _unique_mounts(mounts):
        if m.pseudo or m.fstype in MEMORY_FS or m.network:
            continue
        why = mount_refusal(m, force=False)
        if why:
            rejected.append(f"{m.mount_point}: {why.split(';')[0]}")
            continue
        real = root.path(m.mount_point)
        if not os.access(real, os.W_OK):
            rejected.append(f"{m.mount_point}: not writable")
            continue
        try:
            free = _free(real)[0]
        except OSError as exc:
            rejected.append(f"{m.mount_point}: {exc.strerror}")
            continue
        if best is None or free > best[0]:
            best = (free, m)
    if best is None:
        raise InputError(
            "no target: no writable local mount on non-rotational storage found ("
            + ("; ".join(rejected) or "no local mounts") + "); give --to DIR or set "
            "ssd_path in the config")
    mp = best[1].mount_point
    host = "/srv/" + TARGET_DIRNAME if mp == "/" else f"{mp.rstrip('/')}/{TARGET_DIRNAME}"
    return Target(host, root.path(host), f"the SSD mount with most free space ({mp}, "
                  f"{human(best[0])} free)", best[1])


def check_target(t: Target, mounts: list[hostfacts.Mount], force: bool) -> None:
    """Refuse a target that cannot safely hold the data (InputError with the reason)."""
    t.mount = hostfacts.mount_for(t.host_path, mounts)
    why = mount_refusal(t.mount, force)
    if why:
        raise InputError(f"target {t.host_path} ({t.why}): refused: {why}")
    anc = _existing_ancestor(t.real)
    try:
        st = os.stat(anc)
    except OSError as exc:
        raise InputError(f"target {t.host_path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"target {t.host_path}: {'' if anc == t.real else 'its parent '}"
                         f"{anc} is not a folder")
    if os.statvfs(anc).f_flag & os.ST_RDONLY:
        raise InputError(f"target {t.host_path}: refused: {anc} is read-only")
    if not os.access(anc, os.W_OK):
        raise InputError(f"target {t.host_path}: refused: {anc} is not writable "
                         "(immutable or permission denied)")


# --- naming -------------------------------------------------------------------------

def project_dirname(p: Project) -> str:
    """Stable, readable and collision-free: the install's folder name plus a hash of its
    full path (two ``~/work/app`` installs of different users do not collide)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", p.name).strip("._") or "install"
    h = hashlib.sha256(p.host_path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{base[:48]}-{h}"


def _kinds(app: AppContext) -> list[str]:
    kinds = app.config.get("relocate.kinds") or []
    bad = [k for k in kinds if k not in DATA_KINDS]
    if bad:
        where = "config"
        if app.config.loaded and app.config.path is not None:
            from mnic_ops.core.configvalidate import line_of

            try:
                line = line_of(app.config.path.read_text(), ["relocate", "kinds"])
            except OSError:
                line = None
            where = f"{app.config.path}:{line}" if line else str(app.config.path)
        raise InputError(f"{where}: relocate.kinds: unknown kind {bad[0]!r}; expected "
                         f"one of {', '.join(DATA_KINDS)}")
    return list(dict.fromkeys(kinds))


# --- progress -----------------------------------------------------------------------

@contextmanager
def _progress(app: AppContext, label: str, size: treestat.TreeSize
              ) -> Iterator[moveplace.Progress | None]:
    """A bytes-and-files bar on a terminal (copy, then verify; see mnic_ops.core.progress)."""
    if size.bytes + size.files == 0:
        yield None
        return
    counts = {"copy": 0, "verify": 0}
    total = size.files

    def text() -> str:
        return f"files: {counts['copy']}/{total} copied, {counts['verify']} verified"

    with progress.bar(app, label, max(1, 2 * size.bytes), text) as bar:
        if bar is None:
            yield None
            return

        def update(stage: str, nbytes: int, nfiles: int) -> None:
            counts[stage] = counts.get(stage, 0) + nfiles
            bar.advance(nbytes)
        yield update


# --- planning ------------------------------------------------------------------------

@dataclass
class _Move:
    """Everything one planned move needs (kept JSON-able for the undo record)."""

    project: Project
    data: DataDir
    rel: str  # data folder relative to the install root
    dest_base: str  # host path of the target base
    dest_rel: str  # "<install>-<hash>/<kind>"
    size: treestat.TreeSize = field(default_factory=treestat.TreeSize)

    @property
    def dest_host(self) -> str:
        return f"{self.dest_base.rstrip('/')}/{self.dest_rel}"

    def record(self, direction: str) -> dict[str, Any]:
        return {"direction": direction, "kind": self.data.kind,
                "project": self.project.host_path, "public": self.data.host_path,
                "public_rel": self.rel, "dest_base": self.dest_base,
                "dest_rel": self.dest_rel, "link_text": self.dest_host,
                "owner": [self.project.uid, self.project.gid],
                # the install root as found: every open of it checks it (a user may
                # rename a folder above it and put a link to someone else's there)
                "root_ident": list(self.project.ident) if self.project.ident else None}


def _rel_in_project(p: Project, d: DataDir) -> str:
    rel = os.path.relpath(d.host_path, p.host_path)
    if rel == "." or rel.startswith("../") or rel == "..":
        raise InputError(f"{d.host_path}: outside the install {p.host_path}; refusing to "
                         "move it")
    parent = os.path.dirname(rel)
    if parent:
        try:
            os.close(beneathfs.open_beneath(p.path, parent, os.O_RDONLY | os.O_DIRECTORY))
        except FileNotFoundError:
            pass
        except OpsError as exc:
            raise InputError(f"{d.host_path}: {exc.message}") from None
    return rel


def _holders_error(app: AppContext, paths: list[Path], what: str) -> str | None:
    if not app.root.live:
        return None
    hs = holders.holders([str(p) for p in paths])
    if not hs:
        return None
    pids = sorted({h.pid for h in hs})
    listing = "; ".join(f"pid {h.pid} ({h.name}): {app.root.host(h.path)}" for h in hs[:8])
    more = f"; and {len(hs) - 8} more" if len(hs) > 8 else ""
    return (f"{what}: in use by running processes (PIDs {', '.join(map(str, pids))}): "
            f"{listing}{more}; stop them (the framework?) and run again")


class _Space:
    """Space accounting per target filesystem across all planned moves."""

    def __init__(self, margin_percent: float, min_free: int) -> None:
        self.margin, self.min_free = margin_percent, min_free
        self.need: dict[int, tuple[int, int]] = {}

    def check(self, real: Path, host: str, size: treestat.TreeSize, what: str) -> None:
        anc = _existing_ancestor(real)
        dev = os.stat(anc).st_dev
        free, inodes = _free(anc)
        prev_b, prev_i = self.need.get(dev, (0, 0))
        need_b = prev_b + int(size.blocks * (1 + self.margin / 100))
        need_i = prev_i + size.inodes + 1
        self.need[dev] = (need_b, need_i)
        if need_b + self.min_free > free:
            raise OpsError(f"{what}: not enough space on {host}: needs {human(need_b)} plus "
                           f"{human(self.min_free)} to keep free (relocate.margin_percent "
                           f"{self.margin:g}%, relocate.min_free_mib), {human(free)} free")
        if need_i > inodes:
            raise OpsError(f"{what}: not enough inodes on {host}: needs {need_i}, "
                           f"{inodes} free")


def _dev(p: Path) -> int:
    return os.stat(_existing_ancestor(p)).st_dev


def plan_out(app: AppContext, projects: list[Project], target: Target, force: bool,
             jdir: Path, mounts: list[hostfacts.Mount], busy: dict[str, str]) -> Plan:
    root, cfg = app.root, app.config
    plan = Plan()
    kinds = _kinds(app)
    space = _Space(float(cfg.get("relocate.margin_percent", 10.0)),
                   int(cfg.get("relocate.min_free_mib", 256)) << 20)
    problems: list[str] = []
    for p in projects:
        slug = project_dirname(p)
        for kind in kinds:
            d = p.data[kind]
            iid = f"relocate:{d.host_path}"
            rel = _rel_in_project(p, d)
            mv = _Move(p, d, rel, target.host_path, f"{slug}/{kind}")
            desc = f"move {d.host_path} to {mv.dest_host}"
            if d.host_path in busy:
                plan.add(Item(iid, desc, SKIPPED, busy[d.host_path]))
                continue
            if not d.exists:
                plan.add(Item(iid, desc, SKIPPED, "not present"))
                continue
            same = [k for k in kinds[:kinds.index(kind)] if p.data[k].host_path == d.host_path]
            outer = [k for k in kinds if k != kind and p.data[k].host_path != d.host_path
                     and hostfacts.path_is_within(d.host_path, p.data[k].host_path)]
            if same or outer:
                why = (f"the same folder as {same[0]}" if same
                       else f"inside the {outer[0]} folder; moves with it")
                plan.add(Item(iid, desc, SKIPPED, why))
                continue
            if hostfacts.path_is_within(target.host_path, d.host_path):
                raise InputError(f"target {target.host_path} is inside the source "
                                 f"{d.host_path}")
            if hostfacts.path_is_within(d.host_path, target.host_path) and not d.is_link:
                raise InputError(f"{d.host_path}: already inside the target "
                                 f"{target.host_path}")
            if d.is_link:
                rec = _our_link(app, p, kind, d)
                if isinstance(rec, str):  # not ours: never moved, whatever the flags
                    plan.add(Item(iid, desc, SKIPPED, rec))
                    continue
                if rec.link_text == mv.dest_host:
                    plan.add(Item(iid, desc, OK, f"already on the SSD at {mv.dest_host}"))
                    continue
                if not force:
                    plan.add(Item(iid, desc, SKIPPED, f"relocated by mnic-ops to "
                                  f"{rec.link_text}; left there (--force moves it to "
                                  f"{mv.dest_host})"))
                    continue
                mv.size = treestat.measure_tree(root.path(rec.target))
                plan.add(_move_item(app, mv, jdir, space, problems, relink_from=rec))
                continue
            st = os.lstat(d.path)
            if not stat.S_ISDIR(st.st_mode):
                raise InputError(f"{d.host_path}: is a file, not a folder; refusing to "
                                 "move it")
            if st.st_dev != os.lstat(d.path.parent).st_dev:
                raise InputError(f"{d.host_path}: is a mount point; move the filesystem "
                                 "(fstab) instead")
            src_mount = hostfacts.mount_for(d.host_path, mounts)
            if src_mount is not None and src_mount.ssd and not force:
                plan.add(Item(iid, desc, OK, f"already on an SSD ({src_mount.source} at "
                              f"{src_mount.mount_point}): nothing to do"))
                continue
            if st.st_uid != p.uid:
                plan.add(Item(iid, desc, SKIPPED, _not_owner(p, st.st_uid)))
                continue
            mv.size = treestat.measure_tree(d.path)
            plan.add(_move_item(app, mv, jdir, space, problems, relink_from=None))
    if problems:
        raise OpsError("refusing to move anything:\n  " + "\n  ".join(problems))
    return plan


def _move_item(app: AppContext, mv: _Move, jdir: Path, space: _Space, problems: list[str],
               relink_from: linkrecords.LinkRecord | None) -> Item:
    root = app.root
    d = mv.data
    src_real = root.path(relink_from.target) if relink_from else d.path
    dest_real = root.path(mv.dest_host)
    if mv.size.unsupported:
        problems.append(f"{d.host_path}: holds sockets ({', '.join(mv.size.unsupported[:3])})"
                        "; a program is listening there")
    hold = _holders_error(app, [src_real], d.host_path)
    if hold:
        problems.append(hold)
    same_fs = _dev(src_real) == _dev(dest_real)
    if not same_fs:
        try:
            space.check(dest_real, mv.dest_base, mv.size, d.host_path)
        except OpsError as exc:
            problems.append(exc.message)
    how = "rename (same filesystem)" if same_fs else "verified copy"
    summary = f"{human(mv.size.bytes)} in {mv.size.files} files"
    desc = f"move {d.host_path} to {mv.dest_host} ({summary}, {how})"
    before = f"{d.host_path}/ (folder, {summary})" if not relink_from else \
        f"{d.host_path} -> {relink_from.link_text}"
    diff = (f"--- {before}\n+++ {d.host_path} -> {mv.dest_host}\n")
    item = Item(f"relocate:{d.host_path}", desc, diff=diff,
                data={"path": d.host_path, "to": mv.dest_host, "bytes": mv.size.bytes,
                      "files": mv.size.files, "method": "rename" if same_fs else "copy"})

    def action(ctx: ApplyContext) -> Undo | None:
        hold = _holders_error(app, [src_real], d.host_path)
        if hold:
            raise OpsError(hold)
        if relink_from:
            back = _Move(mv.project, d, mv.rel, relink_from.dest_base, relink_from.dest_rel)
            _do_back(app, back, jdir, None)
        created = _missing_dirs(app.root, mv.dest_base)
        rec = mv.record("out")
        if created:
            rec["created_dirs"] = created
        with _folder_times(app.root, rec):
            res = _do_out(app, mv, jdir, _progress_for(app, mv))
        item.data["result"] = res.to_json() if res else "completed by recovery"
        return Undo("relocate", rec)

    item.action = action
    return item


@contextmanager
def _folder_times(root: HostRoot, rec: dict[str, Any], *, restore: bool = False
                  ) -> Iterator[None]:
    """The folders a move adds or removes a name in: the data folder's parent in the
    install (the link and the folder swap there) and, on the target, the folder above
    what the move creates. Their times go into the record, and undo puts them back
    (see :class:`mnic_ops.changes.filechange.FolderTimes`)."""
    from mnic_ops.changes.filechange import FolderTimes

    created = rec.get("created_dirs") or []
    anchor = os.path.dirname(created[0]) if created else rec["dest_base"]
    with FolderTimes(rec, root.path(rec["project"]), os.path.dirname(rec["public_rel"]),
                     restore=restore, key="public_parent"), \
            FolderTimes(rec, root.path(anchor), restore=restore, key="target_parent"):
        yield


def _progress_for(app: AppContext, mv: _Move) -> Any:
    return _progress(app, f"{mv.data.kind} of {mv.project.name}", mv.size)


def _places(root: HostRoot, rec: dict[str, Any]) -> tuple[moveplace.Place, moveplace.Place]:
    """The data folder (below the install root, checked to be the one found) and its
    place on the target (below the admin's target base)."""
    return (moveplace.Place(str(root.path(rec["project"])), rec["public_rel"],
                            rec.get("root_ident")),
            moveplace.Place(str(root.path(rec["dest_base"])), rec["dest_rel"]))


def _make_base(root: HostRoot, host_dir: str) -> None:
    """Create the missing folders of the target base, root's and 0755 whatever root's
    umask (``mkdir`` alone gives 0700 under ``umask 077``, and the install's owner could
    not reach her own data)."""
    for d in _missing_dirs(root, host_dir):
        real = root.path(d)
        try:
            os.mkdir(real, 0o755)
        except FileExistsError:
            continue
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)
        safefs.fsync_dir(real.parent)


def _install_mode(root: HostRoot, rec: dict[str, Any]) -> int:
    """The install root's permission bits, read from the folder the data map found."""
    fd = os.open(root.path(rec["project"]), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
    try:
        ident = rec.get("root_ident")
        installroot.check(fd, tuple(ident) if ident else None, rec["project"])
        return stat.S_IMODE(os.fstat(fd).st_mode) & 0o777
    finally:
        os.close(fd)


def _give(fd: int, rec: dict[str, Any], mode: int) -> None:
    uid, gid = rec["owner"]
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode | 0o700)  # set, not masked by root's umask


def _ensure_project_dir(root: HostRoot, rec: dict[str, Any]) -> None:
    """Create ``<target>`` (root's, 0755) and ``<target>/<install>-<hash>`` (owned by
    the install's owner, with the install root's mode) when missing.

    The install's folder is made under a temporary name, given its owner and mode, and
    only then renamed into place: a ``kill -9`` never leaves it root's and out of the
    owner's reach. One left so by an older mnic-ops (root's, with that exact name, in
    a root-owned target where no user can make one) is repaired; one of another user is
    refused."""
    _make_base(root, rec["dest_base"])
    base = root.path(rec["dest_base"])
    slug = rec["dest_rel"].split("/")[0]
    where = f"{rec['dest_base']}/{slug}"
    mode = _install_mode(root, rec)
    bfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _drop_stale_tmp(bfd, slug)
        if _lstat_at(bfd, slug) is None:
            tmp = safefs.tmp_name(slug)
            os.mkdir(tmp, 0o700, dir_fd=bfd)
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=bfd)
                try:
                    _give(fd, rec, mode)
                finally:
                    os.close(fd)
                safefs.renameat2(bfd, tmp, bfd, slug, safefs.RENAME_NOREPLACE)
                tmp = ""
            except FileExistsError:
                pass  # made meanwhile (another mnic-ops): checked below like any other
            finally:
                if tmp:
                    with suppress(OSError):
                        os.rmdir(tmp, dir_fd=bfd)
            os.fsync(bfd)
        st = _lstat_at(bfd, slug)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise OpsError(f"{where}: exists and is not a folder; refusing to use it")
        if st.st_uid == rec["owner"][0]:
            return
        if st.st_uid != 0:
            raise OpsError(f"{where}: exists and belongs to uid {st.st_uid}, not to the "
                           f"install's owner (uid {rec['owner'][0]}); refusing to put its "
                           "data there")
        fd = os.open(slug, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=bfd)
        try:
            if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                raise OpsError(f"{where}: changed while being checked; run again")
            _give(fd, rec, mode)
        finally:
            os.close(fd)
        os.fsync(bfd)
        log.warning("%s: was root's (left by an interrupted relocate); given to the "
                    "install's owner (uid %d), mode %04o", where, rec["owner"][0],
                    mode | 0o700)
    finally:
        os.close(bfd)


def _drop_stale_tmp(bfd: int, slug: str) -> None:
    """Empty temporaries of the install's folder that a killed relocate left (its
    process is gone): removed."""
    prefix = f".{slug}{safefs.TMP_MARK}."
    with suppress(OSError):
        for name in os.listdir(bfd):
            if not name.startswith(prefix):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and \
                    not os.path.exists(f"/proc/{pid}"):
                with suppress(OSError):
                    os.rmdir(name, dir_fd=bfd)  # only when empty


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _missing_dirs(root: HostRoot, host_dir: str) -> list[str]:
    """The folders of ``host_dir`` (itself and its parents) that do not exist yet, top
    first: what the move is about to create, so that undo can take them away again."""
    missing: list[str] = []
    path = host_dir.rstrip("/") or "/"
    while path != "/" and not os.path.lexists(root.path(path)):
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


def _remove_project_dir_if_empty(root: HostRoot, rec: dict[str, Any]) -> None:
    """After a move back: the install's folder on the target, and the target folders
    this relocation created (``created_dirs``), go when nothing else is left in them."""
    slug = rec["dest_rel"].split("/")[0]
    with suppress(OSError):  # not empty (other kinds still there) or already gone
        os.rmdir(root.path(rec["dest_base"]) / slug)
    for host_dir in reversed(rec.get("created_dirs", [])):
        with suppress(OSError):  # not empty: someone else uses it now
            os.rmdir(root.path(host_dir))


def _do_out(app: AppContext, mv: _Move, jdir: Path, bar: Any) -> moveplace.MoveResult | None:
    return _out(app.root, mv.record("out"), jdir, bar,
                bool(app.config.get("relocate.verify_from_disk", True)))


def _out(root: HostRoot, rec: dict[str, Any], jdir: Path, bar: Any,
         from_disk: bool = True) -> moveplace.MoveResult | None:
    pub, dst = _places(root, rec)
    kind, text, uid = pub.state()
    if kind == "link" and text == rec["link_text"]:
        sync_record(root, rec)
        return None  # already there (an interrupted run was completed by recovery)
    if kind == "dir" and uid != rec["owner"][0]:
        raise OpsError(f"{rec['public']}: now owned by uid {uid}, not by the install's "
                       f"owner (uid {rec['owner'][0]}); not moved")
    _ensure_project_dir(root, rec)
    # The record first: a link of mnic-ops's own making never exists without it.
    linkrecords.add(root, linkrecords.LinkRecord.from_move(rec))
    try:
        with bar or _null() as progress:
            res = treemove.link_out(pub, dst, rec["link_text"], jdir,
                                    owner=(rec["owner"][0], rec["owner"][1]),
                                    progress=progress, verify_from_disk=from_disk, meta=rec,
                                    source_owner=rec["owner"][0])
    finally:
        sync_record(root, rec)
    kind, text, _uid = pub.state()
    if kind != "link" or text != rec["link_text"] or not dst.path.is_dir():
        raise OpsError(f"{rec['public']}: after the move it is not the link to "
                       f"{rec['link_text']}")
    return res


def _do_back(app: AppContext, mv: _Move, jdir: Path, bar: Any) -> moveplace.MoveResult | None:
    return _back(app.root, mv.record("back"), jdir, bar,
                 bool(app.config.get("relocate.verify_from_disk", True)))


def _back(root: HostRoot, rec: dict[str, Any], jdir: Path, bar: Any,
          from_disk: bool = True) -> moveplace.MoveResult | None:
    pub, dst = _places(root, rec)
    kind = pub.state()[0]
    if kind == "dir":
        sync_record(root, rec)
        return None
    try:
        with bar or _null() as progress:
            res = treemove.link_back(pub, dst, rec["link_text"], jdir, progress=progress,
                                     verify_from_disk=from_disk, meta=rec)
    finally:
        sync_record(root, rec)
    if pub.state()[0] != "dir":
        raise OpsError(f"{rec['public']}: after moving back it is not a folder")
    if rec.get("dest_rel", "").count("/") == 1:
        _remove_project_dir_if_empty(root, rec)
    return res


@contextmanager
def _null() -> Iterator[None]:
    yield None


def sync_record(root: HostRoot, rec: dict[str, Any]) -> None:
    """Keep the link record (:mod:`mnic_ops.facts.linkrecords`) in step with the disk after a
    move, its recovery or its undo: the data folder is the link this move makes ->
    recorded; anything else -> no record for that link."""
    try:
        lr = linkrecords.LinkRecord.from_move(rec)
    except (ValueError, KeyError, TypeError, IndexError):
        return  # not a relocate record (a bare treemove journal): nothing to keep
    pub, _dst = _places(root, rec)
    try:
        kind, text, _uid = pub.state()
    except (OSError, OpsError) as exc:  # cannot tell (the install replaced): left as is
        log.warning("%s: link record left as it is: %s", rec.get("public"),
                    exc.strerror if isinstance(exc, OSError) else exc.message)
        return
    if kind == "link" and text == lr.link_text:
        linkrecords.add(root, lr)
    else:
        linkrecords.discard(root, lr.public, lr.link_text)


def _our_link(app: AppContext, p: Project, kind: str, d: DataDir
              ) -> linkrecords.LinkRecord | str:
    """The record of the link at a data folder when mnic-ops made it (its target there
    and owned by the install's owner), else why it is left alone. A recorded link whose
    target is gone is bad input (the data is not there)."""
    loc = linkrecords.locate(app.root, p, kind)
    rec = loc.record
    if rec is not None and rec.public == d.host_path:
        if loc.state == linkrecords.RELOCATED:
            return rec
        if loc.state == linkrecords.ABSENT:
            raise InputError(f"{d.host_path}: dangling symlink to {d.link_target}; the "
                             "data is not there (is the SSD mounted?); fix or remove the "
                             "link first")
    dangling = d.link_target is not None and not os.path.lexists(
        app.root.path(d.link_target))
    why = loc.note.split(": not followed", 1)[0] if loc.note else "not recorded"
    return (f"a {'dangling ' if dangling else ''}symlink to {d.link_target}, not made by "
            f"mnic-ops for this install: left alone, with or without --force ({why}); to "
            "hand its data to mnic-ops, put the folder back in place of the link and run "
            "relocate again")


def _not_owner(p: Project, uid: int) -> str:
    return (f"owned by uid {uid}, not by the install's owner {p.user} (uid {p.uid}): not "
            "moved, with or without --force (a folder of someone else must not end up in "
            "a folder the install's owner controls); chown it if it is theirs")


def plan_back(app: AppContext, projects: list[Project], force: bool, jdir: Path,
              busy: dict[str, str]) -> Plan:
    """``--undo``: every data folder that is a link made by relocate comes back."""
    root = app.root
    plan = Plan()
    kinds = _kinds(app)
    space = _Space(float(app.config.get("relocate.margin_percent", 10.0)),
                   int(app.config.get("relocate.min_free_mib", 256)) << 20)
    problems: list[str] = []
    for p in projects:
        for kind in kinds:
            d = p.data[kind]
            iid = f"relocate-back:{d.host_path}"
            rel = _rel_in_project(p, d)
            desc = f"bring {d.host_path} back"
            if d.host_path in busy:
                plan.add(Item(iid, desc, SKIPPED, busy[d.host_path]))
                continue
            if not d.exists:
                plan.add(Item(iid, desc, SKIPPED, "not present"))
                continue
            if not d.is_link:
                if not stat.S_ISDIR(os.lstat(d.path).st_mode):
                    raise InputError(f"{d.host_path}: is a file, not a folder")
                plan.add(Item(iid, desc, OK, "already a folder"))
                continue
            rec = _our_link(app, p, kind, d)
            if isinstance(rec, str):  # not ours: never moved, whatever the flags
                plan.add(Item(iid, desc, SKIPPED, rec))
                continue
            real = root.path(rec.target)
            mv = _Move(p, d, rel, rec.dest_base, rec.dest_rel, treestat.measure_tree(real))
            hold = _holders_error(app, [real], d.host_path)
            if hold:
                problems.append(hold)
            if mv.size.unsupported:
                problems.append(f"{d.link_target}: holds sockets; a program is listening")
            same_fs = _dev(real) == _dev(d.path.parent)
            if not same_fs:
                try:
                    space.check(d.path.parent, os.path.dirname(d.host_path), mv.size,
                                d.host_path)
                except OpsError as exc:
                    problems.append(exc.message)
            summary = f"{human(mv.size.bytes)} in {mv.size.files} files"
            item = Item(iid, f"bring {d.host_path} back from {d.link_target} ({summary}, "
                        f"{'rename' if same_fs else 'verified copy'})",
                        diff=f"--- {d.host_path} -> {d.link_target}\n+++ {d.host_path}/ "
                             f"(folder, {summary})\n",
                        data={"path": d.host_path, "from": d.link_target,
                              "bytes": mv.size.bytes, "files": mv.size.files})
            item.action = _back_action(app, mv, jdir, item, real)
            plan.add(item)
    if problems:
        raise OpsError("refusing to move anything:\n  " + "\n  ".join(problems))
    return plan


def _back_action(app: AppContext, mv: _Move, jdir: Path, item: Item, real: Path) -> Any:
    def action(ctx: ApplyContext) -> Undo | None:
        hold = _holders_error(app, [real], mv.data.host_path)
        if hold:
            raise OpsError(hold)
        rec = mv.record("back")
        with _folder_times(app.root, rec):
            res = _do_back(app, mv, jdir, _progress_for(app, mv))
        item.data["result"] = res.to_json() if res else "already a folder"
        return Undo("relocate", rec)
    return action


def plan_recovery(app: AppContext, jdir: Path, projects: list[Project]
                  ) -> tuple[Plan, dict[str, str]]:
    """Items that finish moves a crash interrupted, for the installs of this run only;
    they run before anything else. A journal of another install is listed as pending
    (skipped), one whose install or target is gone or that cannot be read is reported
    and skipped: never `changed`, never in the way of another install."""
    plan = Plan()
    busy: dict[str, str] = {}  # data folder -> why it is not moved in this run
    for pm in movejournal.pending_moves(jdir):
        if pm.data is None:
            plan.add(Item(f"recover:{pm.id}", f"interrupted move {pm.id}", SKIPPED,
                          f"{pm.error} (relocate --list-pending shows it; relocate --forget "
                          f"{pm.id} discards it)", data={"journal": str(pm.path)}))
            continue
        host, _project = pendingmoves.journal_host(pm)
        busy[host] = "an interrupted move of it is finished first"
        phase = pm.data.get("phase")
        desc = f"finish the interrupted move of {host} (journal {pm.id}, phase {phase})"
        info = {"path": host, "journal": str(pm.path), "phase": phase, "id": pm.id}
        status = pm.status()
        if status != "recoverable":
            why = pendingmoves.NOTHING_TO_FINISH[status].format(host=host, dest=pm.dest.path.parent)
            busy[host] = (f"an interrupted move of it (journal {pm.id}) cannot be finished: "
                          f"{why}; relocate --forget {pm.id} discards it once nothing of "
                          "it is left")
            plan.add(Item(f"recover:{host}", desc, SKIPPED, f"nothing to finish: {why} "
                          f"(relocate --forget {pm.id} discards the journal once nothing "
                          "of the move is left)", data={**info, "status": status}))
            continue
        if not pendingmoves.in_run(pm, projects):
            plan.add(Item(f"recover:{host}", desc, SKIPPED, "pending: its install is not "
                          "in this run (`mnic-ops relocate INSTALL` finishes it; relocate "
                          "--list-pending lists it)", data=info))
            continue
        what = ("roll back the partial copy, then move it again" if phase in ("start", "copy")
                else "complete it")
        item = Item(f"recover:{host}", f"finish the interrupted move of {host} "
                    f"(stopped in phase {phase}: {what})", data=info)
        meta = pm.data.get("meta") or {}

        def action(ctx: ApplyContext, jpath: Path = pm.path, item: Item = item,
                   meta: dict[str, Any] = meta, host: str = host) -> Undo | None:
            r = treemove.recover(jpath)
            item.data["result"] = r.message
            log.info("%s", r.message)
            if meta.get("direction") in ("out", "back"):
                sync_record(app.root, meta)
            if r.outcome == "completed" and meta.get("direction") in ("out", "back"):
                return Undo("relocate", meta)
            if r.outcome == "reverted":
                raise OpsError(r.message)
            if r.outcome == "rolled_back" and meta.get("direction") in ("out", "back"):
                # The data never left: do the move the interrupted run was doing.
                fn = _out if meta["direction"] == "out" else _back
                hold = _holders_error(app, [_places(app.root, meta)[0].path], host)
                if hold:
                    raise OpsError(hold)
                res = fn(app.root, meta, jdir, None,
                         bool(app.config.get("relocate.verify_from_disk", True)))
                item.data["result"] += "; moved again" + (f" ({res.message})" if res else "")
                return Undo("relocate", meta)
            return None

        item.action = action
        plan.add(item)
    return plan, busy


# --- the command -------------------------------------------------------------------

@click.command("relocate", epilog=EXIT_CODES_HELP)
@click.option("--check", is_flag=True, help="Show what would move; change nothing.")
@click.option("--diff", is_flag=True, help="Show each change as a before/after.")
@click.option("--to", "to", metavar="DIR", help="Target folder (default: ssd_path, else "
              "the SSD mount with most free space).")
@click.option("--undo", is_flag=True, help="Bring relocated data back and remove the links.")
@click.option("--force", is_flag=True, help="Accept a rotational or unknown target, move "
              "data already on an SSD, and move data mnic-ops relocated elsewhere to this "
              "target. Never moves a folder the install's owner does not own, nor follows "
              "a link mnic-ops did not make.")
@click.option("--list-pending", is_flag=True, help="List the journals of interrupted moves "
              "(with --json: one document) and what each left on disk; change nothing.")
@click.option("--forget", "forget_id", metavar="ID", help="Discard the journal of an "
              "interrupted move (ID from --list-pending) whose install or target is gone, "
              "once nothing of it is left on disk; recorded for `mnic-ops undo`.")
@click.argument("names", nargs=-1, metavar="[PROJECT]...")
@click.pass_obj
def relocate_cmd(app: AppContext, check: bool, diff: bool, to: str | None, undo: bool,
                 force: bool, list_pending: bool, forget_id: str | None,
                 names: tuple[str, ...]) -> int:
    """Move sessions and checkpoints to an SSD behind symlinks (verified copy, atomic
    swap, resumable after a crash, recorded for `mnic-ops undo`).

    PROJECT is an install's path or folder name; all found installs when none is given.
    An interrupted move is finished first, for the installs of this run only.
    """
    from mnic_ops.core.configschema import SCHEMA, Key

    jdir = app.root.path(JOURNAL_DIR)
    if list_pending or forget_id:
        if list_pending and forget_id:
            raise InputError("--list-pending and --forget: give one of them")
        if undo or to or force or names:
            raise InputError(f"{'--list-pending' if list_pending else '--forget'} takes "
                             "no PROJECT, --to, --undo or --force")
        if list_pending:
            rows = [pm.to_json() for pm in movejournal.pending_moves(jdir)]
            emit(app, {"command": "relocate", "journal_dir": JOURNAL_DIR,
                       "pending": rows}, lambda: pendingmoves.text(rows, JOURNAL_DIR))
            return EXIT_OK
        assert forget_id is not None
        return run_plan(app, pendingmoves.forget_plan(jdir, forget_id), check=check,
                        diff=diff, command="relocate", title="relocate --forget")
    _kinds(app)  # a config error first, before anything is looked at
    projects = select_projects(app, names)
    recovery, busy = plan_recovery(app, jdir, projects)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    extra: dict[str, Any] = {}
    if undo:
        plan = plan_back(app, projects, force, jdir, busy)
        title = "relocate --undo"
    else:
        default = SCHEMA["ssd_path"]
        assert isinstance(default, Key)
        target = choose_target(app.root, app.config.get("ssd_path"), default.default, to,
                               mounts)
        for pr in projects:  # the most specific complaint first
            for kind in _kinds(app):
                d = pr.data[kind]
                if d.exists and not d.is_link and hostfacts.path_is_within(target.host_path,
                                                                       d.host_path):
                    raise InputError(f"target {target.host_path} is inside the source "
                                     f"{d.host_path}")
        check_target(target, mounts, force)
        extra["target"] = target.to_json()
        plan = plan_out(app, projects, target, force, jdir, mounts, busy)
        title = f"relocate to {target.host_path} ({target.why})"
    full = Plan()
    full.extend(recovery)
    full.extend(plan)
    if not full.items:
        title += "\nno framework installs found (see projects and search_paths in the config)"
    return run_plan(app, full, check=check, diff=diff, command="relocate", title=title,
                    extra=extra)


# --- undo ---------------------------------------------------------------------------

@undo_handler("relocate")
def _undo_relocate(root: HostRoot, rec: dict[str, Any]) -> str:
    """Revert a recorded move: a move out comes back, a move back goes out again."""
    jdir = root.path(JOURNAL_DIR)
    pub, _dst = _places(root, rec)
    jpath = movejournal.journal_path(jdir, pub)
    if jpath.exists():
        treemove.recover(jpath)
    if root.live:
        hs = holders.holders([str(pub.path), str(root.path(rec["link_text"]))])
        if hs:
            raise OpsError(f"{rec['public']}: in use by PIDs "
                           f"{', '.join(str(h.pid) for h in hs)}; stop them and run again")
    kind, text, _uid = pub.state()
    if rec["direction"] == "out":
        if kind == "dir":
            return f"{rec['public']} is already a folder"
        if kind != "link" or text != rec["link_text"]:
            raise OpsError(f"{rec['public']}: no longer the link to {rec['link_text']}; "
                           "not reverting")
        with _folder_times(root, rec, restore=True):
            _back(root, rec, jdir, None)
        return f"moved {rec['public']} back from {rec['link_text']}"
    if kind == "link" and text == rec["link_text"]:
        return f"{rec['public']} is already relocated"
    if kind != "dir":
        raise OpsError(f"{rec['public']}: not a folder any more; not reverting")
    with _folder_times(root, rec, restore=True):
        _out(root, rec, jdir, None)
    return f"moved {rec['public']} to {rec['link_text']} again"


PROVISION = ProvisionStep(20, "relocate", "relocate")


def provision_plan(ctx: ProvisionContext) -> list[Item]:
    """Sessions and checkpoints onto the SSD, when a target that passes relocate's
    checks exists; otherwise a skipped item saying why."""
    from mnic_ops.core.configschema import SCHEMA, Key
    from mnic_ops.core.errors import InputError
    from mnic_ops.facts import hostfacts

    app = ctx.app
    jdir = app.root.path(JOURNAL_DIR)
    recovery, busy = plan_recovery(app, jdir, ctx.projects)
    mounts = hostfacts.mounts(app.root, hostfacts.Absent())
    default = SCHEMA["ssd_path"]
    assert isinstance(default, Key)
    try:
        target = choose_target(app.root, app.config.get("ssd_path"),
                               default.default, None, mounts)
        check_target(target, mounts, False)
    except InputError as exc:
        return [*recovery.items,
                Item(id="relocate", description="move sessions and checkpoints to an SSD",
                     state=SKIPPED, reason=exc.message)]
    if target.mount is not None and target.mount.mount_point != "/":
        ctx.ssd_mount = target.mount.mount_point
    ctx.ssd_target = target.host_path
    plan = plan_out(app, ctx.projects, target, False, jdir, mounts, busy)
    return [*recovery.items, *plan.items]
