"""Primitives every layer may use: errors, the host root, running commands, safe file
operations, bounded user JSON, quoting, the config and its schema, the app context and
its output. Imports nothing from the other layers."""
