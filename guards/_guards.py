"""The two guard models: build the call, run it within its deadline, read the verdict.

``FlexGuard`` screens prompts (prompt mode) and answers (response mode);
``ReasoningShield`` screens reasoning as it grows, and final answers. Each check is one
backend call with ``config.timeout_s`` as its deadline (retries included); a backend
failure becomes :class:`GuardBackendError`, a missed deadline :class:`GuardTimeout`, an
answer cut at ``max_tokens`` :class:`VerdictTruncated`, and an answer out of format
:class:`VerdictParseError`.

Each guard neutralises slot text with a :class:`SlotSanitizer` that knows its backend's
added tokens (the tokenizer's, where the backend has one).

Given a :class:`VerdictCache`, a guard answers a check of a whole text (a prompt, an
earlier turn, a final answer) from it when it has read the same input before; the checks
of a text that grows (:class:`GrowingChecks`) are new input every time, and skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterator

from ._cache import VerdictCache
from ._config import GuardModelConfig
from ._context import (
    OVERLAP_DIVISOR,
    QUERY_SHARE_DIVISOR,
    ContextFit,
    check_windows,
    estimate_fit,
    read_fit,
)
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
    "Admission",
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


# What bounds a guard's calls in flight, set by whoever runs the guards (the proxy's
# GuardCapacity): a slot around each backend call, so that a verdict the cache gives, or
# shares with an identical call in flight, takes none. By default, no bound.
Admission = Callable[[], contextlib.AbstractAsyncContextManager[None]]


def _unbounded() -> contextlib.AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


async def _run(backend: GuardBackend, config: GuardModelConfig, prompt: ChatPrompt, admit: Admission) -> tuple[Generation, float]:
    """One backend call in a slot from ``admit``, under the check's deadline; returns the
    generation and latency (from the call's start: the wait for a slot is not the guard's)."""
    async with admit():
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

    Given a ``window`` (the tokens the guard's context leaves for the text, see
    guards/_context.py), a check reads the text from the window's start. When the text
    outgrows the window, the start moves forward to leave half a window: checks then
    share their prompt's start again until the next move, so that the guard's prefix
    cache still serves most of each check, and a trace of any length never outgrows the
    context. Text that would pass out of reach unread (a jump of more than half a window
    between two checks) is checked in windows of its own, in the same check; every
    window starts an eighth of a window before the end of what the last check read.
    """

    __slots__ = ("_run", "_prompt", "_system", "_head", "_head_json", "_slot", "_fit", "_window", "_start", "_covered")

    def __init__(
        self,
        run: Callable[[ChatPrompt], Awaitable[Verdict]],
        prompt: Callable[[tuple[ChatMessage, ...]], ChatPrompt],
        system: str,
        head: str,
        slot: GrowingSlot,
        *,
        fit: ContextFit | None = None,
        window: int | None = None,
    ) -> None:
        self._run = run
        self._prompt = prompt
        self._system = ChatMessage("system", system)
        self._head = head
        self._head_json = json_string(head)[:-1]  # the opening quote and the head
        self._slot = slot
        self._fit = fit
        self._window = window
        self._start = 0  # where in the text the window starts
        self._covered = 0  # the end of the text the last check read

    def _growing(self, slot_text: str, slot_json: bytes) -> ChatPrompt:
        user = ChatMessage("user", self._head + slot_text, content_json=self._head_json + slot_json + b'"')
        return self._prompt((self._system, user))

    def requests(self, text: str) -> list[ChatPrompt]:
        """The prompts of a check of ``text``, the whole text so far: the window's last;
        before it, those of text the window moved past unread (usually none)."""
        if len(text) < self._covered:  # not an extension: a new text
            self._start = self._covered = 0
            self._slot.reset()
        self._slot.update(text[self._start :])
        slot_text, slot_json = self._slot.render()
        fit, size = self._fit, self._window
        if fit is None or size is None or fit.measure.fits(slot_text, size):
            self._covered = len(text)
            return [self._growing(slot_text, slot_json)]
        start = fit.start_before(text, self._start, len(text), size // 2)
        # Where the unread text starts, with an eighth of a window of what was read.
        unread = fit.start_before(text, self._start, self._covered, size // OVERLAP_DIVISOR)
        prompts: list[ChatPrompt] = []
        if start > unread:
            end = fit.end_from(text, start, size // OVERLAP_DIVISOR)
            for a, b in fit.windows(text[unread:end], size):
                user = ChatMessage("user", self._head + fit.sanitize(text[unread + a : unread + b]))
                prompts.append(self._prompt((self._system, user)))
        self._start = start
        self._slot.reset()
        self._slot.update(text[start:])
        self._covered = len(text)
        prompts.append(self._growing(*self._slot.render()))
        return prompts

    def request(self, text: str) -> ChatPrompt:
        """The prompt of the window of ``text`` (see :meth:`requests`)."""
        return self.requests(text)[-1]

    async def check(self, text: str) -> Verdict:
        return await check_windows([functools.partial(self._run, p) for p in self.requests(text)])


class FlexGuard:
    """FlexGuard (Qwen3-8B): categories and a 0-100 risk score for prompts and answers."""

    name = "flexguard"

    def __init__(self, backend: GuardBackend, config: GuardModelConfig, cache: VerdictCache | None = None) -> None:
        self.backend = backend
        self.config = config
        self.cache = cache
        self.admit: Admission = _unbounded
        self.sanitize = SlotSanitizer(backend.added_tokens())
        # Until fit_context reads the guard's own figures: the configured or default
        # context, the prompts' fixed parts counted as bytes (safe, guards/_context.py).
        self.context = estimate_fit(backend, config, self._empty(), self.sanitize)

    def _empty(self) -> dict[str, ChatPrompt]:
        return {"prompt": self.prompt_check(""), "response": self.response_check("", "")}

    async def fit_context(self) -> ContextFit:
        """Read the guard's context and the size of its prompts' fixed parts from the
        backend (once, when the guards are opened); every check fits it from then on."""
        self.context = await read_fit(self.backend, self.config, self._empty(), self.sanitize)
        return self.context

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
        return self._prompt(flexguard_response_messages(user_text, assistant_text, sanitize=self.sanitize))

    def answer_checks(self, user_text: str) -> GrowingChecks:
        """The response-mode checks of an answer to ``user_text`` as it grows."""
        fit = self.context
        user_text = fit.bounded(user_text, fit.budget("response") // QUERY_SHARE_DIVISOR)
        clean = self.sanitize(user_text)
        head = FLEXGUARD_PREAMBLE + "[User]: " + clean + "\n" + "[Assistant]: "

        async def run(prompt: ChatPrompt) -> Verdict:
            return await self._call(prompt, "answer")

        window = fit.window("response", fit.measure(clean))
        return GrowingChecks(
            run, self._prompt, system_prompt("flexguard_response"), head, GrowingSlot(self.sanitize), fit=fit, window=window
        )

    async def check_prompt(self, user_text: str) -> Verdict:
        """One check, or one per window of a text longer than the guard's context (the
        worst window's verdict decides)."""
        _, spans = self.context.plan("prompt", user_text)
        if len(spans) == 1:
            return await self._check(self.prompt_check(user_text), "prompt")
        prompts = [self.prompt_check(user_text[a:b]) for a, b in spans]
        return await check_windows([functools.partial(self._check, p, "prompt") for p in prompts])

    async def check_response(self, user_text: str, assistant_text: str) -> Verdict:
        """As :meth:`check_prompt`, in windows of the answer, each judged against the
        user's message (its end, where the two do not fit together)."""
        kept, spans = self.context.plan("response", assistant_text, user_text)
        user = user_text if kept is None else kept
        prompts = [self.response_check(user, assistant_text[a:b]) for a, b in spans]
        return await check_windows([functools.partial(self._check, p, "answer") for p in prompts])

    async def _check(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        """A check of a whole text: the verdict cache's, where there is one."""
        if self.cache is None:
            return await self._call(prompt, stage)
        return await self.cache.check(self.name, self.config.model, prompt, stage, self._call)

    async def _call(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        with _named(self.name, self.config):
            generation, latency = await _run(self.backend, self.config, prompt, self.admit)
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

    def __init__(self, backend: GuardBackend, config: GuardModelConfig, cache: VerdictCache | None = None) -> None:
        self.backend = backend
        self.config = config
        self.cache = cache
        self.admit: Admission = _unbounded
        self.sanitize = SlotSanitizer(backend.added_tokens())
        self.context = estimate_fit(backend, config, self._empty(), self.sanitize)

    def _empty(self) -> dict[str, ChatPrompt]:
        return {"reasoning": self.reasoning_check("", "")}

    async def fit_context(self) -> ContextFit:
        """As :meth:`FlexGuard.fit_context`."""
        self.context = await read_fit(self.backend, self.config, self._empty(), self.sanitize)
        return self.context

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
        fit = self.context
        # The query keeps at most a quarter of the context (its end); the reasoning's
        # window is what remains.
        clean = self.sanitize(fit.bounded(query, fit.budget("reasoning") // QUERY_SHARE_DIVISOR))
        head = f"Query: {clean}\nThought: "

        async def run(prompt: ChatPrompt) -> Verdict:
            return await self._call(prompt, stage)

        window = fit.window("reasoning", fit.measure(clean))
        return GrowingChecks(
            run, self._prompt, system_prompt("reasoningshield"), head, GrowingSlot(self.sanitize), fit=fit, window=window
        )

    async def check_reasoning(self, query: str, thought: str) -> Verdict:
        return await self._windows(query, thought, "reasoning")

    async def check_answer(self, query: str, answer: str) -> Verdict:
        # The card: the Thought slot also takes a final answer.
        return await self._windows(query, answer, "answer")

    async def _windows(self, query: str, thought: str, stage: Stage) -> Verdict:
        """One check, or one per window of a text longer than the guard's context, each
        with the query (its end, where the two do not fit together)."""
        kept, spans = self.context.plan("reasoning", thought, query)
        q = query if kept is None else kept
        prompts = [self.reasoning_check(q, thought[a:b]) for a, b in spans]
        return await check_windows([functools.partial(self._check, p, stage) for p in prompts])

    async def _check(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        """A check of a whole text: the verdict cache's, where there is one."""
        if self.cache is None:
            return await self._call(prompt, stage)
        return await self.cache.check(self.name, self.config.model, prompt, stage, self._call)

    async def _call(self, prompt: ChatPrompt, stage: Stage) -> Verdict:
        with _named(self.name, self.config):
            generation, latency = await _run(self.backend, self.config, prompt, self.admit)
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
