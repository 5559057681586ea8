"""A backend whose answers a test writes: for fast tests of the proxy without a model."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from ._base import ChatPrompt, Generation

__all__ = ["ScriptedBackend", "Script"]

Script = Callable[[ChatPrompt], "str | Generation | Awaitable[str | Generation]"]


class ScriptedBackend:
    """Answers each prompt with ``fn(prompt)`` (sync or async; a str or a Generation).

    Every prompt received is kept in ``prompts``, in order, so tests can assert what a
    guard was sent. An exception raised by ``fn`` propagates as the backend's failure.
    """

    def __init__(self, fn: Script) -> None:
        self.fn = fn
        self.prompts: list[ChatPrompt] = []
        self.closed = False

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

    async def aclose(self) -> None:
        self.closed = True
