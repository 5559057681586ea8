"""The request side's closed world: every field of every guarded API, and what the proxy does with it.

A field is one of three things:

- **screened**: text the model reads, sent to FlexGuard before the upstream may answer
  (user-side text in prompt mode, earlier assistant turns and client-supplied reasoning
  in response mode, the operator's system prompt and tool or schema definitions in
  prompt mode);
- a **parameter**: something the model does not read as text (sampling, limits, ids,
  tool choice), forwarded as sent;
- **refused**: a 400 naming the field, because the proxy cannot screen what it carries.

Anything not listed here is refused: an unknown top-level field, role, message key,
content-part type or input-item type. Operators may allow named extra fields
(``allow_fields``: forwarded, every string in them screened; ``unscreened_fields``:
forwarded unscreened, a stated trust decision); ``chat_template`` is never forwarded.

The walkers here turn a request into ``Piece`` values, the texts the guards screen, so
that what is forwarded and what is screened are decided in one place. The tables also
write the README's "What is screened" section (a test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, Literal

import msgspec

from ..exceptions import InvalidRequest

__all__ = [
    "API_FIELDS",
    "CHAT_FIELDS",
    "CHAT_MESSAGE_KEYS",
    "COMPLETIONS_FIELDS",
    "ExtraFields",
    "Field",
    "MODERATIONS_FIELDS",
    "NEVER_FORWARDED",
    "NO_EXTRA_FIELDS",
    "PART_KEYS",
    "Piece",
    "RESPONSES_FIELDS",
    "RESPONSES_ITEM_KEYS",
    "TOOL_KEYS",
    "chat_pieces",
    "check_fields",
    "completions_pieces",
    "inventory_markdown",
    "message_text",
    "part_text",
    "responses_pieces",
]

Treatment = Literal["screened", "parameter", "refused", "structure"]


class Field(msgspec.Struct, frozen=True):
    """What the proxy does with one field."""

    treatment: Treatment
    what: str = ""  # for the docs and for the refusal's message

    @property
    def forwarded(self) -> bool:
        return self.treatment != "refused"


def _s(what: str) -> Field:
    return Field("screened", what)


def _p(what: str = "") -> Field:
    return Field("parameter", what)


def _r(what: str) -> Field:
    return Field("refused", what)


def _n(what: str) -> Field:
    """Structure: read by the walker (its own text, if any, is screened where it says)."""
    return Field("structure", what)


# Sampling, limits and bookkeeping the model does not read as text. Shared by the APIs
# that take them; each API's table says which it takes.
_SAMPLING = {
    "temperature": _p(),
    "top_p": _p(),
    "frequency_penalty": _p(),
    "presence_penalty": _p(),
    "seed": _p(),
    "logit_bias": _p("token ids and biases"),
    "logprobs": _p(),
    "top_logprobs": _p(),
    "stop": _p("strings that end generation; the model does not read them"),
    "user": _p("an end-user id for the provider's abuse tracking"),
    "metadata": _p("key-value tags kept by the provider; not shown to the model"),
    "store": _p(),
    "service_tier": _p(),
    "safety_identifier": _p(),
    "prompt_cache_key": _p(),
}

CHAT_FIELDS: dict[str, Field] = {
    "model": _p("routes the request"),
    "messages": _n("every message: see the roles below"),
    "stream": _p("the upstream is always streamed"),
    "stream_options": _p(),
    "n": _p(),
    "max_tokens": _p(),
    "max_completion_tokens": _p(),
    **_SAMPLING,
    "tools": _s("each tool's name, description and parameter schema (prompt mode, as the operator's text)"),
    "functions": _s("each function's name, description and parameter schema (prompt mode, as the operator's text)"),
    "tool_choice": _p("which declared tool to call"),
    "function_call": _p("which declared function to call"),
    "parallel_tool_calls": _p(),
    "response_format": _s("a JSON schema's name, description and schema (prompt mode, as the operator's text)"),
    "prediction": _s("predicted output content (prompt mode)"),
    "reasoning_effort": _p(),
    "verbosity": _p(),
    "modalities": _p(),
    "audio": _p("output voice and format"),
    "web_search_options": _r("a hosted search would put text the guards never read before the model"),
}

COMPLETIONS_FIELDS: dict[str, Field] = {
    "model": _p("routes the request"),
    "prompt": _s("each prompt string (prompt mode); token-id prompts are refused"),
    "suffix": _s("screened with each prompt (prompt mode)"),
    "stream": _p("the upstream is always streamed"),
    "stream_options": _p(),
    "n": _p(),
    "best_of": _p(),
    "echo": _p(),
    "max_tokens": _p(),
    **{k: v for k, v in _SAMPLING.items() if k not in ("store", "safety_identifier", "prompt_cache_key", "metadata")},
}

RESPONSES_FIELDS: dict[str, Field] = {
    "model": _p("routes the request"),
    "input": _n("a string, or input items: see the item types below"),
    "instructions": _s("the system prompt (prompt mode, as the operator's text)"),
    "stream": _p("the upstream is always streamed"),
    "stream_options": _p(),
    "max_output_tokens": _p(),
    "max_tool_calls": _p(),
    "temperature": _p(),
    "top_p": _p(),
    "top_logprobs": _p(),
    "tools": _s(
        "each function tool's name, description and parameter schema (prompt mode, as the operator's text); other tool types are refused"
    ),
    "tool_choice": _p("which declared tool to call"),
    "parallel_tool_calls": _p(),
    "text": _s("a `json_schema` format's name, description and schema (prompt mode, as the operator's text); `verbosity`"),
    "reasoning": _p("effort and summary settings"),
    "truncation": _p(),
    "include": _p("extra output fields; any the guards cannot read are dropped from the output"),
    "previous_response_id": _p("state kept by the upstream: screened only if it passed through this proxy"),
    "store": _p(),
    "metadata": _p("key-value tags kept by the provider; not shown to the model"),
    "user": _p("an end-user id for the provider's abuse tracking"),
    "service_tier": _p(),
    "safety_identifier": _p(),
    "prompt_cache_key": _p(),
    "background": _p("refused unless [endpoints] allow_background_responses"),
    "prompt": _r("a stored prompt template is text the guards never read"),
    "conversation": _r("a stored conversation is text the guards never read"),
}

MODERATIONS_FIELDS: dict[str, Field] = {
    "model": _p("named in the answer"),
    "input": _s("each string or text part (prompt mode): what is classified"),
}

API_FIELDS: dict[str, dict[str, Field]] = {
    "chat": CHAT_FIELDS,
    "responses": RESPONSES_FIELDS,
    "completions": COMPLETIONS_FIELDS,
    "moderations": MODERATIONS_FIELDS,
}

# Chat messages: the keys each role may carry.
_NAME = _s("screened (prompt mode): templates print it in the turn header")
CHAT_MESSAGE_KEYS: dict[str, dict[str, Field]] = {
    "system": {"role": _p(), "content": _s("prompt mode, as the operator's text"), "name": _NAME},
    "developer": {"role": _p(), "content": _s("prompt mode, as the operator's text"), "name": _NAME},
    "user": {"role": _p(), "content": _s("prompt mode; images, audio and files as `unscreened_parts` says"), "name": _NAME},
    "assistant": {
        "role": _p(),
        "content": _s("response mode, after the user turn before it"),
        "refusal": _s("response mode, with the content"),
        "tool_calls": _s("names and arguments, response mode, with the content"),
        "function_call": _s("name and arguments, response mode, with the content"),
        "reasoning": _s("client-supplied reasoning, response mode"),
        "reasoning_content": _s("client-supplied reasoning, response mode"),
        "name": _NAME,
        "audio": _r("a reference to earlier audio the guards never read"),
    },
    "tool": {"role": _p(), "content": _s("prompt mode"), "tool_call_id": _p(), "name": _NAME},
    "function": {"role": _p(), "content": _s("prompt mode"), "name": _NAME},
}

# Content parts whose text the guards read: their keys. Media parts (`unscreened_parts`)
# are forwarded as they are; every other part type is refused.
PART_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text"}),
    "input_text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
    "summary_text": frozenset({"type", "text"}),
    "reasoning_text": frozenset({"type", "text"}),
}

_TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
_FUNCTION_CALL_KEYS = frozenset({"name", "arguments"})

# Tool definitions (chat: {type, function: {...}}; Responses: flat; legacy functions: the inner object).
TOOL_KEYS = frozenset({"name", "description", "parameters", "strict"})

# Responses input items: the keys each item type may carry.
_ITEM_COMMON = {"type": _p(), "id": _p(), "status": _p()}
RESPONSES_ITEM_KEYS: dict[str, dict[str, Field]] = {
    "message": {
        **_ITEM_COMMON,
        "role": _p("user, system, developer or assistant"),
        "content": _s("user: prompt mode; system/developer: as the operator's text; assistant: response mode"),
    },
    "function_call": {**_ITEM_COMMON, "call_id": _p(), "name": _s("response mode"), "arguments": _s("response mode")},
    "function_call_output": {**_ITEM_COMMON, "call_id": _p(), "output": _s("prompt mode, as tool output")},
    "reasoning": {
        **_ITEM_COMMON,
        "summary": _s("client-supplied reasoning, response mode"),
        "content": _s("client-supplied reasoning, response mode"),
        "encrypted_content": _r("encrypted reasoning the guards cannot read"),
    },
    "item_reference": {"type": _p(), "id": _p("state kept by the upstream: screened only if it passed through this proxy")},
}

# Never forwarded, whatever the config allows: a template replaces every rule the guards'
# view of the conversation rests on.
NEVER_FORWARDED = frozenset({"chat_template"})

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}


class ExtraFields(msgspec.Struct, frozen=True):
    """Fields an operator allows beyond the tables: dotted paths (``chat_template_kwargs.enable_thinking``
    allows that key of that object and no other)."""

    screened: frozenset[str] = frozenset()
    unscreened: frozenset[str] = frozenset()

    def rule(self, path: str) -> Literal["screened", "unscreened", "partial"] | None:
        """How the field at ``path`` is allowed: whole (screened or not), only some of its
        keys ("partial"), or not at all."""
        if path in self.unscreened:
            return "unscreened"
        if path in self.screened:
            return "screened"
        prefix = path + "."
        if any(p.startswith(prefix) for p in (*self.screened, *self.unscreened)):
            return "partial"
        return None


NO_EXTRA_FIELDS = ExtraFields()


class Piece(msgspec.Struct, array_like=True, frozen=True):
    """One text the model reads: where it is, whose it is, and the text.

    ``role``: "user" and "tool" (prompt mode), "assistant" (response mode, after the last
    user piece before it), "system" (the operator's text: system prompts, tool and schema
    definitions; prompt mode, screened unless ``screen_system = false``).
    """

    label: str
    role: str
    text: str


# -- the shared checks ------------------------------------------------------------------


def _unknown(where: str, allowed: Collection[str]) -> InvalidRequest:
    here = f" (here: {', '.join(sorted(allowed))})" if 0 < len(allowed) <= 8 else ""
    return InvalidRequest(
        f"Unknown parameter: `{where}`. This proxy forwards only the fields its guards screen or know the model "
        f"does not read as text{here}; the operator may allow more ([endpoints] allow_fields).",
        param=where,
        code="unknown_parameter",
    )


def _refused(where: str, field: Field) -> InvalidRequest:
    return InvalidRequest(f"`{where}` is refused: {field.what}.", param=where, code="unsupported_parameter")


def check_fields(obj: Mapping[str, Any], table: Mapping[str, Field], where: str = "") -> None:
    """Refuse a key of ``obj`` that ``table`` refuses or does not list."""
    for key in obj:
        field = table.get(key)
        path = f"{where}.{key}" if where else key
        if field is None:
            raise _unknown(path, table)
        if field.treatment == "refused":
            raise _refused(path, field)


def _top_level(body: Mapping[str, Any], table: Mapping[str, Field], extra: ExtraFields, pieces: list[Piece]) -> None:
    """Check the body's top-level keys; extra fields' text becomes pieces."""
    for key, value in body.items():
        field = table.get(key)
        if field is not None:
            if field.treatment == "refused" and extra.rule(key) is None:
                raise _refused(key, field)
            if field.treatment != "refused":
                continue
        if key in NEVER_FORWARDED:
            raise InvalidRequest(
                f"`{key}` is never forwarded: a chat template decides what the model reads.",
                param=key,
                code="unsupported_parameter",
            )
        _extra(key, value, extra, table, pieces)


def _extra(path: str, value: Any, extra: ExtraFields, table: Mapping[str, Field], pieces: list[Piece]) -> None:
    rule = extra.rule(path)
    if rule is None:
        raise _unknown(path, table)
    for where, key in _keys(value, path):
        if key in NEVER_FORWARDED:
            raise InvalidRequest(
                f"`{where}` is never forwarded: a chat template decides what the model reads.",
                param=where,
                code="unsupported_parameter",
            )
    if rule == "unscreened":
        return
    if rule == "partial":
        if not isinstance(value, dict):
            raise InvalidRequest(f"`{path}` must be an object (only some of its keys are allowed).", param=path)
        for key, inner in value.items():
            _extra(f"{path}.{key}", inner, extra, {}, pieces)
        return
    text = "\n".join(f"{p}: {s}" if p else s for p, s in _strings(value, ""))
    if text:
        pieces.append(Piece(path, "user", text))


def _keys(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every object key in a JSON value, with its path."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{where}.{k}", str(k)
                stack.append((f"{where}.{k}", v))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node))


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys of objects too), with where it is."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                yield (f"{where}.key" if where else "key"), str(k)
                stack.append((f"{where}.{k}" if where else str(k), v))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(node))))


def part_text(part: dict[str, Any]) -> str | None:
    """The text a content part carries, or None if it carries none the guards read."""
    if part.get("type") == "refusal":
        refusal = part.get("refusal")
        return refusal if isinstance(refusal, str) else None
    text = part.get("text")
    return text if isinstance(text, str) else None


def check_content(content: Any, where: str, unscreened_parts: Collection[str], kinds: frozenset[str] | None = None) -> None:
    """Refuse content the guards cannot read: a string, null, or an array of known parts.

    A text part (``PART_KEYS``) must carry its text as a string and no other key; a media
    part of a type in ``unscreened_parts`` passes unscreened; every other part is refused.
    ``kinds`` narrows the text-part types a place takes.
    """
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"`{where}` must be a string or an array of content parts.", param=where)
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"`{at}` must be an object with a string `type`.", param=at)
        kind = part["type"]
        keys = PART_KEYS.get(kind)
        if keys is not None and (kinds is None or kind in kinds):
            text_key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(text_key), str):
                raise InvalidRequest(f"`{at}.{text_key}` must be a string.", param=f"{at}.{text_key}")
            for key in part:
                if key not in keys:
                    raise _unknown(f"{at}.{key}", keys)
            continue
        if kind in unscreened_parts:
            continue
        readable = sorted(kinds if kinds is not None else PART_KEYS)
        raise InvalidRequest(
            f"`{at}` has type {kind!r}, which the guards cannot read: send text parts ({', '.join(readable)}) "
            f"or one of the types forwarded unscreened: {', '.join(unscreened_parts) or 'none'}.",
            param=at,
            code="unsupported_parameter",
        )


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message's content: a string, or every text part's text."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for p in content if isinstance(p, dict) and (t := part_text(p)) is not None)
    return ""


def _string(value: Any, where: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"`{where}` must be a string.", param=where)
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"`{where}` must be an object.", param=where)
    return value


def _array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"`{where}` must be an array.", param=where)
    return value


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode() if value is not None else ""


def _function_text(fn: Mapping[str, Any], where: str) -> str:
    """A tool or function definition as the guard reads it: name, description, schema."""
    for key in fn:
        if key not in TOOL_KEYS:
            raise _unknown(f"{where}.{key}", TOOL_KEYS)
    name = _string(fn.get("name"), f"{where}.name", required=True)
    description = _string(fn.get("description"), f"{where}.description")
    schema = fn.get("parameters")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(f"`{where}.parameters` must be an object.", param=f"{where}.parameters")
    lines = [f"Tool {name}"]
    if description:
        lines.append(description)
    if schema:
        lines.append(f"Parameters: {_json_text(schema)}")
    return "\n".join(lines)


def _schema_text(schema: Mapping[str, Any]) -> str:
    """A structured-output format as the guard reads it (every string in it is text the
    upstream may show the model)."""
    return "\n".join(f"{p}: {s}" if p else s for p, s in _strings(dict(schema), "")) if schema else ""


def _call_text(name: str, arguments: str) -> str:
    return f"\n[tool call {name}] {arguments}"


# -- chat completions -------------------------------------------------------------------


def chat_pieces(body: Mapping[str, Any], unscreened_parts: Collection[str], extra: ExtraFields) -> list[Piece]:
    """Every text a chat request gives the model, each a piece; refuses what it cannot screen."""
    pieces: list[Piece] = []
    _top_level(body, CHAT_FIELDS, extra, pieces)
    tools = body.get("tools")
    for i, tool in enumerate(_array(tools, "tools") if tools is not None else []):
        where = f"tools[{i}]"
        tool = _object(tool, where)
        check_fields(tool, {"type": _p(), "function": _n("")}, where)
        if tool.get("type", "function") != "function":
            raise InvalidRequest(
                f'`{where}.type` must be "function": the guards read function tools only.', param=f"{where}.type"
            )
        pieces.append(
            Piece(where, "system", _function_text(_object(tool.get("function"), f"{where}.function"), f"{where}.function"))
        )
    for i, fn in enumerate(_array(body.get("functions") or [], "functions")):
        pieces.append(Piece(f"functions[{i}]", "system", _function_text(_object(fn, f"functions[{i}]"), f"functions[{i}]")))
    fmt = body.get("response_format")
    if fmt is not None:
        fmt = _object(fmt, "response_format")
        check_fields(fmt, {"type": _p(), "json_schema": _n("")}, "response_format")
        if fmt.get("json_schema") is not None:
            pieces.append(
                Piece("response_format", "system", _schema_text(_object(fmt["json_schema"], "response_format.json_schema")))
            )
    prediction = body.get("prediction")
    if prediction is not None:
        prediction = _object(prediction, "prediction")
        check_fields(prediction, {"type": _p(), "content": _n("")}, "prediction")
        check_content(prediction.get("content"), "prediction.content", (), frozenset({"text"}))
        if text := message_text(prediction):
            pieces.append(Piece("prediction", "user", text))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        pieces += _message_pieces(message, f"messages[{i}]", unscreened_parts)
    return pieces


def _message_pieces(message: Any, where: str, unscreened_parts: Collection[str]) -> list[Piece]:
    message = _object(message, where)
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(f"`{where}.role` is required and must be a string.", param=f"{where}.role")
    keys = CHAT_MESSAGE_KEYS.get(role)
    if keys is None:
        raise InvalidRequest(
            f"`{where}.role` is {role[:100]!r}: one of {', '.join(CHAT_MESSAGE_KEYS)} (roles are case-sensitive).",
            param=f"{where}.role",
            code="invalid_value",
        )
    check_fields(message, keys, where)
    kind = _ROLES[role]
    content_kinds = (
        frozenset({"text", "input_text", "output_text", "refusal"})
        if kind == "assistant"
        else frozenset({"text", "input_text", "output_text"})
    )
    media = unscreened_parts if role == "user" else ()
    check_content(message.get("content"), f"{where}.content", media, content_kinds)
    label = f"{where} ({role})"
    pieces = []
    name = _string(message.get("name"), f"{where}.name")
    if name:
        pieces.append(Piece(f"{where}.name", "system" if kind == "system" else "user", name))
    text = message_text(message)
    if kind == "assistant":
        text += _string(message.get("refusal"), f"{where}.refusal")
        for j, call in enumerate(_array(message.get("tool_calls") or [], f"{where}.tool_calls")):
            at = f"{where}.tool_calls[{j}]"
            call = _object(call, at)
            for key in call:
                if key not in _TOOL_CALL_KEYS:
                    raise _unknown(f"{at}.{key}", _TOOL_CALL_KEYS)
            if call.get("function") is not None:
                text += _function_call(_object(call["function"], f"{at}.function"), f"{at}.function")
        if message.get("function_call") is not None:
            text += _function_call(_object(message["function_call"], f"{where}.function_call"), f"{where}.function_call")
        for key in ("reasoning", "reasoning_content"):
            if thought := _string(message.get(key), f"{where}.{key}"):
                pieces.append(Piece(f"{where}.{key}", "assistant", thought))
    if text:
        pieces.append(Piece(label, kind, text))
    return pieces


def _function_call(fn: Mapping[str, Any], where: str) -> str:
    for key in fn:
        if key not in _FUNCTION_CALL_KEYS:
            raise _unknown(f"{where}.{key}", _FUNCTION_CALL_KEYS)
    return _call_text(_string(fn.get("name"), f"{where}.name"), _string(fn.get("arguments"), f"{where}.arguments"))


# -- legacy completions -----------------------------------------------------------------


def completions_pieces(body: Mapping[str, Any], extra: ExtraFields) -> list[Piece]:
    """Checks the fields of a legacy completions request; its prompts are the adapter's."""
    pieces: list[Piece] = []
    _top_level(body, COMPLETIONS_FIELDS, extra, pieces)
    return pieces


