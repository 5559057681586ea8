"""What an upstream's Responses API events may carry, and the text each gives the guards.

Every event type the proxy relays is listed with its fields; so is every output item
type, content part type and Response object field. Each text-bearing field has a slot
(where in the output it lives: an item's content part, summary part, arguments, name,
input; the audio transcript) and a channel: reasoning (reasoning text and summaries) or
answer (output text; refusals, function-call names and arguments, custom tool input and
audio transcripts as the answer's other text). Deltas add to their slot; a full text (a
``*.done`` event, a part or item, the final Response's ``output``) gives the guards only
what its slot has not had yet, so a complete text that repeats its deltas costs nothing,
and one that differs is screened whole before it is released.

What is not listed is dropped before the client sees it, and named: an unknown event
type (the whole event), an unknown field (that field), an output item or content part of
an unknown type (that item or part), and text the guards cannot read in a known field
(citations in ``annotations``, vLLM's ``output_messages``).
"""

from __future__ import annotations

from typing import Any

from ._wire import note_dropped

__all__ = ["EventReader", "ScreenedText"]

# Fields every event may carry besides its own.
_COMMON = frozenset({"type", "sequence_number"})
_AT_PART = frozenset({"output_index", "item_id", "content_index"})
_AT_ITEM = frozenset({"output_index", "item_id"})
_AT_SUMMARY = frozenset({"output_index", "item_id", "summary_index"})
_DELTA = frozenset({"delta", "obfuscation"})  # obfuscation: OpenAI's random padding

# Event type -> its fields (besides type and sequence_number).
EVENT_FIELDS: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        (
            "response.created",
            "response.in_progress",
            "response.queued",
            "response.completed",
            "response.incomplete",
            "response.failed",
        ),
        frozenset({"response"}),
    ),
    "response.output_item.added": frozenset({"output_index", "item"}),
    "response.output_item.done": frozenset({"output_index", "item"}),
    "response.content_part.added": _AT_PART | {"part"},
    "response.content_part.done": _AT_PART | {"part"},
    "response.output_text.delta": _AT_PART | _DELTA | {"logprobs"},
    "response.output_text.done": _AT_PART | {"text", "logprobs"},
    "response.refusal.delta": _AT_PART | _DELTA,
    "response.refusal.done": _AT_PART | {"refusal"},
    "response.reasoning_text.delta": _AT_PART | _DELTA,
    "response.reasoning_text.done": _AT_PART | {"text"},
    "response.reasoning_summary_part.added": _AT_SUMMARY | {"part"},
    "response.reasoning_summary_part.done": _AT_SUMMARY | {"part"},
    "response.reasoning_summary_text.delta": _AT_SUMMARY | _DELTA,
    "response.reasoning_summary_text.done": _AT_SUMMARY | {"text"},
    "response.function_call_arguments.delta": _AT_ITEM | _DELTA,
    "response.function_call_arguments.done": _AT_ITEM | {"arguments", "name"},
    "response.custom_tool_call_input.delta": _AT_ITEM | _DELTA,
    "response.custom_tool_call_input.done": _AT_ITEM | {"input"},
    "response.audio.delta": frozenset({"delta", "response_id", "obfuscation"}),  # base64 audio of the transcript
    "response.audio.done": frozenset({"response_id"}),
    "response.audio.transcript.delta": frozenset({"delta", "response_id", "obfuscation"}),
    "response.audio.transcript.done": frozenset({"response_id"}),
}

# Output item type -> its fields; which of them are text is in _item_texts.
ITEM_FIELDS: dict[str, frozenset[str]] = {
    "message": frozenset({"id", "type", "role", "status", "content", "phase"}),
    "reasoning": frozenset({"id", "type", "status", "content", "summary", "encrypted_content"}),
    "function_call": frozenset({"id", "type", "status", "call_id", "name", "arguments"}),
    "custom_tool_call": frozenset({"id", "type", "status", "call_id", "name", "input"}),
}

