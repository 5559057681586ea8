"""Legacy completions (``POST /v1/completions``): the adapter.

The prompt (a string, or a list of strings: one generation each) is screened in prompt
mode; each choice's ``text`` is its answer, judged against the prompt it continues
(choice ``i`` of ``n`` per prompt continues prompt ``i // n``). A ``<think>`` block at
the start of the text is reasoning, as in chat. Prompts given as token ids are refused:
the guards read text. Streams end with ``data: [DONE]``; a stop ends each unfinished
choice with ``finish_reason: "content_filter"``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._config import PolicyConfig, ServerConfig
from ..exceptions import InvalidRequest, UpstreamError
from ..pipeline._report import Decision, StageReport
from ._annotations import filter_results
from ._base import CountedUsage, JsonBuilder, OutputDelta, ReportView, Turn, UpstreamEvent
from ._chat_chunks import text_completion_chunk
from ._continued import ChatSource, CompletionsContinued, ContinuedWriter, TextSource
from ._ids import ResponseIds
from ._inventory import NO_EXTRA_FIELDS, ExtraFields, Piece, completions_pieces
from ._request import MAX_N, common_fields, decode_body, streamed_body
from ._sse import DONE, encode_data
from ._wire import TextChunk, decode_known, encode, present
from .chat import ChatAdapter, ChatWriter, chunk_event, upstream_error_event

__all__ = ["CompletionsAdapter", "CompletionsRequest", "CompletionsWriter"]


_decoder = msgspec.json.Decoder(TextChunk)


class CompletionsRequest(msgspec.Struct, kw_only=True):
    body: dict[str, Any]
    model: str
    stream: bool
    n: int
    include_usage: bool
    prompts: list[str]
    per_prompt: int
    extra: list[Piece] = msgspec.field(default_factory=list)  # allowed extra fields' text

    def screened_prompt(self, scope: str) -> str:
        return "\n\n".join(self.prompts)

    def query(self, index: int = 0) -> str:
        return self.prompts[min(index // self.per_prompt, len(self.prompts) - 1)]

    def conversation(self, screen_system: bool) -> list[Turn]:
        return [Turn(p.label, p.text) for p in self.extra if p.text] + [
            Turn(f"prompt[{i}]", p) for i, p in enumerate(self.prompts)
        ]

    def upstream_body(self) -> bytes:
        return streamed_body(self.body)

    def continuation_source(self) -> ChatSource | TextSource | str:
        prompt = self.body.get("prompt")
        if not isinstance(prompt, str):
            return "steering continues one prompt at a time: `prompt` is a list"
        if self.body.get("suffix"):
            return "a prompt with a `suffix` cannot be continued (the model writes between the two)"
        return TextSource(prompt)


def parse_completions_request(raw: bytes, max_depth: int, extra: ExtraFields = NO_EXTRA_FIELDS) -> CompletionsRequest:
    body = decode_body(raw, max_depth)
    common = common_fields(body)
    extra_pieces = completions_pieces(body, extra)
    n = common.n
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest(
            "`prompt` must be a string or a non-empty array of strings (prompts given as token ids cannot be screened).",
            param="prompt",
        )
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise InvalidRequest("`suffix` must be a string.", param="suffix")
    if n * len(prompts) > MAX_N:
        raise InvalidRequest(f"`n` times the number of prompts must be at most {MAX_N}.", param="n")
    if suffix:  # the upstream renders it into the prompt: screen it too
        prompts = [p + "\n" + suffix for p in prompts]
    return CompletionsRequest(
        body=body,
        model=common.model,
        stream=common.stream,
        n=n * len(prompts),
        include_usage=common.include_usage,
        prompts=prompts,
        per_prompt=n,
        extra=extra_pieces,
    )


class _Builder(JsonBuilder):
    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.finish: dict[int, str | None] = {}
        self.stopped: dict[int, dict[str, Any]] = {}

    def add(self, event: UpstreamEvent) -> None:
        if event.doc is None:
            return
        for ch in event.doc.choices:
            self.texts.setdefault(ch.index, [])
            if ch.text:
                self.texts[ch.index].append(ch.text)
            if ch.finish_reason is not None:
                self.finish[ch.index] = ch.finish_reason

    def stop(self, index: int, refusal: str | None, results: dict[str, Any], closing: str = "") -> None:
        self.texts.setdefault(index, [])
        if closing or refusal:
            self.texts[index].append(closing + (refusal or ""))
        self.finish[index] = "content_filter"
        self.stopped[index] = results

    def build(self, ids: ResponseIds, usage: Any, extra: dict[str, Any], results: dict[int, dict[str, Any]]) -> bytes:
        choices = [
            {
                "index": i,
                "text": "".join(self.texts[i]),
                "logprobs": None,
                "finish_reason": self.finish.get(i),
                "content_filter_results": self.stopped.get(i) or results.get(i, {}),
            }
            for i in sorted(self.texts)
        ]
        doc = {"id": ids.id, "object": "text_completion", "created": ids.created, "model": ids.model, "choices": choices}
        doc["usage"] = usage.chat() if isinstance(usage, CountedUsage) else usage
        doc.update(extra)
        return encode(doc)


class CompletionsAdapter(ChatAdapter):
    """Chat's errors and events; its own chunks (``CompletionsWriter`` writes them)."""

    name = "completions"
    path = "/completions"
    id_prefix = "cmpl-guardproxy-"

    def parse(self, raw: bytes, policy: PolicyConfig, server: ServerConfig, extra: ExtraFields) -> CompletionsRequest:
        return parse_completions_request(raw, server.max_json_depth, extra)

    def read(self, data: bytes) -> UpstreamEvent:
        if data.strip() == DONE:
            return UpstreamEvent(data, done=True)
        original = data
        try:
            chunk, data, dropped = decode_known(_decoder, data, self.name)
        except msgspec.DecodeError as exc:
            raise UpstreamError("The upstream sent a malformed stream chunk.") from exc
        if chunk is None:
            return UpstreamEvent(data, dropped=dropped)
        if present(chunk.error):
            raise upstream_error_event(chunk.error)
        if chunk.object == "error":  # earlier vLLM: the error object itself, not under "error"
            raise upstream_error_event(original)
        outputs = [OutputDelta(ch.index, "", ch.text or "", "", ch.finish_reason) for ch in chunk.choices]
        return chunk_event(data, chunk, outputs, dropped)

    def continued_writer(
        self, ids: ResponseIds, index: int, inline: bool, reasoning_event: UpstreamEvent | None, kept: str
    ) -> ContinuedWriter:
        return CompletionsContinued(ids, index)

    def writer(self, prompt: StageReport) -> CompletionsWriter:
        return CompletionsWriter(prompt)


