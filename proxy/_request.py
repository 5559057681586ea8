"""The client's chat request: validated, with the texts the guards screen.

The body is kept as the client sent it (a dict) because every field the proxy does not
act on must reach the upstream unchanged; only the fields the proxy reads are checked.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .exceptions import InvalidRequest

__all__ = ["ChatRequest", "decode_body", "parse_chat_request", "upstream_body", "message_text"]


class ChatRequest(msgspec.Struct, kw_only=True):
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    n: int
    messages: list[dict[str, Any]]

    def query(self) -> str:
        """The last user message: the question the guards judge answers against."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message)
        return message_text(self.messages[-1])

    def screened_prompt(self, scope: Literal["last_user", "conversation"]) -> str:
        if scope == "last_user":
            return self.query()
        # The whole conversation, each turn labelled, so that a harmful earlier turn
        # (or an injected system/tool message) is seen too.
        return "\n".join(
            f"{m.get('role')}: {text}" for m in self.messages if (text := message_text(m))
        )


_decoder = msgspec.json.Decoder()


def decode_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidRequest."""
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def parse_chat_request(raw: bytes) -> ChatRequest:
    body = decode_body(raw)

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
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequest("`n` must be an integer >= 1.", param="n")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        _check_message(message, i)

    return ChatRequest(
        body=body,
        model=model,
        stream=bool(stream),
        include_usage=bool(options and options.get("include_usage")),
        n=n,
        messages=messages,
    )


def _check_message(message: Any, i: int) -> None:
    param = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"`{param}` must be an object.", param=param)
    if not isinstance(message.get("role"), str):
        raise InvalidRequest(f"`{param}.role` is required and must be a string.", param=f"{param}.role")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(
            f"`{param}.content` must be a string or an array of content parts.", param=f"{param}.content"
        )
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(
                f"`{param}.content[{j}]` must be an object with a `type`.", param=f"{param}.content[{j}]"
            )
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"`{param}.content[{j}].text` must be a string.", param=f"{param}.content[{j}].text"
            )


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its string content, or its text parts joined.

    Non-text parts (images, audio, files) are not screened: the guards read text only.
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def upstream_body(request: ChatRequest) -> bytes:
    """The body sent upstream: the client's, always streamed, usage always reported.

    Streaming is what makes an early abort possible for every client; the proxy
    assembles a single JSON answer itself for clients that did not ask for a stream.
    """
    body = dict(request.body)
    body["stream"] = True
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    body["stream_options"] = options
    return msgspec.json.encode(body)
