"""The start-up display: what is starting and how long it has taken, in plain text.

On a terminal one status line is redrawn in place with a carriage return (no escape
codes, so any terminal shows it); elsewhere (a pipe, a CI log) a line is printed when a
step starts or ends, and a reminder while one takes long, never a line per redraw.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_SPIN = "|/-\\"


class Progress:
    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None, heartbeat_s: float = 15.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.heartbeat_s = heartbeat_s
        self._running: dict[str, tuple[str, float]] = {}  # key -> (label, started)
        self._drawn = 0
        self._ticks = 0
        self._last_beat = time.monotonic()

    def begin(self, key: str, label: str) -> None:
        self._running[key] = (label, time.monotonic())
        if not self.tty:
            self._print(f"  ... {label}")

    def end(self, key: str, outcome: str, *, ok: bool = True) -> None:
        label, started = self._running.pop(key)
        mark = "[ok]" if ok else "[failed]"
        self._print(f"  {mark} {label}: {outcome} ({time.monotonic() - started:.0f} s)")

    def tick(self) -> None:
        """Call often while waiting: redraws the status line, or writes a reminder."""
        if not self._running:
            return
        now = time.monotonic()
        waiting = ", ".join(f"{label.split(':')[0]} {now - t:.0f} s" for label, t in self._running.values())
        if self.tty:
            self._ticks += 1
            self._draw(f"  {_SPIN[self._ticks % len(_SPIN)]} starting: {waiting}")
        elif now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            self._print(f"  ... still starting: {waiting}")

    def _draw(self, text: str) -> None:
        self.out.write("\r" + text + " " * max(0, self._drawn - len(text)))
        self.out.flush()
        self._drawn = len(text)

    def _print(self, line: str) -> None:
        if self._drawn:
            self.out.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
        self.out.write(line + "\n")
        self.out.flush()
