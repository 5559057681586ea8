"""The two guard models: build the call, run it within its deadline, read the verdict.

``FlexGuard`` screens prompts (prompt mode) and answers (response mode);
``ReasoningShield`` screens reasoning as it grows, and final answers. Each check is one
backend call with ``config.timeout_s`` as its deadline (retries included); a backend
failure becomes :class:`GuardBackendError`, a missed deadline :class:`GuardTimeout`, and
an answer out of format :class:`VerdictParseError`.
"""

from __future__ import annotations

import asyncio
import time

from ._config import GuardModelConfig
from ._parse import judgment_to_risk_score, parse_flexguard, parse_reasoningshield
from ._prompts import (
    flexguard_prompt_messages,
    flexguard_response_messages,
    reasoningshield_messages,
)
from ._structured import flexguard_regex, reasoningshield_regex
from ._verdict import Stage, Verdict
from .backends._base import ChatMessage, ChatPrompt, Generation, GuardBackend
from .exceptions import GuardBackendError, GuardError, GuardTimeout

__all__ = ["FlexGuard", "ReasoningShield", "FLEXGUARD_MAX_TOKENS", "REASONINGSHIELD_MAX_TOKENS"]

# The model cards' sampling.
FLEXGUARD_MAX_TOKENS = 2048
REASONINGSHIELD_MAX_TOKENS = 1024


async def _run(
    backend: GuardBackend, config: GuardModelConfig, prompt: ChatPrompt
) -> tuple[Generation, float]:
    """One backend call under the check's deadline; returns the generation and latency."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(config.timeout_s):
            generation = await backend.generate(prompt)
    except TimeoutError as exc:
        raise GuardTimeout(f"no verdict within {config.timeout_s:g} s") from exc
    except GuardError:
        raise
    except Exception as exc:
        # A backend that breaks its contract still must not crash the proxy's stream:
        # every failure to get a verdict is a GuardError, handled by on_guard_error.
        raise GuardBackendError(f"guard backend failed: {type(exc).__name__}") from exc
    return generation, time.perf_counter() - start


class FlexGuard:
    """FlexGuard (Qwen3-8B): categories and a 0-100 risk score for prompts and answers."""

    name = "flexguard"

    def __init__(self, backend: GuardBackend, config: GuardModelConfig) -> None:
        self.backend = backend
        self.config = config

    def _prompt(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt:
        cfg = self.config
        return ChatPrompt(
            messages=messages,
            max_tokens=cfg.max_tokens or FLEXGUARD_MAX_TOKENS,
            chat_template_kwargs={"enable_thinking": True},
            regex=flexguard_regex(cfg.max_thinking_tokens) if cfg.structured_output else None,
        )

    def prompt_check(self, user_text: str) -> ChatPrompt:
        """Exactly what :meth:`check_prompt` sends to the backend."""
        return self._prompt(flexguard_prompt_messages(user_text))

    def response_check(self, user_text: str, assistant_text: str) -> ChatPrompt:
        """Exactly what :meth:`check_response` sends to the backend."""
        return self._prompt(flexguard_response_messages(user_text, assistant_text))

    async def check_prompt(self, user_text: str) -> Verdict:
        return await self._check(self.prompt_check(user_text), "prompt")

    async def check_response(self, user_text: str, assistant_text: str) -> Verdict:
        return await self._check(self.response_check(user_text, assistant_text), "answer")

    async def _check(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        generation, latency = await _run(self.backend, self.config, prompt)
        categories, risk_score = parse_flexguard(generation.text)
        return Verdict(
            guard="flexguard",
            stage=stage,
            risk_score=risk_score,
            categories=categories,
            output=generation.text,
            latency_s=latency,
            prompt_tokens=generation.prompt_tokens,
            cached_tokens=generation.cached_tokens,
        )


class ReasoningShield:
    """ReasoningShield (Llama-3.2-1B/3B): Judgment 0 / 0.5 / 1 on reasoning or an answer."""

    name = "reasoningshield"

    def __init__(self, backend: GuardBackend, config: GuardModelConfig) -> None:
        self.backend = backend
        self.config = config

    def reasoning_check(self, query: str, thought: str) -> ChatPrompt:
        """Exactly what :meth:`check_reasoning` (and :meth:`check_answer`) sends."""
        cfg = self.config
        return ChatPrompt(
            messages=reasoningshield_messages(query, thought),
            max_tokens=cfg.max_tokens or REASONINGSHIELD_MAX_TOKENS,
            regex=reasoningshield_regex(cfg.max_thinking_tokens) if cfg.structured_output else None,
        )

    async def check_reasoning(self, query: str, thought: str) -> Verdict:
        return await self._check(self.reasoning_check(query, thought), "reasoning")

    async def check_answer(self, query: str, answer: str) -> Verdict:
        # The card: the Thought slot also takes a final answer.
        return await self._check(self.reasoning_check(query, answer), "answer")

    async def _check(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        generation, latency = await _run(self.backend, self.config, prompt)
        judgment = parse_reasoningshield(generation.text)
        return Verdict(
            guard="reasoningshield",
            stage=stage,
            risk_score=judgment_to_risk_score(judgment),
            judgment=judgment,
            output=generation.text,
            latency_s=latency,
            prompt_tokens=generation.prompt_tokens,
            cached_tokens=generation.cached_tokens,
        )
