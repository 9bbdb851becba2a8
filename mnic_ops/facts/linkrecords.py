"""Which data-folder links are mnic-ops's own: the one rule for following a link out of
an install.

Root acts on a user's install only inside it and on the targets mnic-ops itself made
for it. ``relocate`` writes each link it makes into a root-owned record,
``/var/lib/mnic-ops/links.json`` (0600, replaced atomically; the entry is written before
the link exists and removed once the data is back). A data folder that is a symlink is
followed only when that record names it and everything still matches: the same install
and data path, the link's current text, the install's owner unchanged, and a target
folder owned by that owner. Any other link (one the user made, one whose text or owner
changed) is reported and not followed, whatever the flags. The target is then opened
from the recorded base one component at a time with ``O_NOFOLLOW``.

The record file, and the folder holding it, must be owned by root (or by the user
running mnic-ops) and writable by nobody else; otherwise nothing is followed and the
reason is reported. Hosts relocated by an older mnic-ops have no record file: the
records are then derived, read-only, from the relocate entries of the journal (equally
root-owned and checked the same way) and written out at the next change.

Everything that reads data through a link asks :func:`locate` and opens with
:func:`open_location` (``clean``, ``watch``, ``doctor``, ``fstab``, ``projects``,
``render``); ``relocate`` keeps the record with :func:`add` and :func:`discard`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnic_ops.changes.model import JOURNAL, STATE_DIR
from mnic_ops.core import beneathfs, installroot, safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.core.hostroot import HostRoot

if TYPE_CHECKING:
    from mnic_ops.facts.projects import Project

log = logging.getLogger(__name__)

RECORD_NAME = "links.json"
RECORD_FILE = f"{STATE_DIR}/{RECORD_NAME}"
VERSION = 1
_MAX_BYTES = 16 << 20  # far above any real host; a bound, not a limit anyone meets

# Location states
FOLDER = "folder"  # a real folder inside the install
RELOCATED = "relocated"  # a link of mnic-ops's own making, to its recorded target
ABSENT = "absent"  # nothing there (yet): the data folder, or a recorded target
REFUSED = "refused"  # a link that is not mnic-ops's own: reported, never followed

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# --- the records -----------------------------------------------------------------------

@dataclass(frozen=True)
class LinkRecord:
    """One link ``relocate`` made: ``public`` (the data folder's host path) is a symlink
    whose text is ``link_text``, to ``dest_base/dest_rel``, for the install ``project``
    owned by ``uid``:``gid``."""

    public: str
    link_text: str
    project: str
    kind: str
    dest_base: str
    dest_rel: str
    uid: int
    gid: int

    @property
    def target(self) -> str:
        """Host path of the folder the link points to."""
        return posixpath.join(self.dest_base, self.dest_rel)

    @property
    def dest_parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.dest_rel.split("/") if p)

    def to_json(self) -> dict[str, Any]:
        return {"public": self.public, "link_text": self.link_text, "project": self.project,
                "kind": self.kind, "dest_base": self.dest_base, "dest_rel": self.dest_rel,
                "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_json(cls, d: Any) -> LinkRecord:
        """Validate one entry (ValueError when it is not a well-formed record)."""
        if not isinstance(d, dict):
            raise ValueError("not an object")
        strs = ("public", "link_text", "project", "kind", "dest_base", "dest_rel")
        for k in strs:
            if not isinstance(d.get(k), str) or not d[k]:
                raise ValueError(f"{k}: expected a non-empty string")
        for k in ("uid", "gid"):
            if not isinstance(d.get(k), int) or isinstance(d[k], bool) or d[k] < 0:
                raise ValueError(f"{k}: expected a non-negative integer")
        for k in ("public", "project", "dest_base"):
            if not d[k].startswith("/"):
                raise ValueError(f"{k}: expected an absolute host path")
        parts = d["dest_rel"].split("/")
        if d["dest_rel"].startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError("dest_rel: expected a relative path without '..'")
        return cls(d["public"], d["link_text"], d["project"], d["kind"], d["dest_base"],
                   d["dest_rel"], d["uid"], d["gid"])

    @classmethod
    def from_move(cls, rec: dict[str, Any]) -> LinkRecord:
        """From relocate's record of a move (the same dict its journal entries hold)."""
        return cls.from_json({
            "public": rec["public"], "link_text": rec["link_text"],
            "project": rec["project"], "kind": rec.get("kind") or "",
            "dest_base": rec["dest_base"], "dest_rel": rec["dest_rel"],
            "uid": rec["owner"][0], "gid": rec["owner"][1]})


@dataclass
class Records:
    """The records as loaded: by public host path. ``problem`` says why the state could
    not be trusted (then there are no records and nothing is followed)."""

    links: dict[str, LinkRecord] = field(default_factory=dict)
    source: str = "none"  # "file" | "journal" | "none"
    problem: str | None = None

    def get(self, public: str) -> LinkRecord | None:
        return self.links.get(public)

    def covering(self, project: str, path: str) -> list[LinkRecord]:
        """Records of ``project`` whose link is ``path`` or one of its parents, the
        nearest first (a data folder nested in a relocated one is reached through it)."""
        out = [r for r in self.links.values() if r.project == project
               and (path == r.public or path.startswith(r.public.rstrip("/") + "/"))]
        return sorted(out, key=lambda r: len(r.public), reverse=True)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION,
                "links": [self.links[k].to_json() for k in sorted(self.links)]}


