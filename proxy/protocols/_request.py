"""What every generation API's request shares: the body decoded and bounded, the common
fields checked, and the body sent upstream (always streamed).

Each API's own request (``_chat_request``, ``completions``, ``responses``, ``moderations``)
builds on these.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..exceptions import InvalidRequest

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_N",
    "CommonFields",
    "common_fields",
    "decode_body",
    "streamed_body",
]

_decoder = msgspec.json.Decoder()

# The default depth bound, for callers without a config (tests, tools).
MAX_JSON_DEPTH = 64
# Choices per request, as OpenAI allows: the proxy keeps state (and may write a refusal)
# per choice, so an unbounded `n` would be unbounded work for one request.
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
