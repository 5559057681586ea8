"""Incremental screening of one growing text (one channel of one choice).

Text arrives a token at a time; a check starts once ``every`` new tokens arrived and
none is in flight, and it covers all text received so far. So at most one check per
channel is in flight, a slow guard simply makes the checks sparser, and each check's
input extends the previous one (the guard server's prefix cache serves the rest).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

from guards import Verdict

__all__ = ["ChannelMonitor", "CheckFn"]

CheckFn = Callable[[str], Coroutine[Any, Any, tuple[Verdict, ...]]]


class ChannelMonitor:
    __slots__ = (
        "check_fn",
        "every",
        "_parts",
        "length",
        "tokens",
        "complete",
        "covered",
        "covered_tokens",
        "task",
        "_task_upto",
        "checks",
        "done",
        "name",
    )

    def __init__(self, check_fn: CheckFn | None, every: int, name: str = "guardproxy-check") -> None:
        self.check_fn = check_fn  # None: this channel is not screened
        self.every = every
        self.name = name  # of its check tasks, so that a leaked one can be found
        self._parts: list[str] = []
        self.length = 0  # characters received
        self.tokens = 0  # deltas received: one token each on vLLM
        self.complete = False  # no more text will come
        self.covered = 0  # characters covered by passing checks
        self.covered_tokens = 0
        self.task: asyncio.Task[tuple[Verdict, ...]] | None = None
        self._task_upto = (0, 0)
        self.checks = 0
        self.done = check_fn is None  # every character has passed (or is not screened)

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def gate(self) -> float:
        """How far (in characters) text has passed its checks."""
        return math.inf if self.done else self.covered

    def add(self, text: str) -> None:
        if text:
            if self.check_fn is not None:  # unscreened text is only counted, not kept
                self._parts.append(text)
            self.length += len(text)
            self.tokens += 1

    def finish(self) -> None:
        self.complete = True
        if self.check_fn is not None and self.covered >= self.length and self.task is None:
            self.done = True

    def maybe_start(self) -> asyncio.Task[tuple[Verdict, ...]] | None:
        """Start a check if one is due; returns the new task."""
        if self.done or self.task is not None or self.check_fn is None or self.length == self.covered:
            return None
        due = self.tokens - self.covered_tokens >= self.every or self.complete
        if not due:
            return None
        self._task_upto = (self.length, self.tokens)
        self.checks += 1
        self.task = asyncio.create_task(self.check_fn(self.text), name=self.name)
        return self.task

    def passed(self) -> None:
        """The in-flight check passed: its text is released."""
        self.covered, self.covered_tokens = self._task_upto
        self.task = None
        if self.complete and self.covered >= self.length:
            self.done = True

    def flagged_at(self) -> int:
        """Tokens the flagged in-flight check covered."""
        self.task = None
        return self._task_upto[1]

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
