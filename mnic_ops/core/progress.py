"""One progress display for the long passes (relocate's copy and verify, clean).

A bar is drawn on stderr only when stderr is a terminal and no ``--json`` document
was asked for: a cron job, a pipe or a script gets none. It is redrawn at most
:data:`MIN_INTERVAL` apart (about 10 times a second), however often the work reports:
a copy of 20,000 small files reports 40,000 increments, and redrawing each one wrote
megabytes of escape sequences to the terminal for nothing anyone can read. The last
state is always drawn when the bar closes.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

MIN_INTERVAL = 0.1  # seconds between two redraws
BAR_WIDTH = 24


class Bar:
    """A one-line bar: ``label [#####     ]  42% <text>``; ``done`` out of ``total`` units
    (bytes, files; a total of 0 means not known yet: no bar, only the text)."""

    def __init__(self, stream: TextIO, label: str, total: int = 0,
                 text: Callable[[], str] | None = None, *,
                 interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.label, self.total = stream, label, total
        self.text = text or (lambda: "")
        self.interval, self.clock = interval, clock
        self.done = 0
        self.redraws = 0
        self._last = -1e18
        self._width = 0  # of the line drawn last, to blank what a shorter one leaves
        self._lock = threading.Lock()
        self._closed = False

    def advance(self, units: int = 0, *, total: int | None = None,
                done: int | None = None) -> None:
        """Count ``units`` more done, or set ``done`` outright for a caller that keeps
        its own count (and set a new total); redraw when it is time."""
        with self._lock:
            self.done = done if done is not None else self.done + units
            if total is not None:
                self.total = total
            now = self.clock()
            if now - self._last >= self.interval and not self._closed:
                self._draw(now)

    def _line(self, cols: int) -> str:
        head, extra = self.label, self.text()
        if self.total > 0:
            frac = min(1.0, self.done / self.total)
            pct = f"{frac * 100:3.0f}%"
            # the bar takes the room left on the line (a wrapped line cannot be redrawn)
            room = cols - 1 - len(head) - len(pct) - len(extra) - 7
            width = min(BAR_WIDTH, room)
            if width >= 5:
                fill = int(frac * width)
                pct = f"[{'#' * fill}{' ' * (width - fill)}] {pct}"
            head = f"{head}  {pct}"
        line = f"{head}  {extra}" if extra else head
        return line[: max(10, cols - 1)]

    def _draw(self, now: float) -> None:
        self._last = now
        line = self._line(shutil.get_terminal_size((80, 24)).columns)
        pad = " " * max(0, self._width - len(line))
        try:
            self.stream.write("\r" + line + pad)
            self.stream.flush()
        except (OSError, ValueError):
            return
        self._width = len(line)
        self.redraws += 1

    def close(self) -> None:
        """Draw the final state and end the line."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draw(self.clock())
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


def wanted(app: AppContext, stream: TextIO | None = None) -> bool:
    """A bar belongs on a terminal only, never under ``--json`` or with TERM=dumb."""
    s = sys.stderr if stream is None else stream
    if app.json or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def bar(app: AppContext, label: str, total: int = 0,
        text: Callable[[], str] | None = None) -> Iterator[Bar | None]:
    """A :class:`Bar` on stderr when :func:`wanted`, else None; closed on exit."""
    if not wanted(app):
        yield None
        return
    b = Bar(sys.stderr, label, total, text)
    try:
        yield b
    finally:
        b.close()
