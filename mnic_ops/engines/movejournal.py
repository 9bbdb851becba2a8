"""The journal of a move (:mod:`mnic_ops.engines.treemove`): one JSON file per public
path, rewritten atomically before each step and naming every temporary name the move
chose, under a lock file so that two mnic-ops never work on one move. Also the journals
of interrupted moves as found on disk (:class:`PendingMove`: what each left behind),
and discarding one (:func:`forget`) or putting it back (:func:`restore_journal`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnic_ops.core import safefs
from mnic_ops.core.errors import OpsError
from mnic_ops.engines.moveplace import MoveError, Place

JOURNAL_VERSION = 1


def journal_path(journal_dir: str | os.PathLike[str], public: Place) -> Path:
    """One journal per public path, so two moves of one folder can never interleave."""
    h = hashlib.sha256(str(public.path).encode("utf-8", "surrogateescape")).hexdigest()
    return Path(journal_dir) / f"move-{h[:20]}.json"


class Journal:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        self.data["updated"] = time.time()
        safefs.atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True),
                            mode=0o600)

    def remove(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.path)
        safefs.fsync_dir(self.path.parent)

    @property
    def public(self) -> Place:
        return Place(**self.data["public"])

    @property
    def dest(self) -> Place:
        return Place(**self.data["dest"])


@contextmanager
def locked_journal(path: Path) -> Iterator[None]:
    """Hold the journal's lock file: a second mnic-ops never touches a move in flight."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with safefs.locked(path.with_suffix(".lock"), blocking=False) as got:
        if not got:
            raise MoveError(f"another mnic-ops process is moving this folder right now "
                            f"(lock {path.with_suffix('.lock')})")
        yield


def load_journal(path: Path) -> Journal | None:
    try:
        raw = safefs.read_bytes_nofollow(path)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if data.get("version") != JOURNAL_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        Place(**data["public"])
        Place(**data["dest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MoveError(f"{path}: unreadable move journal ({exc}); inspect it and the "
                        "folders it names, then delete it") from None
    return Journal(path, data)


def new_journal(path: Path, op: str, public: Place, dest: Place, link_text: str,
                 owner: tuple[int, int] | None, meta: dict[str, Any] | None) -> Journal:
    """Every temporary name is chosen here, before anything exists on disk, so that a
    recovery knows what to look for."""
    return Journal(path, {
        "version": JOURNAL_VERSION, "op": op, "public": asdict(public),
        "dest": asdict(dest), "link_text": link_text,
        "owner": list(owner) if owner else None, "meta": meta or {},
        "staging": safefs.tmp_name(public.name if op == "back" else dest.name),
        "linktmp": safefs.tmp_name(public.name), "aside": safefs.tmp_name(public.name),
        "pid": os.getpid(), "started": time.time(), "phase": "start", "method": "rename",
    })


# --- interrupted moves ------------------------------------------------------------------

@dataclass
class PendingMove:
    """One journal of an interrupted move, as found on disk: ``data`` is None (and
    ``error`` says why) when the journal cannot be read."""

    id: str  # the journal's file name without .json ("move-<hash>")
    path: Path
    data: dict[str, Any] | None
    error: str = ""

    @property
    def public(self) -> Place:
        assert self.data is not None
        return Place(**self.data["public"])

    @property
    def dest(self) -> Place:
        assert self.data is not None
        return Place(**self.data["dest"])

    def status(self) -> str:
        """``recoverable`` when the folders that hold both ends still exist, else
        ``install_missing`` / ``target_missing`` (nothing can be finished), or
        ``unreadable``."""
        if self.data is None:
            return "unreadable"
        if not self.public.path.parent.is_dir():
            return "install_missing"
        if not self.dest.path.parent.is_dir():
            return "target_missing"
        return "recoverable"

    def leftovers(self) -> list[str]:
        """What of this move is still on disk and would be lost to a rerun without the
        journal: the temporary names it chose (a partial or verified copy, the old tree
        set aside, the new link not yet in place), and the far end of the move while
        the public path is not the link to it (a copy nobody points at)."""
        if self.data is None:
            return []
        d = self.data
        pub, dst = self.public, self.dest
        ppar, dpar = pub.path.parent, dst.path.parent
        names = [(ppar, d.get("linktmp")), (ppar, d.get("aside")),
                 (ppar, (d.get("aside") or "") + "b" if d.get("aside") else None),
                 (ppar, d.get("old")),
                 (ppar if d.get("op") == "back" else dpar, d.get("staging"))]
        out = [str(folder / n) for folder, n in names
               if isinstance(n, str) and n and os.path.lexists(folder / n)]
        try:
            st = os.lstat(pub.path)
            is_link = stat.S_ISLNK(st.st_mode) and \
                os.readlink(pub.path) == d.get("link_text")
        except OSError:
            is_link = False
        if os.path.lexists(dst.path) and not is_link:
            out.append(str(dst.path))
        return sorted(set(out))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "journal": str(self.path),
                               "status": self.status()}
        if self.data is None:
            out["error"] = self.error
            return out
        d = self.data
        meta = d.get("meta") or {}
        out.update(op=d.get("op"), phase=d.get("phase"), method=d.get("method"),
                   public=str(self.public.path), dest=str(self.dest.path),
                   link_text=d.get("link_text"), project=meta.get("project"),
                   public_host=meta.get("public"), pid=d.get("pid"),
                   started=d.get("started"), updated=d.get("updated"),
                   leftovers=self.leftovers())
        return out


