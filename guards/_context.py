"""Every guard input fits the guard's context: the token budget of a guard's slot text,
how a text is measured against it, the overlapping windows a long text is screened in,
and the one verdict of several windows.

The budget
----------
A guard server refuses a prompt longer than its ``max_model_len`` (vLLM answers HTTP
400), and the proxy would report that as a guard outage on every retry. Where the prompt
fits but leaves less than ``max_tokens``, vLLM refuses too (older versions) or lowers
``max_tokens`` (newer ones), which may cut the verdict. So the slot text of each check is
bounded::

    budget = max_model_len - (tokens of the prompt with empty slots) - max_tokens - MARGIN_TOKENS

``max_model_len`` is, in this order of preference: what the guard serves (vLLM lists it
per model in ``GET /v1/models``; an in-process engine knows its own), capped by the
guard's ``max_model_len`` option where both are known; the option alone; or
``DEFAULT_MAX_MODEL_LEN``. The empty prompt (system prompt, the user turn's fixed text,
the chat template's tokens) is counted by the guard's own tokenizer where the backend can
(vLLM's ``POST /tokenize``, an in-process tokenizer), else as its UTF-8 bytes plus
``TEMPLATE_TOKENS``. ``max_tokens`` is what each check asks for (the card's value or the
option), which the thinking and analysis caps stay below.

Measuring slot text
-------------------
Where the backend has a tokenizer, a window is measured in its tokens. The openai backend
has none, so a window is measured in UTF-8 bytes, which is safe for the guards' tokenizers:
Qwen3 (FlexGuard) and Llama 3.2 (ReasoningShield) are byte-level BPE, whose every token
stands for at least one byte of text, except the added tokens, which the slot sanitiser
breaks apart; so a slot text of n bytes never becomes more than n tokens. What the
tokenizer merges across the edges of the slot (at most a token on each side) and small
differences in how servers count are covered by ``MARGIN_TOKENS``. Bytes overcount
(English text has about four per token): windows are smaller than they need be, never
too large. A text is measured as the guard reads it, after sanitising, which inserts
characters.

Windows
-------
A text over its window is cut into windows that each fit, cut after a space or line
break where one is near, each overlapping the one before by about an eighth of a window
(``OVERLAP_DIVISOR``), so that a phrase cut by one boundary appears whole in the next
window. Each window is its own check; the verdict of the text is the worst window's
(:func:`worst_verdict`). A text that fits is one check.

Where the guard judges one text against another (FlexGuard's response mode: the answer
against the user's message; ReasoningShield: the reasoning against the query), the other
text keeps at most a quarter of the budget (``QUERY_SHARE_DIVISOR``), its end: the part a
question usually ends with, and what the model read last before answering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec

from ._config import GuardModelConfig
from ._verdict import Verdict
from .backends._base import ChatPrompt, GuardBackend

__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "MARGIN_TOKENS",
    "OVERLAP_DIVISOR",
    "QUERY_SHARE_DIVISOR",
    "ContextFit",
    "Measure",
    "check_windows",
    "estimate_fit",
    "read_fit",
    "utf8_len",
    "worst_verdict",
]

# Qwen3's native context (FlexGuard's base); Llama 3.2 (ReasoningShield's) has more, but a
# server may be started with less, and a smaller window is only more checks.
DEFAULT_MAX_MODEL_LEN = 32768
# Tokens kept free for what the tokenizer merges across a slot's edges and for servers
# that count a few tokens more (a BOS, a generation prompt).
MARGIN_TOKENS = 64
# What a chat template adds around the messages when no tokenizer can count it (role
# headers, turn ends, the generation prompt: about 5 tokens per message for both guards).
TEMPLATE_TOKENS = 32
OVERLAP_DIVISOR = 8
QUERY_SHARE_DIVISOR = 4
# Below this a window holds too little to judge; a context too small for it is a
# configuration error, reported at start-up.
MIN_WINDOW = 128
# The windows of one check run at most this many at a time: they all hold the check's
# one slot of the guard's capacity (proxy/pipeline/_guardset.py).
WINDOW_CONCURRENCY = 4

# Sanitising inserts at most one ZERO WIDTH SPACE (3 UTF-8 bytes) before each character
# and at the end.
_BREAK_BYTES = 3


def utf8_len(text: str) -> int:
    """UTF-8 bytes of ``text`` (a lone surrogate counted as the 3 bytes it would take)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Measure:
    """An upper bound of the tokens a sanitised slot text becomes: the tokenizer's count
    where there is one, else its UTF-8 bytes (see the module docstring)."""

    __slots__ = ("count", "chars_per_unit")

    def __init__(self, count: Callable[[str], int] | None = None) -> None:
        self.count = count
        # How many characters the first guess of a window takes per unit of the budget:
        # a character is at least one byte; a token is rarely more than six characters.
        self.chars_per_unit = 1 if count is None else 6

    @property
    def unit(self) -> str:
        return "UTF-8 bytes" if self.count is None else "tokens"

    def __call__(self, text: str) -> int:
        return utf8_len(text) if self.count is None else self.count(text)

    def fits(self, text: str, size: int) -> bool:
        # Bytes bound tokens from above: most texts fit without being tokenised.
        return utf8_len(text) <= size or (self.count is not None and self.count(text) <= size)

    def raw_fits(self, raw: str, size: int) -> bool:
        """Whether ``raw`` fits whatever sanitising inserts, without sanitising it."""
        return len(raw) <= size and _raw_bound(raw) <= size


