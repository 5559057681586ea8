"""OpenAI wire types the proxy reads or writes, free of serving logic.

Every field an upstream chunk may carry is declared here, at every level (chunk, choice,
delta, tool call, audio, usage), as text the guards read or as a declared non-text field
(ids, numbers, finish reasons, token ids, logprobs, ...). Decoding refuses anything else
(``forbid_unknown_fields``): ``decode_known`` then drops what was refused, re-encodes the
chunk without it and names it, so that no text the guards did not read reaches a client.
A chunk with declared fields only decodes in one pass and goes out as the upstream's own
bytes.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import msgspec

__all__ = [
    "REASONING_FIELDS",
    "FunctionDelta",
    "ToolCallDelta",
    "AudioDelta",
    "Delta",
    "ChunkChoice",
    "Chunk",
    "TextChoice",
    "TextChunk",
    "Numbers",
    "decode_chunk",
    "decode_known",
    "note_dropped",
    "encode",
    "decode_json",
    "present",
]

logger = logging.getLogger("guardproxy")

# Where upstreams put reasoning: vLLM since late 2025 and OpenRouter, Ollama and LM Studio
# `reasoning`; earlier vLLM, DeepSeek, SGLang, llama.cpp and LiteLLM `reasoning_content`;
# others `thinking` or `reasoning_text`. All are screened as reasoning and hidden with it.
REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking", "reasoning_text")

_Number = int | float | bool | None
# Usage and timing objects: numbers (or lists of them) up to three levels deep, never text.
Numbers = dict[str, _Number | list[_Number] | dict[str, _Number | list[_Number] | dict[str, _Number]]]


class _Known(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A wire object whose every field is declared: an undeclared one fails decoding."""


class FunctionDelta(_Known):
    name: str | None = None  # text: screened with the answer
    arguments: str | None = None  # text: screened with the answer


class ToolCallDelta(_Known):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class AudioDelta(_Known):
    id: str | None = None
    data: str | None = None  # base64 audio; its transcript is what the guards read
    expires_at: int | None = None
    transcript: str | None = None  # text: screened with the answer


class Delta(_Known):
    role: str | None = None
    content: str | None = None  # the answer (inline <think> is split off as reasoning)
    reasoning: str | None = None
    reasoning_content: str | None = None
    thinking: str | None = None
    reasoning_text: str | None = None
    refusal: str | None = None  # text: screened with the answer
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionDelta | None = None  # the legacy single function call
    audio: AudioDelta | None = None


class _ChoiceBase(_Known):
    index: int = 0
    finish_reason: str | None = None
    logprobs: msgspec.Raw = msgspec.Raw()  # per token of the released text; hidden with reasoning
    stop_reason: int | str | None = None  # vLLM: the stop string or token that ended it
    matched_stop: int | str | None = None  # SGLang's stop_reason
    token_ids: list[int] | None = None  # vLLM with return_token_ids
    content_filter_results: msgspec.Raw = msgspec.Raw()  # Azure's annotation; the proxy writes its own


class ChunkChoice(_ChoiceBase):
    delta: Delta = msgspec.field(default_factory=Delta)


class TextChoice(_ChoiceBase):
    """A legacy completions choice: ``text`` is its only text."""

    text: str | None = None
    prompt_token_ids: list[int] | None = None


class _ChunkBase(_Known):
    id: str = ""
    object: str = ""
    created: int = 0
    model: str = ""
    system_fingerprint: str | None = None
    service_tier: str | None = None
    usage: Numbers | None = None
    # Some servers report an error inside the stream instead of an HTTP status.
    error: msgspec.Raw = msgspec.Raw()
    prompt_token_ids: list[int] | None = None  # vLLM with return_token_ids
    prompt_text: str | None = None  # vLLM: the client's own prompt as templated, screened as the request
    kv_transfer_params: msgspec.Raw = msgspec.Raw()  # vLLM disaggregated prefill: ids and addresses
    metrics: Numbers | None = None  # vLLM per-request timings
    obfuscation: str | None = None  # OpenAI: random padding against length side channels
    prompt_filter_results: msgspec.Raw = msgspec.Raw()  # Azure's annotation


class Chunk(_ChunkBase):
    choices: list[ChunkChoice] = msgspec.field(default_factory=list)


class TextChunk(_ChunkBase):
    choices: list[TextChoice] = msgspec.field(default_factory=list)


_chunk_decoder = msgspec.json.Decoder(Chunk)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

T = TypeVar("T")


def decode_chunk(data: bytes) -> Chunk:
    return _chunk_decoder.decode(data)


# -- what the proxy does not know ------------------------------------------------------

