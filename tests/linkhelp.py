"""Relocated data in fake host roots: move a data folder to a target and leave the link,
recording it the way `relocate` does (mnic-ops's own record, root-owned), for tests
whose host root has no mounts for a real `relocate` to check."""

from __future__ import annotations

import os
from pathlib import Path

from mnic_ops.core.hostroot import HostRoot
from mnic_ops.facts import linkrecords


def relocate_by_hand(root: Path, project: str, rel: str, target: str, kind: str,
                     *, move: bool = True) -> Path:
    """Move ``<project>/<rel>`` to the host path ``target`` (``<base>/<slug>/<kind>``),
    put the symlink in its place and record it as relocate would; returns the real
    target folder (created empty when ``rel`` does not exist). With ``move=False``
    nothing is created at ``target`` (a relocation target that appears later)."""
    public = root / f"{project}/{rel}".lstrip("/")
    dest = root / target.lstrip("/")
    if move:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if public.exists():
            os.rename(public, dest)
        else:
            dest.mkdir()
    public.parent.mkdir(parents=True, exist_ok=True)
    public.symlink_to(target)
    st = os.lstat(root / project.lstrip("/"))
    base, slug, leaf = target.rsplit("/", 2)
    record(root, project, rel, target, kind, st.st_uid, st.st_gid,
           dest_base=base, dest_rel=f"{slug}/{leaf}")
    return dest


def record(root: Path, project: str, rel: str, link_text: str, kind: str, uid: int,
           gid: int, *, dest_base: str, dest_rel: str) -> None:
    """Write the record relocate keeps for a link it made."""
    linkrecords.add(HostRoot(root), linkrecords.LinkRecord(
        public=f"{project}/{rel}", link_text=link_text, project=project, kind=kind,
        dest_base=dest_base, dest_rel=dest_rel, uid=uid, gid=gid))
