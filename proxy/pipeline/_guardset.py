"""The guard models one proxy uses, as the check functions the pipeline calls, and the
bound on the guard work of the whole process.

The pipeline asks for checks ("is this prompt / reasoning / answer acceptable?") and
gets verdicts; how a guard is prompted and parsed stays in ``guards``.

Every guard call takes a slot of its guard's ``GuardCapacity`` first (the guard's
``admit``): at most ``server.guard_concurrency`` calls per guard are in flight, at most
``guard_queue`` wait, each for at most ``guard_queue_timeout_s``. Past that a check fails
at once with ``GuardOverloadedError`` (a guard error: the client gets 503
``guard_overloaded`` with Retry-After, ``_errors.guard_error_class``). Without the bound,
one request with thousands of checks would queue as many connections in the HTTP pool,
and handing them out stalls the event loop. A verdict from the verdict cache, or shared with an identical call in
flight, is no call and takes no slot: it neither waits behind a busy guard nor holds a
slot while the call it shares runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from guards import FlexGuard, GuardError, ReasoningShield, Verdict

from .._config import ServerConfig
from ..protocols._base import Turn
from ._monitor import CheckFn

__all__ = ["GuardSet", "GuardCapacity", "GuardOverloadedError", "gather_checks"]

T = TypeVar("T")


class GuardOverloadedError(GuardError):
    """No slot for this guard call within the bounded wait: the guard is overloaded."""


class GuardCapacity:
    """A semaphore with a bounded queue and a bounded wait."""

    def __init__(self, concurrency: int, queue: int, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._wait_s = wait_s
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self._queue:
            raise GuardOverloadedError(f"{self.waiting} calls already wait for this guard")
        self.waiting += 1
        try:
            async with asyncio.timeout(self._wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise GuardOverloadedError(f"no free slot within {self._wait_s:g} s") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


class GuardSet:
    def __init__(
        self, flexguard: FlexGuard | None, reasoningshield: ReasoningShield | None, server: ServerConfig | None = None
    ) -> None:
        self.flexguard = flexguard
        self.reasoningshield = reasoningshield
        s = server or ServerConfig()
        self.capacity = {
            name: GuardCapacity(s.guard_concurrency, s.guard_queue, s.guard_queue_timeout_s)
            for name in ("flexguard", "reasoningshield")
        }
        for guard in (flexguard, reasoningshield):
            if guard is not None:
                guard.admit = self.capacity[guard.name].slot

    async def check_prompt(self, text: str) -> tuple[Verdict, ...]:
        assert self.flexguard is not None
        return (await self.flexguard.check_prompt(text),)

    async def check_conversation(self, turns: Sequence[Turn]) -> tuple[Verdict, ...]:
        """One check per turn, concurrently, in the format FlexGuard was trained on; the
        verdicts in the turns' order. A user turn's check is the one ``last_user`` mode
        makes, so the guard server's prefix cache serves both."""
        flex = self.flexguard
        assert flex is not None
        return await gather_checks(
            [flex.check_prompt(t.text) if t.user is None else flex.check_response(t.user, t.text) for t in turns]
        )

    def reasoning_check(self, query: str) -> CheckFn | None:
        """The check function of one growing reasoning text (one output's): each check
        extends what the previous one built (guards.GrowingChecks)."""
        shield = self.reasoningshield
        if shield is None:
            return None
        checks = shield.growing_checks(query)

        async def check(thought: str) -> tuple[Verdict, ...]:
            return (await checks.check(thought),)

        return check

    def answer_check(self, query: str, with_reasoningshield: bool) -> CheckFn | None:
        """The check function of one growing answer, by FlexGuard and, if asked, by
        ReasoningShield too."""
        flex, shield = self.flexguard, self.reasoningshield if with_reasoningshield else None
        if flex is None and shield is None:
            return None
        flex_checks = flex.answer_checks(query) if flex is not None else None
        shield_checks = shield.growing_checks(query, "answer") if shield is not None else None

        async def check(answer: str) -> tuple[Verdict, ...]:
            calls = []
            if flex_checks is not None:
                calls.append(flex_checks.check(answer))
            if shield_checks is not None:
                calls.append(shield_checks.check(answer))
            return await gather_checks(calls)

        return check


async def gather_checks(calls: Sequence[Awaitable[Verdict]]) -> tuple[Verdict, ...]:
    """Run checks together; the first failure cancels the rest and is raised as itself
    (not as an ExceptionGroup), so that callers handle one GuardError."""
    if len(calls) == 1:
        return (await calls[0],)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_awaited(c)) for c in calls]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return tuple(t.result() for t in tasks)


async def _awaited(call: Awaitable[T]) -> T:
    return await call