@dataclass(frozen=True, slots=True)
class ContextFit:
    """How one guard's checks fit its context: the slot budget of each kind of prompt,
    and where the numbers come from (for the start-up log)."""

    max_model_len: int
    source: str  # "served", "config", "served, capped by config", "default"
    budgets: dict[str, int]  # prompt kind -> slot tokens available (all slots together)
    measure: Measure
    sanitize: Callable[[str], str]
    window_cap: int | None = None  # the guard's window_tokens option
    counted: bool = False  # whether the empty prompts were counted by the guard's tokenizer

    def budget(self, kind: str) -> int:
        return max(MIN_WINDOW, self.budgets[kind])

    def window(self, kind: str, spent: int = 0) -> int:
        """The window of the judged text in a prompt of ``kind`` whose other slot holds
        ``spent`` tokens."""
        size = self.budget(kind) - spent
        if self.window_cap is not None:
            size = min(size, self.window_cap)
        return max(MIN_WINDOW // 2, size)

    @property
    def problem(self) -> str | None:
        """Why some checks may still exceed the context, or None."""
        short = {k: b for k, b in self.budgets.items() if b < MIN_WINDOW}
        if not short:
            return None
        return (
            f"the context of {self.max_model_len} tokens leaves {min(short.values())} tokens for the text "
            f"(fewer than {MIN_WINDOW}): serve the guard with a longer max_model_len or lower its max_tokens"
        )

    def describe(self) -> str:
        windows = ", ".join(f"{k} {self.window(k)}" for k in self.budgets)
        counted = "counted by its tokenizer" if self.counted else "estimated from their bytes"
        source = "default: the guard does not say, and max_model_len is unset" if self.source == "default" else self.source
        return (
            f"context {self.max_model_len} tokens ({source}); windows of at most "
            f"{windows} {self.measure.unit} (fixed prompt parts {counted})"
        )

    # The measure of raw text as the guard reads it.
    def _m(self, raw: str) -> int:
        return self.measure(self.sanitize(raw))

    def fits(self, raw: str, size: int) -> bool:
        return self.measure.raw_fits(raw, size) or self.measure.fits(self.sanitize(raw), size)

    def plan(self, kind: str, judged: str, other: str | None = None) -> tuple[str | None, list[tuple[int, int]]]:
        """How the check of ``judged`` in a prompt of ``kind`` fits: what it keeps of
        ``other`` (the user's message or the query the text is judged against) and the
        windows of ``judged``. One window and all of ``other`` when both fit."""
        budget = self.budget(kind)
        cap = budget if self.window_cap is None else self.window_cap
        # Cheap bounds first: most checks fit without being measured.
        o = 0 if other is None else _raw_bound(other)
        j = _raw_bound(judged)
        if o + j <= budget and j <= cap:
            return other, [(0, len(judged))]
        o = 0 if other is None else self._m(other)
        j = self._m(judged)
        if o + j <= budget and j <= cap:
            return other, [(0, len(judged))]
        if other is not None:
            other = self.bounded(other, max(budget // QUERY_SHARE_DIVISOR, budget - min(j, cap)))
            o = self._m(other)
        return other, self.windows(judged, self.window(kind, o))

    def bounded(self, text: str, size: int) -> str:
        """``text``, or its end that fits ``size``."""
        return text if self.fits(text, size) else self.tail(text, size)

    def windows(self, text: str, size: int) -> list[tuple[int, int]]:
        """Spans ``(start, end)`` of ``text`` that cover it, each fitting ``size`` once
        sanitised, each starting before the previous one ends (by about an eighth)."""
        if self.fits(text, size):
            return [(0, len(text))]
        spans: list[tuple[int, int]] = []
        a = 0
        while True:
            b = self.end_from(text, a, size)
            spans.append((a, b))
            if b >= len(text):
                return spans
            overlap = (b - a) // OVERLAP_DIVISOR
            nxt = _after_space(text, b - overlap, b - overlap + overlap // 2)
            a = nxt if a < nxt < b else max(a + 1, b - overlap)

    def end_from(self, text: str, a: int, size: int) -> int:
        """An end ``b > a`` such that ``text[a:b]`` fits ``size``, as far as cheaply found."""
        n = min(len(text) - a, size * self.measure.chars_per_unit)
        while True:
            b = a + n
            if b < len(text):
                b = _before_space(text, b - n // 16, b)
            got = self._m(text[a:b])
            if got <= size or b - a <= 1:
                return b
            n = max(1, min(b - a - 1, (b - a) * size // got))

    def start_before(self, text: str, lo: int, end: int, size: int) -> int:
        """A start ``lo <= p < end`` such that ``text[p:end]`` fits ``size``, as early as
        cheaply found (``lo`` itself when all of it fits)."""
        if self.fits(text[lo:end], size):
            return lo
        n = min(end - lo, size * self.measure.chars_per_unit)
        while True:
            p = end - n
            if p > lo:
                p = _after_space(text, p, p + n // 16)
            got = self._m(text[p:end])
            if got <= size or end - p <= 1:
                return p
            n = max(1, min(end - p - 1, (end - p) * size // got))

    def tail(self, text: str, size: int) -> str:
        """The end of ``text`` that fits ``size`` (all of it when it fits)."""
        return text[self.start_before(text, 0, len(text), size) :]


def _raw_bound(raw: str) -> int:
    """An upper bound of the tokens or bytes of ``raw`` once sanitised."""
    return utf8_len(raw) + _BREAK_BYTES * (len(raw) + 1)


def _before_space(text: str, lo: int, b: int) -> int:
    """``b``, moved back to just after the last space or line break in ``text[lo:b]``."""
    i = max(text.rfind(" ", lo, b), text.rfind("\n", lo, b))
    return i + 1 if i >= 0 and i + 1 > lo else b


def _after_space(text: str, p: int, hi: int) -> int:
    """``p``, moved forward to just after the first space or line break in ``text[p:hi]``."""
    hits = [i for i in (text.find(" ", p, hi), text.find("\n", p, hi)) if i >= 0]
    return min(hits) + 1 if hits else p


def worst_verdict(verdicts: Sequence[Verdict], latency_s: float) -> Verdict:
    """The verdict of a text checked in several windows: the worst window's (highest risk
    score, the first of equals), with every category any window named (the worst
    window's first), the wall time of all windows, every window's tokens added up, and
    the number of windows (``Verdict.windows``)."""
    if len(verdicts) == 1:
        return verdicts[0]
    worst = max(verdicts, key=lambda v: v.risk_score)
    categories = list(worst.categories)
    for v in verdicts:
        categories += [c for c in v.categories if c not in categories]

    caches = {v.cache for v in verdicts}

    def total(values: list[int | None]) -> int | None:
        known = [x for x in values if x is not None]
        return sum(known) if known else None

    return msgspec.structs.replace(
        worst,
        categories=tuple(categories),
        latency_s=latency_s,
        prompt_tokens=total([v.prompt_tokens for v in verdicts]),
        cached_tokens=total([v.cached_tokens for v in verdicts]),
        completion_tokens=total([v.completion_tokens for v in verdicts]),
        windows=sum(v.windows for v in verdicts),
        # A hit only when no window called the guard.
        cache="hit" if caches == {"hit"} else "miss" if "miss" in caches else None,
    )


async def check_windows(calls: Sequence[Callable[[], Awaitable[Verdict]]]) -> Verdict:
    """Run the checks of a text's windows, ``WINDOW_CONCURRENCY`` at a time, and return
    their worst verdict. The first failure cancels the others and is raised as itself:
    a text with one window unscreened is unscreened (fail closed)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if len(calls) == 1:
        return await calls[0]()
    gate = asyncio.Semaphore(WINDOW_CONCURRENCY)

    async def one(call: Callable[[], Awaitable[Verdict]]) -> Verdict:
        async with gate:
            return await call()

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(c)) for c in calls]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return worst_verdict([t.result() for t in tasks], loop.time() - start)


def _limit(config_len: int | None, served: int | None) -> tuple[int, str]:
    if served is not None and config_len is not None:
        return (config_len, "served, capped by config") if config_len < served else (served, "served")
    if served is not None:
        return served, "served"
    if config_len is not None:
        return config_len, "config"
    return DEFAULT_MAX_MODEL_LEN, "default"


def _bytes_of(prompt: ChatPrompt) -> int:
    return sum(utf8_len(m.content) for m in prompt.messages) + TEMPLATE_TOKENS


def estimate_fit(
    backend: GuardBackend,
    config: GuardModelConfig,
    empty: dict[str, ChatPrompt],
    sanitize: Callable[[str], str],
) -> ContextFit:
    """The fit known without asking the backend: the configured (or default) context,
    the empty prompts counted as bytes. Safe, and refined by :func:`read_fit`."""
    length, source = _limit(config.max_model_len, None)
    return _fit(backend, config, empty, sanitize, length, source, {k: _bytes_of(p) for k, p in empty.items()}, False)


async def read_fit(
    backend: GuardBackend,
    config: GuardModelConfig,
    empty: dict[str, ChatPrompt],
    sanitize: Callable[[str], str],
) -> ContextFit:
    """The fit from what the backend says: its served context and its count of the empty
    prompts, where it can tell (optional backend methods ``served_max_model_len()`` and
    ``count_prompt_tokens(prompt)``); what it cannot tell falls back as in
    :func:`estimate_fit`. Never raises for a backend that cannot answer."""
    served: int | None = None
    counts: dict[str, int] = {}
    read_len = getattr(backend, "served_max_model_len", None)
    count = getattr(backend, "count_prompt_tokens", None)
    with contextlib.suppress(Exception):  # a backend that cannot tell leaves the estimate
        if read_len is not None:
            served = await read_len()
    if count is not None:
        for kind, prompt in empty.items():
            with contextlib.suppress(Exception):
                n = await count(prompt)
                if isinstance(n, int) and n > 0:
                    counts[kind] = n
    counted = len(counts) == len(empty)
    overhead = {k: counts.get(k, _bytes_of(p)) for k, p in empty.items()}
    length, source = _limit(config.max_model_len, served if isinstance(served, int) and served > 0 else None)
    return _fit(backend, config, empty, sanitize, length, source, overhead, counted)


def _fit(
    backend: GuardBackend,
    config: GuardModelConfig,
    empty: dict[str, ChatPrompt],
    sanitize: Callable[[str], str],
    length: int,
    source: str,
    overhead: dict[str, int],
    counted: bool,
) -> ContextFit:
    count = getattr(backend, "count_text_tokens", None)
    budgets = {k: length - overhead[k] - p.max_tokens - MARGIN_TOKENS for k, p in empty.items()}
    return ContextFit(
        max_model_len=length,
        source=source,
        budgets=budgets,
        measure=Measure(count if callable(count) else None),
        sanitize=sanitize,
        window_cap=config.window_tokens,
        counted=counted,
    )