class Untrusted(OpsError):
    """The state folder or file is not root's alone: nothing in it is believed."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check(st: os.stat_result, what: str, path: str) -> None:
    if not _trusted_owner(st.st_uid):
        raise Untrusted(f"{path}: {what} is owned by uid {st.st_uid}, not by root; not "
                        "trusted (check its content, then chown root:root)")
    if st.st_mode & 0o022:
        raise Untrusted(f"{path}: {what} is writable by group or others (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}); not trusted (check its content, "
                        "then chmod go-w)")


def _read_state_file(root: HostRoot, name: str) -> bytes | None:
    """A state file's bytes, None when absent; Untrusted when it, or the state folder,
    is not root's alone. Opened without following links."""
    sdir = root.path(STATE_DIR)
    try:
        dfd = os.open(sdir, _O_DIR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Untrusted(f"{sdir}: the state folder is a symlink or not a folder; not "
                            "trusted") from None
        raise Untrusted(f"{sdir}: cannot open the state folder ({exc.strerror})") from None
    try:
        _check(os.fstat(dfd), "the state folder", str(sdir))
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Untrusted(f"{sdir / name}: cannot open ({exc.strerror}); not "
                            "trusted") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Untrusted(f"{sdir / name}: not a regular file; not trusted")
            _check(st, "the file", str(sdir / name))
            data = fh.read(_MAX_BYTES + 1)
        if len(data) > _MAX_BYTES:
            raise Untrusted(f"{sdir / name}: larger than {_MAX_BYTES >> 20} MiB; not read")
        return data
    finally:
        os.close(dfd)


def _parse(raw: bytes, path: str) -> dict[str, LinkRecord]:
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version') if isinstance(doc, dict) else '?'}"
                             f" (expected {VERSION})")
        links = doc.get("links")
        if not isinstance(links, list):
            raise ValueError("links: expected a list")
        out: dict[str, LinkRecord] = {}
        for i, d in enumerate(links):
            try:
                r = LinkRecord.from_json(d)
            except ValueError as exc:
                raise ValueError(f"links[{i}]: {exc}") from None
            out[r.public] = r
        return out
    except ValueError as exc:
        raise Untrusted(f"{path}: unreadable ({exc}); no link is followed until it is "
                        "fixed or removed") from None


def _from_journal(root: HostRoot) -> dict[str, LinkRecord]:
    """Records of a host relocated before the record file existed: per data folder, the
    latest relocate entry of the journal that was not undone, when it moved the data
    out."""
    raw = _read_state_file(root, JOURNAL)  # the same trust check as the record file
    if raw is None:
        return {}
    from mnic_ops.changes.model import read_journal

    latest: dict[str, tuple[float, dict[str, Any]]] = {}
    for e in read_journal(root):
        rec = e.get("record")
        if e.get("kind") != "relocate" or e.get("undone") or not isinstance(rec, dict):
            continue
        pub = rec.get("public")
        t = e.get("time")
        if not isinstance(pub, str) or not isinstance(t, int | float):
            continue
        if pub not in latest or t >= latest[pub][0]:
            latest[pub] = (t, rec)
    out: dict[str, LinkRecord] = {}
    for pub, (_t, rec) in latest.items():
        if rec.get("direction") != "out":
            continue
        try:
            out[pub] = LinkRecord.from_move(rec)
        except (ValueError, KeyError, TypeError, IndexError):
            log.warning("%s: a relocate entry for %s is malformed; not used", JOURNAL, pub)
    return out


_cache: dict[str, tuple[tuple[int, ...], Records]] = {}
_warned: set[str] = set()


def _stamp(root: HostRoot) -> tuple[int, ...]:
    """Identity of the state as it stands, to reuse a load while nothing changed."""
    out: list[int] = []
    for name in ("", RECORD_NAME, JOURNAL):
        try:
            st = os.lstat(root.path(STATE_DIR) / name if name else root.path(STATE_DIR))
            out += [st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode,
                    st.st_uid]
        except OSError:
            out += [-1]
    return tuple(out)