# -- the Responses API ------------------------------------------------------------------


def responses_pieces(body: Mapping[str, Any], unscreened_parts: Collection[str], extra: ExtraFields) -> list[Piece]:
    """Every text a Responses request gives the model, each a piece; refuses what it cannot screen."""
    pieces: list[Piece] = []
    _top_level(body, RESPONSES_FIELDS, extra, pieces)
    tools = body.get("tools")
    for i, tool in enumerate(_array(tools, "tools") if tools is not None else []):
        where = f"tools[{i}]"
        tool = dict(_object(tool, where))
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"`{where}.type` is {str(tool.get('type'))[:100]!r}: only function tools are forwarded (a hosted tool "
                "puts text the guards never read before the model).",
                param=f"{where}.type",
                code="unsupported_parameter",
            )
        del tool["type"]
        pieces.append(Piece(where, "system", _function_text(tool, where)))
    text = body.get("text")
    if text is not None:
        text = _object(text, "text")
        check_fields(text, {"format": _n(""), "verbosity": _p()}, "text")
        fmt = text.get("format")
        if fmt is not None:
            fmt = _object(fmt, "text.format")
            check_fields(
                fmt, {"type": _p(), "name": _n(""), "description": _n(""), "schema": _n(""), "strict": _p()}, "text.format"
            )
            described: dict[str, Any] = {k: fmt[k] for k in ("name", "description", "schema") if k in fmt}
            if described:
                pieces.append(Piece("text.format", "system", _schema_text(described)))
    instructions = body.get("instructions")
    if instructions is not None:
        pieces.append(Piece("instructions", "system", _string(instructions, "instructions")))
    value = body.get("input")
    if isinstance(value, str):
        pieces.append(Piece("input", "user", value))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            pieces += _item_pieces(item, f"input[{i}]", unscreened_parts)
    else:
        raise InvalidRequest("`input` must be a string or a non-empty array of items.", param="input")
    return pieces


