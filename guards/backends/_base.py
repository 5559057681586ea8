"""The one small interface every guard backend implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = ["ChatMessage", "ChatPrompt", "Generation", "GuardBackend"]


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str
    # ``content`` already encoded as a JSON string (quotes included), where the guard
    # keeps it incrementally for a text that grows; HTTP backends send it as it is.
    content_json: bytes | None = None


class ChatPrompt(msgspec.Struct, frozen=True, kw_only=True):
    """A guard call: chat messages plus the sampling the model card prescribes.

    Every backend renders ``messages`` with the model's own chat template and
    ``chat_template_kwargs``, so that the same prompt reaches the model whichever
    backend serves it.
    """

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM structured outputs: constrain the generated text to this regex.
    regex: str | None = None


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    # Tokens the guard generated (its analysis or thinking and its verdict).
    completion_tokens: int | None = None
    # Why generation ended, in OpenAI's words: "stop" (an end-of-turn or stop token),
    # "length" (max_tokens reached: the verdict may be cut), None when unknown.
    finish_reason: str | None = None


@runtime_checkable
class GuardBackend(Protocol):
    """What every backend offers. Backends that can tell the guard's context also offer
    ``async served_max_model_len() -> int | None`` and ``async count_prompt_tokens(prompt)
    -> int | None``, and those with a tokenizer ``count_text_tokens(text) -> int``
    (guards/_context.py fits every check to them)."""

    async def generate(self, prompt: ChatPrompt) -> Generation:
        """Greedy generation; raises GuardBackendError / GuardTimeout."""
        ...

    async def ready(self) -> bool:
        """True when the model can serve a check now (for /readyz). A backend that can
        say why it cannot also offers ``async why_not_ready() -> str | None``."""
        ...

    def added_tokens(self) -> frozenset[str]:
        """The added tokens of the model's tokenizer, special or not, which slot text
        must not spell out; empty where the backend has no tokenizer."""
        ...

    async def aclose(self) -> None: ...
