"""The Responses API (``POST /v1/responses``): the adapter.

Request: ``input`` (a string, or items: messages with ``input_text`` / ``output_text``
parts, ``function_call`` and ``function_call_output`` items, earlier ``reasoning``) and
``instructions`` (the system prompt). The query the guards judge answers against is the
last user input. ``background: true`` is refused unless ``[endpoints]
allow_background_responses``: a background response cannot be stopped by closing a
stream. ``previous_response_id`` and ``item_reference`` items pass: what they refer to
is screened only if it passed through this proxy (the README says so).

Upstream events (vLLM, ``event: <type>`` then ``data:`` with the same ``type``; no
``[DONE]``): ``_responses_events`` knows each event, item and part type and which text
each carries on which channel (reasoning text and summaries; output text, refusals,
function-call names and arguments, custom tool input, audio transcripts as the answer),
and drops what it does not know. The one Response is output 0, and it finishes at
``response.completed`` (or an upstream ``incomplete``); ``response.failed`` and
``error`` events are upstream errors.

A stop ends the stream the way the API says a response was cut: for ``rewrite`` a new
message item whose text is the refusal, then ``response.incomplete`` (status
"incomplete", ``incomplete_details.reason`` "content_filter") whose ``output`` holds
what the client saw. Every event the proxy writes continues the upstream's
``sequence_number``. The per-stage decision rides on the final Response object as
``guardproxy`` (and ``content_filter_results``), as for chat.

A steered Response goes on in the same reasoning item: the request is rendered as chat
messages for the upstream's template (``continuation_source``), and the continuation is
written as vLLM's events (``_responses_continued``), numbered after the last event the
client was sent.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from .._config import PolicyConfig, ServerConfig
from ..exceptions import InvalidRequest, UpstreamError
from ..pipeline._report import Decision, StageReport
from ._annotations import filter_results, stage_summary
from ._base import (
    Adapter,
    CountedUsage,
    JsonBuilder,
    OutputDelta,
    ReportView,
    ResponseWriter,
    Turn,
    UpstreamEvent,
    token_usage,
    turns_of,
)
from ._continued import ChatSource, ContinuedWriter, TextSource
from ._ids import ResponseIds
from ._inventory import NO_EXTRA_FIELDS, ExtraFields, Piece, responses_pieces
from ._request import common_fields, decode_body, streamed_body
from ._responses_continued import ResponsesContinued
from ._responses_events import EventReader
from ._wire import decode_json, encode

__all__ = ["ResponsesAdapter", "ResponsesRequest", "ResponsesWriter"]

_REASONING_DELTAS = frozenset({"response.reasoning_text.delta", "response.reasoning_summary_text.delta"})
_REASONING_EVENTS = _REASONING_DELTAS | {
    "response.reasoning_text.done",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_part.done",
}
_TERMINAL = frozenset({"response.completed", "response.incomplete"})
_LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued"})


class ResponsesRequest(msgspec.Struct, kw_only=True):
    body: dict[str, Any]
    model: str
    stream: bool
    n: int = 1
    include_usage: bool = False
    # Every text the request gives the model, in order (_inventory.responses_pieces).
    pieces: list[Piece]

    def screened_prompt(self, scope: str) -> str:
        if scope == "last_user":
            return self.query()
        return "\n".join(f"{p.role}: {p.text}" for p in self.pieces if p.text)

    def query(self, index: int = 0) -> str:
        for piece in reversed(self.pieces):
            if piece.role == "user":
                return piece.text
        return self.pieces[-1].text if self.pieces else ""

    def conversation(self, screen_system: bool) -> list[Turn]:
        return turns_of(self.pieces, screen_system)

    def upstream_body(self) -> bytes:
        return streamed_body(self.body, usage=False)  # usage comes in response.completed

    def continuation_source(self) -> ChatSource | TextSource | str:
        return _chat_source(self.body)


_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_ROLES = frozenset({"user", "system", "developer", "assistant"})


def _chat_source(body: dict[str, Any]) -> ChatSource | str:
    """The request as the chat messages and tools vLLM renders a Responses request from,
    for the upstream's /tokenize; or why it cannot be rendered faithfully."""
    if body.get("previous_response_id") is not None:
        return "the request continues a stored response (previous_response_id), which the proxy cannot render"
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        return "the request's instructions are not a string"
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            why = _add_item(messages, item)
            if why is not None:
                return f"input[{i}]: {why}"
    elif items is not None:
        return "the request's input is neither a string nor a list of items"
    tools = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            return f"tools[{i}] is a {kind} tool, which the upstream's chat template cannot render"
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        tools.append({"type": "function", "function": function})
    kwargs = body.get("chat_template_kwargs")
    return ChatSource(messages=messages, tools=tools or None, template_kwargs=kwargs if isinstance(kwargs, dict) else None)


