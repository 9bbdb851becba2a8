"""Mechanisms over files, independent of any command: the crash-safe tree move,
compression, JSON text edits, restore, retention, the tree watcher. Imports
:mod:`mnic_ops.core`, :mod:`mnic_ops.changes` and :mod:`mnic_ops.facts`."""
