"""A steered Response's continuation, written as vLLM streams the Responses API.

The continuation (``pipeline/_steer.py``: /completions on the token ids of the rendered
conversation) is raw text; here it becomes the events vLLM would have streamed from the
rollback point on, continuing the Response the client is reading: reasoning deltas on the
same reasoning item and content part, that item's ``.done`` events once the answer
starts, a message item, function-call items, then ``response.completed`` with the whole
Response. The events carry no ``sequence_number``: the client's writer numbers them after
the last event it sent (``ResponsesWriter.render``), since the rolled-back events that
the upstream numbered never reached the client.
"""

from __future__ import annotations

import uuid
from typing import Any

from ._base import UpstreamEvent
from ._continued import ContinuedWriter, Piece
from ._ids import ResponseIds
from ._wire import encode

__all__ = ["ResponsesContinued"]


class ResponsesContinued(ContinuedWriter):
    """Responses API events for one steered continuation (the one output)."""

    def __init__(self, ids: ResponseIds, index: int, reasoning_event: UpstreamEvent | None, kept: str) -> None:
        super().__init__(ids, index, False)
        doc: dict[str, Any] = {}
        if reasoning_event is not None and isinstance(reasoning_event.doc, dict):
            doc = reasoning_event.doc
        item: dict[str, Any] = doc["item"] if isinstance(doc.get("item"), dict) else {}
        output_index, content_index = doc.get("output_index", 0), doc.get("content_index", 0)
        self.reasoning_id = str(doc.get("item_id") or item.get("id") or f"rs_{uuid.uuid4().hex}")
        self.reasoning_index = output_index if type(output_index) is int else 0
        self.part_index = content_index if type(content_index) is int else 0
        # The reasoning the client had before the continuation's first delta: the reasoning
        # item's ``.done`` text is this plus every delta written here. The relay's rollback
        # sets it (``ResponsesAdapter.rolled_back``) where the client had less than ``kept``.
        self.shown = kept
        self.reasoning = ""
        self.reasoning_open = True
        self.items: list[dict[str, Any]] = []  # the items written here, done
        self.next_index = self.reasoning_index + 1
        self.message: dict[str, Any] | None = None  # the open message item
        self.message_index = 0
        self.text = ""
        # Whitespace that would open a message: held until text follows, dropped if a
        # tool call does (the model's "\n\n" after "</think>").
        self.blank = ""
        self.finish: str | None = None
        self.usage: dict[str, int] | None = None

    def events(self, piece: Piece) -> list[bytes]:
        out: list[bytes] = []
        # RawTextReader gives reasoning only before "</think>": none follows the answer.
        if piece.reasoning and self.reasoning_open:
            self.reasoning += piece.reasoning
            out.append(self._at_part("response.reasoning_text.delta", delta=piece.reasoning))
        if piece.content or piece.tool_calls or piece.finish is not None:
            out += self._close_reasoning()
        if piece.content:
            out += self._text(piece.content)
        for call in piece.tool_calls:
            self.blank = ""  # the whitespace between "</think>" and a call is no message
            out += self._close_message()
            out += self._function_call(call)
        if piece.finish is not None:
            if self.blank:
                out += self._text("", last=True)
            out += self._close_message()
            self.finish = piece.finish
        if piece.usage is not None:
            self.usage = piece.usage
        return out

    def end(self) -> list[bytes]:
        """``response.completed`` with the whole Response (usage comes after the finish in
        a completions stream, so only here). A stream that never finished gets no ending:
        the relay reports it as cut short."""
        if self.finish is None:
            return []
        out = self._close_reasoning() + self._close_message()
        incomplete = self.finish == "length"
        usage = self.usage or {}
        response: dict[str, Any] = {
            "id": self.ids.id,
            "object": "response",
            "created_at": self.ids.created,
            "model": self.ids.model,
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": self.items,
            "usage": {
                "input_tokens": usage.get("prompt_tokens"),
                "output_tokens": usage.get("completion_tokens"),
                "total_tokens": usage.get("total_tokens"),
            }
            if self.usage is not None
            else None,
        }
        out.append(encode({"type": "response.completed", "response": response}))
        return out

    # -- items ------------------------------------------------------------------------

    def _at_part(self, kind: str, **fields: Any) -> bytes:
        doc = {
            "type": kind,
            "item_id": self.reasoning_id,
            "output_index": self.reasoning_index,
            "content_index": self.part_index,
            **fields,
        }
        return encode(doc)

    def _close_reasoning(self) -> list[bytes]:
        if not self.reasoning_open:
            return []
        self.reasoning_open = False
        text = self.shown + self.reasoning
        part = {"type": "reasoning_text", "text": text}
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [],
            "content": [part],
            "encrypted_content": None,
            "status": "completed",
        }
        self.items.append(item)
        done = {"type": "response.output_item.done", "output_index": self.reasoning_index, "item": item}
        return [
            self._at_part("response.reasoning_text.done", text=text),
            self._at_part("response.content_part.done", part=part),
            encode(done),
        ]

    def _at_message(self) -> dict[str, Any]:
        assert self.message is not None
        return {"item_id": self.message["id"], "output_index": self.message_index, "content_index": 0}

    def _text(self, content: str, last: bool = False) -> list[bytes]:
        if self.message is None and not last and not (self.blank + content).strip():
            self.blank += content
            return []
        content, self.blank = self.blank + content, ""
        out = self._open_message()
        self.text += content
        out.append(encode({"type": "response.output_text.delta", **self._at_message(), "delta": content, "logprobs": []}))
        return out

    def _open_message(self) -> list[bytes]:
        if self.message is not None:
            return []
        self.message = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self.message_index, self.next_index = self.next_index, self.next_index + 1
        self.text = ""
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        added = {"type": "response.output_item.added", "output_index": self.message_index, "item": dict(self.message)}
        return [encode(added), encode({"type": "response.content_part.added", **self._at_message(), "part": part})]

    def _close_message(self) -> list[bytes]:
        if self.message is None:
            return []
        at = self._at_message()
        part: dict[str, Any] = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": None}
        item = dict(self.message, status="completed", content=[part])
        self.items.append(item)
        self.message = None
        return [
            encode({"type": "response.output_text.done", **at, "text": self.text, "logprobs": []}),
            encode({"type": "response.content_part.done", **at, "part": part}),
            encode({"type": "response.output_item.done", "output_index": at["output_index"], "item": item}),
        ]

    def _function_call(self, call: dict[str, Any]) -> list[bytes]:
        function = call.get("function") or {}
        name, arguments = str(function.get("name") or ""), str(function.get("arguments") or "")
        index, self.next_index = self.next_index, self.next_index + 1
        item_id = f"fc_{uuid.uuid4().hex}"
        call_id = str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}")
        added = {
            "id": item_id,
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        item = dict(added, arguments=arguments, status="completed")
        self.items.append(item)
        at = {"item_id": item_id, "output_index": index}
        return [
            encode({"type": "response.output_item.added", "output_index": index, "item": added}),
            encode({"type": "response.function_call_arguments.delta", **at, "delta": arguments}),
            encode({"type": "response.function_call_arguments.done", **at, "arguments": arguments, "name": name}),
            encode({"type": "response.output_item.done", "output_index": index, "item": item}),
        ]