def _item_pieces(item: Any, where: str, unscreened_parts: Collection[str]) -> list[Piece]:
    item = _object(item, where)
    kind = item.get("type", "message")
    keys = RESPONSES_ITEM_KEYS.get(kind) if isinstance(kind, str) else None
    if keys is None:
        raise InvalidRequest(
            f"`{where}.type` is {str(kind)[:100]!r}, which this proxy cannot screen: one of {', '.join(RESPONSES_ITEM_KEYS)}.",
            param=f"{where}.type",
            code="unsupported_parameter",
        )
    check_fields(item, keys, where)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest(
                f"`{where}.role` must be one of user, system, developer, assistant (roles are case-sensitive).",
                param=f"{where}.role",
                code="invalid_value",
            )
        media = unscreened_parts if role == "user" else ()
        text_kinds = frozenset({"output_text", "refusal"}) if role == "assistant" else frozenset({"input_text", "text"})
        check_content(item.get("content"), f"{where}.content", media, text_kinds)
        return [Piece(f"{where} ({role})", _ROLES[role], message_text(item))]
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            check_content(output, f"{where}.output", unscreened_parts, frozenset({"input_text", "text"}))
            return [Piece(f"{where} (tool)", "tool", message_text({"content": output}))]
        return [Piece(f"{where} (tool)", "tool", _string(output, f"{where}.output", required=True))]
    if kind == "function_call":
        name = _string(item.get("name"), f"{where}.name", required=True)
        arguments = _string(item.get("arguments"), f"{where}.arguments", required=True)
        return [Piece(f"{where} (assistant)", "assistant", _call_text(name, arguments).lstrip("\n"))]
    if kind == "reasoning":
        texts = []
        for key in ("summary", "content"):
            parts = item.get(key)
            if parts is not None:
                check_content(
                    _array(parts, f"{where}.{key}"), f"{where}.{key}", (), frozenset({"summary_text", "reasoning_text"})
                )
                texts += [t for p in parts if (t := part_text(p))]
        return [Piece(f"{where} (reasoning)", "assistant", "\n".join(texts))]
    return []  # item_reference: stored upstream, screened when it passed through this proxy


