"""Host paths under ``--root``.

Like ``systemctl --root``: every host path (``/etc``, ``/sys``, ``/proc``, ``/run``,
``/var``, project paths from the config) is looked up below the root directory. Paths
are joined, never resolved through the root's own absolute symlinks, so a mounted image
cannot point us back at the running host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mnic_ops.core.errors import InputError


@dataclass(frozen=True)
class HostRoot:
    """The directory that stands for ``/`` of the host being worked on."""

    root: Path = Path("/")

    @classmethod
    def open(cls, root: str | os.PathLike[str] = "/") -> HostRoot:
        """Validate ``root`` and return a HostRoot; a bad root is an input error."""
        p = Path(os.path.abspath(os.fspath(root)))
        if not p.exists():
            raise InputError(f"--root {root}: no such directory")
        if not p.is_dir():
            raise InputError(f"--root {root}: not a directory")
        return cls(p)

    @property
    def live(self) -> bool:
        """True when the root is the running system's own ``/``."""
        try:
            return self.root == Path("/") or os.path.samefile(self.root, "/")
        except OSError:
            return False

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        """Map an absolute host path to the real path under the root."""
        s = os.fspath(host_path)
        if not s.startswith("/"):
            raise ValueError(f"host path must be absolute: {s!r}")
        if self.root == Path("/"):
            return Path(os.path.normpath(s))
        return self.root / os.path.normpath(s).lstrip("/")

    def host(self, real_path: str | os.PathLike[str]) -> str:
        """Map a real path under the root back to the host path it stands for."""
        p = Path(os.path.abspath(os.fspath(real_path)))
        if self.root == Path("/"):
            return str(p)
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            return str(p)
        return "/" + str(rel) if str(rel) != "." else "/"

    def __str__(self) -> str:
        return str(self.root)
