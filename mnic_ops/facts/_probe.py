"""Measurement child of ``mnic-ops doctor``: runs in a fresh interpreter, times itself.

The guide's baseline is "time a fresh ``python3`` that loads the agents / the session".
Timing inside a fresh process keeps the parent's warm imports and caches out of the
figure, and timing inside the child (not around it) keeps interpreter start-up out too.

The request is one JSON argument; the answer one JSON document on stdout. The child
opens the install root (and a relocated data folder) as the caller, then, when started
as root for an install owned by someone else, drops to the owner's uid and gid before
reading anything: the figure is what the framework's user gets, a folder the user cannot
read shows up as a finding, and a hostile file is parsed without root's rights. Below
those folders every component is opened with ``O_NOFOLLOW``: no symlink leads out.

Everything it parses is bounded, because the owner wrote it: front matter at most
:data:`MAX_FRONT_MATTER` bytes, nested at most :data:`MAX_YAML_DEPTH` levels and without
aliases (no "billion laughs"); JSON through :mod:`mnic_ops.core.userjson`; no file is read
beyond :data:`MAX_READ` bytes.

Only the standard library, PyYAML, :mod:`mnic_ops.core.safefs` and :mod:`mnic_ops.core.userjson`
are imported, all before the privileges are dropped.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import time
from typing import Any

import yaml

from mnic_ops.core import beneathfs, safefs, userjson
from mnic_ops.core.errors import OpsError

# The framework's own front-matter rule (.ai-tools/core/discovery/dynamic_agent_discovery.py):
# the regex below, then yaml.safe_load. Using the same two steps means "malformed" here is
# exactly "the framework skips this agent".
FRONT_MATTER = re.compile(r"^---\n(.*?)\n---", re.DOTALL)
MAX_LISTED = 50  # cap on reported paths per list, so a broken tree gives a bounded answer
MAX_FRONT_MATTER = 64 * 1024  # the shipped agents' front matter is under 2 KiB
MAX_YAML_DEPTH = 32
MAX_AGENT_FILE = 4 << 20  # agents are 5-30 KiB; doctor flags over 100 KiB
MAX_READ = 64 << 20  # per session file: enough to time, not enough to exhaust memory


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader with the composer bounded: no aliases (their
    expansion is how a few lines become gigabytes) and at most MAX_YAML_DEPTH levels
    (the composer recurses once per level)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are refused in front matter", mark)
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _err(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.EACCES:
            return "permission denied"
        return exc.strerror or str(exc)
    if isinstance(exc, OpsError):
        return "a symlink (or a file) is in the way; not followed"
    return str(exc)


def _add(lst: list[Any], item: Any) -> None:
    if len(lst) < MAX_LISTED:
        lst.append(item)


def front_matter(text: str) -> tuple[str, Any]:
    """Classify an agent file's front matter: ("ok", mapping), ("none", None),
    ("empty", None) or ("error", message with the file line)."""
    m = FRONT_MATTER.match(text)
    if not m:
        return "none", None
    if len(m.group(1)) > MAX_FRONT_MATTER:
        return "error", f"front matter longer than {MAX_FRONT_MATTER} bytes; not parsed"
    loader = _BoundedLoader(m.group(1))
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is not None:
            return "error", f"line {mark.line + 2}: {problem}"  # +1 for the opening ---
        return "error", str(problem)
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5000-digit int
        return "error", f"unusable value: {exc}"
    finally:
        loader.dispose()
    if data is None:
        return "empty", None
    if not isinstance(data, dict):
        return "error", f"front matter is a {type(data).__name__}, not a mapping"
    return "ok", data


def _read_fd(fd: int, limit: int = MAX_READ) -> bytes:
    """The file's bytes, at most ``limit`` (the caller sees a longer file as ``limit +
    1`` bytes)."""
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fh.read(limit + 1)


# --- agents ------------------------------------------------------------------------

def agents(base_fd: int, rel: str, big: int) -> dict[str, Any]:
    out: dict[str, Any] = {"count": 0, "files": 0, "bytes": 0, "largest": [], "big": [],
                           "errors": [], "no_front_matter": [], "symlinks": []}
    sizes: list[tuple[int, str]] = []
    t0 = time.perf_counter()
    try:
        top = beneathfs.open_beneath_at(base_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        out["seconds"] = time.perf_counter() - t0
        out["missing"] = True  # the /opt layout may carry no agents of its own
        return out
    except (OSError, OpsError) as exc:
        out["seconds"] = time.perf_counter() - t0
        out["fatal"] = f"{rel}: {_err(exc)}"
        return out

    def walk(dfd: int, prefix: str) -> None:
        try:
            with os.scandir(dfd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            _add(out["errors"], {"path": prefix or ".", "error": _err(exc)})
            return
        for e in entries:
            path = f"{prefix}{e.name}"
            try:
                if e.is_symlink():
                    if e.name.endswith(".md") or e.is_dir():
                        _add(out["symlinks"], path)
                    continue
                if e.is_dir(follow_symlinks=False):
                    try:
                        sub = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                      | os.O_CLOEXEC, dir_fd=dfd)
                    except OSError as exc:
                        _add(out["errors"], {"path": path + "/", "error": _err(exc)})
                        continue
                    try:
                        walk(sub, path + "/")
                    finally:
                        os.close(sub)
                    continue
                if not e.name.endswith(".md") or not e.is_file(follow_symlinks=False):
                    continue
                out["files"] += 1
                fd = os.open(e.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=dfd)
                raw = _read_fd(fd, MAX_AGENT_FILE)
            except OSError as exc:
                _add(out["errors"], {"path": path, "error": _err(exc)})
                continue
            if len(raw) > MAX_AGENT_FILE:
                _add(out["big"], {"path": path, "bytes": len(raw)})
                _add(out["errors"], {"path": path, "error": f"larger than "
                                     f"{MAX_AGENT_FILE} bytes; not parsed"})
                continue
            out["bytes"] += len(raw)
            sizes.append((len(raw), path))
            if len(raw) > big:
                _add(out["big"], {"path": path, "bytes": len(raw)})
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _add(out["errors"], {"path": path, "error": f"not UTF-8 text (byte "
                                                            f"{exc.start})"})
                continue
            kind, info = front_matter(text)
            if kind == "ok":
                out["count"] += 1
            elif kind == "error":
                _add(out["errors"], {"path": path, "error": f"front matter {info}"})
            else:
                _add(out["no_front_matter"], path)

    try:
        walk(top, "")
    finally:
        os.close(top)
    out["seconds"] = time.perf_counter() - t0
    sizes.sort(reverse=True)
    out["largest"] = [{"path": p, "bytes": n} for n, p in sizes[:3]]
    return out


# --- context -----------------------------------------------------------------------

def _open_dir(base_fd: int, spec: dict[str, Any], roots: dict[str, int]) -> int:
    if "abs" in spec:
        fd = roots[_key(spec)]
        if fd < 0:  # opening the relocated folder failed: -errno
            raise OSError(-fd, os.strerror(-fd))
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    return beneathfs.open_beneath_at(base_fd, spec["rel"], os.O_RDONLY | os.O_DIRECTORY)


def context(base_fd: int, req: dict[str, Any], roots: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"files": [], "bytes": 0, "errors": [], "missing": []}
    newest = int(req.get("newest", 5))
    t0 = time.perf_counter()
    sess = req.get("sessions")
    if sess is not None:
        try:
            dfd = _open_dir(base_fd, sess, roots)
        except (OSError, OpsError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                out["missing"].append("sessions")
            else:
                _add(out["errors"], {"path": sess["label"], "error": _err(exc)})
            dfd = -1
        if dfd >= 0:
            try:
                _read_sessions(dfd, sess["label"], newest, out)
            finally:
                os.close(dfd)
    store = req.get("checkpoint_store")
    if store is not None:
        try:
            dfd = _open_dir(base_fd, store, roots)
        except (OSError, OpsError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                out["missing"].append("checkpoint_index.json")
            else:
                _add(out["errors"], {"path": store["label"], "error": _err(exc)})
            dfd = -1
        if dfd >= 0:
            try:
                _read_one(dfd, "checkpoint_index.json",
                          f"{store['label']}/checkpoint_index.json", out, "checkpoint_index")
            finally:
                os.close(dfd)
    out["seconds"] = time.perf_counter() - t0
    return out


def _read_sessions(dfd: int, label: str, newest: int, out: dict[str, Any]) -> None:
    cands: list[tuple[float, str]] = []
    try:
        with os.scandir(dfd) as it:
            for e in it:
                if e.name.endswith(".gz") or safefs.is_tmp_name(e.name):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    cands.append((e.stat(follow_symlinks=False).st_mtime, e.name))
                except OSError:
                    continue
    except OSError as exc:
        _add(out["errors"], {"path": label, "error": _err(exc)})
        return
    cands.sort(reverse=True)
    names = [n for _, n in cands[:newest]]
    if "SESSION_CURRENT.md" not in names and any(n == "SESSION_CURRENT.md" for _, n in cands):
        names.insert(0, "SESSION_CURRENT.md")
    for name in names:
        _read_one(dfd, name, f"{label}/{name}", out, "session")


def _read_one(dfd: int, name: str, label: str, out: dict[str, Any], kind: str) -> None:
    try:
        raw = _read_fd(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                               dir_fd=dfd))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            out["missing"].append(label)
        else:
            _add(out["errors"], {"path": label, "error": _err(exc)})
        return
    if len(raw) > MAX_READ:
        _add(out["errors"], {"path": label, "error": f"larger than {MAX_READ} bytes; "
                             "only that much read"})
        raw = raw[:MAX_READ]
    out["bytes"] += len(raw)
    out["files"].append({"path": label, "bytes": len(raw), "kind": kind})
    if name.endswith(".json"):
        # bounded (depth, size, number length, NaN, duplicate keys): the owner wrote it
        try:
            userjson.parse(raw, label)
        except userjson.UserDataError as exc:
            where = "" if exc.line is None else f"line {exc.line} column {exc.col}: "
            _add(out["errors"], {"path": label, "error": f"not valid JSON: {where}"
                                 f"{exc.reason}"})
        return
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _add(out["errors"], {"path": label, "error": f"not UTF-8 text (byte {exc.start})"})


# --- entry -------------------------------------------------------------------------

def _drop(req: dict[str, Any]) -> None:
    uid, gid = req.get("uid"), req.get("gid")
    if uid is None or os.geteuid() != 0 or uid == 0:
        return
    os.setgroups([int(g) for g in req.get("groups") or []])
    os.setgid(int(gid if gid is not None else uid))
    os.setuid(int(uid))


def _key(spec: dict[str, Any]) -> str:
    return f"{spec['abs']}\0{spec.get('below', '')}"


def _open_relocated(base: str, below: str) -> int:
    """An O_PATH descriptor of relocated data: ``base`` (mnic-ops's recorded target
    base) as given, every component of ``below`` with ``O_NOFOLLOW``."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [x for x in below.split("/") if x]:
            if part in (".", ".."):
                raise OSError(errno.EINVAL, "bad path component")
            nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ident(raw: Any) -> tuple[int, int, int] | None:
    if isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, int) for x in raw):
        return raw[0], raw[1], raw[2]
    return None


