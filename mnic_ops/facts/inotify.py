"""How many inotify watches the watcher needs, and what to set the limit to: the one rule
``render`` (the tier's ``fs.inotify.max_user_watches`` in the sysctl file), ``watch``
(whether to use inotify or poll, and the fix it logs) and ``doctor`` (its ``inotify``
check and the fix it names) follow, so that each one's fix clears the others' finding.

The watcher (:mod:`mnic_ops.engines.treewatch`) holds one watch per folder it watches (counted by
:func:`mnic_ops.engines.datatree.count_folders`) in one inotify instance. ``max_user_watches``
and ``max_user_instances`` are per user, and the watcher runs as root, so every other
root process that uses inotify (systemd, udisks, editors...) draws from the same limit.

- :func:`needed`: the folders, plus what the user holds already (measured where it can
  be, see ``watchlimits.inotify_usage``), plus :func:`headroom`: a tenth of the folders for
  the folders made between two rescans and 64 for the other root processes on a host
  where nothing was measured. A limit fits when it is at least that (:func:`fits`).
- :func:`suggested`: twice :func:`needed`, rounded up to a power of two, and never below
  the floor (the guide's 524288, or the tier's own value): room for the data to double
  before the limit is met again, and values that do not move with every new folder
  (the sysctl file ``render`` writes is compared, not rewritten, on the next run).
  ``tiers.derive`` may cap it by memory (one watch costs about :data:`WATCH_BYTES` of
  kernel memory); a capped value that does not fit is what doctor then reports.
"""

from __future__ import annotations

SYSCTL_FILE = "/etc/sysctl.d/60-mnic-ops.conf"  # written by `mnic-ops render`
SYSCTL_KEY = "fs.inotify.max_user_watches"
GUIDE_WATCHES = 524288  # the guide's fs.inotify.max_user_watches
KERNEL_MIN = 8192  # the kernel's own lowest default
WATCH_BYTES = 1024  # kernel memory per watch, roughly (fs/notify/inotify)
OTHER_USERS = 64  # watches kept for the user's other inotify users


def headroom(folders: int) -> int:
    """Watches kept free above ``folders`` (see the module's docstring)."""
    return folders // 10 + OTHER_USERS


def needed(folders: int, used: int = 0) -> int:
    """The lowest ``max_user_watches`` that holds ``folders`` more watches when the
    user holds ``used`` already."""
    return used + folders + headroom(folders)


def fits(limit: int, folders: int, used: int = 0) -> bool:
    """Does ``max_user_watches = limit`` hold the watcher's ``folders``?"""
    return limit >= needed(folders, used)


def suggested(folders: int, used: int = 0, floor: int = GUIDE_WATCHES) -> int:
    """The value to set ``max_user_watches`` to (see the module's docstring); always
    fits."""
    return max(floor, _pow2_ceil(2 * needed(folders, used)))


def instances_fix(used: int) -> int:
    """``max_user_instances`` to set when ``used`` instances leave none for the watcher
    (it needs one)."""
    return max(256, (used + 1) * 2)


def configured(text: str) -> int | None:
    """The ``max_user_watches`` a sysctl file sets (the last setting wins, as when
    sysctl applies it), or None."""
    val = None
    for ln in text.splitlines():
        k, sep, v = ln.partition("=")
        if sep and k.strip() == SYSCTL_KEY and not ln.lstrip().startswith(("#", ";")):
            try:
                val = int(v.strip())
            except ValueError:
                continue
    return val


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
