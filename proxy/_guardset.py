"""The guard models one proxy uses, as the check functions the pipeline calls.

The pipeline asks for checks ("is this prompt / reasoning / answer acceptable?") and
gets verdicts; how a guard is prompted and parsed stays in ``guards``.
"""

from __future__ import annotations

import asyncio

from guards import FlexGuard, ReasoningShield, Verdict

from ._monitor import CheckFn

__all__ = ["GuardSet"]


class GuardSet:
    def __init__(self, flexguard: FlexGuard | None, reasoningshield: ReasoningShield | None) -> None:
        self.flexguard = flexguard
        self.reasoningshield = reasoningshield

    async def check_prompt(self, text: str) -> tuple[Verdict, ...]:
        assert self.flexguard is not None
        return (await self.flexguard.check_prompt(text),)

    def reasoning_check(self, query: str) -> CheckFn | None:
        shield = self.reasoningshield
        if shield is None:
            return None

        async def check(thought: str) -> tuple[Verdict, ...]:
            return (await shield.check_reasoning(query, thought),)

        return check

    def answer_check(self, query: str, with_reasoningshield: bool) -> CheckFn | None:
        flex, shield = self.flexguard, self.reasoningshield if with_reasoningshield else None
        if flex is None and shield is None:
            return None

        async def check(answer: str) -> tuple[Verdict, ...]:
            calls = []
            if flex is not None:
                calls.append(flex.check_response(query, answer))
            if shield is not None:
                calls.append(shield.check_answer(query, answer))
            return tuple(await asyncio.gather(*calls))

        return check