def run(req: dict[str, Any]) -> dict[str, Any]:
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    label = req.get("label", req["base"])
    try:
        base_fd = os.open(req["base"], flags | os.O_NOFOLLOW)
        # the install root the data map found, not whatever its path leads to now
        beneathfs.check_base(base_fd, _ident(req.get("ident")), label, "the install's folder")
    except OSError as exc:
        return {"fatal": f"{label}: {_err(exc)}", "seconds": None}
    roots: dict[str, int] = {}
    for spec in (req.get("sessions"), req.get("checkpoint_store")):
        if spec and "abs" in spec and _key(spec) not in roots:
            try:
                fd = _open_relocated(spec["abs"], spec.get("below", ""))
            except OSError as exc:
                roots[_key(spec)] = -(exc.errno or errno.EIO)
                continue
            owner = spec.get("owner")
            if isinstance(owner, int) and os.fstat(fd).st_uid != owner:
                os.close(fd)  # relocated data that is no longer the owner's
                roots[_key(spec)] = -errno.EPERM
                continue
            roots[_key(spec)] = fd
    _drop(req)
    if req["mode"] == "agents":
        return agents(base_fd, req.get("rel", ".claude/agents"), int(req.get("big", 1 << 62)))
    if req["mode"] == "context":
        return context(base_fd, req, roots)
    return {"fatal": f"unknown mode {req['mode']!r}", "seconds": None}


def main(argv: list[str]) -> int:
    try:
        req = json.loads(argv[1])
        res = run(req)
    except Exception as exc:  # the parent turns this into a finding, never a traceback
        res = {"fatal": f"measurement failed: {type(exc).__name__}: {exc}", "seconds": None}
    sys.stdout.write(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
