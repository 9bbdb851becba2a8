"""What is true on the host and in mnic-ops's own records: host facts and class, framework
installs and their config, the one data-folder policy, link and pass records. Reads, never
changes. Imports :mod:`mnic_ops.core` and :mod:`mnic_ops.changes` (the journal)."""