class CompletionsWriter(ChatWriter):
    """Chat's framing and rendering; its own chunks, choices and endings."""

    @staticmethod
    def _hide_reasoning(choice: dict[str, Any], answer: str) -> None:
        if isinstance(choice.get("text"), str) and choice["text"] != answer:
            choice["text"] = answer
            choice.pop("token_ids", None)  # they covered the reasoning too
            if choice.get("logprobs") is not None:
                choice["logprobs"] = None

    @staticmethod
    def _decode_chunk(data: bytes) -> Any:
        return _decoder.decode(data)

    def _chunk(self, ids: ResponseIds, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return encode_data(text_completion_chunk(ids, choices, **extra))

    def opening(self, ids: ResponseIds) -> list[bytes]:
        prompt = self.prompt
        if prompt.decision is None:
            return []
        results = [{"prompt_index": 0, "content_filter_results": filter_results({"prompt": prompt})}]
        return [self._chunk(ids, [], prompt_filter_results=results)]

    def stopped(
        self,
        ids: ResponseIds,
        decision: Decision,
        choices: ReportView,
        refusal: str | None,
        closing: dict[int, str] | None = None,
    ) -> list[bytes]:
        out = []
        for index, stages in sorted(choices.items()):
            text = (closing or {}).get(index, "") + (refusal or "")
            if text:
                out.append(self._chunk(ids, [{"index": index, "text": text, "logprobs": None, "finish_reason": None}]))
            finish = {
                "index": index,
                "text": "",
                "logprobs": None,
                "finish_reason": "content_filter",
                "content_filter_results": filter_results(stages),
            }
            out.append(self._chunk(ids, [finish]))
        return out

    def shutdown_ending(self, ids: ResponseIds, unfinished: list[int]) -> list[bytes]:
        return [
            self._chunk(
                ids, [{"index": i, "text": "", "logprobs": None, "finish_reason": "length"}], guardproxy={"ended_by": "shutdown"}
            )
            for i in unfinished
        ]

    def builder(self) -> JsonBuilder:
        return _Builder()
