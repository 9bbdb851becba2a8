"""One module per command: its plan, apply, undo handlers and click command. Imports any
lower layer and, where one capability builds on another, the capability below it.

Capabilities are found by discovery (:func:`modules`), never from a hand-kept list.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# the layers whose modules may register undo handlers (changes.model.undo_handler)
UNDO_PACKAGES = ("mnic_ops.changes", "mnic_ops.engines")


def modules() -> list[ModuleType]:
    """Every capability module, imported, in name order."""
    return [importlib.import_module(f"{__name__}.{m.name}")
            for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def load_undo_handlers() -> None:
    """Import every module that may register an undo handler: the capabilities and the
    change and engine layers below them (each registers its kinds when imported)."""
    for name in UNDO_PACKAGES:
        pkg = importlib.import_module(name)
        for m in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{name}.{m.name}")
    modules()
