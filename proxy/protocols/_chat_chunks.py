"""Chunks and completions the proxy writes itself (the upstream's pass through as bytes).

``CompletionBuilder`` assembles the single JSON answer for clients that did not ask for
a stream, from the same chunks a streaming client would have seen.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..pipeline._annotations import StageReport, filter_results, stage_summary
from ..pipeline._policy import Decision
from ._wire import Chunk, decode_json, encode, present

__all__ = [
    "ResponseIds",
    "prompt_annotation_chunk",
    "content_filter_chunks",
    "CompletionBuilder",
    "guardproxy_summary",
]


class ResponseIds:
    """id / created / model for chunks the proxy writes: the upstream's when known."""

    __slots__ = ("id", "created", "model")

    def __init__(self, model: str, id: str = "", created: int = 0, prefix: str = "chatcmpl-guardproxy-") -> None:
        self.id = id or f"{prefix}{uuid.uuid4().hex}"
        self.created = created or int(time.time())
        self.model = model

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        doc = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        doc["choices"] = choices
        doc.update(extra)
        return encode(doc)


def guardproxy_summary(prompt: StageReport, choices: dict[int, dict[str, StageReport]]) -> dict[str, Any]:
    return {
        "prompt": stage_summary(prompt),
        "choices": {str(i): {s: stage_summary(r) for s, r in stages.items()} for i, stages in sorted(choices.items())},
    }


def prompt_annotation_chunk(ids: ResponseIds, prompt: StageReport) -> bytes:
    """Azure's first chunk: no choices, the prompt's filter results."""
    return ids.chunk([], prompt_filter_results=[{"prompt_index": 0, "content_filter_results": filter_results({"prompt": prompt})}])


def content_filter_chunks(
    ids: ResponseIds, decision: Decision, choices: dict[int, dict[str, StageReport]], message: str | None
) -> list[bytes]:
    """The end of a stopped stream: per choice, the refusal (for rewrite), then the
    content_filter finish with its filter results."""
    out = []
    for index, stages in sorted(choices.items()):
        if message is not None and decision.action == "rewrite":
            out.append(ids.chunk([{"index": index, "delta": {"content": message}, "finish_reason": None}]))
        out.append(
            ids.chunk(
                [
                    {
                        "index": index,
                        "delta": {},
                        "finish_reason": "content_filter",
                        "content_filter_results": filter_results(stages),
                    }
                ]
            )
        )
    return out


class _ChoiceParts:
    __slots__ = ("role", "content", "reasoning", "reasoning_field", "refusal", "tool_calls", "logprobs", "finish_reason", "filter")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.reasoning_field = "reasoning"
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[Any] | None = None
        self.finish_reason: str | None = None
        self.filter: Any = None


class CompletionBuilder:
    """Accumulates released chunks into one ``chat.completion`` object."""

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceParts] = {}
        self.system_fingerprint: str | None = None

    def add(self, chunk: Chunk) -> None:
        if chunk.system_fingerprint:
            self.system_fingerprint = chunk.system_fingerprint
        for ch in chunk.choices:
            parts = self._choices.setdefault(ch.index, _ChoiceParts())
            d = ch.delta
            if d.role:
                parts.role = d.role
            if d.content:
                parts.content.append(d.content)
            if d.refusal:
                parts.refusal.append(d.refusal)
            if d.reasoning:
                parts.reasoning.append(d.reasoning)
            elif d.reasoning_content:
                parts.reasoning.append(d.reasoning_content)
                parts.reasoning_field = "reasoning_content"
            for call in d.tool_calls or ():
                slot = parts.tool_calls.setdefault(call.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
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
            message: dict[str, Any] = {"role": p.role, "content": "".join(p.content) if p.content or not p.tool_calls else None}
            if p.reasoning:
                message[p.reasoning_field] = "".join(p.reasoning)
            if p.refusal:
                message["refusal"] = "".join(p.refusal)
            if p.tool_calls:
                message["tool_calls"] = [p.tool_calls[i] for i in sorted(p.tool_calls)]
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "logprobs": {"content": p.logprobs} if p.logprobs is not None else None,
                "finish_reason": p.finish_reason,
            }
            if p.filter is not None:
                choice["content_filter_results"] = p.filter
            choices.append(choice)
        doc: dict[str, Any] = {"id": ids.id, "object": "chat.completion", "created": ids.created, "model": ids.model}
        if self.system_fingerprint:
            doc["system_fingerprint"] = self.system_fingerprint
        doc["choices"] = choices
        doc["usage"] = usage
        doc.update(extra)
        return encode(doc)