# -- the docs ---------------------------------------------------------------------------


_API_TITLES = {
    "chat": "`POST /v1/chat/completions`",
    "responses": "`POST /v1/responses`",
    "completions": "`POST /v1/completions`",
    "moderations": "`POST /v1/moderations`",
}


def inventory_markdown() -> str:
    """The README's "What is screened" tables, from the tables above."""
    out = [
        "| API | screened (FlexGuard) | parameters (forwarded; the model does not read them as text) | refused (400) |",
        "|---|---|---|---|",
    ]
    for api, table in API_FIELDS.items():
        out.append(
            f"| {_API_TITLES[api]} | {_names(table, 'screened', 'structure')} | {_names(table, 'parameter')} | {_refused_names(table, 'field')} |"
        )
    out += ["", "| chat message role | screened | parameters | refused |", "|---|---|---|---|"]
    for role, keys in CHAT_MESSAGE_KEYS.items():
        out.append(f"| `{role}` | {_names(keys, 'screened')} | {_names(keys, 'parameter')} | {_refused_names(keys, 'key')} |")
    out.append("| any other role | | | the message |")
    out += ["", "| Responses input item | screened | parameters | refused |", "|---|---|---|---|"]
    for kind, keys in RESPONSES_ITEM_KEYS.items():
        out.append(f"| `{kind}` | {_names(keys, 'screened')} | {_names(keys, 'parameter')} | {_refused_names(keys, 'key')} |")
    out.append("| any other type | | | the item |")
    return "\n".join(out) + "\n"


def _names(table: Mapping[str, Field], *treatments: str) -> str:
    names = ", ".join(f"`{n}`" for n, f in table.items() if f.treatment in treatments)
    return names or "none"


def _refused_names(table: Mapping[str, Field], what: str) -> str:
    return ", ".join([f"`{n}`" for n, f in table.items() if f.treatment == "refused"] + [f"any other {what}"])
