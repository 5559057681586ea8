"""Chunks and completions the proxy writes itself (the upstream's pass through as bytes).

``CompletionBuilder`` assembles the single JSON answer for clients that did not ask for
a stream, from the same chunks a streaming client would have seen: every field they
carried (content, each reasoning field, refusal, tool calls, the legacy function call,
audio), nothing else.
"""

from __future__ import annotations

from typing import Any

from ..pipeline._report import Decision, StageReport
from ._annotations import filter_results, stage_summary
from ._ids import ResponseIds
from ._wire import REASONING_FIELDS, Chunk, decode_json, encode, present

__all__ = [
    "chat_chunk",
    "text_completion_chunk",
    "prompt_annotation_chunk",
    "content_filter_chunks",
    "CompletionBuilder",
    "guardproxy_summary",
]


def chat_chunk(ids: ResponseIds, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    """A ``chat.completion.chunk`` the proxy writes itself, under the response's ids."""
    doc = {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model}
    doc["choices"] = choices
    doc.update(extra)
    return encode(doc)


def text_completion_chunk(ids: ResponseIds, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    """A legacy ``text_completion`` chunk the proxy writes itself, under the response's ids."""
    doc = {"id": ids.id, "object": "text_completion", "created": ids.created, "model": ids.model, "choices": choices}
    doc.update(extra)
    return encode(doc)


def guardproxy_summary(prompt: StageReport, choices: dict[int, dict[str, StageReport]]) -> dict[str, Any]:
    return {
        "prompt": stage_summary(prompt),
        "choices": {str(i): {s: stage_summary(r) for s, r in stages.items()} for i, stages in sorted(choices.items())},
    }


def prompt_annotation_chunk(ids: ResponseIds, prompt: StageReport) -> bytes:
    """Azure's first chunk: no choices, the prompt's filter results."""
    return chat_chunk(
        ids, [], prompt_filter_results=[{"prompt_index": 0, "content_filter_results": filter_results({"prompt": prompt})}]
    )


def content_filter_chunks(
    ids: ResponseIds,
    decision: Decision,
    choices: dict[int, dict[str, StageReport]],
    message: str | None,
    closing: dict[int, str] | None = None,
) -> list[bytes]:
    """The end of a stopped stream: per choice, its closing text and the refusal (for
    rewrite), then the content_filter finish with its filter results."""
    out = []
    for index, stages in sorted(choices.items()):
        text = (closing or {}).get(index, "") + (message if message is not None and decision.action == "rewrite" else "")
        if text:
            out.append(chat_chunk(ids, [{"index": index, "delta": {"content": text}, "finish_reason": None}]))
        out.append(
            chat_chunk(
                ids,
                [
                    {
                        "index": index,
                        "delta": {},
                        "finish_reason": "content_filter",
                        "content_filter_results": filter_results(stages),
                    }
                ],
            )
        )
    return out


class _ChoiceParts:
    __slots__ = (
        "role", "content", "reasoning", "refusal", "tool_calls", "function_call", "audio", "logprobs", "finish_reason",
        "filter", "extra",
    )  # fmt: skip

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: dict[str, list[str]] = {}  # per field name, as the upstream named it
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.audio: dict[str, Any] | None = None
        self.logprobs: list[Any] | None = None
        self.finish_reason: str | None = None
        self.filter: Any = None
        self.extra: dict[str, Any] = {}  # the upstream's declared non-text fields: stop_reason, token_ids, ...


class CompletionBuilder:
    """Accumulates released chunks into one ``chat.completion`` object."""

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceParts] = {}
        self.system_fingerprint: str | None = None
        self.extra: dict[str, Any] = {}  # the upstream's declared non-text top-level fields

    def add(self, chunk: Chunk) -> None:
        if chunk.system_fingerprint:
            self.system_fingerprint = chunk.system_fingerprint
        for name in ("service_tier", "prompt_token_ids", "prompt_text", "metrics"):
            if (value := getattr(chunk, name)) is not None:
                self.extra[name] = value
        if present(chunk.kv_transfer_params):
            self.extra["kv_transfer_params"] = decode_json(chunk.kv_transfer_params)
        for ch in chunk.choices:
            parts = self._choices.setdefault(ch.index, _ChoiceParts())
            d = ch.delta
            if d.role:
                parts.role = d.role
            if d.content:
                parts.content.append(d.content)
            if d.refusal:
                parts.refusal.append(d.refusal)
            for name in REASONING_FIELDS:
                text = getattr(d, name)
                if text:
                    parts.reasoning.setdefault(name, []).append(text)
            if d.function_call is not None:
                fc = parts.function_call = parts.function_call or {"name": "", "arguments": ""}
                fc["name"] += d.function_call.name or ""
                fc["arguments"] += d.function_call.arguments or ""
            if d.audio is not None:
                audio = parts.audio = parts.audio or {"id": None, "data": "", "expires_at": None, "transcript": ""}
                audio["id"] = d.audio.id or audio["id"]
                audio["expires_at"] = d.audio.expires_at or audio["expires_at"]
                audio["data"] += d.audio.data or ""
                audio["transcript"] += d.audio.transcript or ""
            for call in d.tool_calls or ():
                slot = parts.tool_calls.setdefault(
                    call.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.id:
                    slot["id"] = call.id
                if call.type:
                    slot["type"] = call.type
                if call.function is not None:
                    slot["function"]["name"] += call.function.name or ""
                    slot["function"]["arguments"] += call.function.arguments or ""
            if present(ch.logprobs):
                lp = decode_json(ch.logprobs)
                if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                    parts.logprobs = (parts.logprobs or []) + lp["content"]
            if ch.finish_reason is not None:
                parts.finish_reason = ch.finish_reason
            for name in ("stop_reason", "matched_stop"):
                if (value := getattr(ch, name)) is not None:
                    parts.extra[name] = value
            if ch.token_ids:
                parts.extra["token_ids"] = parts.extra.get("token_ids", []) + ch.token_ids

    def set_filter_results(self, index: int, results: Any) -> None:
        parts = self._choices.setdefault(index, _ChoiceParts())
        if parts.filter is None:
            parts.filter = results

    def stop(self, index: int, message: str | None, results: Any) -> None:
        """A guard stopped this choice: its unreleased text is gone, the refusal added."""
        parts = self._choices.setdefault(index, _ChoiceParts())
        if message is not None:
            parts.content.append(message)
        parts.finish_reason = "content_filter"
        parts.filter = results

    def build(self, ids: ResponseIds, usage: Any, extra: dict[str, Any]) -> bytes:
        choices = []
        for index, p in sorted(self._choices.items()):
            calls = p.tool_calls or p.function_call is not None
            message: dict[str, Any] = {"role": p.role, "content": "".join(p.content) if p.content or not calls else None}
            for name, texts in p.reasoning.items():
                message[name] = "".join(texts)
            if p.refusal:
                message["refusal"] = "".join(p.refusal)
            if p.tool_calls:
                message["tool_calls"] = [p.tool_calls[i] for i in sorted(p.tool_calls)]
            if p.function_call is not None:
                message["function_call"] = p.function_call
            if p.audio is not None:
                message["audio"] = p.audio
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "logprobs": {"content": p.logprobs} if p.logprobs is not None else None,
                "finish_reason": p.finish_reason,
                **p.extra,
            }
            if p.filter is not None:
                choice["content_filter_results"] = p.filter
            choices.append(choice)
        doc: dict[str, Any] = {"id": ids.id, "object": "chat.completion", "created": ids.created, "model": ids.model}
        if self.system_fingerprint:
            doc["system_fingerprint"] = self.system_fingerprint
        doc.update(self.extra)
        doc["choices"] = choices
        doc["usage"] = usage
        doc.update(extra)
        return encode(doc)