def _add_item(messages: list[dict[str, Any]], item: Any) -> str | None:
    """Add one input item to ``messages``; why it cannot be rendered, if it cannot."""
    if not isinstance(item, dict):
        return "not an item"
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            return f"a message of role {role}"
        text = _message_text(item.get("content"))
        if text is None:
            return "a message part other than text (media, a file, a refusal)"
        messages.append({"role": role, "content": text})
    elif kind == "function_call":
        name, arguments = item.get("name"), item.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            return "a function_call without a name and arguments"
        call = {"id": item.get("call_id") or item.get("id"), "type": "function"}
        call["function"] = {"name": name, "arguments": arguments}
        last = messages[-1] if messages else None
        # Consecutive calls are one assistant turn, as the model made them.
        if last is not None and last["role"] == "assistant" and last.get("tool_calls") and last.get("content") is None:
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _message_text(output)
        if text is None:
            return "a function_call_output other than text"
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    elif kind == "reasoning":
        # An earlier turn's reasoning is left out: vLLM's own rendering of a Responses
        # conversation skips the reasoning of earlier responses, and chat templates such as
        # Qwen3's drop earlier turns' reasoning, so the first generation did not read it.
        pass
    else:
        return f"an item of type {kind}, which the upstream's chat template cannot render"
    return None