def load(root: HostRoot) -> Records:
    """The records of this host (cheap to call again: reloaded only when the state
    files changed). Never raises for a bad state: it comes back with ``problem`` set
    and no records, and the problem is logged once."""
    key = str(root.root)
    stamp = _stamp(root)
    hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        recs = _load(root)
    except Untrusted as exc:
        recs = Records(problem=exc.message)
        if exc.message not in _warned:
            _warned.add(exc.message)
            # As a plain user (a user crontab) root's state is simply not readable: the
            # user's relocated data is then left to root's passes; said, not warned.
            log.log(logging.WARNING if os.geteuid() == 0 else logging.INFO, "%s",
                    exc.message)
    _cache[key] = (stamp, recs)
    return recs


def _load(root: HostRoot) -> Records:
    raw = _read_state_file(root, RECORD_NAME)
    if raw is not None:
        return Records(_parse(raw, str(root.path(RECORD_FILE))), "file")
    derived = _from_journal(root)
    return Records(derived, "journal" if derived else "none")


@contextmanager
def _changing(root: HostRoot) -> Iterator[dict[str, LinkRecord]]:
    """Hold the record lock and yield the records to change; they are written back
    (atomically, root's, 0600) when the block ends without an error. An untrusted state
    is an error here: mnic-ops never builds on a file someone else could have written."""
    sdir = root.path(STATE_DIR)
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with safefs.locked(sdir / f"{RECORD_NAME}.lock"):
        links = dict(_load(root).links)
        before = dict(links)
        yield links
        if links != before or not (sdir / RECORD_NAME).exists():
            body = json.dumps(Records(links).to_json(), indent=1, sort_keys=True) + "\n"
            safefs.atomic_write(sdir / RECORD_NAME, body, mode=0o600, uid=os.geteuid(),
                                gid=os.getegid())
    _cache.pop(str(root.root), None)


def add(root: HostRoot, rec: LinkRecord) -> None:
    """Record a link relocate is about to make (or made): written before the link
    exists, so that a link of mnic-ops's own making is never without its record."""
    with _changing(root) as links:
        links[rec.public] = rec


def discard(root: HostRoot, public: str, link_text: str | None = None) -> bool:
    """Forget the record of ``public`` (only the one with ``link_text`` when given);
    True when there was one."""
    with _changing(root) as links:
        r = links.get(public)
        if r is None or (link_text is not None and r.link_text != link_text):
            return False
        del links[public]
        return True


# --- where a data folder's files are -------------------------------------------------

@dataclass(frozen=True)
class Location:
    """Where the files of one data folder are, and how to reach them: ``prefix`` is a
    host folder opened as given (the install root, checked to be the folder the data map
    found, ``base_ident``; or the base a record names, the admin's target), ``parts`` the
    components below it, each opened with ``O_NOFOLLOW``; the folder reached must belong
    to ``owner`` (the install's owner; None for an install root owns: the admin's)."""

    kind: str
    host_path: str  # the data folder as the framework names it
    state: str  # FOLDER | RELOCATED | ABSENT | REFUSED
    prefix: str | None = None
    parts: tuple[str, ...] = ()
    owner: int | None = None
    note: str = ""  # why REFUSED (or what is ABSENT)
    record: LinkRecord | None = None
    base_ident: installroot.Ident | None = None  # what ``prefix`` must be (install root)

    @property
    def target(self) -> str | None:
        """Host path of the folder holding the files (None when refused)."""
        return None if self.prefix is None else posixpath.join(self.prefix, *self.parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": self.host_path,
                               "state": self.state, "target": self.target}
        if self.note:
            out["note"] = self.note
        return out


def _split(rel: str) -> tuple[str, ...]:
    return tuple(p for p in rel.split("/") if p and p != ".")


def _within(path: str, base: str) -> bool:
    b = base.rstrip("/") or "/"
    return path == b or path.startswith(b + "/") or b == "/"


