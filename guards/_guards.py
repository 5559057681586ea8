"""The two guard models: build the call, run it within its deadline, read the verdict.

``FlexGuard`` screens prompts (prompt mode) and answers (response mode);
``ReasoningShield`` screens reasoning as it grows, and final answers. Each check is one
backend call with ``config.timeout_s`` as its deadline (retries included); a backend
failure becomes :class:`GuardBackendError`, a missed deadline :class:`GuardTimeout`, an
answer cut at ``max_tokens`` :class:`VerdictTruncated`, and an answer out of format
:class:`VerdictParseError`.

Each guard neutralises slot text with a :class:`SlotSanitizer` that knows its backend's
added tokens (the tokenizer's, where the backend has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

from ._config import GuardModelConfig
from ._parse import judgment_to_risk_score, parse_flexguard, parse_reasoningshield
from ._prompts import (
    FLEXGUARD_PREAMBLE,
    GrowingSlot,
    SlotSanitizer,
    flexguard_prompt_messages,
    flexguard_response_messages,
    json_string,
    reasoningshield_messages,
    system_prompt,
)
from ._structured import flexguard_regex, reasoningshield_regex
from ._verdict import Stage, Verdict
from .backends._base import ChatMessage, ChatPrompt, Generation, GuardBackend
from .exceptions import GuardBackendError, GuardError, GuardTimeout, VerdictTruncated

__all__ = [
    "FLEXGUARD_MAX_TOKENS",
    "GrowingChecks",
    "REASONINGSHIELD_DATE",
    "REASONINGSHIELD_MAX_TOKENS",
    "FlexGuard",
    "ReasoningShield",
]

# The model cards' sampling.
FLEXGUARD_MAX_TOKENS = 2048
REASONINGSHIELD_MAX_TOKENS = 1024

# The Llama-3.2 chat template writes "Today Date: <date_string>" into the system turn,
# from the clock (strftime_now) unless the caller passes one: the prompt would change at
# midnight, losing the prefix cache, and differ from backend to backend. The authors do
# not publish the day of their evaluation runs; "26 Jul 2024" is the template's own
# fallback, what it renders where no clock is available: the one date that does not
# depend on when or where the prompt was rendered.
REASONINGSHIELD_DATE = "26 Jul 2024"


def where(name: str, config: GuardModelConfig) -> str:
    """The guard and where it runs, as a log line or an error names it."""
    if config.backend == "openai":
        return f"{name} (guard server {config.base_url}, model {config.model})"
    return f"{name} (in-process {config.backend}, model {config.model})"


@contextlib.contextmanager
def _named(name: str, config: GuardModelConfig) -> Iterator[None]:
    """Every guard error names its guard and server: a timeout or an unparseable answer
    says neither on its own, and the proxy's log must tell which guard failed."""
    try:
        yield
    except GuardError as exc:
        place = where(name, config)
        if exc.args and isinstance(exc.args[0], str) and config.base_url not in exc.args[0]:
            exc.args = (f"{place}: {exc.args[0]}", *exc.args[1:])
        raise


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
    if generation.finish_reason == "length":
        raise VerdictTruncated(
            f"the guard stopped at max_tokens ({prompt.max_tokens}) before finishing",
            generation.text,
        )
    return generation, time.perf_counter() - start


def _analysis_cap(config: GuardModelConfig) -> int | None:
    return config.max_analysis_tokens if config.max_analysis_tokens is not None else config.max_thinking_tokens


class GrowingChecks:
    """The checks of one text that only grows (the reasoning of one output, its answer)
    by one guard: what :meth:`FlexGuard.check_response` and
    :meth:`ReasoningShield.check_reasoning` send for the text so far, built without
    redoing what earlier checks built. The system prompt and the user message's fixed
    head are sanitised and encoded once; the slot text grows with :class:`GrowingSlot`.
    """

    __slots__ = ("_run", "_prompt", "_system", "_head", "_head_json", "_slot")

    def __init__(
        self,
        run: Callable[[ChatPrompt], Awaitable[Verdict]],
        prompt: Callable[[tuple[ChatMessage, ...]], ChatPrompt],
        system: str,
        head: str,
        slot: GrowingSlot,
    ) -> None:
        self._run = run
        self._prompt = prompt
        self._system = ChatMessage("system", system)
        self._head = head
        self._head_json = json_string(head)[:-1]  # the opening quote and the head
        self._slot = slot

    def request(self, text: str) -> ChatPrompt:
        """The prompt of a check of ``text``, the whole text so far."""
        self._slot.update(text)
        slot_text, slot_json = self._slot.render()
        user = ChatMessage("user", self._head + slot_text, content_json=self._head_json + slot_json + b'"')
        return self._prompt((self._system, user))

    async def check(self, text: str) -> Verdict:
        return await self._run(self.request(text))