def _message_text(content: Any) -> str | None:
    """A message's content as text: a string, or text parts joined; None for anything else."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            return None
        texts.append(part["text"])
    return "".join(texts)


def parse_responses_request(
    raw: bytes, policy: PolicyConfig, server: ServerConfig, allow_background: bool, extra: ExtraFields = NO_EXTRA_FIELDS
) -> ResponsesRequest:
    body = decode_body(raw, server.max_json_depth)
    common = common_fields(body)  # the Responses API has no n: always one output
    if body.get("background") and not allow_background:
        raise InvalidRequest(
            "`background: true` is refused: a background response runs on after the stream closes, so the "
            "proxy could not stop it (the operator may allow it: [endpoints] allow_background_responses).",
            param="background",
        )
    pieces = responses_pieces(body, policy.prompt.unscreened_parts, extra)
    return ResponsesRequest(body=body, model=common.model, stream=common.stream, pieces=pieces)


class _Outputs:
    """The output items as the client has seen them (released events only): what a
    ``response.incomplete`` written by the proxy reports, and where its items go."""

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {}
        self.open: set[int] = set()  # added, not yet done
        self.sequence = -1
        self.base: dict[str, Any] | None = None  # the upstream's Response object
        self.final: dict[str, Any] | None = None  # from its terminal event

    def see(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type", "")
        seq = doc.get("sequence_number")
        if isinstance(seq, int):
            self.sequence = max(self.sequence, seq)
        index = doc.get("output_index")
        if kind in _LIFECYCLE and isinstance(doc.get("response"), dict):
            self.base = doc["response"]
        elif kind in _TERMINAL and isinstance(doc.get("response"), dict):
            self.final = doc["response"]
        elif kind in ("response.output_item.added", "response.output_item.done") and isinstance(index, int):
            if isinstance(doc.get("item"), dict):
                self.items[index] = copy.deepcopy(doc["item"])
                (self.open.add if kind.endswith("added") else self.open.discard)(index)
        elif isinstance(index, int) and index in self.items:
            self._apply(self.items[index], kind, doc)

    @staticmethod
    def _apply(item: dict[str, Any], kind: str, doc: dict[str, Any]) -> None:
        delta = doc.get("delta")
        part_index = doc.get("content_index", 0)
        # vLLM sends a reasoning item's "content" as null until it is done.
        if kind == "response.content_part.added" and isinstance(doc.get("part"), dict):
            item["content"] = [*(item.get("content") or []), copy.deepcopy(doc["part"])]
        elif kind in ("response.output_text.delta", "response.reasoning_text.delta") and isinstance(delta, str):
            parts = item.get("content") or []
            if isinstance(part_index, int) and part_index < len(parts) and isinstance(parts[part_index], dict):
                parts[part_index]["text"] = (parts[part_index].get("text") or "") + delta
        elif kind == "response.function_call_arguments.delta" and isinstance(delta, str):
            item["arguments"] = item.get("arguments", "") + delta

    @property
    def next_index(self) -> int:
        return max(self.items, default=-1) + 1

    def output(self) -> list[dict[str, Any]]:
        return [self.items[i] for i in sorted(self.items)]


class _Builder(JsonBuilder):
    def __init__(self, writer: ResponsesWriter) -> None:
        self.writer = writer

    def add(self, event: UpstreamEvent) -> None:
        if isinstance(event.doc, dict):
            self.writer.outputs.see(event.doc)

    def stop(self, index: int, refusal: str | None, results: dict[str, Any], closing: str = "") -> None:
        self.writer.cut(refusal, "content_filter")  # the refusal is an item of its own: nothing to close

    def build(self, ids: ResponseIds, usage: Any, extra: dict[str, Any], results: dict[int, dict[str, Any]]) -> bytes:
        outputs = self.writer.outputs
        response = dict(outputs.final or self.writer.response_base(ids))
        if response.get("usage") is None and usage is not None:  # a cut response: the upstream's or the counted usage
            response["usage"] = usage.responses() if isinstance(usage, CountedUsage) else usage
        summary = extra["guardproxy"]
        response["guardproxy"] = {"prompt": summary["prompt"], **summary["choices"].get("0", {})}
        response["content_filter_results"] = results.get(0, {})
        response["prompt_filter_results"] = extra["prompt_filter_results"]
        return encode(response)


class ResponsesAdapter(Adapter):
    name = "responses"
    path = "/responses"
    id_prefix = "resp_guardproxy_"

    def __init__(self, allow_background: bool = False) -> None:
        self.allow_background = allow_background

    def parse(self, raw: bytes, policy: PolicyConfig, server: ServerConfig, extra: ExtraFields) -> ResponsesRequest:
        return parse_responses_request(raw, policy, server, self.allow_background, extra)

    # -- reading --------------------------------------------------------------------

    def read(self, data: bytes) -> UpstreamEvent:
        """One event on its own: no item or part it belongs to is known before it."""
        return self._read(data, EventReader())

    def stream_reader(self) -> Callable[[bytes], UpstreamEvent]:
        # Which item and part each event's text belongs to, across one stream.
        return _StreamReader(self)

    def _read(self, data: bytes, reader: EventReader) -> UpstreamEvent:
        try:
            doc = decode_json(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError("The upstream sent a malformed stream event.") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
            raise UpstreamError("The upstream sent a stream event without a type.")
        kind = doc["type"]
        event = UpstreamEvent(data, kind=kind, doc=doc)
        if kind == "error":
            raise UpstreamError(f"The upstream failed mid-stream: {str(doc.get('message') or doc.get('code'))[:1000]}")
        response = doc.get("response") if isinstance(doc.get("response"), dict) else None
        if kind == "response.failed":
            error = (response or {}).get("error") or {}
            raise UpstreamError(f"The upstream's response failed: {str(error.get('message') or error)[:1000]}")
        text, dropped, changed = reader.read(doc)
        if dropped:
            event.dropped = tuple(dropped)
            if not changed:  # dropped whole
                return UpstreamEvent(b"", kind=kind, dropped=event.dropped)
            event.data = encode(doc)
        if response is not None:
            event.id = str(response.get("id") or "")
            event.model = str(response.get("model") or "")
            created = response.get("created_at")
            event.created = int(created) if isinstance(created, (int, float)) else 0
        finish = None
        if kind in _TERMINAL and response is not None:
            status = response.get("status")
            details = response.get("incomplete_details") or {}
            finish = "stop" if status == "completed" else str(details.get("reason") or status or "incomplete")
            event.usage = response.get("usage")
            event.tokens = token_usage(event.usage, "input_tokens", "output_tokens")
        if finish is not None or text.reasoning or text.content or text.tools:
            event.outputs = [OutputDelta(0, text.reasoning, text.content, text.tools, finish)]
        return event

    def writer(self, prompt: StageReport) -> ResponsesWriter:
        return ResponsesWriter(prompt)

    def continued_writer(
        self, ids: ResponseIds, index: int, inline: bool, reasoning_event: UpstreamEvent | None, kept: str
    ) -> ContinuedWriter:
        return ResponsesContinued(ids, index, reasoning_event, kept)

    def rolled_back(self, read: Callable[[bytes], UpstreamEvent], writer: ContinuedWriter, shown: str) -> None:
        """A steer rolled the reasoning back; the client has ``shown`` of it. The stream
        reader forgets every text past that point (it read the rolled-back events), so
        that the continuation's full texts (its ``.done`` events, the final Response)
        repeat what it screened instead of being screened whole again; the continuation's
        reasoning item ends as ``shown`` plus its deltas."""
        if not isinstance(read, _StreamReader) or not isinstance(writer, ResponsesContinued):
            return
        writer.shown = shown
        oi, ci = writer.reasoning_index, writer.part_index
        seen = read.events.seen
        for slot in [s for s in seen if s[1] > oi or (s[:2] == ("content", oi) and s[2] > ci)]:
            del seen[slot]
        if shown:
            seen[("content", oi, ci)] = [shown]
        else:
            seen.pop(("content", oi, ci), None)


class _StreamReader:
    """One upstream stream's reading: the adapter's, with the slots its text went to."""

    __slots__ = ("adapter", "events")

    def __init__(self, adapter: ResponsesAdapter) -> None:
        self.adapter = adapter
        self.events = EventReader()

    def __call__(self, data: bytes) -> UpstreamEvent:
        return self.adapter._read(data, self.events)


class ResponsesWriter(ResponseWriter):
    """One Response's writing, and what the client has seen of it (``_Outputs``): the
    events the proxy writes continue its items and sequence numbers."""

    def __init__(self, prompt: StageReport) -> None:
        super().__init__(prompt)
        self.outputs = _Outputs()

    def render(self, event: UpstreamEvent, hide: dict[int, str] | None, finished: ReportView) -> bytes:
        doc = event.doc
        if not event.data:  # dropped whole
            return event.data
        # A steered continuation's events (``_responses_continued``) are numbered here, after
        # the last event released: the rolled-back events the upstream numbered were not.
        continued = "sequence_number" not in doc and self.outputs.sequence >= 0
        if hide is None and not finished and not continued:  # unchanged
            return event.data
        if continued:
            doc = self._continued(doc, hide)
            if not doc:
                return b""
        if hide is not None:
            if event.kind in _REASONING_EVENTS:
                return b""
            doc = copy.deepcopy(doc)
            if event.kind == "response.output_text.delta":
                doc["delta"] = hide.get(0, "")
            for item in _items_of(doc):
                if item.get("type") == "reasoning":
                    item["content"], item["summary"] = [], []
                    if item.get("encrypted_content") is not None:
                        item["encrypted_content"] = None
            part = doc.get("part")
            if isinstance(part, dict) and part.get("type") in ("reasoning_text", "summary_text"):
                part["text"] = ""
        if finished and isinstance(doc.get("response"), dict):
            doc = doc if hide is not None else copy.deepcopy(doc)
            self._annotate(doc["response"], finished.get(0, {}))
        return encode(doc)

    def _continued(self, doc: dict[str, Any], hide: dict[int, str] | None) -> dict[str, Any]:
        """A continuation's event as released: numbered, its final Response completed
        with the request's settings that the upstream's own Response echoed; empty where
        hidden reasoning leaves nothing of it."""
        if hide is not None and doc.get("type") in _REASONING_EVENTS:
            return {}
        doc = dict(doc)  # its top level only is changed here; what changes more copies deeper
        self.outputs.sequence += 1
        doc["sequence_number"] = self.outputs.sequence
        if isinstance(doc.get("response"), dict) and self.outputs.base is not None:
            doc["response"] = {**self.outputs.base, **doc["response"]}
        return doc

    def _annotate(self, response: dict[str, Any], stages: dict[str, StageReport]) -> None:
        """The verdicts on the final Response object, as a JSON answer carries them."""
        response["content_filter_results"] = filter_results(stages)
        response["prompt_filter_results"] = _prompt_filter_results(self.prompt)
        response["guardproxy"] = _summary(self.prompt, stages)

    def decode_rendered(self, event: UpstreamEvent, data: bytes) -> UpstreamEvent:
        if data is event.data or not data:
            return event
        return msgspec.structs.replace(event, data=data, doc=decode_json(data))

    # -- writing --------------------------------------------------------------------

    def _event(self, doc: dict[str, Any]) -> bytes:
        self.outputs.sequence += 1
        doc["sequence_number"] = self.outputs.sequence
        self.outputs.see(doc)
        return self.frame(encode(doc), None, doc["type"])

    def frame(self, data: bytes, event: UpstreamEvent | None = None, kind: str = "") -> bytes:
        if event is not None:
            kind = event.kind
            if isinstance(event.doc, dict):
                self.outputs.see(event.doc)
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def opening(self, ids: ResponseIds) -> list[bytes]:
        return []

    def response_base(self, ids: ResponseIds) -> dict[str, Any]:
        """The upstream's Response object, or the proxy's own when it never answered."""
        if self.outputs.base is not None:
            return dict(self.outputs.base)
        return {
            "id": ids.id,
            "object": "response",
            "created_at": ids.created or int(time.time()),
            "model": ids.model,
            "status": "in_progress",
            "output": [],
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": None,
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "usage": None,
        }

    def cut(self, refusal: str | None, reason: str) -> list[bytes]:
        """Events that end the response as cut (and the final object for JSON clients)."""
        out = []
        if self.outputs.base is None:  # nothing from the upstream yet: a lifecycle of our own
            base = self.response_base(ResponseIds("", prefix=ResponsesAdapter.id_prefix))
            self.outputs.base = base
            out.append(self._event({"type": "response.created", "response": dict(base)}))
            out.append(self._event({"type": "response.in_progress", "response": dict(base)}))
        for index in sorted(self.outputs.open):  # what the client saw start, closed as cut
            item = dict(self.outputs.items[index], status="incomplete")
            out.append(self._event({"type": "response.output_item.done", "output_index": index, "item": item}))
        if refusal is not None:
            index = self.outputs.next_index
            item_id = f"msg_guardproxy_{uuid.uuid4().hex}"
            item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
            at = {"output_index": index, "item_id": item_id}
            out.append(self._event({"type": "response.output_item.added", "output_index": index, "item": item}))
            out.append(self._event({"type": "response.content_part.added", **at, "content_index": 0, "part": part}))
            out.append(
                self._event({"type": "response.output_text.delta", **at, "content_index": 0, "delta": refusal, "logprobs": []})
            )
            out.append(
                self._event({"type": "response.output_text.done", **at, "content_index": 0, "text": refusal, "logprobs": []})
            )
            done_part = dict(part, text=refusal)
            out.append(self._event({"type": "response.content_part.done", **at, "content_index": 0, "part": done_part}))
            done_item = dict(item, status="incomplete", content=[done_part])
            out.append(self._event({"type": "response.output_item.done", "output_index": index, "item": done_item}))
        response = dict(self.outputs.base or {})
        response.update(status="incomplete", incomplete_details={"reason": reason}, output=self.outputs.output())
        out.append(self._event({"type": "response.incomplete", "response": response}))
        self.outputs.final = response
        return out

    def stopped(
        self,
        ids: ResponseIds,
        decision: Decision,
        choices: ReportView,
        refusal: str | None,
        closing: dict[int, str] | None = None,
    ) -> list[bytes]:
        # The refusal is an output item of its own, and the cut item ends "incomplete":
        # no text follows an open inline <think>, so nothing needs closing.
        out = self.cut(refusal, "content_filter")
        final = self.outputs.final or {}
        self._annotate(final, choices.get(0, {}))
        out[-1] = self.frame(
            encode(_with_sequence("response.incomplete", final, self.outputs.sequence)), None, "response.incomplete"
        )
        return out

    def error_event(self, ids: ResponseIds, error: dict[str, Any]) -> bytes:
        out = b""
        if self.outputs.base is None:  # failed before the upstream's first event: open the lifecycle
            self.outputs.base = self.response_base(ids)
            out += self._event({"type": "response.created", "response": dict(self.outputs.base)})
        out += self._event(
            {"type": "error", "code": error.get("code"), "message": error.get("message"), "param": error.get("param")}
        )
        if self.outputs.base is not None:
            failed = dict(self.outputs.base, status="failed", output=self.outputs.output())
            failed["error"] = {"code": error.get("code"), "message": error.get("message")}
            out += self._event({"type": "response.failed", "response": failed})
        return out

    def shutdown_ending(self, ids: ResponseIds, unfinished: list[int]) -> list[bytes]:
        if not unfinished:
            return []
        out = self.cut(None, "max_output_tokens")
        final = dict(self.outputs.final or {}, guardproxy={"ended_by": "shutdown"})
        out[-1] = self.frame(
            encode(_with_sequence("response.incomplete", final, self.outputs.sequence)), None, "response.incomplete"
        )
        return out

    def builder(self) -> JsonBuilder:
        return _Builder(self)


def _summary(prompt: StageReport, stages: dict[str, StageReport]) -> dict[str, Any]:
    """The per-stage decision on the Response object: one output, so no choices level."""
    return {"prompt": stage_summary(prompt), **{name: stage_summary(r) for name, r in stages.items()}}


def _prompt_filter_results(prompt: StageReport) -> list[dict[str, Any]]:
    return [{"prompt_index": 0, "content_filter_results": filter_results({"prompt": prompt})}]


def _with_sequence(kind: str, response: dict[str, Any], sequence: int) -> dict[str, Any]:
    return {"type": kind, "response": response, "sequence_number": sequence}


def _items_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items an event carries (its item, or its response's output)."""
    items = []
    if isinstance(doc.get("item"), dict):
        items.append(doc["item"])
    response = doc.get("response")
    if isinstance(response, dict) and isinstance(response.get("output"), list):
        items += [i for i in response["output"] if isinstance(i, dict)]
    return items