def open_folder(root: HostRoot, prefix: str, parts: tuple[str, ...],
                owner: int | None = None, base_ident: installroot.Ident | None = None
                ) -> int:
    """Open ``prefix`` (as given, a final symlink refused) and then each of ``parts``
    with ``O_NOFOLLOW``; with ``base_ident`` the opened ``prefix`` must be the install
    root the data map found (its path may lead elsewhere by now); with ``owner`` the
    folder reached must belong to that uid. OSError: ELOOP/ENOTDIR for a link or file in
    the way, ENOENT, EPERM (with the reason as strerror) for a folder of someone else,
    :class:`~mnic_ops.core.installroot.Replaced` (ESTALE) for an install root replaced."""
    fd = os.open(root.path(prefix), _O_DIR)
    try:
        installroot.check(fd, base_ident, prefix)
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise OSError(errno.EINVAL, "bad path component", part)
            nfd = os.open(part, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if owner is not None:
            uid = os.fstat(fd).st_uid
            if uid != owner:
                raise OSError(errno.EPERM, f"{posixpath.join(prefix, *parts)} is owned by "
                              f"uid {uid}, not by the install's owner (uid {owner}): "
                              "not followed")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_location(root: HostRoot, loc: Location) -> int:
    """A descriptor of the folder a :class:`Location` names (see :func:`open_folder`);
    a refused location raises OSError(EPERM) with its note."""
    if loc.prefix is None or loc.state == REFUSED:
        raise OSError(errno.EPERM, loc.note or "not followed")
    return open_folder(root, loc.prefix, loc.parts, loc.owner, loc.base_ident)


def _link_at(project: Project, public: str) -> tuple[str, str | None]:
    """("link", text) | ("dir", None) | ("absent", None) | ("other", None) for a path
    inside the install, its parents reached without following links."""
    rel = os.path.relpath(public, project.host_path)
    parent, name = os.path.split(rel)
    try:
        pfd = beneathfs.open_beneath(project.path, parent or ".", os.O_RDONLY | os.O_DIRECTORY,
                                  base_ident=project.ident)
    except (OSError, OpsError):
        return "other", None
    try:
        return "link", os.readlink(name, dir_fd=pfd)  # a link at this instant, or not
    except OSError:
        pass
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return "absent", None
    finally:
        os.close(pfd)
    return ("dir" if stat.S_ISDIR(st.st_mode) else "other"), None


def _mismatch(project: Project, r: LinkRecord) -> str | None:
    """Why the record ``r`` does not (any more) describe the link at its path."""
    if r.uid != project.uid:
        return (f"the install's owner changed since mnic-ops made the link (recorded uid "
                f"{r.uid}, now {project.uid})")
    kind, text = _link_at(project, r.public)
    if kind != "link":
        return f"{r.public} is no longer the link mnic-ops made ({kind})"
    if text != r.link_text:
        return (f"the link's text changed since mnic-ops made it (now {text!r}, recorded "
                f"{r.link_text!r})")
    return None


def locate(root: HostRoot, project: Project, kind: str, records: Records | None = None
           ) -> Location:
    """Where the files of ``project``'s ``kind`` are, by the rule above: the folder
    inside the install; or, for a link (of the folder or of a parent inside the
    install), its recorded target when the record matches; else REFUSED with the
    reason. Read-only; the target is opened once to check its owner."""
    d = project.data[kind]
    base = project.host_path.rstrip("/") or "/"
    if not _within(d.host_path, base):
        return Location(kind, d.host_path, REFUSED,
                        note=f"outside the install {base}: not followed")
    recs = records if records is not None else load(root)
    why_not: str | None = None
    for r in recs.covering(project.host_path, d.host_path):
        why_not = _mismatch(project, r)
        if why_not is not None:
            continue
        tail = _split(d.host_path[len(r.public):])
        loc = Location(kind, d.host_path, RELOCATED, r.dest_base, (*r.dest_parts, *tail),
                       r.uid, record=r)
        try:
            os.close(open_location(root, loc))
        except FileNotFoundError:
            return Location(kind, d.host_path, ABSENT, loc.prefix, loc.parts, r.uid,
                            f"relocated to {loc.target}, which is absent", r)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                note = f"relocated to {loc.target}, but a symlink is in the way: not followed"
            else:
                note = exc.strerror or str(exc)
            return Location(kind, d.host_path, REFUSED, note=note, record=r)
        return loc
    rel_parts = _split(os.path.relpath(d.host_path, base))
    # A folder inside the install: reached from the install root the data map found, and
    # it must be the install owner's (a folder of someone else moved into the install is
    # not acted on with this owner's policy); an install root owns is the admin's.
    owner = None if project.uid == 0 else project.uid
    if not d.exists:
        return Location(kind, d.host_path, ABSENT, base, rel_parts, owner, note="absent",
                        base_ident=project.ident)
    if d.is_link:
        note = (f"is a symlink to {d.link_target}, which mnic-ops did not make for this "
                "install: not followed")
        if why_not:
            note += f" ({why_not})"
        elif recs.problem:
            note += f" (the link records cannot be trusted: {recs.problem})"
        return Location(kind, d.host_path, REFUSED, note=note)
    return Location(kind, d.host_path, FOLDER, base, rel_parts, owner,
                    base_ident=project.ident)


def locate_all(root: HostRoot, project: Project) -> dict[str, Location]:
    """:func:`locate` for every data kind of an install, with one load of the records."""
    recs = load(root)
    return {kind: locate(root, project, kind, recs) for kind in project.data}
