"""Steering: a flagged reasoning rolled back to its last passing check and continued.

Under ``[policy.reasoning] action = "steer"`` a reasoning flag does not end the request.
The relay (``_relay``) closes the upstream response (vLLM aborts the generation), keeps
the reasoning its last passing check covered (all the client has been sent, or may be
sent), and asks the same upstream, on the same replica where it has several, to go on
from there with the steering text as a prefill *inside* the model's reasoning:

    prefix = "<think>" + kept reasoning + steer_text

How the upstream is asked is its ``[upstream] continuation``:

- ``completions`` (the default): the request's messages and tools are rendered by the
  upstream's own chat template (vLLM's ``POST /tokenize`` with the generation prompt),
  the prefix is tokenized beside them, and ``POST /completions`` continues from those
  token ids. It works whatever the template does with a prefilled assistant turn, and the
  prefix cache serves the prompt. The output is raw text: ``</think>`` is found here, and
  tool calls in the Hermes format (``<tool_call>{...}</tool_call>``, Qwen's) are parsed.
- ``chat``: chat completions with the prefix as a final assistant message and
  ``continue_final_message``, for chat templates that leave a prefilled reasoning block
  open (Qwen3's does not: it closes an assistant turn's reasoning). The upstream's
  reasoning parser splits the output. Chat requests only.
- ``none``: the upstream cannot continue (a hosted API); a steer falls back.

A legacy completions request continues with its own prompt followed by the prefix.

The continuation's output is rewritten into the client API's events
(``protocols/_continued``), which the relay reads like the upstream's own: it is
screened on the same schedule by the same guards and released by the same gates. Its
usage is summed with what the abandoned generations cost (``RequestReport.steer_spent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..exceptions import UpstreamError
from ..protocols._continued import ChatSource, ContinuedWriter, Piece, TextSource
from ..protocols._sse import DONE
from ..protocols._wire import REASONING_FIELDS, decode_json, encode
from ..protocols.chat import upstream_error_event
from ..upstream._client import UpstreamClient, UpstreamStream
from ._channels import ThinkSplitter, partial_suffix

__all__ = [
    "ChatChunkReader",
    "ChatSource",
    "Prefill",
    "RawTextReader",
    "TextSource",
    "continuation_body",
    "continued_events",
    "mechanism_of",
    "open_continuation",
    "summed_usage",
]

_OPEN = "<think>"
_TOOL_OPEN = "<tool_call>"
_TOOL_CLOSE = "</tool_call>"

# Fields of a chat or Responses request that /completions does not take: the prompt's
# parts (rendered into the token ids), the stream settings the proxy sets itself, and the
# output's budget (recomputed). Every other field (sampling, stop, seed, the operator's
# allowed extras) goes on with the continuation.
_NOT_CARRIED = frozenset(
    {
        "messages",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "text",
        "reasoning",
        "reasoning_effort",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "stream",
        "stream_options",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "logprobs",
        "top_logprobs",
        "modalities",
        "audio",
        "prediction",
        "store",
        "metadata",
        "service_tier",
        "include",
        "previous_response_id",
        "truncation",
        "background",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "web_search_options",
        "prompt",
        "suffix",
        "echo",
        "best_of",
    }
)


class Prefill(msgspec.Struct, frozen=True, kw_only=True):
    """What one steer asks the upstream to go on from."""

    kept: str  # the reasoning the last passing check covered
    steer_text: str
    budget: int | None  # output tokens left of the client's max_tokens (None: unset)


def mechanism_of(source: ChatSource | TextSource, api: str, configured: str) -> str:
    """How this request's generation goes on: a legacy prompt with the prefix after it
    ("prompt"); a chat request as its upstream is configured; a Responses request through
    /tokenize and /completions whatever the setting (its events are not chat chunks)."""
    if isinstance(source, TextSource):
        return "prompt"
    return configured if api == "chat" else "completions"


def continuation_body(body: dict[str, Any], prompt: list[int] | str, budget: int | None) -> dict[str, Any]:
    """The /completions body of a continuation: the client's settings on ``prompt``."""
    out = {k: v for k, v in body.items() if k not in _NOT_CARRIED}
    out["prompt"] = prompt
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    if budget is not None:
        out["max_tokens"] = max(1, budget)
    return out


