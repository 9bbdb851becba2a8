"""The change model: plan items, apply, the journal and undo, file changes, and the
plan/apply command flow. Imports only :mod:`mnic_ops.core`."""
