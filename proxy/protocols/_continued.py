"""A steered generation's continuation, written as the client's API streams it.

The upstream continues a steered generation through another endpoint than the client
called (``pipeline/_steer.py``: /completions on token ids, or chat completions with a
prefill), so its output is rewritten here into the events the client's API would have
streamed: the same response id, model and creation time, the same output index. The
adapter then reads these events as it reads the upstream's own, so the continuation is
screened, released and written exactly as the first generation was.

A ``Piece`` is what one continuation event adds: reasoning, answer text, complete tool
calls, a finish reason, usage (already summed over every generation of the request).
What the continuation renders the request from is the request's ``ChatSource`` (messages
and tools, rendered by the upstream's chat template) or ``TextSource`` (a legacy prompt).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._chat_chunks import chat_chunk, text_completion_chunk
from ._ids import ResponseIds
from ._sse import DONE

__all__ = ["ChatContinued", "ChatSource", "CompletionsContinued", "ContinuedWriter", "Piece", "TextSource"]


class ChatSource(msgspec.Struct, frozen=True, kw_only=True):
    """A request the model reads as a chat: rendered by the upstream's template."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] | None = None


class TextSource(msgspec.Struct, frozen=True):
    """A legacy completions request: its prompt is the text the model reads."""

    prompt: str


class Piece(msgspec.Struct, kw_only=True):
    reasoning: str = ""
    content: str = ""
    # Chat tool-call deltas ({"index", "id", "type", "function": {"name", "arguments"}}).
    tool_calls: list[dict[str, Any]] = msgspec.field(default_factory=list)
    finish: str | None = None
    # {"prompt_tokens", "completion_tokens", "total_tokens"}: every generation of the request.
    usage: dict[str, int] | None = None


class ContinuedWriter:
    """Turns continuation pieces into the client API's event payloads (SSE data)."""

    def __init__(self, ids: ResponseIds, index: int, inline: bool) -> None:
        self.ids = ids
        self.index = index
        # The first generation's reasoning came inline (``<think>`` in the content): the
        # continuation's goes the same way, its end marked by ``</think>``.
        self.inline = inline
        self._in_reasoning = True

    def _inline(self, piece: Piece) -> str:
        text = ""
        if piece.reasoning:
            text += piece.reasoning
        if piece.content or piece.tool_calls:
            if self._in_reasoning:
                text += "</think>"
                self._in_reasoning = False
            text += piece.content
        return text

    def events(self, piece: Piece) -> list[bytes]:
        raise NotImplementedError

    def end(self) -> list[bytes]:
        """What ends the stream after the last piece."""
        return [DONE]


class ChatContinued(ContinuedWriter):
    """Chat completion chunks."""

    def __init__(self, ids: ResponseIds, index: int, inline: bool, reasoning_field: str = "reasoning") -> None:
        super().__init__(ids, index, inline)
        self.reasoning_field = reasoning_field

    def events(self, piece: Piece) -> list[bytes]:
        out: list[bytes] = []
        delta: dict[str, Any] = {}
        if self.inline:
            text = self._inline(piece)
            if text:
                delta["content"] = text
        else:
            if piece.reasoning:
                delta[self.reasoning_field] = piece.reasoning
            if piece.content:
                delta["content"] = piece.content
        if piece.tool_calls:
            delta["tool_calls"] = piece.tool_calls
        if delta or piece.finish is not None:
            out.append(
                chat_chunk(self.ids, [{"index": self.index, "delta": delta, "logprobs": None, "finish_reason": piece.finish}])
            )
        if piece.usage is not None:
            out.append(chat_chunk(self.ids, [], usage=piece.usage))
        return out


class CompletionsContinued(ContinuedWriter):
    """Legacy completion chunks: the reasoning is always inline, in ``text``."""

    def __init__(self, ids: ResponseIds, index: int, inline: bool = True) -> None:
        super().__init__(ids, index, True)

    def events(self, piece: Piece) -> list[bytes]:
        out: list[bytes] = []
        text = self._inline(piece)
        if text or piece.finish is not None:
            choice = {"index": self.index, "text": text, "logprobs": None, "finish_reason": piece.finish}
            out.append(text_completion_chunk(self.ids, [choice]))
        if piece.usage is not None:
            out.append(text_completion_chunk(self.ids, [], usage=piece.usage))
        return out