_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>.*?)`(?: - at `(?P<at>\$[^`]*)`)?\Z", re.S)
_MISTYPED = re.compile(r"Expected `[^`]*`, got `[^`]*` - at `(?P<at>\$[^`]*)`\Z", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_MAX_DROPS = 64  # per event: a chunk with more undeclared fields than this is dropped whole
_MAX_LABELS = 256  # distinct field names counted and logged; later ones are "other"
_labels: set[str] = set()


def note_dropped(api: str, label: str) -> str:
    """The label an undeclared field is counted under, bounded in number; the first time
    a label is seen it is logged."""
    if label in _labels:
        return label
    if len(_labels) >= _MAX_LABELS:
        return "other"
    _labels.add(label)
    logger.warning(
        "the upstream sent %s in a %s stream, a field the proxy does not know or in a shape it cannot read: "
        "dropped (counted in guardproxy_upstream_dropped_total; logged once)",
        label,
        api,
    )
    return label


def decode_known(
    decoder: msgspec.json.Decoder[T], data: bytes, api: str
) -> tuple[T, bytes, tuple[str, ...]] | tuple[None, bytes, tuple[str, ...]]:
    """(decoded, bytes to forward, labels of what was dropped). The upstream's own bytes
    when every field is declared; else each field the decoder refused (undeclared, or a
    declared one with a shape it cannot be) is removed and the chunk re-encoded. A chunk
    whose whole shape is wrong is dropped: (None, b"", labels). Raises
    ``msgspec.DecodeError`` for what is not JSON."""
    try:
        return decoder.decode(data), data, ()
    except msgspec.ValidationError as exc:
        error = exc
    doc = _any_decoder.decode(data)
    dropped: list[str] = []
    for _ in range(_MAX_DROPS):
        labels = _drop(doc, str(error))
        if not labels:
            break
        dropped += [note_dropped(api, label) for label in labels]
        data = _encoder.encode(doc)
        try:
            return decoder.decode(data), data, tuple(dropped)
        except msgspec.ValidationError as exc:
            error = exc
    dropped.append(note_dropped(api, "(chunk of unknown shape)"))
    return None, b"", tuple(dropped)


def _drop(doc: Any, message: str) -> list[str]:
    """Remove from ``doc`` the value a validation error points at, or from a numbers
    object (``usage``, ``metrics``) each value that is not a number; their labels (paths
    without list indexes), none when the value cannot be found."""
    found = _target(message)
    if found is None or not found[0]:
        return []
    path, numbers = found
    *steps, key = path
    target = doc
    for step in steps:
        if isinstance(step, int) and isinstance(target, list) and step < len(target):
            target = target[step]
        elif isinstance(step, str) and isinstance(target, dict) and step in target:
            target = target[step]
        else:
            return []
    label = ".".join(step for step in path if isinstance(step, str))
    if numbers and isinstance(key, str) and isinstance(target, dict) and isinstance(target.get(key), dict):
        removed: list[str] = []
        _numbers_only(target[key], 3, label, removed)
        if removed:
            return removed
    if isinstance(key, int) and isinstance(target, list) and key < len(target):
        del target[key]
    elif isinstance(key, str) and isinstance(target, dict) and key in target:
        del target[key]
    else:
        return []
    return [label]


def _numbers_only(obj: dict[str, Any], depth: int, label: str, removed: list[str]) -> None:
    """Keep in ``obj`` what ``Numbers`` allows at this depth; name what goes."""
    for key in list(obj):
        value = obj[key]
        if value is None or isinstance(value, (bool, int, float)):
            continue
        if depth > 1 and isinstance(value, list) and all(v is None or isinstance(v, (bool, int, float)) for v in value):
            continue
        if depth > 1 and isinstance(value, dict):
            _numbers_only(value, depth - 1, f"{label}.{key}", removed)
            continue
        del obj[key]
        removed.append(f"{label}.{key}")


def _target(message: str) -> tuple[list[str | int], bool] | None:
    """The path of the value a validation error is about (an undeclared field, or a
    declared one of the wrong shape), and whether the error is inside a numbers object."""
    m = _UNKNOWN.match(message)
    if m is not None:
        found = _steps(m["at"] or "$")
        return None if found is None else ([*found[0], m["key"]], False)
    m = _MISTYPED.match(message)
    return _steps(m["at"]) if m is not None else None


def _steps(path: str) -> tuple[list[str | int], bool] | None:
    """``$.choices[0].delta`` as ["choices", 0, "delta"], and whether the path went on
    into a dict's values (``[...]``, where it stops); None if it does not parse."""
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            return None
        if m[1] is not None:
            steps.append(m[1])
        elif m[2] == "...":
            return steps, True
        else:
            steps.append(int(m[2]))
        pos = m.end()
    return steps, False


def present(raw: msgspec.Raw) -> bool:
    """A raw field that was sent and is not null."""
    return len(raw) > 0 and bytes(raw) != b"null"


def decode_json(data: bytes | msgspec.Raw) -> Any:
    return _any_decoder.decode(data)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)
