"""Chat completions (``POST /v1/chat/completions``): the adapter.

Chunks pass as the upstream's bytes; the proxy re-encodes one only to drop what it does
not know (``_wire.decode_known``), to hide reasoning, or to add the verdict
(``content_filter_results``) to a choice's finish chunk. Streams end
with ``data: [DONE]``; a stop ends each unfinished choice with ``finish_reason:
"content_filter"`` (Azure's and OpenAI's signal), after the refusal for ``rewrite``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._config import PolicyConfig, ServerConfig
from ..exceptions import UpstreamError
from ..pipeline._report import Decision, StageReport
from ._annotations import filter_results
from ._base import (
    Adapter,
    ApiRequest,
    CountedUsage,
    JsonBuilder,
    OutputDelta,
    ReportView,
    ResponseWriter,
    UpstreamEvent,
    token_usage,
)
from ._chat_chunks import CompletionBuilder, chat_chunk, content_filter_chunks, prompt_annotation_chunk
from ._chat_delta import delta_output
from ._chat_request import parse_chat_request
from ._continued import ChatContinued, ContinuedWriter
from ._ids import ResponseIds
from ._inventory import ExtraFields
from ._sse import DONE, DONE_EVENT, encode_data
from ._wire import REASONING_FIELDS, Chunk, decode_json, decode_known, encode, present

__all__ = ["ChatAdapter", "ChatWriter", "chunk_event", "upstream_error_event"]

_chunk_decoder = msgspec.json.Decoder(Chunk)


def chunk_event(data: bytes, chunk: Any, outputs: list[OutputDelta], dropped: tuple[str, ...] = ()) -> UpstreamEvent:
    """The event of one chunk of a choices-based stream (chat, legacy completions)."""
    usage = chunk.usage
    return UpstreamEvent(
        data,
        doc=chunk,
        outputs=outputs,
        usage=usage,
        tokens=token_usage(usage, "prompt_tokens", "completion_tokens"),
        id=chunk.id,
        model=chunk.model,
        created=chunk.created,
        usage_only=not chunk.choices and usage is not None,
        dropped=dropped,
    )


def upstream_error_event(raw: Any) -> UpstreamError:
    """An ``{"error": ...}`` event inside the upstream's stream, as the proxy's error
    (its message kept, in the OpenAI shape whatever shape the upstream used)."""
    try:
        value = decode_json(raw)
    except msgspec.DecodeError:
        value = None
    if isinstance(value, dict) and "error" in value and not isinstance(value.get("message"), str):
        value = value["error"]
    message = value.get("message") if isinstance(value, dict) else value
    text = message if isinstance(message, str) else "unknown error"
    return UpstreamError(f"The upstream failed mid-stream: {text[:1000]}")


class _ChatBuilder(JsonBuilder):
    def __init__(self) -> None:
        self.completion = CompletionBuilder()

    def add(self, event: UpstreamEvent) -> None:
        if event.doc is not None:
            self.completion.add(event.doc)

    def stop(self, index: int, refusal: str | None, results: dict[str, Any], closing: str = "") -> None:
        self.completion.stop(index, closing + (refusal or "") or None, results)

    def build(self, ids: ResponseIds, usage: Any, extra: dict[str, Any], results: dict[int, dict[str, Any]]) -> bytes:
        for i, r in results.items():
            self.completion.set_filter_results(i, r)
        return self.completion.build(ids, usage.chat() if isinstance(usage, CountedUsage) else usage, extra)


class ChatAdapter(Adapter):
    name = "chat"
    path = "/chat/completions"
    id_prefix = "chatcmpl-guardproxy-"

    def parse(self, raw: bytes, policy: PolicyConfig, server: ServerConfig, extra: ExtraFields) -> ApiRequest:
        return parse_chat_request(raw, policy.prompt.unscreened_parts, server.max_json_depth, extra)

    def read(self, data: bytes) -> UpstreamEvent:
        if data.strip() == DONE:
            return UpstreamEvent(data, done=True)
        original = data
        try:
            chunk, data, dropped = decode_known(_chunk_decoder, data, self.name)
        except msgspec.DecodeError as exc:
            raise UpstreamError("The upstream sent a malformed stream chunk.") from exc
        if chunk is None:
            return UpstreamEvent(data, dropped=dropped)
        if present(chunk.error):
            raise upstream_error_event(chunk.error)
        if chunk.object == "error":  # earlier vLLM: the error object itself, not under "error"
            raise upstream_error_event(original)
        outputs = [delta_output(ch.index, ch.delta, ch.finish_reason) for ch in chunk.choices]
        return chunk_event(data, chunk, outputs, dropped)

    def writer(self, prompt: StageReport) -> ChatWriter:
        return ChatWriter(prompt)

    def continued_writer(
        self, ids: ResponseIds, index: int, inline: bool, reasoning_event: UpstreamEvent | None, kept: str
    ) -> ContinuedWriter:
        return ChatContinued(ids, index, inline, _reasoning_field(reasoning_event, index))


def _reasoning_field(event: UpstreamEvent | None, index: int) -> str:
    """The delta field the upstream carried the choice's reasoning in (vLLM's
    ``reasoning`` unless it named another), so that the continuation uses the same."""
    chunk = event.doc if event is not None else None
    for choice in getattr(chunk, "choices", None) or ():
        if choice.index == index:
            return next((name for name in REASONING_FIELDS if getattr(choice.delta, name, None)), "reasoning")
    return "reasoning"


class ChatWriter(ResponseWriter):
    """A chat completion's writing: chunks in, chunks out, no state beyond the prompt's
    report."""

    end_of_stream = DONE_EVENT

    def render(self, event: UpstreamEvent, hide: dict[int, str] | None, finished: ReportView) -> bytes:
        if (hide is None or not event.outputs) and not finished:
            return event.data
        doc = decode_json(event.data)
        for ch in doc.get("choices", []):
            index = ch.get("index", 0)
            if hide is not None:
                self._hide_reasoning(ch, hide.get(index, ""))
            if index in finished:
                ch["content_filter_results"] = filter_results(finished[index])
        return encode(doc)

    @staticmethod
    def _hide_reasoning(choice: dict[str, Any], answer: str) -> None:
        """Leave only the answer text in one choice of a chunk; the per-token fields
        (logprobs, token ids) go too where they covered reasoning."""
        delta = choice.get("delta") or {}
        hidden = False
        for name in REASONING_FIELDS:
            hidden = delta.pop(name, None) is not None or hidden
        if isinstance(delta.get("content"), str) and delta["content"] != answer:
            delta["content"] = answer
            hidden = True
        if hidden:
            choice.pop("token_ids", None)
            if choice.get("logprobs") is not None:
                choice["logprobs"] = None

    @staticmethod
    def _decode_chunk(data: bytes) -> Any:
        return _chunk_decoder.decode(data)

    def decode_rendered(self, event: UpstreamEvent, data: bytes) -> UpstreamEvent:
        """The event as the client sees it, for the JSON builder."""
        if data is event.data:
            return event
        return msgspec.structs.replace(event, data=data, doc=self._decode_chunk(data))

    def frame(self, data: bytes, event: UpstreamEvent | None = None) -> bytes:
        return encode_data(data)

    def opening(self, ids: ResponseIds) -> list[bytes]:
        prompt = self.prompt
        return [encode_data(prompt_annotation_chunk(ids, prompt))] if prompt.decision is not None else []

    def stopped(
        self,
        ids: ResponseIds,
        decision: Decision,
        choices: ReportView,
        refusal: str | None,
        closing: dict[int, str] | None = None,
    ) -> list[bytes]:
        return [encode_data(c) for c in content_filter_chunks(ids, decision, choices, refusal, closing)]

    def error_event(self, ids: ResponseIds, error: dict[str, Any]) -> bytes:
        return encode_data(encode({"error": error}))

    def shutdown_ending(self, ids: ResponseIds, unfinished: list[int]) -> list[bytes]:
        return [
            encode_data(
                chat_chunk(ids, [{"index": i, "delta": {}, "finish_reason": "length"}], guardproxy={"ended_by": "shutdown"})
            )
            for i in unfinished
        ]

    def builder(self) -> JsonBuilder:
        return _ChatBuilder()
