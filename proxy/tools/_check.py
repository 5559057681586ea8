"""``guardproxy check``: one text through the configured guard, its verdict and what the
policy would do with it (exit status 1 when flagged)."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from guards import FlexGuard, ReasoningShield, open_backend

from .._config import ProxyConfig
from ..pipeline._policy import decide

__all__ = ["check"]


async def _check(config: ProxyConfig, text: str, response: str | None, reasoning: str | None, raw: bool, out: TextIO) -> int:
    policy = config.policy
    if reasoning is not None:
        guard_config = config.guards.reasoningshield
        backend = await open_backend(guard_config)
        try:
            verdict = await ReasoningShield(backend, guard_config).check_reasoning(text, reasoning)
        finally:
            await backend.aclose()
        stage = "reasoning"
    else:
        guard_config = config.guards.flexguard
        backend = await open_backend(guard_config)
        try:
            guard = FlexGuard(backend, guard_config)
            verdict = await (guard.check_response(text, response) if response is not None else guard.check_prompt(text))
        finally:
            await backend.aclose()
        stage = "answer" if response is not None else "prompt"
    decision = decide(stage, (verdict,), policy)  # type: ignore[arg-type]
    print(f"guard:      {verdict.guard} ({guard_config.model})", file=out)
    print(f"stage:      {stage}", file=out)
    print(f"categories: {', '.join(verdict.categories) or 'SAFE'}", file=out)
    if verdict.judgment is not None:
        print(f"judgment:   {verdict.judgment:g}", file=out)
    print(f"risk score: {verdict.risk_score}", file=out)
    print(f"threshold:  {decision.threshold} (strictness {policy.strictness})", file=out)
    print(f"flagged:    {'yes' if decision.flagged else 'no'}", file=out)
    print(f"action:     {decision.action}", file=out)
    print(f"latency:    {verdict.latency_s * 1000:.0f} ms", file=out)
    if raw:
        print("output:\n" + verdict.output, file=out)
    return 1 if decision.flagged else 0


def check(
    config: ProxyConfig,
    text: str,
    *,
    response: str | None = None,
    reasoning: str | None = None,
    raw: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print the verdict; exit status 1 when flagged, 0 when not."""
    return asyncio.run(_check(config, text, response, reasoning, raw, out or sys.stdout))
