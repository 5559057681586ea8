"""The chat completions request, with the texts the guards screen.

The body is kept as the client sent it (a dict): what the inventory (``_inventory``)
lets through reaches the upstream unchanged, and only what it lists is let through.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from ._base import Turn, turns_of
from ._continued import ChatSource, TextSource
from ._inventory import NO_EXTRA_FIELDS, ExtraFields, Piece, chat_pieces, message_text
from ._request import MAX_JSON_DEPTH, common_fields, decode_body, streamed_body

__all__ = ["ChatRequest", "parse_chat_request", "upstream_body"]


class ChatRequest(msgspec.Struct, kw_only=True):
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    n: int
    messages: list[dict[str, Any]]
    pieces: list[Piece] = msgspec.field(default_factory=list)

    def query(self, index: int = 0) -> str:
        """The last user message: the question the guards judge answers against (every
        choice answers the same one)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message)
        return message_text(self.messages[-1])

    def upstream_body(self) -> bytes:
        return upstream_body(self)

    def screened_prompt(self, scope: str) -> str:
        """The last user message; otherwise every text the model reads, labelled by role
        (for logs and traces: the texts are screened one by one)."""
        if scope == "last_user":
            return self.query()
        return "\n".join(f"{p.role}: {p.text}" for p in self.pieces if p.text)

    def conversation(self, screen_system: bool) -> list[Turn]:
        return turns_of(self.pieces, screen_system)

    def continuation_source(self) -> ChatSource | TextSource | str:
        kwargs = self.body.get("chat_template_kwargs")
        return ChatSource(
            messages=self.messages,
            tools=self.body.get("tools") or None,
            template_kwargs=kwargs if isinstance(kwargs, dict) else None,
        )


def parse_chat_request(
    raw: bytes,
    unscreened_parts: Collection[str] = (),
    max_depth: int = MAX_JSON_DEPTH,
    extra: ExtraFields = NO_EXTRA_FIELDS,
) -> ChatRequest:
    body = decode_body(raw, max_depth)
    common = common_fields(body)
    pieces = chat_pieces(body, unscreened_parts, extra)
    return ChatRequest(
        body=body,
        model=common.model,
        stream=common.stream,
        include_usage=common.include_usage,
        n=common.n,
        messages=body["messages"],
        pieces=pieces,
    )


def upstream_body(request: ChatRequest) -> bytes:
    return streamed_body(request.body)