async def open_continuation(
    upstream: UpstreamClient,
    mechanism: str,
    source: ChatSource | TextSource,
    body: dict[str, Any],
    prefill: Prefill,
    authorization: str | None,
    replica: str | None,
) -> tuple[UpstreamStream, bool, tuple[int, int] | None]:
    """Open the continuation's stream: (stream, whether its output is chat chunks rather
    than raw text, and where the proxy counted them: the request's prompt tokens and the
    continuation's, prefix included)."""
    prefix_body = prefill.kept + prefill.steer_text
    if isinstance(source, TextSource):  # mechanism "prompt"
        doc = continuation_body(body, source.prompt + _OPEN + prefix_body, prefill.budget)
        stream = await upstream.open_stream("/completions", encode(doc), authorization, replica)
        return stream, False, None
    if mechanism == "chat":
        doc = dict(body)
        doc["messages"] = [*source.messages, {"role": "assistant", "content": _OPEN + prefix_body}]
        doc["continue_final_message"] = True
        doc["add_generation_prompt"] = False
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
        for key in ("max_tokens", "max_completion_tokens"):
            doc.pop(key, None)
        if prefill.budget is not None:
            doc["max_completion_tokens"] = max(1, prefill.budget)
        doc.pop("n", None)
        stream = await upstream.open_stream("/chat/completions", encode(doc), authorization, replica)
        return stream, True, None
    model = body.get("model")
    rendered: dict[str, Any] = {"model": model, "messages": source.messages, "add_generation_prompt": True}
    if source.tools:
        rendered["tools"] = source.tools
    if source.template_kwargs:
        rendered["chat_template_kwargs"] = source.template_kwargs

    async def tokenize(doc: dict[str, Any]) -> list[int]:
        raw = await upstream.post_root("/tokenize", encode(doc), authorization, replica)
        try:
            tokens = decode_json(raw)["tokens"]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise UpstreamError("The upstream's /tokenize answer has no token ids.") from exc
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise UpstreamError("The upstream's /tokenize answer has no token ids.")
        return tokens

    async with asyncio.TaskGroup() as tg:
        prompt = tg.create_task(tokenize(rendered))
        opening = tg.create_task(tokenize({"model": model, "prompt": _OPEN, "add_special_tokens": False}))
        prefix = tg.create_task(tokenize({"model": model, "prompt": _OPEN + prefix_body, "add_special_tokens": False}))
    ids, open_ids, prefix_ids = prompt.result(), opening.result(), prefix.result()
    # A template that opens the reasoning block itself (DeepSeek-R1's, Qwen3-Thinking's)
    # ends its generation prompt with <think>: the prefix must not open a second one.
    if open_ids and _opens_reasoning(ids, open_ids) and prefix_ids[: len(open_ids)] == open_ids:
        prefix_ids = prefix_ids[len(open_ids) :]
    doc = continuation_body(body, ids + prefix_ids, prefill.budget)
    stream = await upstream.open_stream("/completions", encode(doc), authorization, replica)
    return stream, False, (len(ids), len(ids) + len(prefix_ids))


def _opens_reasoning(prompt: list[int], opening: list[int]) -> bool:
    """Does the generation prompt end with the reasoning block's opening tag (perhaps
    followed by a newline token)?"""
    n = len(opening)
    return prompt[-n:] == opening or prompt[-n - 1 : -1] == opening


class _ContinuationReader:
    """A continuation's chunks as pieces: each choice's (``_choice``), then the usage,
    summed with what the abandoned generations cost (``spent``)."""

    def __init__(self, spent: tuple[int, int]) -> None:
        self.spent = spent

    def read(self, data: bytes) -> list[Piece]:
        doc = _chunk(data)
        if doc is None:
            return []
        choices = doc.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
            raise UpstreamError("The upstream sent a malformed continuation chunk.")
        pieces = [self._choice(choice) for choice in choices]
        usage = doc.get("usage")
        if isinstance(usage, dict):
            pieces.append(Piece(usage=summed_usage(usage, self.spent)))
        return pieces

    def _choice(self, choice: dict[str, Any]) -> Piece:
        raise NotImplementedError