# Content part type -> (its fields, its text field, channel).
PART_FIELDS: dict[str, tuple[frozenset[str], str, str]] = {
    "output_text": (frozenset({"type", "text", "annotations", "logprobs"}), "text", "content"),
    "refusal": (frozenset({"type", "refusal"}), "refusal", "tools"),
    "reasoning_text": (frozenset({"type", "text"}), "text", "reasoning"),
    "summary_text": (frozenset({"type", "text"}), "text", "reasoning"),
}

# The Response object's fields: its output is screened; the rest are the request's
# settings echoed back (the client's own text: instructions, tools, prompt), ids,
# statuses and numbers.
RESPONSE_FIELDS = frozenset(
    {
        "id", "object", "created_at", "completed_at", "model", "status", "error", "incomplete_details",
        "instructions", "metadata", "parallel_tool_calls", "temperature", "tool_choice", "tools", "top_p",
        "top_logprobs", "truncation", "usage", "user", "background", "max_output_tokens", "max_tool_calls",
        "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_retention", "reasoning",
        "safety_identifier", "service_tier", "store", "text", "conversation", "presence_penalty",
        "frequency_penalty", "kv_transfer_params", "ec_transfer_params", "input_messages",
        "output", "output_messages",
    }
)  # fmt: skip
# Known fields whose text the guards cannot read as it stands: kept only when empty.
_UNREAD: dict[str, Any] = {"output_messages": None, "annotations": []}
# Per event type, every field it may carry.
_ALLOWED = {kind: fields | _COMMON for kind, fields in EVENT_FIELDS.items()}

# Text-bearing event fields: event type -> (field, slot kind, channel, is a delta).
_EVENT_TEXT: dict[str, tuple[str, str, str, bool]] = {
    "response.output_text.delta": ("delta", "content", "content", True),
    "response.output_text.done": ("text", "content", "content", False),
    "response.refusal.delta": ("delta", "content", "tools", True),
    "response.refusal.done": ("refusal", "content", "tools", False),
    "response.reasoning_text.delta": ("delta", "content", "reasoning", True),
    "response.reasoning_text.done": ("text", "content", "reasoning", False),
    "response.reasoning_summary_text.delta": ("delta", "summary", "reasoning", True),
    "response.reasoning_summary_text.done": ("text", "summary", "reasoning", False),
    "response.function_call_arguments.delta": ("delta", "arguments", "tools", True),
    "response.function_call_arguments.done": ("arguments", "arguments", "tools", False),
    "response.custom_tool_call_input.delta": ("delta", "input", "tools", True),
    "response.custom_tool_call_input.done": ("input", "input", "tools", False),
    "response.audio.transcript.delta": ("delta", "transcript", "tools", True),
}

# The text deltas whose slot is a content or summary part: field, slot kind, channel.
_DELTAS = {
    kind: (name, slot_kind, channel)
    for kind, (name, slot_kind, channel, is_delta) in _EVENT_TEXT.items()
    if is_delta and slot_kind in ("content", "summary")
}

Slot = tuple[Any, ...]


class ScreenedText:
    """The new text one event gives each channel of the one output."""

    __slots__ = ("reasoning", "content", "tools")

    def __init__(self) -> None:
        self.reasoning = ""
        self.content = ""
        self.tools = ""

    def add(self, channel: str, text: str) -> None:
        if channel == "content":
            self.content += text
        elif channel == "reasoning":
            self.reasoning += text
        else:
            self.tools += text


