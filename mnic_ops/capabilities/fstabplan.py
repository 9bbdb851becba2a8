"""Which fstab entry governs each mount point that holds framework data, whether noatime
belongs on it, and the new file text: the decisions of ``mnic-ops fstab``.

Only the options field of the one entry that governs a mount point changes; the new
text is parsed back and compared with the old before anything may be written. Pure
apart from reading (the host's /dev/disk links, ``blkid`` on the live system, the
framework's data folders).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mnic_ops.core import beneathfs, execute
from mnic_ops.core.errors import CommandError, OpsError
from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import hostfacts
from mnic_ops.facts.fstabfile import (
    Fstab,
    Line,
    noatime_options,
    norm_target,
    option_names,
    parse,
    set_options,
    shown,
)

# --- is noatime eligible on an entry --------------------------------------------------------

def _is_network(fstype: str) -> bool:
    return (fstype in hostfacts.NETWORK_FS or fstype.startswith(("nfs", "fuse.sshfs"))
            or fstype in ("cifs", "smb3", "smbfs"))


def ineligible_reason(entry: Line, *, include_network: bool = False) -> str | None:
    """Why noatime does not belong on this entry, or None when it does."""
    fstype = entry.fstype
    names = option_names(entry.options)
    if fstype == "swap":
        return "swap space: it has no access times"
    if fstype == "ignore":
        return "type 'ignore': the entry is disabled"
    if "bind" in names or "rbind" in names:
        return ("bind mount: it shows a folder of another filesystem; change that "
                "filesystem's own entry")
    if any(t in hostfacts.PSEUDO_FS for t in fstype.split(",")):
        return (f"{fstype} is a pseudo or read-only media filesystem (made by the kernel, "
                "kept in memory or read-only)")
    if _is_network(fstype) and not include_network:
        return (f"{fstype} is a network filesystem (set fstab.include_network = true to "
                "include it)")
    if entry.options_raw is not None and "\\" in entry.options_raw:
        return "the options field uses octal escapes; edit this line by hand"
    if entry.options_raw is not None and entry.options_raw.count('"') % 2:
        return ("the options field has an unbalanced double quote (libmount's option "
                "parser stops there, so an option added after it would be lost); edit this "
                "line by hand")
    return None


TAG_DIRS = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid",
            "PARTLABEL": "by-partlabel"}
_TAG = re.compile(r"(UUID|LABEL|PARTUUID|PARTLABEL)=(.*)\Z", re.S)
_UDEV_SAFE = frozenset("#+-.:=@_")


def udev_encode(value: str) -> str:
    """The name udev gives a by-label/by-partlabel link (``/`` and blanks as \\xHH)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in _UDEV_SAFE or ord(c) > 127
                   else f"\\x{ord(c):02x}" for c in value)


