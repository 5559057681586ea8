"""OpenAI wire types the proxy reads or writes, free of serving logic.

Only the fields the proxy acts on are declared: decoding ignores the rest, and chunks
that pass unchanged are forwarded as the upstream's own bytes.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "FunctionDelta",
    "ToolCallDelta",
    "Delta",
    "ChunkChoice",
    "Chunk",
    "decode_chunk",
    "encode",
    "decode_json",
    "present",
    "error_body",
]


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    # vLLM >= late 2025 streams `reasoning`; earlier vLLM and DeepSeek `reasoning_content`.
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: msgspec.Raw = msgspec.Raw()


class Chunk(msgspec.Struct):
    id: str = ""
    created: int = 0
    model: str = ""
    system_fingerprint: str | None = None
    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    # Raw (undecoded) unless needed; an absent field is an empty Raw, a null is b"null".
    usage: msgspec.Raw = msgspec.Raw()
    # Some servers report an error inside the stream instead of an HTTP status.
    error: msgspec.Raw = msgspec.Raw()


_chunk_decoder = msgspec.json.Decoder(Chunk)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def decode_chunk(data: bytes) -> Chunk:
    return _chunk_decoder.decode(data)


def present(raw: msgspec.Raw) -> bool:
    """A raw field that was sent and is not null."""
    return len(raw) > 0 and bytes(raw) != b"null"


def decode_json(data: bytes | msgspec.Raw) -> Any:
    return _any_decoder.decode(data)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> bytes:
    return encode({"error": {"message": message, "type": error_type, "param": param, "code": code}})
