"""A backend whose answers a test writes: for fast tests of the proxy without a model."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable

from ._base import ChatPrompt, Generation

__all__ = ["Script", "ScriptedBackend"]

Script = Callable[[ChatPrompt], "str | Generation | Awaitable[str | Generation]"]


class ScriptedBackend:
    """Answers each prompt with ``fn(prompt)`` (sync or async; a str or a Generation).

    Every prompt received is kept in ``prompts``, in order, so tests can assert what a
    guard was sent. An exception raised by ``fn`` propagates as the backend's failure.
    ``added_tokens`` stands for a tokenizer's added tokens.
    """

    def __init__(self, fn: Script, *, added_tokens: Iterable[str] = ()) -> None:
        self.fn = fn
        self.prompts: list[ChatPrompt] = []
        self.closed = False
        self._added_tokens = frozenset(added_tokens)

    async def generate(self, prompt: ChatPrompt) -> Generation:
        self.prompts.append(prompt)
        result = self.fn(prompt)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Generation):
            return result
        return Generation(text=result)

    async def ready(self) -> bool:
        return not self.closed

    def added_tokens(self) -> frozenset[str]:
        return self._added_tokens

    async def aclose(self) -> None:
        self.closed = True
