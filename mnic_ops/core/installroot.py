"""An install's own folder, as found: every later open checks it is still that folder.

The data map (:func:`mnic_ops.facts.projects.load_project`) records the identity of each
install's root folder when it finds it: device, inode and owner (``Project.ident``).
Root's passes then reach the install again and again by its path, and a path can lead
elsewhere by then: the folders above the root are often the user's own (``~/work``),
and she may rename one and put a link to another user's folder in its place. So every
open of the install root, and of anything below it, checks the descriptor it opened
(``fstat``) against the recorded identity: :func:`check` where a folder is opened from
its prefix (:func:`mnic_ops.facts.linkrecords.open_folder`,
:func:`mnic_ops.engines.cleanjobs.open_tree`:
clean, its workers, the watcher, doctor, fstab, projects), ``base_ident`` where
:mod:`mnic_ops.core.safefs` opens below it (framework configs, retention's task index,
render's reads and writes through :mod:`mnic_ops.changes.filechange`, relocate's
:class:`mnic_ops.engines.moveplace.Place`, doctor's measuring child). A different folder is a
refusal,
:class:`Replaced` (an ``OSError``, ``ESTALE``): the pass does nothing more for that
install and reports it (``failed_installs``, exit 1). Below the root every component is
opened with ``O_NOFOLLOW`` from that descriptor.

What is trusted on the way to the root: nothing but the identity. The path's components
above the root are resolved once, when the install is found; whatever folder they lead
to then *is* the install (its owner the folder's owner, its policy that folder's
framework configs), so a swap before the pass acts on the other folder as that folder's
own install, with its own owner and its own files, never mixing two users' data or
policies. Link records (:mod:`mnic_ops.facts.linkrecords`) and relocate's target folders
carry the owner's uid and are refused for another owner. A swap during the pass is a
refusal: the identity no longer matches.
"""

from __future__ import annotations

from mnic_ops.core import beneathfs
from mnic_ops.core.beneathfs import Ident

__all__ = ["Ident", "Replaced", "check", "ident_of"]

Replaced = beneathfs.BaseReplaced
ident_of = beneathfs.ident_of
WHAT = "the install's folder"


def check(fd: int, ident: Ident | None, host_path: str) -> None:
    """:class:`Replaced` when the folder open at ``fd`` is not the install root found as
    ``ident`` (the message names ``host_path``, the install)."""
    beneathfs.check_base(fd, ident, host_path, WHAT)