class Resolver:
    """Turns an fstab source or a live mount into identities (``dev:MAJ:MIN``,
    ``path:/dev/x``) that can be compared: through ``<root>/dev/disk/by-*`` links
    resolved inside the root, or ``blkid`` on the live system."""

    def __init__(self, root: HostRoot, *, use_blkid: bool | None = None) -> None:
        self.root = root
        self.use_blkid = root.live if use_blkid is None else use_blkid
        self._cache: dict[str, tuple[set[str], str | None]] = {}

    def _device(self, host: str) -> tuple[set[str], str | None]:
        """Identities of a device path and the path it resolves to (None: missing)."""
        resolved = beneathfs.resolve_beneath(self.root.root, host)
        ids = {"path:" + resolved}
        try:
            st = os.stat(self.root.path(resolved))
        except OSError:
            return ids, None
        if stat.S_ISBLK(st.st_mode):
            ids.add(f"dev:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        return ids, resolved

    def _tag(self, tag: str, value: str) -> str | None:
        d = f"/dev/disk/{TAG_DIRS[tag]}"
        names = [udev_encode(value), value]
        for name in names:
            if name and "/" not in name and os.path.lexists(self.root.path(f"{d}/{name}")):
                return f"{d}/{name}"
        if tag in ("UUID", "PARTUUID"):  # vfat and GPT ids are upper case in some tools
            try:
                for name in os.listdir(self.root.path(d)):
                    if name.lower() == value.lower():
                        return f"{d}/{name}"
            except OSError:
                pass
        if self.use_blkid and execute.which("blkid"):
            try:
                r = execute.run(["blkid", "-c", "/dev/null", "-o", "device", "-t",
                                 f"{tag}={value}"], check=False, timeout=30)
            except CommandError:
                return None
            devs = r.stdout.split()
            if r.returncode == 0 and devs:
                return devs[0]
        return None

    def source(self, spec: str) -> tuple[set[str], str | None]:
        """(identities, resolved device host path or None when it cannot be found)."""
        if spec in self._cache:
            return self._cache[spec]
        m = _TAG.match(spec)
        out: tuple[set[str], str | None]
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            dev = self._tag(m.group(1), value)
            out = self._device(dev) if dev else (set(), None)
        elif spec.startswith("/"):
            out = self._device(spec)
        else:
            out = ({"src:" + spec}, None)
        self._cache[spec] = out
        return out

    def mount(self, m: hostfacts.Mount) -> set[str]:
        ids = {f"dev:{m.dev}"}
        if m.source.startswith("/"):
            ids |= self.source(m.source)[0]
        return ids


@dataclass
class Decision:
    """What happens to one mount point, and why."""

    mount_point: str
    holds: list[str]      # framework data folders on it; or how it was asked for
    state: str = "skip"  # change | ok | skip
    reason: str = ""
    line: int | None = None
    entry: str | None = None
    options: str | None = None
    new_options: str | None = None
    live: dict[str, Any] | None = None
    live_noatime: bool | None = None
    notes: list[str] = field(default_factory=list)
    ambiguous: bool = False  # several entries for it: never guessed, a failed item

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _shown_json(asdict(self))
        return out


def _shown_json(v: Any) -> Any:
    """Every string of a JSON-able value through :func:`shown`."""
    if isinstance(v, str):
        return shown(v)
    if isinstance(v, dict):
        return {shown(str(k)): _shown_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_shown_json(x) for x in v]
    return v


def live_mount(mp: str, mounts: Sequence[hostfacts.Mount]) -> hostfacts.Mount | None:
    found = [m for m in mounts if norm_target(m.mount_point) == mp]
    return found[-1] if found else None  # the top of a stack of mounts


def plan_noatime(fstab: Fstab, wanted: dict[str, list[str]], mounts: Sequence[hostfacts.Mount],
                 resolver: Resolver | None = None, *, nodiratime: bool = False,
                 include_network: bool = False) -> tuple[list[Decision], Fstab]:
    """Decide for each wanted mount point (-> what it holds) and build the new file."""
    by_target: dict[str, list[Line]] = {}
    for e in fstab.entries:
        by_target.setdefault(norm_target(e.target), []).append(e)
    new_lines = {line.number: line for line in fstab.lines}
    decisions: list[Decision] = []
    for mp, holds in wanted.items():
        d = Decision(mount_point=mp, holds=list(holds))
        decisions.append(d)
        live = live_mount(mp, mounts)
        if live is not None:
            d.live = {"source": live.source, "fstype": live.fstype,
                      "options": ",".join(live.options)}
            d.live_noatime = "noatime" in live.options
        entries = by_target.get(mp, [])
        if not entries:
            d.reason = (f"no fstab entry for {mp}" + (" (the root filesystem of a "
                        "container, say)" if mp == "/" else "") + "; nothing to change")
            continue
        if len(entries) > 1:
            d.ambiguous = True
            d.reason = (f"{len(entries)} entries for {mp} (lines "
                        f"{', '.join(str(e.number) for e in entries)}): ambiguous, refusing "
                        "to guess which one governs it")
            continue
        e = entries[0]
        d.line, d.entry, d.options = e.number, e.text.strip(), e.options_raw
        why = ineligible_reason(e, include_network=include_network)
        if why:
            d.reason = why
            continue
        if live is not None and resolver is not None and not _is_network(e.fstype):
            ids, dev = resolver.source(e.source)
            if dev is None:
                d.notes.append(f"{e.source} could not be resolved to a device here; matched "
                               "by mount point only")
            elif not ids & resolver.mount(live):
                d.reason = (f"the live mount at {mp} comes from {live.source}, not from "
                            f"this entry's {e.source} ({dev}): refusing to change an entry "
                            "that does not govern it")
                continue
            elif dev != e.source:
                d.notes.append(f"{e.source} is {dev}")
        elif live is None:
            d.notes.append(f"{mp} is not mounted now")
        new = noatime_options(e.options_raw, nodiratime=nodiratime)
        if new == e.options_raw:
            d.state = "ok"
            d.reason = "already noatime"
            if d.live_noatime is False:
                d.reason += (f", but the live mount is not ({d.live['options'] if d.live else ''}"
                             "): run with --remount")
            continue
        d.state, d.new_options = "change", new
        d.reason = (f"{e.fstype}: options {e.options_raw or '(none)'} -> {new}")
        new_lines[e.number] = set_options(e, new)
    new_fstab = Fstab([new_lines[line.number] for line in fstab.lines], fstab.name)
    _self_check(fstab, new_fstab, {d.line: d.new_options for d in decisions
                                   if d.state == "change" and d.line is not None})
    return decisions, new_fstab


def _self_check(old: Fstab, new: Fstab, changed: dict[int, str | None]) -> None:
    """The new text must parse back to the old entries with only the planned options
    fields changed; anything else is a bug, and nothing may be written."""
    again = parse(new.render(), new.name)
    if len(again.lines) != len(old.lines):
        raise OpsError("internal error: the planned fstab has a different number of lines")
    for a, b in zip(old.lines, again.lines, strict=True):
        if a.number not in changed:
            if a.render() != b.render():
                raise OpsError(f"internal error: line {a.number} would change unplanned")
            continue
        same = (a.source, a.target, a.fstype, a.freq, a.passno, a.tail.strip()) == \
               (b.source, b.target, b.fstype, b.freq, b.passno, b.tail.strip())
        if not same or b.options_raw != changed[a.number] or a.eol != b.eol:
            raise OpsError(f"internal error: line {a.number} would change beyond its options")


# --- mount points of the framework's data -------------------------------------------------

def data_mount_points(root: HostRoot, cfg: Any, mounts: Sequence[hostfacts.Mount],
                      fstab: Fstab) -> dict[str, list[str]]:
    """Mount point -> the framework data folders it holds: each folder where
    :func:`mnic_ops.facts.linkrecords.locate` puts its data (a link to the SSD only when
    relocate made it; a link a user made counts for nothing). The trusted prefix (the
    install root, the recorded target base) is resolved inside the root, the rest is
    taken as it is. Without live mounts (an image under --root) the fstab entry with
    the longest matching mount point stands in."""
    from mnic_ops.facts import linkrecords
    from mnic_ops.facts.projects import find_projects

    targets = [norm_target(e.target) for e in fstab.entries if e.target.startswith("/")]
    out: dict[str, list[str]] = {}
    for p in find_projects(root, cfg):
        for kind, loc in linkrecords.locate_all(root, p).items():
            if loc.state not in (linkrecords.FOLDER, linkrecords.RELOCATED):
                continue
            assert loc.prefix is not None
            try:
                os.close(linkrecords.open_location(root, loc))
            except OSError:
                continue  # gone meanwhile, or a link in the way: not followed
            base = beneathfs.resolve_beneath(root.root, loc.prefix)
            real = posixpath.join(base, *loc.parts)
            m = hostfacts.mount_for(real, list(mounts))
            if m is not None:
                mp = norm_target(m.mount_point)
            else:
                inside = [t for t in targets if hostfacts.path_is_within(real, t)]
                if not inside:
                    continue
                mp = max(inside, key=len)
            host = p.data[kind].host_path
            label = host + (f" -> {real}" if real != host else "")
            out.setdefault(mp, []).append(label)
    return out