class EventReader:
    """One response's events: what each adds for the guards, and what is dropped.

    ``read`` may change the event (it removes what is dropped) and says so."""

    __slots__ = ("api", "seen")

    def __init__(self, api: str = "responses") -> None:
        self.api = api
        # Per slot, the pieces of text the guards were given (joined only when a full
        # text must be compared: a long trace's deltas are never copied each time).
        self.seen: dict[Slot, list[str]] = {}

    def read(self, doc: dict[str, Any]) -> tuple[ScreenedText, list[str], bool]:
        """(new text, labels of what was dropped, whether ``doc`` changed); an event
        dropped whole gives the label of its type and leaves ``doc`` as it was."""
        kind = doc["type"]
        fields = _ALLOWED.get(kind)
        text = ScreenedText()
        if fields is None:
            return text, [self._label(f"event {kind}")], False
        delta = _DELTAS.get(kind)
        if delta is not None and fields.issuperset(doc):  # the common case, in one pass
            name, slot_kind, channel = delta
            value, oi, index = doc.get(name), doc.get("output_index", 0), doc.get(slot_kind + "_index", 0)
            if type(value) is str and type(oi) is int and type(index) is int:
                self._text(text, (slot_kind, oi, index), channel, value, True)
                return text, [], False
        dropped: list[str] = []
        changed = False if fields.issuperset(doc) else self._strip(doc, fields, kind, dropped)
        oi = doc.get("output_index", 0)
        if type(oi) is not int:
            oi = 0
            changed = self._mistyped(doc, "output_index", kind, dropped)
        spec = _EVENT_TEXT.get(kind)
        if spec is not None:
            name, slot_kind, channel, is_delta = spec
            value = doc.get(name)
            if isinstance(value, str):
                slot = (
                    (slot_kind, oi, self._index(doc, slot_kind, kind, dropped))
                    if slot_kind in ("content", "summary")
                    else (slot_kind, oi)
                )
                self._text(text, slot, channel, value, is_delta)
            elif value is not None:
                changed = self._mistyped(doc, name, kind, dropped)
            if is_delta:  # a delta carries nothing else
                return text, dropped, changed or bool(dropped)
        called = doc.get("name")
        if isinstance(called, str) and kind == "response.function_call_arguments.done":
            self._name(text, ("name", oi), called)
        elif called is not None:
            changed = self._mistyped(doc, "name", kind, dropped)
        for key in ("part", "item", "response"):
            if key in doc and not isinstance(doc[key], dict):
                changed = self._mistyped(doc, key, kind, dropped)
        part = doc.get("part")
        if part is not None:
            slot_kind = "summary" if kind.startswith("response.reasoning_summary_part") else "content"
            index = self._index(doc, slot_kind, kind, dropped)
            keep = self._part(text, part, (slot_kind, oi, index), f"{kind}.part", dropped)
            if not keep:
                return ScreenedText(), dropped, False
            changed = changed or keep == "changed"
        item = doc.get("item")
        if item is not None:
            keep = self._item(text, item, oi, f"{kind}.item", dropped)
            if not keep:
                return ScreenedText(), dropped, False
            changed = changed or keep == "changed"
        response = doc.get("response")
        if response is not None:
            changed = self._response(text, response, kind, dropped) or changed
        return text, dropped, changed or bool(dropped)

    def _index(self, doc: dict[str, Any], slot_kind: str, where: str, dropped: list[str]) -> int:
        key = "summary_index" if slot_kind == "summary" else "content_index"
        index = doc.get(key, 0)
        if type(index) is int:
            return index
        self._mistyped(doc, key, where, dropped)
        return 0

    def _mistyped(self, obj: dict[str, Any], key: str, where: str, dropped: list[str]) -> bool:
        """Drop a known field whose value has a shape the proxy cannot read (text in an
        object where a string belongs, say): True, the object changed."""
        del obj[key]
        dropped.append(self._label(f"{where}.{key}"))
        return True

    # -- text ---------------------------------------------------------------------

    def _text(self, out: ScreenedText, slot: Slot, channel: str, value: str, is_delta: bool) -> None:
        pieces = self.seen.get(slot)
        if is_delta:
            if pieces is None:
                self.seen[slot] = [value]
            else:
                pieces.append(value)
            new = value
        else:
            seen = "".join(pieces) if pieces else ""
            if value == seen:
                if pieces is not None and len(pieces) > 1:
                    self.seen[slot] = [seen]
                return
            # A full text that continues what was screened adds its rest; one that does
            # not is screened whole.
            new = value[len(seen) :] if value.startswith(seen) else value
            self.seen[slot] = [value]
        if new:
            out.add(channel, new)

    def _name(self, out: ScreenedText, slot: Slot, name: str) -> None:
        if name and self.seen.get(slot) != [name]:
            self.seen[slot] = [name]
            out.add("tools", f"\n[tool call {name}] ")

    # -- objects ------------------------------------------------------------------

    def _strip(self, obj: dict[str, Any], fields: frozenset[str], where: str, dropped: list[str]) -> bool:
        """Remove the fields not in ``fields``, and text the guards cannot read from
        known ones; True if anything was removed."""
        changed = False
        if not fields.issuperset(obj):
            for key in [k for k in obj if k not in fields]:
                del obj[key]
                dropped.append(self._label(f"{where}.{key}"))
                changed = True
        for key, empty in _UNREAD.items():
            if obj.get(key) and key in fields:
                obj[key] = empty
                dropped.append(self._label(f"{where}.{key}"))
                changed = True
        return changed

    def _part(self, out: ScreenedText, part: dict[str, Any], slot: Slot, where: str, dropped: list[str]) -> str:
        """Screen one content or summary part: "" when it must be dropped whole,
        "changed" when fields were removed, else "kept"."""
        spec = PART_FIELDS.get(str(part.get("type")))
        if spec is None:
            dropped.append(self._label(f"{where} of type {part.get('type')}"))
            return ""
        fields, name, channel = spec
        where = f"{where}:{part['type']}"
        changed = self._strip(part, fields, where, dropped)
        value = part.get(name)
        if isinstance(value, str):
            self._text(out, slot, channel, value, False)
        elif value is not None:
            changed = self._mistyped(part, name, where, dropped)
        return "changed" if changed else "kept"

    def _item(self, out: ScreenedText, item: dict[str, Any], oi: Any, where: str, dropped: list[str]) -> str:
        """Screen one output item, as ``_part`` does a part."""
        kind = str(item.get("type"))
        fields = ITEM_FIELDS.get(kind)
        if fields is None:
            dropped.append(self._label(f"{where} of type {kind}"))
            return ""
        where = f"{where}:{kind}"
        changed = self._strip(item, fields, where, dropped)
        for key in ("name", "arguments", "input", "role", "encrypted_content"):
            if item.get(key) is not None and not isinstance(item[key], str):
                changed = self._mistyped(item, key, where, dropped)
        if kind in ("function_call", "custom_tool_call"):
            if isinstance(item.get("name"), str):
                self._name(out, ("name", oi), item["name"])
            name = "arguments" if kind == "function_call" else "input"
            if isinstance(item.get(name), str):
                self._text(out, (name, oi), "tools", item[name], False)
        for key in ("content", "summary") if kind in ("message", "reasoning") else ():
            parts = item.get(key)
            if parts is not None and not isinstance(parts, list):
                changed = self._mistyped(item, key, where, dropped)
            if not isinstance(parts, list):
                continue
            kept = []
            for i, part in enumerate(parts):
                keep = self._part(out, part, (key, oi, i), f"{where}.{key}", dropped) if isinstance(part, dict) else ""
                if keep:
                    kept.append(part)
                changed = changed or keep != "kept"
            if len(kept) != len(parts):
                item[key] = kept
        return "changed" if changed else "kept"

    def _response(self, out: ScreenedText, response: dict[str, Any], kind: str, dropped: list[str]) -> bool:
        changed = self._strip(response, RESPONSE_FIELDS, f"{kind}.response", dropped)
        items = response.get("output")
        if items is not None and not isinstance(items, list):
            changed = self._mistyped(response, "output", f"{kind}.response", dropped)
        if isinstance(items, list):
            kept = []
            for oi, item in enumerate(items):
                keep = self._item(out, item, oi, f"{kind}.response.output", dropped) if isinstance(item, dict) else ""
                if keep:
                    kept.append(item)
                changed = changed or keep != "kept"
            if len(kept) != len(items):
                response["output"] = kept
        return changed

    def _label(self, label: str) -> str:
        return note_dropped(self.api, label)
