"""The client's chat request: validated, with the texts the guards screen.

The body is kept as the client sent it (a dict) because every field the proxy does not
act on must reach the upstream unchanged; only the fields the proxy reads are checked.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from ..exceptions import InvalidRequest
from ._base import Turn, turns_of

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
        """The last user message; with "conversation", every message labelled by role
        (for logs and traces: the conversation is screened message by message)."""
        if scope == "last_user":
            return self.query()
        return "\n".join(f"{m.get('role')}: {text}" for m in self.messages if (text := message_text(m)))

    def conversation(self, screen_system: bool) -> list[Turn]:
        messages = []
        for i, m in enumerate(self.messages):
            role = str(m.get("role"))
            text = message_text(m)
            if role == "assistant":  # its tool calls are part of what it said
                text += "".join(_tool_call_text(call) for call in m.get("tool_calls") or [])
            messages.append((f"messages[{i}] ({role})", role, text))
        return turns_of(messages, screen_system)


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
    raw: bytes, unscreened_parts: Collection[str] = (), max_depth: int = MAX_JSON_DEPTH
) -> ChatRequest:
    body = decode_body(raw, max_depth)
    common = common_fields(body)

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        _check_message(message, i, unscreened_parts)

    return ChatRequest(
        body=body, model=common.model, stream=common.stream, include_usage=common.include_usage, n=common.n, messages=messages
    )


def _check_message(message: Any, i: int, unscreened_parts: Collection[str]) -> None:
    param = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"`{param}` must be an object.", param=param)
    if not isinstance(message.get("role"), str):
        raise InvalidRequest(f"`{param}.role` is required and must be a string.", param=f"{param}.role")
    check_content(message.get("content"), f"{param}.content", unscreened_parts)


def check_content(content: Any, param: str, unscreened_parts: Collection[str]) -> None:
    """Refuse content the guards could not read but the upstream might render.

    Content is a string, null, or an array of parts. A part is screened when it carries
    its text in a string ``text`` (``text``, ``input_text``, ``output_text`` and any other
    type that does) or is a ``refusal`` with a string ``refusal``; a part of a type in
    ``unscreened_parts`` (images, audio, files) passes unscreened, as documented. Anything
    else is refused: forwarding it would let text past the guards that the upstream may
    render (an ``input_text`` part once did exactly that).
    """
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"`{param}` must be a string or an array of content parts.", param=param)
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"`{where}` must be an object with a string `type`.", param=where)
        if part_text(part) is not None:
            continue
        kind = part["type"]
        if "text" in part or kind in _TEXT_PARTS:
            raise InvalidRequest(f"`{where}.text` must be a string.", param=f"{where}.text")
        if kind not in unscreened_parts:
            raise InvalidRequest(
                f"`{where}` has type {kind!r}, which the guards cannot read: send text parts "
                f"(or one of the types forwarded unscreened: {', '.join(unscreened_parts) or 'none'}).",
                param=where,
            )


_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def part_text(part: dict[str, Any]) -> str | None:
    """The text a content part carries, or None if it carries none the guards can read."""
    text = part.get("text")
    if isinstance(text, str):
        return text
    if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
        return str(part["refusal"])
    return None


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its string content, or the text of every part that has one.

    Parts without text (images, audio, files) are not screened: the guards read text only;
    ``check_content`` refused every other kind of part when the request was parsed.
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for p in content if isinstance(p, dict) and (t := part_text(p)) is not None)
    return ""


def _tool_call_text(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return ""
    return f"\n[tool call {function.get('name')}] {function.get('arguments') or ''}"


def upstream_body(request: ChatRequest) -> bytes:
    return streamed_body(request.body)