class FlexGuard:
    """FlexGuard (Qwen3-8B): categories and a 0-100 risk score for prompts and answers."""

    name = "flexguard"

    def __init__(self, backend: GuardBackend, config: GuardModelConfig) -> None:
        self.backend = backend
        self.config = config
        self.sanitize = SlotSanitizer(backend.added_tokens())

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
        return self._prompt(flexguard_prompt_messages(user_text, sanitize=self.sanitize))

    def response_check(self, user_text: str, assistant_text: str) -> ChatPrompt:
        """Exactly what :meth:`check_response` sends to the backend."""
        return self._prompt(
            flexguard_response_messages(user_text, assistant_text, sanitize=self.sanitize)
        )

    def answer_checks(self, user_text: str) -> GrowingChecks:
        """The response-mode checks of an answer to ``user_text`` as it grows."""
        head = FLEXGUARD_PREAMBLE + "[User]: " + self.sanitize(user_text) + "\n" + "[Assistant]: "

        async def run(prompt: ChatPrompt) -> Verdict:
            return await self._check(prompt, "answer")

        return GrowingChecks(run, self._prompt, system_prompt("flexguard_response"), head, GrowingSlot(self.sanitize))

    async def check_prompt(self, user_text: str) -> Verdict:
        return await self._check(self.prompt_check(user_text), "prompt")

    async def check_response(self, user_text: str, assistant_text: str) -> Verdict:
        return await self._check(self.response_check(user_text, assistant_text), "answer")

    async def _check(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        with _named(self.name, self.config):
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
            completion_tokens=generation.completion_tokens,
        )


class ReasoningShield:
    """ReasoningShield (Llama-3.2-1B/3B): Judgment 0 / 0.5 / 1 on reasoning or an answer."""

    name = "reasoningshield"

    def __init__(self, backend: GuardBackend, config: GuardModelConfig) -> None:
        self.backend = backend
        self.config = config
        self.sanitize = SlotSanitizer(backend.added_tokens())

    def _prompt(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt:
        cfg = self.config
        return ChatPrompt(
            messages=messages,
            max_tokens=cfg.max_tokens or REASONINGSHIELD_MAX_TOKENS,
            chat_template_kwargs={"date_string": REASONINGSHIELD_DATE},
            regex=reasoningshield_regex(_analysis_cap(cfg)) if cfg.structured_output else None,
        )

    def reasoning_check(self, query: str, thought: str) -> ChatPrompt:
        """Exactly what :meth:`check_reasoning` (and :meth:`check_answer`) sends."""
        return self._prompt(reasoningshield_messages(query, thought, sanitize=self.sanitize))

    def growing_checks(self, query: str, stage: Stage = "reasoning") -> GrowingChecks:
        """The checks of the reasoning (or, with ``stage="answer"``, the final answer) to
        ``query`` as it grows."""
        head = f"Query: {self.sanitize(query)}\nThought: "

        async def run(prompt: ChatPrompt) -> Verdict:
            return await self._check(prompt, stage)

        return GrowingChecks(run, self._prompt, system_prompt("reasoningshield"), head, GrowingSlot(self.sanitize))

    async def check_reasoning(self, query: str, thought: str) -> Verdict:
        return await self._check(self.reasoning_check(query, thought), "reasoning")

    async def check_answer(self, query: str, answer: str) -> Verdict:
        # The card: the Thought slot also takes a final answer.
        return await self._check(self.reasoning_check(query, answer), "answer")

    async def _check(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        with _named(self.name, self.config):
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
            completion_tokens=generation.completion_tokens,
        )
