"""The verdict cache: one guard call per distinct guard input, for all checks of a process.

A verdict depends on nothing but what the guard reads: which guard, which model, and the
prompt sent to the backend (its messages, sanitised slot text included, and the sampling
parameters). A conversation screened message by message sends the same inputs again on
every turn, and many requests share one system prompt; the cache answers those from the
first verdict. Keys are digests of that input, so an entry does not grow with the text
screened (it holds the verdict and the guard's own answer), and the bound on entries
bounds the memory.

Entries leave least recently used first once ``entries`` are held, and are never served
older than ``ttl_s``. Identical checks in flight share one guard call: the first one
calls, the others wait for its verdict. Only verdicts are stored: a check that failed
(guard outage, timeout, an answer out of format) is not, so the next identical check asks
the guard again; the checks that waited on the failed call get its error, as they would
have got their own. If the calling check is cancelled (its request ended), one of those
waiting makes the call instead.

A verdict the cache served says so (``Verdict.cache == "hit"``) and costs nothing: its
token counts are 0 and its latency is the time the check waited. The verdict of a check
that called the guard says ``"miss"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec

from ._verdict import Stage, Verdict
from .backends._base import ChatPrompt

__all__ = ["VerdictCache"]

_encode = msgspec.json.Encoder().encode


class _Abandoned(Exception):
    """The check that called the guard was cancelled before the verdict came."""


class VerdictCache:
    """A bounded LRU of verdicts with a time to live, and the identical checks in flight."""

    __slots__ = ("_entries", "_flight", "_max", "_ttl_s", "_clock", "hits", "misses")

    def __init__(self, entries: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if entries < 1:
            raise ValueError("a verdict cache holds at least one entry")
        if not ttl_s > 0:
            raise ValueError("a verdict cache's ttl_s must be > 0")
        self._entries: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()
        self._flight: dict[bytes, asyncio.Future[Verdict]] = {}
        self._max = entries
        self._ttl_s = ttl_s
        self._clock = clock
        self.hits = 0  # checks answered without a guard call (stored, or shared in flight)
        self.misses = 0  # checks that called the guard and got a verdict

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(guard: str, model: str, prompt: ChatPrompt) -> bytes:
        """The digest of one guard input. A cryptographic one: a text crafted to collide
        with a screened one would get its verdict (SHA-256: the fastest of hashlib's where
        the CPU computes it)."""
        return hashlib.sha256(_encode((guard, model, prompt))).digest()

    def get(self, key: bytes) -> Verdict | None:
        """The stored verdict for ``key``, unless absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry[0] >= self._ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, verdict: Verdict) -> None:
        self._entries[key] = (self._clock(), verdict)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def check(
        self,
        guard: str,
        model: str,
        prompt: ChatPrompt,
        stage: Stage,
        call: Callable[[ChatPrompt, Stage], Awaitable[Verdict]],
    ) -> Verdict:
        """The verdict on ``prompt`` for ``stage``: stored, shared with an identical check
        in flight, or ``call``'s (then stored). ``call``'s errors are raised, never stored."""
        key = self.key(guard, model, prompt)
        while True:
            verdict = self.get(key)
            if verdict is not None:
                self.hits += 1
                return _served(verdict, stage, 0.0)
            pending = self._flight.get(key)
            if pending is None:
                break
            start = time.perf_counter()
            try:
                # Shielded: a waiting check that is cancelled must not cancel the call.
                verdict = await asyncio.shield(pending)
            except _Abandoned:
                continue  # look again: stored meanwhile, or this check calls
            self.hits += 1
            return _served(verdict, stage, time.perf_counter() - start)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._flight[key] = future
        try:
            verdict = await call(prompt, stage)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else _Abandoned())
            future.exception()  # retrieved, so no warning when nobody waited
            raise
        else:
            self.put(key, verdict)
            future.set_result(verdict)
        finally:
            del self._flight[key]
        self.misses += 1
        return msgspec.structs.replace(verdict, cache="miss")


def _served(verdict: Verdict, stage: Stage, waited_s: float) -> Verdict:
    # The stage is the asking check's: ReasoningShield reads a thought and a final answer
    # in the same prompt.
    return msgspec.structs.replace(
        verdict, stage=stage, cache="hit", latency_s=waited_s, prompt_tokens=0, cached_tokens=0, completion_tokens=0
    )
