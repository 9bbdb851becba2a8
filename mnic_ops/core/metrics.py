"""node_exporter textfiles (``clean.textfile``, ``doctor --metrics``), written with
prometheus_client: its exposition code formats and escapes the samples, and
``write_to_textfile`` puts the file in place with a rename.

``write_to_textfile`` opens its temporary by a predictable name with a plain ``open``,
which follows a symlink: in a folder someone else can write, that would let them steer
root's write. So the temporary goes into a fresh private folder (root's, 0700) made
inside the textfile folder (same filesystem, so the rename is still atomic; the
collector reads only ``*.prom`` files of the folder itself), the file gets mode 0644,
and the result and the folder are fsynced after the rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mnic_ops.core import safefs

if TYPE_CHECKING:  # imported when a textfile is written: no cost for the other runs
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric


class Textfile:
    """Gauges by family, in the order first added; a family may mix a sample without
    labels (the total) and labelled ones (per install), as the textfiles always did."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}

    def add(self, name: str, help_: str, value: float,
            labels: dict[str, str] | None = None) -> None:
        fam = self._families.setdefault(name, (help_, []))
        fam[1].append((dict(labels or {}), float(value)))

    def family(self, name: str, help_: str) -> None:
        """Declare a family (HELP and TYPE) even when it gets no sample."""
        self._families.setdefault(name, (help_, []))

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        for name, (help_, samples) in self._families.items():
            m = Metric(name, help_, "gauge")
            for labels, value in samples:
                m.add_sample(name, labels, value)
            yield m

    def registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)
        return reg

    def text(self) -> str:
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry()).decode()

    def write(self, real: Path) -> Path:
        """Replace ``real`` (a path on this machine, its folder must exist) with the
        textfile, atomically; the path written."""
        from prometheus_client import write_to_textfile

        folder = real.parent
        tmpdir = tempfile.mkdtemp(prefix=f".{real.name}{safefs.TMP_MARK}.", dir=folder)
        old_umask = os.umask(0o022)
        try:
            write_to_textfile(str(real), self.registry(), tmpdir=tmpdir)
        finally:
            os.umask(old_umask)
            shutil.rmtree(tmpdir, ignore_errors=True)
        fd = safefs.open_nofollow(real)
        try:
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        safefs.fsync_dir(folder)
        return real