def journal_id(path: str | os.PathLike[str]) -> str:
    return Path(path).name.removesuffix(".json")


def pending_moves(journal_dir: str | os.PathLike[str]) -> list[PendingMove]:
    """Every journal of an interrupted move in ``journal_dir`` (read-only); one that
    cannot be read is listed with the reason, never raised."""
    d = Path(journal_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("move-")
                       and n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            j = load_journal(d / n)
        except (MoveError, OpsError, OSError) as exc:
            msg = exc.message if isinstance(exc, OpsError) else (exc.strerror or str(exc))
            out.append(PendingMove(journal_id(n), d / n, None, msg))
            continue
        if j is not None:
            out.append(PendingMove(journal_id(n), d / n, j.data))
    return out


def forget(journal_dir: str | os.PathLike[str], move_id: str) -> dict[str, Any]:
    """Discard the journal ``move_id`` once nothing of its move is left on disk (see
    :meth:`PendingMove.leftovers`); returns its content (for an undo). MoveError with
    the paths still there, or when a process is working on that move right now."""
    path = Path(journal_dir) / f"{move_id}.json"
    if not move_id.startswith("move-") or "/" in move_id:
        raise MoveError(f"{move_id}: not a move journal id (expected move-<hash>; see "
                        "relocate --list-pending)")
    with locked_journal(path):
        try:
            raw = safefs.read_bytes_nofollow(path)
        except FileNotFoundError:
            raise MoveError(f"{move_id}: no such interrupted move (see relocate "
                            "--list-pending)") from None
        try:
            j = load_journal(path)
        except MoveError:
            j = None
        if j is not None:
            left = PendingMove(move_id, path, j.data).leftovers()
            if left:
                raise MoveError(f"{move_id}: not forgotten: still on disk: "
                                + ", ".join(left) + "; finish the move (mnic-ops "
                                "relocate PROJECT) or move these away first")
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            data = {"unreadable": raw.decode("utf-8", "replace")}
        os.unlink(path)
        safefs.fsync_dir(path.parent)
    return data


def restore_journal(journal_dir: str | os.PathLike[str], move_id: str,
                    data: dict[str, Any]) -> None:
    """Put a forgotten journal back (the undo of :func:`forget`); refused when another
    journal has taken its place meanwhile."""
    path = Path(journal_dir) / f"{move_id}.json"
    with locked_journal(path):
        if os.path.lexists(path):
            raise MoveError(f"{path}: a journal is there again; not overwritten")
        body = data["unreadable"] if set(data) == {"unreadable"} else \
            json.dumps(data, indent=1, sort_keys=True)
        safefs.atomic_write(path, body, mode=0o600)
