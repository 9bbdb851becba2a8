"""One module per command: its plan, apply, undo handlers and click command. Imports any
lower layer and, where one capability builds on another, the capability below it."""