class RawTextReader(_ContinuationReader):
    """A continuation's raw output (legacy completion chunks of /completions) as
    pieces: reasoning until ``</think>``, then the answer, with Hermes tool calls parsed
    where the request offered tools. A tag split across chunks is held until it is whole."""

    def __init__(self, spent: tuple[int, int], tools: bool) -> None:
        super().__init__(spent)
        self.think = ThinkSplitter(in_reasoning=True)
        self.held = ""  # the answer's text that may start a tool call's tag
        self.tools = tools
        self.calls = 0

    def _choice(self, choice: dict[str, Any]) -> Piece:
        text, finish = choice.get("text"), choice.get("finish_reason")
        piece = self._text(text if isinstance(text, str) else "", finish is not None)
        if finish is not None:
            piece.finish = "tool_calls" if self.calls and finish == "stop" else str(finish)
        return piece

    def _text(self, text: str, last: bool) -> Piece:
        reasoning, answer = self.think.feed(text)
        if last:  # a tag cut short at the end is text
            held_reasoning, held_answer = self.think.flush()
            reasoning, answer = reasoning + held_reasoning, answer + held_answer
        piece = Piece(reasoning=reasoning)
        self._answer(piece, answer, last)
        return piece

    def _answer(self, piece: Piece, text: str, last: bool) -> None:
        """The answer's text into ``piece``: its content, and the tool calls taken out
        where the request offered tools."""
        if not self.tools:
            piece.content = text
            return
        text = self.held + text
        self.held = ""
        start = text.find(_TOOL_OPEN)
        if start < 0:
            keep = 0 if last else partial_suffix(text, _TOOL_OPEN)
            piece.content, self.held = text[: len(text) - keep], text[len(text) - keep :]
            return
        piece.content = text[:start]
        rest = text[start:]
        while rest.startswith(_TOOL_OPEN):
            end = rest.find(_TOOL_CLOSE)
            if end < 0:
                if last:  # an unfinished call is the model's text, not a call
                    piece.content += rest
                    rest = ""
                break
            call = _tool_call(rest[len(_TOOL_OPEN) : end], self.calls)
            if call is None:
                piece.content += rest[: end + len(_TOOL_CLOSE)]
            else:
                piece.tool_calls.append(call)
                self.calls += 1
            rest = rest[end + len(_TOOL_CLOSE) :].lstrip()
            nxt = rest.find(_TOOL_OPEN)
            if nxt > 0:
                piece.content += rest[:nxt]
                rest = rest[nxt:]
            elif nxt < 0:
                piece.content += rest
                rest = ""
        self.held = rest


def _tool_call(text: str, index: int) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        return None
    arguments = doc.get("arguments", {})
    return {
        "index": index,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": doc["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)},
    }


class ChatChunkReader(_ContinuationReader):
    """A ``chat`` continuation's chunks as pieces (the upstream's parsers split them)."""

    def _choice(self, choice: dict[str, Any]) -> Piece:
        delta = choice.get("delta") or {}
        piece = Piece(finish=choice.get("finish_reason"))
        piece.reasoning = next((delta[f] for f in REASONING_FIELDS if isinstance(delta.get(f), str)), "")
        if isinstance(delta.get("content"), str):
            piece.content = delta["content"]
        if isinstance(delta.get("tool_calls"), list):
            piece.tool_calls = delta["tool_calls"]
        return piece


def _chunk(data: bytes) -> dict[str, Any] | None:
    """One continuation chunk, decoded (None: the end marker); an error event or a
    malformed chunk is the upstream's error."""
    if data.strip() == DONE:
        return None
    try:
        doc = decode_json(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError("The upstream sent a malformed continuation chunk.") from exc
    if not isinstance(doc, dict):
        raise UpstreamError("The upstream sent a malformed continuation chunk.")
    if doc.get("error") is not None or doc.get("object") == "error":
        raise upstream_error_event(data)
    return doc


def summed_usage(usage: dict[str, Any], spent: tuple[int, int]) -> dict[str, int]:
    """The continuation's usage plus what the abandoned generations cost."""
    prompt = (usage.get("prompt_tokens") or 0) + spent[0]
    completion = (usage.get("completion_tokens") or 0) + spent[1]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def continued_events(
    stream: UpstreamStream, reader: RawTextReader | ChatChunkReader, writer: ContinuedWriter, first: list[Piece]
) -> AsyncIterator[list[bytes]]:
    """The continuation's events in the client API's shape, one network read at a time;
    ``first``: pieces that go out before the upstream's (the steering text)."""
    opening = [e for p in first for e in writer.events(p)]
    if opening:
        yield opening
    async with contextlib.aclosing(stream.events()) as batches:
        async for batch in batches:
            out = [e for data in batch for p in reader.read(data) for e in writer.events(p)]
            if any(data.strip() == DONE for data in batch):
                out += writer.end()
            if out:
                yield out
