"""Incremental screening of one growing text (one channel of one choice).

Text arrives a token at a time; a check starts once the schedule says one is due and
none is in flight, and it covers all text received so far. So at most one check per
channel is in flight, a slow guard simply makes the checks sparser, and each check's
input extends the previous one (the guard server's prefix cache serves the rest).

Where checks fall is decided here, by :func:`next_check_at`, from the tokens the last
passing check covered: fixed, every ``check_every_tokens``; growing, first at
``first_check_tokens``, then after ``clamp(ceil((growth - 1) * covered), first,
max_interval_tokens)`` more tokens. A slow guard's check covers more than its due
position, and the next interval grows from what it covered.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

from guards import Verdict

from .._config import CheckSchedule

__all__ = ["ChannelMonitor", "CheckFn", "Spawn", "check_positions", "next_check_at"]

CheckFn = Callable[[str], Coroutine[Any, Any, tuple[Verdict, ...]]]
# Runs ``check_fn(text)`` as a task named ``name`` (the relay's: in its TaskGroup).
Spawn = Callable[[CheckFn, str, str], "asyncio.Task[Any]"]


def _create_task(check_fn: CheckFn, text: str, name: str) -> asyncio.Task[Any]:
    return asyncio.create_task(check_fn(text), name=name)


def next_check_at(schedule: CheckSchedule, covered: int) -> int:
    """The token count at which the next check is due, after checks covered ``covered``."""
    if schedule.schedule == "fixed":
        return covered + schedule.every
    if covered == 0:
        return schedule.first_check_tokens
    grown = math.ceil((schedule.growth - 1) * covered)
    return covered + min(schedule.max_interval_tokens, max(schedule.first_check_tokens, grown))


def check_positions(schedule: CheckSchedule, length: int) -> list[int]:
    """Where the checks of a ``length``-token text fall when each check covers exactly
    its position (an instant guard): the schedule's positions, and the final check at
    ``length`` (the whole text is always checked)."""
    positions = []
    at = next_check_at(schedule, 0)
    while at < length:
        positions.append(at)
        at = next_check_at(schedule, at)
    positions.append(length)
    return positions


class ChannelMonitor:
    __slots__ = (
        "check_fn",
        "schedule",
        "_due",
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

    def __init__(self, check_fn: CheckFn | None, schedule: CheckSchedule, name: str = "guardproxy-check") -> None:
        self.check_fn = check_fn  # None: this channel is not screened
        self.schedule = schedule
        self._due = next_check_at(schedule, 0)  # tokens at which the next check is due
        self.name = name  # of its check tasks, so that a leaked one can be found
        self._parts: list[str] = []
        self.length = 0  # characters received
        self.tokens = 0  # deltas received: one token each on vLLM
        self.complete = False  # no more text will come
        self.covered = 0  # characters covered by passing checks
        self.covered_tokens = 0
        self.task: asyncio.Task[Any] | None = None
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

    def maybe_start(self, spawn: Spawn = _create_task) -> asyncio.Task[Any] | None:
        """Start a check if one is due (``spawn`` runs it); returns the new task."""
        if self.done or self.task is not None or self.check_fn is None or self.length == self.covered:
            return None
        if self.tokens < self._due and not self.complete:
            return None
        self._task_upto = (self.length, self.tokens)
        self.checks += 1
        self.task = spawn(self.check_fn, self.text, self.name)
        return self.task

    def passed(self) -> None:
        """The in-flight check passed: its text is released."""
        self.covered, self.covered_tokens = self._task_upto
        self._due = next_check_at(self.schedule, self.covered_tokens)
        self.task = None
        if self.complete and self.covered >= self.length:
            self.done = True

    def roll_back(self, length: int, tokens: int, check_fn: CheckFn | None) -> None:
        """Keep the first ``length`` characters (``tokens`` tokens), all passed, and
        go on from there as if nothing had come after them (a steered generation), with
        ``check_fn`` (a new one: a growing check builds on what it read before)."""
        self.check_fn = check_fn
        self._parts = [self.text[:length]] if self.check_fn is not None else []
        self.length = self.covered = length
        self.tokens = self.covered_tokens = tokens
        self.complete = False
        self.done = self.check_fn is None
        self.task = None
        self._task_upto = (length, tokens)
        self._due = next_check_at(self.schedule, tokens)

    @property
    def checking_tokens(self) -> int:
        """Tokens the last started check covers."""
        return self._task_upto[1]

    def flagged_at(self) -> int:
        """Tokens the flagged in-flight check covered."""
        self.task = None
        return self._task_upto[1]
