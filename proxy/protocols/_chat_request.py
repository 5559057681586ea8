"""The client's request body: decoded, bounded, and the chat request with the texts the guards screen.

The body is kept as the client sent it (a dict): what the inventory (``_inventory``)
lets through reaches the upstream unchanged, and only what it lists is let through.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from ..exceptions import InvalidRequest
from ._base import Turn, turns_of
from ._inventory import NO_EXTRA_FIELDS, ExtraFields, Piece, chat_pieces, check_content, message_text, part_text

__all__ = [
    "ChatRequest",
    "MAX_JSON_DEPTH",
    "MAX_N",
    "CommonFields",
    "check_content",
    "common_fields",
    "streamed_body",
    "decode_body",
    "message_text",
    "parse_chat_request",
    "part_text",
    "upstream_body",
]


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


_decoder = msgspec.json.Decoder()

# The default depth bound, for callers without a config (tests, tools).
MAX_JSON_DEPTH = 64
# Choices per request, as OpenAI allows: the proxy keeps state per choice, and a huge `n`
# once built billions of refusal choices.
MAX_N = 128


def decode_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidRequest (never another exception).

    msgspec decodes recursively: a body nested past Python's recursion limit raises
    RecursionError inside it, and invalid UTF-8 raises UnicodeDecodeError; both are the
    client's error, and so is any nesting past ``max_depth``, which bounds every later
    walk over the body.
    """
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 (byte {exc.start}).") from exc
    except RecursionError as exc:
        raise InvalidRequest(f"The request body is nested more than {max_depth} levels deep.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if _depth_exceeds(body, max_depth):
        raise InvalidRequest(f"The request body is nested more than {max_depth} levels deep.")
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative: the check itself must not recurse on hostile input.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


class CommonFields(msgspec.Struct, frozen=True):
    """The fields every generation API shares, checked."""

    model: str
    stream: bool
    include_usage: bool
    n: int


def common_fields(body: dict[str, Any]) -> CommonFields:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a string.", param="model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
    n = body.get("n", 1)
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"`n` must be an integer from 1 to {MAX_N}.", param="n")
    return CommonFields(model, bool(stream), bool(options and options.get("include_usage")), n)


def streamed_body(body: dict[str, Any], *, usage: bool = True) -> bytes:
    """The body sent upstream: the client's, always streamed (what makes an early abort
    possible for every client: the proxy assembles a JSON answer itself), usage reported."""
    body = dict(body)
    body["stream"] = True
    if usage:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return msgspec.json.encode(body)


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
