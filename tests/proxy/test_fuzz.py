"""Fuzz the four guarded endpoints with generated hostile bodies and headers (hypothesis).

One proxy per test (the ``make_proxy`` fixture: real uvicorn on loopback, scripted
upstream and guard servers), sent requests with a raw httpx client so that anything can
go on the wire:

- ``test_fuzz_chat_and_moderations``: ``EXAMPLES`` (>= 1,000) requests, each to
  ``POST /v1/chat/completions`` or ``POST /v1/moderations``;
- ``test_fuzz_responses``: ``RESPONSES_EXAMPLES`` (>= 900) to ``POST /v1/responses``;
- ``test_fuzz_completions``: ``COMPLETIONS_EXAMPLES`` (>= 900) to ``POST /v1/completions``.

Those two proxies make no guard retries (the chat one does), and three in four of their
requests carry valid headers: the header checks are shared code, fuzzed by the chat test.

The bodies cover random bytes, invalid UTF-8 (raw bytes and lone-surrogate escapes),
truncated JSON, JSON nested up to 100,000 levels, non-object JSON, a BOM or UTF-16, wrong
types for every field the proxy reads, huge numbers, NaN and Infinity literals, duplicate
keys, and well-formed requests (benign, blocked, guard errors, streamed and not). Per API:

- chat: model, messages, role, content, content parts of every odd ``type``, n, stream,
  stream_options, arrays up to 20,000 messages; moderations: input, up to 100,000 items;
- Responses: ``input`` as a string or items (messages with ``input_text`` /
  ``output_text`` / ``refusal`` / image / file / unknown parts, ``function_call``,
  ``function_call_output`` with string or part-list output, ``reasoning`` with odd
  ``summary`` / ``content``, ``item_reference``, item types the adapter does not read,
  items of no type, up to 20,000 items), ``instructions``, ``background``, ``stream``,
  ``stream_options``, ``tools`` (up to 5,000), ``n``, the other Responses fields;
- legacy completions: ``prompt`` as a string, a list of strings (up to 100,000),
  token ids, token-id batches, nested and mixed lists, ``n`` (n x prompts around the
  128 limit), ``suffix``, ``stream``, ``stream_options``, echo / best_of / logprobs.

For Responses and completions a "scripted" kind also makes the upstream misbehave on a
well-formed request (``x_script``, tests/support/scripted.py): an unsafe, unreadable or
guard-crashing answer, reasoning or tool call, an error event or a closed connection
after k events, no event at all, a JSON answer to a stream, a 4xx or an HTML 502, and
the recorded vLLM streams (whole, or cut after k events).

The headers cover no / odd / duplicated Content-Type (text/plain, multipart, form,
charset=latin-1, +json), junk, huge and duplicated Authorization, junk X-Guard-Strictness
(names, out-of-range and non-ASCII numbers, latin-1 bytes), and random extra headers
(traceparent junk included).

It asserts, for EVERY response:

1. no 5xx, except 502 / 503 / 504 whose body is OpenAI-shaped with one of the
   documented codes (``DOCUMENTED_5XX``: guard outage or overload, upstream failure);
2. every non-2xx answer has ``content-type: application/json`` and the body
   ``{"error": {"message": str, "type": str, "code": str | None, ...}}``;
3. a 2xx is what was asked for. A chat or completions stream is ``text/event-stream``
   of ``data: {json}`` chunks (``chat.completion.chunk`` / ``text_completion``) ending
   with one ``data: [DONE]``; an error event in it is OpenAI-shaped with one of the
   same documented codes (``internal_error`` there is a 500 in disguise) and is the last
   chunk. A Responses stream is typed SSE (``event: <type>`` + ``data:`` of that
   ``type``), starts with ``response.created``, has increasing sequence numbers
   and ends with exactly one ``response.completed`` / ``.incomplete`` / ``.failed``
   whose status matches (no ``[DONE]``); an ``error`` event (documented code) is
   followed by ``response.failed`` (its error documented too) and nothing else. A JSON
   answer is a ``chat.completion``, a ``text_completion``, a Response with status
   ``completed`` or ``incomplete``, or a moderation with ``results``;
4. the proxy answers every request (10 s client timeout), and ``GET /healthz`` answers
   200 within 1 s every ``HEALTH_EVERY`` examples and at the end.

A failure prints hypothesis' minimal falsifying example (``Case(...)``: path, kind,
headers and the body, abridged) and the response it got.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, note, reject, settings
from hypothesis import strategies as st

EXAMPLES = 1100  # chat + moderations
RESPONSES_EXAMPLES = 1000
COMPLETIONS_EXAMPLES = 1000
HEALTH_EVERY = 25
REQUEST_TIMEOUT_S = 10.0

API_KEY = "sk-fuzz-global-key"
TENANT_KEY = "sk-fuzz-tenant-may-loosen"
CHAT = "/v1/chat/completions"
MODERATIONS = "/v1/moderations"
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"

# 5xx answers that are a documented outage, not a crash (proxy/exceptions.py).
DOCUMENTED_5XX = {
    502: {"upstream_error", "upstream_unreachable", "upstream_truncated"},
    503: {"guard_unavailable", "guard_overloaded", "shutting_down"},
    504: {"upstream_timeout"},
}

# Codes an error event inside a 200 stream may carry: the same outages (never internal_error).
STREAM_ERROR_CODES = set().union(*DOCUMENTED_5XX.values())

PROXY_CONFIG = f"""
[server]
api_keys_env = "GUARDPROXY_FUZZ_KEYS"

[[tenants]]
name = "loosener"
key_sha256 = "{hashlib.sha256(TENANT_KEY.encode()).hexdigest()}"
allow_loosen = true
"""


# -- the generated request ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    path: str
    kind: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:200] + b" ... " + self.body[-60:]
        headers = [(k.decode("latin-1"), _abridge(v)) for k, v in self.headers]
        return f"Case(path={self.path!r}, kind={self.kind!r}, body[{len(self.body)}]={body!r}, headers={headers!r})"


def _abridge(value: bytes) -> bytes:
    return value if len(value) <= 80 else value[:60] + b"...(%d bytes)" % len(value)


class Raw:
    """A JSON fragment written as is into the body (deep nesting, NaN, huge numbers,
    duplicate keys): things json.dumps cannot or would not write."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def dumps(doc: Any) -> bytes:
    """JSON with ``Raw`` fragments spliced in."""
    raws: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(doc), ensure_ascii=False)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00RAW{i}\x00"), raw, 1)
    return text.encode("utf-8", "surrogatepass")


# -- values --------------------------------------------------------------------------------

DEPTHS = [63, 64, 65, 200, 1_000, 5_000, 100_000]


def _deep(kind: str, depth: int, closed: bool) -> str:
    if kind == "array":
        return "[" * depth + ("]" * depth if closed else "")
    return '{"a":' * depth + ("1" + "}" * depth if closed else "")


deep_raw = st.builds(_deep, st.sampled_from(["array", "object"]), st.sampled_from(DEPTHS), st.booleans()).map(Raw)
nan_raw = st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf", "+1", "01", ".5", "1.", "0x10"]).map(Raw)
huge_number_raw = st.one_of(
    st.integers(20, 2000).map(lambda k: "9" * k),
    st.integers(20, 2000).map(lambda k: "-" + "9" * k),
    st.sampled_from(
        [
            "1e400",
            "-1e400",
            "1e-400",
            "1E308",
            "2e308",
            "18446744073709551616",
            "-9223372036854775809",
            "9223372036854775807",
            "0.0000000000000000000000000001",
            "-0",
            "1.7976931348623157e309",
        ]
    ),
).map(Raw)
dup_key_raw = st.sampled_from(
    [
        '{"type":"text","type":"input_text","text":"hi"}',
        '{"type":"text","text":"hi","text":5}',
        '{"role":"user","role":"system","content":"hi","content":[]}',
        '{"a":1,"a":{"a":[1,{"a":2,"a":3}]}}',
    ]
).map(Raw)
surrogate_raw = st.sampled_from(
    ['"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\uffff"', '"\\ud800\\ud800"']
).map(Raw)

PART_TYPES = [
    "text",
    "input_text",
    "output_text",
    "refusal",
    "image_url",
    "input_image",
    "input_audio",
    "audio",
    "file",
    "input_file",
    "video_url",
    "unknown",
    "TEXT",
    "",
    " text",
    "text\x00",
    "tool_result",
    "thinking",
]
TRIGGERS = ["", "", "", "", " bomb", " risky", " jailbreakme", " guard500", " garbled", " UNSAFE"]

plain_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "hi",
            "Tell me about bread.",
            "<|im_start|>system",
            "[User]: x\n[Assistant]: y",
            "\u202e\u200b",
            "<tool_call>",
            "\U0001f600" * 5,
        ]
    ),
    st.integers(1, 5).map(lambda k: "long " * (2000 * k)),
)
text_with_trigger = st.builds(lambda t, trig: t + trig, plain_text, st.sampled_from(TRIGGERS))
scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)
)
odd_value: st.SearchStrategy[Any] = st.one_of(
    scalar,
    st.lists(scalar, max_size=3),
    st.dictionaries(st.text(max_size=6), scalar, max_size=3),
    deep_raw,
    nan_raw,
    huge_number_raw,
    dup_key_raw,
    surrogate_raw,
)


@st.composite
def content_part(draw: st.DrawFn, types: list[str] = PART_TYPES, odd_value: st.SearchStrategy[Any] = odd_value) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(odd_value)
    part: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        part["type"] = (
            draw(st.one_of(st.sampled_from(types), odd_value)) if draw(st.integers(0, 5)) == 0 else draw(st.sampled_from(types))
        )
    field = draw(st.sampled_from(["text", "text", "text", "refusal", "image_url", "input_audio", "none"]))
    if field == "image_url":
        part["image_url"] = draw(st.one_of(st.just({"url": "data:image/png;base64,AAAA"}), odd_value))
    elif field == "input_audio":
        part["input_audio"] = draw(st.one_of(st.just({"data": "AAAA", "format": "wav"}), odd_value))
    elif field != "none":
        part[field] = draw(text_with_trigger) if draw(st.integers(0, 3)) else draw(odd_value)
    if draw(st.integers(0, 7)) == 0:
        part.update(draw(st.dictionaries(st.text(max_size=6), odd_value, max_size=2)))
    return part


content = st.one_of(
    text_with_trigger,
    text_with_trigger,
    text_with_trigger,
    st.none(),
    st.lists(content_part(), max_size=4),
    odd_value,
)
ROLES = ["user", "user", "user", "system", "assistant", "tool", "developer", "function", "", "USER", "admin"]


@st.composite
def message(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 14)) == 0:
        return draw(odd_value)
    m: dict[str, Any] = {}
    if draw(st.integers(0, 14)):
        m["role"] = draw(st.sampled_from(ROLES)) if draw(st.integers(0, 5)) else draw(odd_value)
    if draw(st.integers(0, 14)):
        m["content"] = draw(content)
    if draw(st.integers(0, 9)) == 0:
        m.update(
            draw(st.dictionaries(st.sampled_from(["name", "tool_calls", "tool_call_id", "refusal", "x"]), odd_value, max_size=2))
        )
    return m


messages = st.one_of(
    st.lists(message(), min_size=1, max_size=4),
    st.lists(message(), min_size=1, max_size=4),
    st.lists(message(), min_size=1, max_size=4),
    st.just([]),
    st.sampled_from([1, 50, 1_000, 20_000]).map(lambda k: [{"role": "user", "content": "hi"}] * k),
    odd_value,
)
# Extra top-level keys. Never `x_script`: that would script the test upstream itself.
extra_keys = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "temperature",
                "max_tokens",
                "tools",
                "tool_choice",
                "user",
                "seed",
                "logprobs",
                "response_format",
                "metadata",
                "",
                "\u0000",
                "model ",
            ]
        ),
        st.text(max_size=8),
    ),
    odd_value,
    max_size=3,
).map(lambda d: {k: v for k, v in d.items() if k != "x_script"})


@st.composite
def chat_doc(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        doc["model"] = draw(st.sampled_from(["m", "Qwen/Qwen3-8B", "x" * 10_000])) if draw(st.integers(0, 3)) else draw(odd_value)
    if draw(st.integers(0, 14)):
        doc["messages"] = draw(messages)
    if draw(st.booleans()):
        doc["stream"] = draw(st.booleans()) if draw(st.integers(0, 3)) else draw(odd_value)
    if draw(st.integers(0, 3)) == 0:
        doc["stream_options"] = draw(
            st.one_of(
                st.just({"include_usage": True}),
                st.just({"include_usage": False}),
                st.dictionaries(st.sampled_from(["include_usage", "x"]), odd_value, max_size=2),
                odd_value,
            )
        )
    if draw(st.integers(0, 3)) == 0:
        doc["n"] = draw(st.one_of(st.integers(1, 3), odd_value, st.sampled_from([0, -1, 2**31, 2**63, 10**30])))
    doc.update(draw(extra_keys))
    n = doc.get("n", 1)
    if not (n is None or (type(n) is int and 1 <= n <= 3)):
        # The scripted upstream builds n choices in memory: a huge n that the proxy lets
        # through must not reach it (the proxy's answer to the upstream's error is checked).
        doc["x_script"] = {"status": 400}
    return doc


@st.composite
def moderation_doc(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        doc["model"] = draw(st.one_of(st.just("omni-moderation-latest"), odd_value))
    choice = draw(st.integers(0, 9))
    if choice <= 3:
        doc["input"] = draw(text_with_trigger)
    elif choice <= 5:
        doc["input"] = draw(st.lists(st.one_of(text_with_trigger, content_part(), odd_value), max_size=5))
    elif choice == 6:
        size = draw(st.sampled_from([0, 1, 63, 64, 65, 2_000, 100_000]))
        doc["input"] = [draw(st.sampled_from(["x", "hi", "bomb"]))] * size
    elif choice == 7:
        doc["input"] = draw(odd_value)
    elif choice == 8:
        doc["input"] = [draw(content_part())]
    doc.update(draw(extra_keys))
    return doc


# -- the Responses API (POST /v1/responses) --------------------------------------------------

RESPONSE_PART_TYPES = [
    "input_text",
    "input_text",
    "output_text",
    "refusal",
    "input_image",
    "input_file",
    "input_audio",
    "summary_text",
    "reasoning_text",
    "text",
    "unknown",
    "",
    "INPUT_TEXT",
    "computer_screenshot",
]
# Item types the adapter does not read (it must refuse them: 400, never forwarded).
UNKNOWN_ITEM_TYPES = [
    "computer_call",
    "computer_call_output",
    "web_search_call",
    "file_search_call",
    "image_generation_call",
    "custom_tool_call",
    "custom_tool_call_output",
    "mcp_call",
    "mcp_approval_response",
    "local_shell_call_output",
    "",
    "Message",
    "message ",
    "input_text",
    "FUNCTION_CALL",
    "reasoning\x00",
]
TOOL_NAMES = ["get_weather", "", "<tool_call>", "x" * 5_000, "bomb_maker", "\u202eevil"]

# Two things about hypothesis shape the strategies below (not the chat ones, kept as they
# were): ``one_of`` flattens nested ``one_of``s, so that every leaf weighs the same (a
# branch repeated to weigh more is drowned by a branch that is itself a ``one_of`` of
# ten), hence ``pick`` with explicit weights; and it favours the simplest choice (0, the
# first branch, None, False, []), so the usual path is the simplest one, the rare one last.


@st.composite
def pick(draw: st.DrawFn, *weighted: tuple[int, st.SearchStrategy[Any]]) -> Any:
    """A value of one of the strategies, chosen in proportion to its weight."""
    roll = draw(st.integers(0, sum(weight for weight, _ in weighted) - 1))
    for weight, strategy in weighted:
        if roll < weight:
            return draw(strategy)
        roll -= weight
    raise AssertionError("unreachable")


# A wrong type that still parses: it reaches the adapter's checks (a NaN or a 100,000-deep
# value in ``odd_value`` stops the whole body at the JSON decoder).
wrong_type = pick(
    (3, scalar), (2, st.lists(scalar, max_size=3)), (2, st.dictionaries(st.text(max_size=6), scalar, max_size=3)), (1, odd_value)
)
response_part = content_part(RESPONSE_PART_TYPES, wrong_type)
response_content = pick(
    (6, text_with_trigger),
    (6, st.lists(response_part, min_size=1, max_size=4)),
    (1, st.none()),
    (1, st.just([])),
    (2, wrong_type),
)
reasoning_parts = pick(
    (
        6,
        st.lists(
            st.builds(
                lambda t, kind: {"type": kind, "text": t},
                text_with_trigger,
                st.sampled_from(["summary_text", "reasoning_text", "text", "unknown"]),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    (3, st.lists(response_part, min_size=1, max_size=3)),
    (1, st.just([])),
    (1, st.none()),
    (1, st.text(max_size=20)),
    (3, wrong_type),
)


def _maybe(draw: st.DrawFn, item: dict[str, Any], key: str, value: st.SearchStrategy[Any], odd_one_in: int = 5) -> None:
    """Set ``key`` mostly to a value of ``value``, sometimes to a wrong type, rarely not at all."""
    roll = draw(st.integers(0, 4 * odd_one_in))
    if roll == 4 * odd_one_in:
        return
    item[key] = draw(wrong_type) if roll >= 4 * odd_one_in - 4 else draw(value)


@st.composite
def input_item(draw: st.DrawFn) -> Any:
    """One Responses input item: each type the adapter reads, unknown ones, hostile fields."""
    if draw(st.integers(0, 14)) == 14:
        return draw(wrong_type)
    kind = draw(
        st.sampled_from(
            [
                "message",
                "message",
                "untyped-message",
                "function_call",
                "function_call_output",
                "function_call_output",
                "reasoning",
                "reasoning",
                "item_reference",
                "unknown",
            ]
        )
    )
    item: dict[str, Any] = {}
    if kind == "unknown":
        item["type"] = draw(st.sampled_from(UNKNOWN_ITEM_TYPES))
        # text where the upstream might read it: nothing the guards did not see may pass
        item.update(
            draw(
                st.dictionaries(
                    st.sampled_from(["text", "output", "content", "arguments", "action", "role"]),
                    pick((3, text_with_trigger), (1, wrong_type)),
                    max_size=3,
                )
            )
        )
    elif kind != "untyped-message":
        item["type"] = draw(wrong_type) if draw(st.integers(0, 11)) == 11 else kind
    if kind in ("message", "untyped-message"):
        _maybe(
            draw, item, "role", st.sampled_from(["user", "user", "user", "assistant", "system", "developer", "tool", "", "USER"])
        )
        _maybe(draw, item, "content", response_content, odd_one_in=1_000)
    elif kind == "function_call":
        _maybe(draw, item, "call_id", st.sampled_from(["call_1", "", "x" * 300]))
        _maybe(draw, item, "name", st.builds(lambda n, t: n + t, st.sampled_from(TOOL_NAMES), st.sampled_from(TRIGGERS)))
        _maybe(
            draw,
            item,
            "arguments",
            pick((1, text_with_trigger), (1, st.builds(lambda t: json.dumps({"city": t}), text_with_trigger))),
        )
    elif kind == "function_call_output":
        _maybe(draw, item, "call_id", st.sampled_from(["call_1", "", "x" * 300]))
        _maybe(draw, item, "output", pick((2, text_with_trigger), (1, st.lists(response_part, max_size=3))))
    elif kind == "reasoning":
        _maybe(draw, item, "id", st.sampled_from(["rs_1", ""]))
        _maybe(draw, item, "summary", reasoning_parts)
        if draw(st.booleans()):
            _maybe(draw, item, "content", reasoning_parts)
        if draw(st.integers(0, 3)) == 0:
            item["encrypted_content"] = draw(pick((3, st.text(max_size=20)), (1, wrong_type)))
    elif kind == "item_reference":
        _maybe(draw, item, "id", st.sampled_from(["msg_1", "resp_1", "", "x" * 1_000]))
    if draw(st.integers(0, 7)) == 7:
        item.update(draw(st.dictionaries(st.sampled_from(["id", "status", "call_id", "x", "type"]), wrong_type, max_size=2)))
    return item


# Lists mix hostile items with valid ones, so that an item after the first is reached too.
item_lists = st.lists(
    pick((2, input_item()), (1, st.deferred(lambda: well_formed_item(text_with_trigger)))), min_size=1, max_size=5
)
responses_input = pick(
    (12, item_lists),
    (4, text_with_trigger),
    (1, st.just([])),
    (1, st.just("")),
    (1, st.sampled_from([50, 1_000, 20_000]).map(lambda k: [{"role": "user", "content": "hi"}] * k)),
    (1, st.sampled_from([1_000, 20_000]).map(lambda k: [{"type": "item_reference", "id": "msg_1"}] * k)),
    (2, wrong_type),
)
FUNCTION_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
tools_value = pick(
    (1, st.just([FUNCTION_TOOL])),
    (1, st.just([{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}])),
    (
        3,
        st.lists(
            st.dictionaries(
                st.sampled_from(["type", "name", "parameters", "description", "strict", "x"]), wrong_type, max_size=3
            ),
            max_size=3,
        ),
    ),
    (1, st.just([FUNCTION_TOOL] * 5_000)),
    (2, wrong_type),
)
responses_extra_keys = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "previous_response_id",
                "store",
                "include",
                "reasoning",
                "text",
                "max_output_tokens",
                "truncation",
                "tool_choice",
                "parallel_tool_calls",
                "metadata",
                "conversation",
                "prompt",
                "temperature",
                "user",
                "service_tier",
                "",
                "\u0000",
                "input ",
            ]
        ),
        st.text(max_size=8),
    ),
    wrong_type,
    max_size=3,
).map(lambda d: {k: v for k, v in d.items() if k != "x_script"})


# A Responses or completions document is hostile in its main field (input / prompt) most of
# the time and in at most two other fields, the rest valid: each check of the adapter is
# reached, not only the first that a body with a dozen wrong fields trips. Wrong values
# are mostly ``wrong_type`` (it parses), sometimes ``odd_value`` (NaN, huge numbers, deep
# nesting: stopped at the JSON decoder, as every other kind of body here is).
WRONG_STREAM_OPTIONS = pick(
    (1, st.dictionaries(st.sampled_from(["include_usage", "x"]), wrong_type, min_size=1, max_size=2)),
    (1, wrong_type.filter(lambda v: v is not None)),
)
BAD_N = pick((1, wrong_type), (1, st.sampled_from([0, -1, 64, 65, 128, 129, 2**31, 2**63, 10**30])))


def _common(draw: st.DrawFn, doc: dict[str, Any], bad: set[str]) -> None:
    """model, stream, stream_options, n: valid unless named in ``bad``."""
    if "model" in bad:
        if draw(st.booleans()):
            doc["model"] = draw(st.one_of(wrong_type, st.just("")))
    else:
        doc["model"] = draw(st.sampled_from(["m", "m", "Qwen/Qwen3-8B", "x" * 10_000]))
    if "stream" in bad:
        doc["stream"] = draw(wrong_type.filter(lambda v: v is not None and not isinstance(v, bool)))
    elif draw(st.booleans()):
        doc["stream"] = draw(st.booleans())
    if "stream_options" in bad:
        doc["stream_options"] = draw(WRONG_STREAM_OPTIONS)
    elif draw(st.integers(0, 3)) == 0:
        doc["stream_options"] = {"include_usage": draw(st.booleans())}
    if "n" in bad:
        doc["n"] = draw(BAD_N)


@st.composite
def responses_doc(draw: st.DrawFn) -> dict[str, Any]:
    bad = draw(
        st.sets(
            st.sampled_from(["model", "stream", "stream_options", "n", "instructions", "background", "tools", "extra"]),
            max_size=2,
        )
    )
    doc: dict[str, Any] = {}
    _common(draw, doc, bad)
    if draw(st.integers(0, 4)) < 4:
        if draw(st.integers(0, 14)) < 14:
            doc["input"] = draw(responses_input)
    else:
        doc["input"] = draw(st.lists(well_formed_item(text_with_trigger), min_size=1, max_size=4))
    if "instructions" in bad:
        doc["instructions"] = draw(wrong_type.filter(lambda v: v is not None and not isinstance(v, str)))
    elif draw(st.integers(0, 2)) == 0:
        doc["instructions"] = draw(text_with_trigger)
    if "background" in bad:
        doc["background"] = draw(st.one_of(st.just(True), wrong_type))
    elif draw(st.integers(0, 5)) == 0:
        doc["background"] = draw(st.sampled_from([False, None, 0, ""]))
    if "tools" in bad:
        doc["tools"] = draw(tools_value)
    elif draw(st.integers(0, 3)) == 0:
        doc["tools"] = [FUNCTION_TOOL]
    if "extra" in bad:
        doc.update(draw(responses_extra_keys))
    return doc


# -- legacy completions (POST /v1/completions) -----------------------------------------------

PROMPT_LIST_SIZES = [0, 1, 2, 64, 127, 128, 129, 1_000, 100_000]
prompt_value = pick(
    (3, text_with_trigger),
    (3, st.lists(text_with_trigger, min_size=1, max_size=4)),
    (1, st.lists(st.integers(-5, 300_000), max_size=8)),  # token ids
    (1, st.lists(st.lists(st.integers(0, 50_000), max_size=4), max_size=3)),  # a batch of token-id prompts
    (
        2,
        st.lists(
            pick(
                (3, text_with_trigger), (1, st.integers(0, 50_000)), (1, st.lists(st.integers(0, 9), max_size=3)), (1, wrong_type)
            ),
            min_size=1,
            max_size=4,
        ),
    ),  # mixed
    (1, st.lists(st.lists(text_with_trigger, max_size=2), min_size=1, max_size=3)),  # nested strings
    (2, st.builds(lambda k, s: [s] * k, st.sampled_from(PROMPT_LIST_SIZES), st.sampled_from(["x", "hi", "bomb", ""]))),
    (1, st.sampled_from([1_000, 100_000]).map(lambda k: [1] * k)),
    (1, st.sampled_from(["", [""], [[]], [[[["deep"]]]]])),
    (2, wrong_type),
)
completions_extra_keys = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "echo",
                "best_of",
                "logprobs",
                "max_tokens",
                "stop",
                "logit_bias",
                "seed",
                "temperature",
                "user",
                "presence_penalty",
                "",
                "\u0000",
                "prompt ",
            ]
        ),
        st.text(max_size=8),
    ),
    wrong_type,
    max_size=3,
).map(lambda d: {k: v for k, v in d.items() if k != "x_script"})


@st.composite
def completions_doc(draw: st.DrawFn) -> dict[str, Any]:
    bad = draw(st.sets(st.sampled_from(["model", "stream", "stream_options", "n", "suffix", "extra"]), max_size=2))
    doc: dict[str, Any] = {}
    _common(draw, doc, bad)
    if draw(st.integers(0, 4)) < 4:
        if draw(st.integers(0, 14)) < 14:
            doc["prompt"] = draw(prompt_value)
    else:
        doc["prompt"] = draw(st.one_of(text_with_trigger, st.lists(text_with_trigger, min_size=1, max_size=4)))
    if "n" not in bad and draw(st.integers(0, 3)) == 0:
        doc["n"] = draw(st.integers(1, 3))
    if "suffix" in bad:
        doc["suffix"] = draw(wrong_type.filter(lambda v: v is not None and not isinstance(v, str)))
    elif draw(st.integers(0, 3)) == 0:
        doc["suffix"] = draw(text_with_trigger)
    if "extra" in bad:
        doc.update(draw(completions_extra_keys))
    return doc


# -- the scripted upstream's behaviour (well-formed requests only) ---------------------------
# The upstream follows the body's `x_script` (tests/support/scripted.py): unsafe or
# unreadable answers and reasoning, tool calls, errors and truncation mid-stream, no event
# at all, a JSON answer to a stream, 4xx answers and an HTML 502, real vLLM recordings.
# Never an upstream 5xx with its own code: the proxy keeps an upstream's status (README).

SCRIPTS: list[dict[str, Any]] = [
    {"answer": ["Sure,", " here", " is", " a", " bomb"]},
    {"answer": ["guard500"]},
    {"answer": ["garbled"]},
    {"answer": ["risky", " advice"]},
    {"reasoning": ["Let", " me", " think", " UNSAFE"], "answer": ["ok"]},
    {"reasoning": ["guard500"], "answer": ["ok"]},
    {"reasoning": ["fine"], "answer": ["Hello"]},
    {"reasoning": ["MAYBE"], "answer": ["Hello"]},
    {"tool_calls": [{"name": "get_weather", "arguments": ['{"city":', ' "Paris"}']}]},
    {"tool_calls": [{"name": "bomb_maker", "arguments": ['{"x":', ' "bomb"}']}]},
    {"answer": [], "tool_calls": [{"name": "guard500", "arguments": ["{}"]}]},
    {"answer": []},
    {"empty": True},
    {"plain_json": True},
    {"html_status": 502},
    {"status": 400},
    {"status": 404},
    {"status": 429},
    {"delay": 0.002, "answer": ["a", "b", "c"]},
]
REPLAYS = {  # tests/e2e/fixtures/recordings
    RESPONSES: [
        "responses_stream_benign",
        "responses_stream_benign_cut_in_answer",
        "responses_stream_items",
        "responses_stream_items_string_content",
        "responses_stream_tool",
        "responses_stream_tool_output",
        "responses_stream_tool_required",
        "responses_stream_unsafe_answer",
        "responses_stream_unsafe_incomplete",
    ],
    COMPLETIONS: ["completions_stream_str", "completions_stream_list", "completions_stream_str_no_usage"],
}


def upstream_script(path: str) -> st.SearchStrategy[dict[str, Any]]:
    return pick(
        (4, st.sampled_from(SCRIPTS)),
        (1, st.sampled_from([0, 0, 1, 2, 3, 5, 8]).map(lambda k: {"error_midstream": k})),
        (1, st.sampled_from([0, 1, 1, 2, 3, 5, 8, 10]).map(lambda k: {"truncate_after": k})),
        (2, st.sampled_from(REPLAYS[path]).map(lambda name: {"replay": name})),
        (1, st.builds(lambda name, k: {"replay": name, "truncate_after": k}, st.sampled_from(REPLAYS[path]), st.integers(1, 30))),
    )


# -- bodies ----------------------------------------------------------------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\x28",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xe2\x82",
]
VALID_CHAT = {"model": "m", "messages": [{"role": "user", "content": "Tell me about bread."}]}
VALID_MODERATION = {"input": "Tell me about bread."}
VALID_RESPONSES = {"model": "m", "input": "Tell me about bread."}
VALID_COMPLETIONS = {"model": "m", "prompt": "Tell me about bread."}


@st.composite
def well_formed_chat(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": draw(text_with_trigger)}]}
    if draw(st.booleans()):
        doc["stream"] = True
        if draw(st.booleans()):
            doc["stream_options"] = {"include_usage": draw(st.booleans())}
    if draw(st.booleans()):
        doc["n"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        doc["messages"] = [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": draw(st.sampled_from(["text", "input_text", "output_text"])), "text": draw(text_with_trigger)}
                ],
            },
        ]
    return doc


@st.composite
def well_formed_moderation(draw: st.DrawFn) -> dict[str, Any]:
    return {"input": draw(st.one_of(text_with_trigger, st.lists(text_with_trigger, min_size=1, max_size=4)))}


@st.composite
def well_formed_item(draw: st.DrawFn, text: st.SearchStrategy[str]) -> dict[str, Any]:
    t = draw(text)
    return draw(
        st.sampled_from(
            [
                {"role": "user", "content": t},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": t}]},
                {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": t}]},
                {"type": "message", "role": "developer", "content": t},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": t},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                },
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": json.dumps({"city": t})},
                {"type": "function_call_output", "call_id": "call_1", "output": t},
                {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": t}]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": t}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": t}]},
                {"type": "item_reference", "id": "msg_1"},
            ]
        )
    )


@st.composite
def well_formed_responses(draw: st.DrawFn, text: st.SearchStrategy[str] = text_with_trigger) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": "m", "input": draw(st.one_of(text, st.lists(well_formed_item(text), min_size=1, max_size=4)))}
    if draw(st.booleans()):
        doc["stream"] = True
    if draw(st.integers(0, 2)) == 0:
        doc["instructions"] = draw(text)
    if draw(st.integers(0, 3)) == 0:
        doc["tools"] = [FUNCTION_TOOL]
    if draw(st.integers(0, 5)) == 0:
        doc["background"] = False
    return doc


@st.composite
def well_formed_completions(draw: st.DrawFn, text: st.SearchStrategy[str] = text_with_trigger) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": "m", "prompt": draw(st.one_of(text, st.lists(text, min_size=1, max_size=3)))}
    if draw(st.booleans()):
        doc["stream"] = True
        if draw(st.booleans()):
            doc["stream_options"] = {"include_usage": draw(st.booleans())}
    if draw(st.booleans()):
        doc["n"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:
        doc["suffix"] = draw(text)
    if draw(st.integers(0, 3)) == 0:
        doc.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "echo": st.booleans(),
                        "max_tokens": st.integers(1, 64),
                        "logprobs": st.integers(0, 5),
                        "stop": st.just(["\n"]),
                    },
                )
            )
        )
    return doc


CHAT_AND_MODERATION_DUPLICATES = (
    b'{"model":"m","model":5,"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"m","messages":"hi","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"messages":[]}',
    b'{"model":"m","stream":true,"stream":"yes","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"m","n":1,"n":2,"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"hi bomb","content":"hi"}]}',
    b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","type":"text","text":"bomb"}]}]}',
    b'{"input":"hi","input":["a",1]}',
    b'{"input":["hi"],"input":"bomb"}',
    b'{"input":[{"type":"text","text":"a","text":null}]}',
)


mostly_benign = pick((3, plain_text), (1, text_with_trigger))


@dataclass(frozen=True)
class Endpoint:
    """What ``body_for`` needs to know of one path."""

    doc: st.SearchStrategy[dict[str, Any]]  # structured, hostile
    well_formed: st.SearchStrategy[dict[str, Any]]
    valid: dict[str, Any]
    main_field: str  # where a deep value goes
    deep_fields: tuple[str, ...]
    nested: str | None  # a template for a deep value inside the main field ("RAW" replaced)
    nan_fields: tuple[str, ...]
    duplicates: tuple[bytes, ...]
    # Well-formed docs for the "scripted" kind, their texts mostly benign so that the
    # upstream's behaviour is what is tested; None: no such kind (chat keeps the
    # distribution it had).
    scripted: st.SearchStrategy[dict[str, Any]] | None


ENDPOINTS = {
    CHAT: Endpoint(
        chat_doc(),
        well_formed_chat(),
        VALID_CHAT,
        "messages",
        ("messages", "model", "stream_options", "extra"),
        '[{"role":"user","content":[RAW]}]',
        ("n", "temperature", "model", "input", "messages"),
        CHAT_AND_MODERATION_DUPLICATES,
        None,
    ),
    MODERATIONS: Endpoint(
        moderation_doc(),
        well_formed_moderation(),
        VALID_MODERATION,
        "input",
        ("input", "model", "stream_options", "extra"),
        None,
        ("n", "temperature", "model", "input", "messages"),
        CHAT_AND_MODERATION_DUPLICATES,
        None,
    ),
    RESPONSES: Endpoint(
        responses_doc(),
        well_formed_responses(),
        VALID_RESPONSES,
        "input",
        ("input", "instructions", "tools", "model", "stream_options", "background", "extra"),
        '[{"role":"user","content":[RAW]}]',
        ("n", "temperature", "model", "input", "instructions", "background", "max_output_tokens", "stream"),
        (
            b'{"model":"m","input":"hi","input":[{"role":"user","content":"hi bomb"}]}',
            b'{"model":"m","input":[{"role":"user","content":"hi bomb"}],"input":"hi"}',
            b'{"model":"m","input":[{"role":"user","content":"hi bomb","content":"hi"}]}',
            b'{"model":"m","input":[{"type":"message","type":"function_call_output","role":"user","output":"bomb","content":"hi"}]}',
            b'{"model":"m","input":[{"type":"item_reference","type":"message","role":"user","content":"bomb","id":"x"}]}',
            b'{"model":"m","input":"hi","background":true,"background":false}',
            b'{"model":"m","input":"hi","background":false,"background":true}',
            b'{"model":"m","input":"hi","instructions":"a","instructions":5}',
            b'{"model":"m","input":[{"role":"user","content":[{"type":"input_image","type":"input_text","text":"bomb"}]}]}',
            b'{"model":"m","stream":true,"stream":"yes","input":"hi"}',
            b'{"model":"m","input":[{"type":"reasoning","summary":[],"summary":5}]}',
        ),
        well_formed_responses(mostly_benign),
    ),
    COMPLETIONS: Endpoint(
        completions_doc(),
        well_formed_completions(),
        VALID_COMPLETIONS,
        "prompt",
        ("prompt", "suffix", "model", "stream_options", "extra"),
        "[RAW]",
        ("n", "temperature", "model", "prompt", "suffix", "max_tokens", "best_of", "stream"),
        (
            b'{"model":"m","prompt":"hi","prompt":[1,2,3]}',
            b'{"model":"m","prompt":[1,2],"prompt":"hi bomb"}',
            b'{"model":"m","prompt":"hi","suffix":"a","suffix":5}',
            b'{"model":"m","prompt":"hi","n":1,"n":200}',
            b'{"model":"m","prompt":["a","b"],"n":64,"n":65}',
            b'{"model":"m","stream":true,"stream":1,"prompt":"hi"}',
            b'{"model":"m","prompt":["hi"],"prompt":["a",[1]]}',
        ),
        well_formed_completions(mostly_benign),
    ),
}
KINDS = (
    ["structured"] * 8
    + ["well-formed"] * 3
    + [
        "random-bytes",
        "invalid-utf8",
        "invalid-utf8",
        "truncated",
        "truncated",
        "deep",
        "deep",
        "nan-literal",
        "duplicate-keys",
        "not-an-object",
        "encoding",
    ]
)


@st.composite
def body_for(draw: st.DrawFn, path: str) -> tuple[str, bytes]:
    """(kind, body bytes) for ``path``."""
    spec = ENDPOINTS[path]
    doc_strategy, valid = spec.doc, spec.valid
    # Responses and completions: more structured bodies (their adapters' checks are what is
    # new here; the decoder and the other kinds are shared with chat) and the scripted kind.
    kind = draw(st.sampled_from(KINDS + (["structured"] * 6 + ["scripted"] * 5 if spec.scripted is not None else [])))
    if kind == "structured":
        return kind, dumps(draw(doc_strategy))
    if kind == "well-formed":
        return kind, dumps(draw(spec.well_formed))
    if kind == "scripted" and spec.scripted is not None:  # well-formed; the upstream misbehaves or says what is stopped
        doc = dict(draw(spec.scripted), x_script=draw(upstream_script(path)))
        if "stream" not in doc and draw(st.booleans()):
            doc["stream"] = True
        return kind, dumps(doc)
    if kind == "random-bytes":
        return kind, draw(st.binary(max_size=512))
    if kind == "invalid-utf8":
        base = dumps(draw(st.one_of(st.just(valid), doc_strategy)))
        bad = draw(st.sampled_from(INVALID_UTF8))
        where = draw(st.sampled_from(["in-a-string", "anywhere"]))
        if where == "in-a-string" and b'"' in base:
            quotes = [i for i, c in enumerate(base) if c == ord('"')]
            i = draw(st.sampled_from(quotes)) + 1
        else:
            i = draw(st.integers(0, len(base)))
        return kind, base[:i] + bad + base[i:]
    if kind == "truncated":
        base = dumps(draw(st.one_of(st.just(valid), doc_strategy)))
        return kind, base[: draw(st.integers(0, max(0, len(base) - 1)))]
    if kind == "deep":
        raw = draw(deep_raw)
        where = draw(st.sampled_from(["top", "field"]))
        if where == "top":
            return kind, raw.text.encode()
        doc = dict(valid)
        doc[draw(st.sampled_from(spec.deep_fields))] = raw
        if spec.nested is not None and draw(st.booleans()):
            doc = dict(valid, **{spec.main_field: Raw(spec.nested.replace("RAW", raw.text))})
        return kind, dumps(doc)
    if kind == "nan-literal":
        doc = dict(valid)
        doc[draw(st.sampled_from(spec.nan_fields))] = draw(nan_raw)
        return kind, dumps(doc)
    if kind == "duplicate-keys":
        return kind, draw(st.sampled_from(spec.duplicates))
    if kind == "not-an-object":
        return kind, draw(
            st.sampled_from(
                [
                    b"",
                    b" ",
                    b"null",
                    b"1",
                    b'"s"',
                    b"[]",
                    b"true",
                    b"[{}]",
                    b"{}",
                    b"{ }",
                    b'{"a":1} {"b":2}',
                    b'{"a":1}garbage',
                    b"\x00",
                    b"{\x00}",
                ]
            )
        )
    # "encoding": the right document in the wrong clothes
    base = dumps(draw(st.one_of(st.just(valid), doc_strategy)))
    how = draw(st.sampled_from(["bom", "utf-16", "utf-16-le", "utf-32", "latin-1", "padded"]))
    if how == "bom":
        return kind, b"\xef\xbb\xbf" + base
    if how == "padded":
        return kind, b" \t\r\n" * 100 + base + b"\n" * 100
    if how == "latin-1":
        return kind, base.decode("utf-8", "surrogatepass").encode("latin-1", "replace")
    return kind, base.decode("utf-8", "surrogatepass").encode(how, "surrogatepass")


# -- headers ---------------------------------------------------------------------------------

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
# Framing headers are httpx's to write (a mismatched Content-Length cannot be sent).
FRAMING = {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect", b"upgrade"}


def _field_value(raw: bytes) -> bytes:
    """A header value h11 accepts: visible ASCII or obs-text, inner spaces only."""
    kept = bytes(b for b in raw if b == 0x20 or b == 0x09 or 0x21 <= b <= 0x7E or b >= 0x80)
    return kept.strip(b" \t")


header_value = st.one_of(
    st.binary(max_size=40).map(_field_value),
    st.text(max_size=20).map(lambda s: _field_value(s.encode("utf-8"))),
    st.sampled_from([b"", b"x" * 70_000, b"\xff\xfe", b"null", b"0", b"-1", b"\xc3\xa9"]),
)
CONTENT_TYPES = [
    None,
    b"text/plain",
    b"multipart/form-data; boundary=xyz",
    b"application/x-www-form-urlencoded",
    b"application/json; charset=latin-1",
    b"application/json; charset=utf-8",
    b"application/json;charset=UTF8",
    b'application/json; charset="utf-8"',
    b"APPLICATION/JSON",
    b"application/merge-patch+json",
    b"application/json; charset=utf-16",
    b"application/json; boundary=x; charset",
    b"",
    b";",
    b"json",
    b"application/json\xff",
    b"*/*",
]
AUTHORIZATIONS = [
    None,
    b"Bearer sk-wrong",
    b"Basic dXNlcjpwYXNz",
    b"Bearer",
    b"Bearer ",
    b"bearer " + API_KEY.encode(),
    b"BEARER " + TENANT_KEY.encode(),
    b"Bearer " + b"k" * 70_000,
    b"Bearer \xff\xfe\xfd",
    b"Token x",
    b"Bearer " + API_KEY.encode() + b"x",
    b"Bearer sk-a, Bearer sk-b",
]
STRICTNESS = [
    b"strict",
    b"moderate",
    b"loose",
    b"STRICT",
    b"loose\t x",
    b"0",
    b"20",
    b"40",
    b"100",
    b"101",
    b"-1",
    b"-0",
    b"1e2",
    b"40.5",
    b"nan",
    b"inf",
    b"9" * 40,
    b"",
    b"strict, loose",
    b"\xb2",
    b"\xb9\xb3",
    "\u0664\u0660".encode(),
    "\uff14\uff10".encode(),
    b"\xff",
]


@st.composite
def header_set(draw: st.DrawFn) -> tuple[str, tuple[tuple[bytes, bytes], ...]]:
    """(label, headers): mostly the valid key and a JSON content type, junk otherwise."""
    headers: list[tuple[bytes, bytes]] = []
    labels: list[str] = []
    if draw(st.integers(0, 4)):
        headers.append((b"content-type", b"application/json"))
    else:
        ct = draw(st.sampled_from(CONTENT_TYPES))
        labels.append("content-type")
        if ct is not None:
            headers.append((b"content-type", _field_value(ct)))
    if draw(st.integers(0, 9)) == 0:  # a second content type
        headers.append((b"content-type", draw(st.sampled_from([b"text/plain", b"application/json"]))))
        labels.append("dup-content-type")
    if draw(st.integers(0, 5)):
        headers.append((b"authorization", b"Bearer " + draw(st.sampled_from([API_KEY, API_KEY, API_KEY, TENANT_KEY])).encode()))
    else:
        labels.append("authorization")
        auth = draw(st.one_of(st.sampled_from(AUTHORIZATIONS), header_value))
        if auth is not None:
            headers.append((b"authorization", _field_value(auth)))
    if draw(st.integers(0, 9)) == 0:
        headers.append((b"authorization", draw(st.sampled_from([b"Bearer " + API_KEY.encode(), b"Bearer junk"]))))
        labels.append("dup-authorization")
    if draw(st.integers(0, 2)) == 0:
        labels.append("strictness")
        for _ in range(draw(st.integers(1, 2))):
            value = draw(st.one_of(st.sampled_from(STRICTNESS), header_value))
            headers.append((b"x-guard-strictness", _field_value(value)))
    if draw(st.integers(0, 3)) == 0:
        labels.append("extra")
        names = st.one_of(
            st.sampled_from(
                [
                    b"traceparent",
                    b"tracestate",
                    b"x-guardproxy-key",
                    b"accept",
                    b"accept-encoding",
                    b"x-request-id",
                    b"openai-organization",
                    b"x-forwarded-for",
                    b"cookie",
                ]
            ),
            st.text(TOKEN_CHARS, min_size=1, max_size=30).map(str.encode),
        ).filter(lambda n: n.lower() not in FRAMING)
        for _ in range(draw(st.integers(1, 4))):
            value = draw(
                st.one_of(
                    header_value,
                    st.sampled_from([b"00-zz-yy-01", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01", b"ff-" + b"f" * 200]),
                )
            )
            headers.append((draw(names), _field_value(value)))
    return "+".join(labels) or "valid", tuple(headers)


_JSON_AND_KEY = ((b"content-type", b"application/json"), (b"authorization", b"Bearer " + API_KEY.encode()))


@st.composite
def cases(draw: st.DrawFn, paths: tuple[str, ...]) -> Case:
    path = draw(st.sampled_from(paths))
    kind, body = draw(body_for(path))
    label, headers = draw(header_set())
    if path in (RESPONSES, COMPLETIONS) and draw(st.integers(0, 3)) < 3:
        # Headers are read before the adapter, by code shared with chat (fuzzed there 1,100
        # times): here junk headers would mostly stop the body before the adapter reads it.
        label, headers = "valid", _JSON_AND_KEY
    return Case(path, f"{kind}/{label}", body, headers)


# Known hostile requests, run first on every run (hypothesis' explicit phase).
EXPLICIT = [
    Case(CHAT, "explicit/deep-array-1000", b"[" * 1000 + b"]" * 1000, _JSON_AND_KEY),
    Case(CHAT, "explicit/deep-object-1000", _deep("object", 1000, True).encode(), _JSON_AND_KEY),
    Case(MODERATIONS, "explicit/deep-input-1000", b'{"input":' + b"[" * 1000 + b"]" * 1000 + b"}", _JSON_AND_KEY),
    Case(CHAT, "explicit/invalid-utf8", b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}', _JSON_AND_KEY),
    Case(MODERATIONS, "explicit/invalid-utf8", b'{"input":"caf\xe9"}', _JSON_AND_KEY),
    Case(
        CHAT,
        "explicit/input_text-part",
        dumps(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_text", "text": "how do I build a bomb"}]}]}
        ),
        _JSON_AND_KEY,
    ),
    Case(
        CHAT,
        "explicit/output_text-part",
        dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "output_text", "text": "hi"}]}]}),
        _JSON_AND_KEY,
    ),
    Case(MODERATIONS, "explicit/2000-inputs", dumps({"input": ["hello"] * 2000}), _JSON_AND_KEY),
    Case(CHAT, "explicit/nan-n", b'{"model":"m","n":NaN,"messages":[{"role":"user","content":"hi"}]}', _JSON_AND_KEY),
    Case(
        CHAT,
        "explicit/huge-n",
        dumps({"model": "m", "n": Raw("9" * 400), "messages": [{"role": "user", "content": "hi"}], "x_script": {"status": 400}}),
        _JSON_AND_KEY,
    ),
    Case(
        CHAT,
        "explicit/latin-1-charset",
        dumps(VALID_CHAT),
        ((b"content-type", b"application/json; charset=latin-1"),) + _JSON_AND_KEY[1:],
    ),
    Case(CHAT, "explicit/superscript-strictness", dumps(VALID_CHAT), _JSON_AND_KEY + ((b"x-guard-strictness", b"\xb2"),)),
    Case(
        MODERATIONS,
        "explicit/superscript-strictness",
        dumps(VALID_MODERATION),
        _JSON_AND_KEY + ((b"x-guard-strictness", b"\xb9\xb3"),),
    ),
]
EXPLICIT_RESPONSES = [
    # Found by this test: a reasoning item's `summary` / `content` that is a number or
    # `true` was a 500 (TypeError), now a 400; an upstream whose first event fails ended the
    # stream with a bare `error` event (no response.created, no response.failed).
    Case(
        RESPONSES,
        "explicit/reasoning-summary-not-a-list",
        dumps({"model": "m", "input": [{"type": "reasoning", "summary": 1}]}),
        _JSON_AND_KEY,
    ),
    Case(
        RESPONSES,
        "explicit/reasoning-content-not-a-list",
        dumps({"model": "m", "input": [{"type": "reasoning", "summary": [], "content": True}]}),
        _JSON_AND_KEY,
    ),
    Case(
        RESPONSES,
        "explicit/unknown-item",
        dumps({"model": "m", "input": [{"type": "computer_call_output", "output": "bomb"}]}),
        _JSON_AND_KEY,
    ),
    Case(RESPONSES, "explicit/background", dumps({"model": "m", "input": "hi", "background": True}), _JSON_AND_KEY),
    Case(
        RESPONSES,
        "explicit/only-item-references",
        dumps({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
        _JSON_AND_KEY,
    ),
    Case(
        RESPONSES,
        "explicit/error-before-any-event",
        dumps({"model": "m", "input": "hi", "stream": True, "x_script": {"error_midstream": 0}}),
        _JSON_AND_KEY,
    ),
    Case(
        RESPONSES,
        "explicit/guard-outage-in-the-answer",
        dumps({"model": "m", "input": "hi", "stream": True, "x_script": {"answer": ["guard500"]}}),
        _JSON_AND_KEY,
    ),
    Case(
        RESPONSES,
        "explicit/truncated-after-created",
        dumps({"model": "m", "input": "hi", "stream": True, "x_script": {"truncate_after": 1}}),
        _JSON_AND_KEY,
    ),
]
EXPLICIT_COMPLETIONS = [
    Case(COMPLETIONS, "explicit/token-ids", dumps({"model": "m", "prompt": [1, 2, 3]}), _JSON_AND_KEY),
    Case(COMPLETIONS, "explicit/token-id-batch", dumps({"model": "m", "prompt": [[1, 2], [3]]}), _JSON_AND_KEY),
    Case(COMPLETIONS, "explicit/100000-token-ids", dumps({"model": "m", "prompt": [1] * 100_000}), _JSON_AND_KEY),
    Case(COMPLETIONS, "explicit/129-choices", dumps({"model": "m", "prompt": ["a", "b", "c"], "n": 43}), _JSON_AND_KEY),
    Case(
        COMPLETIONS, "explicit/128-choices", dumps({"model": "m", "prompt": ["a", "b"], "n": 64, "stream": True}), _JSON_AND_KEY
    ),
    Case(COMPLETIONS, "explicit/suffix-not-a-string", dumps({"model": "m", "prompt": "hi", "suffix": ["bomb"]}), _JSON_AND_KEY),
    Case(
        COMPLETIONS,
        "explicit/error-midstream",
        dumps({"model": "m", "prompt": "hi", "stream": True, "x_script": {"error_midstream": 2}}),
        _JSON_AND_KEY,
    ),
]


# -- the checks ------------------------------------------------------------------------------


def check_response(case: Case, r: httpx.Response) -> None:
    where = f"{case!r}\n  -> HTTP {r.status_code} {r.headers.get('content-type')!r}: {r.content[:400]!r}"
    status = r.status_code
    assert status < 500 or status in DOCUMENTED_5XX, f"5xx: {where}"
    if 200 <= status < 300:
        _check_success(case, r, where)
        return
    assert (r.headers.get("content-type") or "").split(";")[0].strip() == "application/json", f"error not JSON: {where}"
    try:
        doc = r.json()
    except ValueError:
        raise AssertionError(f"error body does not parse: {where}") from None
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), f"error not OpenAI-shaped: {where}"
    error = doc["error"]
    assert isinstance(error.get("message"), str) and error["message"], f"error.message: {where}"
    assert isinstance(error.get("type"), str) and error["type"], f"error.type: {where}"
    assert "code" in error and (error["code"] is None or isinstance(error["code"], str)), f"error.code: {where}"
    if status >= 500:
        assert error["code"] in DOCUMENTED_5XX[status], f"undocumented {status} code: {where}"


# The object a 2xx JSON answer is, per path.
JSON_OBJECT = {CHAT: "chat.completion", COMPLETIONS: "text_completion", RESPONSES: "response"}
CHUNK_OBJECT = {CHAT: "chat.completion.chunk", COMPLETIONS: "text_completion"}
# The status a terminal event's Response may have: vLLM ends a response cut by
# max_output_tokens with `response.completed` of status "incomplete", passed on as sent.
RESPONSES_TERMINAL = {
    "response.completed": ("completed", "incomplete"),
    "response.incomplete": ("incomplete",),
    "response.failed": ("failed",),
}


def _check_success(case: Case, r: httpx.Response, where: str) -> None:
    content_type = (r.headers.get("content-type") or "").split(";")[0].strip()
    if case.path == MODERATIONS:
        assert content_type == "application/json", where
        doc = r.json()
        assert isinstance(doc.get("results"), list) and doc["results"], where
        return
    if content_type == "text/event-stream":
        if case.path == RESPONSES:
            _check_typed_stream(r.content, where)
        else:
            _check_data_stream(r.content, CHUNK_OBJECT[case.path], where)
        return
    assert content_type == "application/json", where
    doc = r.json()
    assert doc.get("object") == JSON_OBJECT[case.path], where
    if case.path == RESPONSES:
        assert doc.get("status") in ("completed", "incomplete"), f"a 200 Response that failed: {where}"
    else:
        assert isinstance(doc.get("choices"), list), where


def _check_stream_error(error: Any, where: str) -> None:
    """An error event: the streamed form of an error status, one of the documented outages."""
    assert isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"], f"error event shape: {where}"
    assert error.get("code") in STREAM_ERROR_CODES, f"undocumented error event {error.get('code')!r}: {where}"


def _check_data_stream(body: bytes, chunk_object: str, where: str) -> None:
    """Chat and legacy completions: `data: {json}` events, an error event (if any) last
    before the one `data: [DONE]` that ends the stream."""
    assert body.endswith(b"data: [DONE]\n\n"), f"stream without [DONE]: {where}"
    events = body[: -len(b"\n\n")].split(b"\n\n")
    assert events.count(b"data: [DONE]") == 1, f"[DONE] twice: {where}"
    for k, event in enumerate(events[:-1]):
        assert event.startswith(b"data: {"), f"not a JSON data event ({event[:80]!r}): {where}"
        doc = json.loads(event[6:])
        if "error" in doc:  # a mid-stream error event: the streamed form of an error status
            _check_stream_error(doc["error"], where)
            assert k == len(events) - 2, f"events after an error event: {where}"
        else:
            assert doc.get("object") == chunk_object, f"chunk object {doc.get('object')!r}: {where}"


def _check_typed_stream(body: bytes, where: str) -> None:
    """The Responses API: `event: <type>` / `data: {"type": <type>, ...}` pairs, starting
    with response.created, sequence numbers increasing, ending with exactly one of
    response.completed / .incomplete / .failed (no [DONE]); an error event is followed by
    response.failed and nothing else."""
    assert body.endswith(b"\n\n"), f"stream cut mid-event: {where}"
    events: list[tuple[str, dict[str, Any]]] = []
    for block in body[: -len(b"\n\n")].split(b"\n\n"):
        lines = block.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: {"), (
            f"not an `event:` + `data:` pair ({block[:120]!r}): {where}"
        )
        kind = lines[0][7:].decode()
        doc = json.loads(lines[1][6:])
        assert isinstance(doc, dict) and doc.get("type") == kind, f"event {kind!r} carries type {doc.get('type')!r}: {where}"
        events.append((kind, doc))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "response.created", f"stream starts with {kinds[0]!r}: {where}"
    assert kinds[-1] in RESPONSES_TERMINAL, f"stream ends with {kinds[-1]!r} ({kinds[-3:]}): {where}"
    assert sum(kind in RESPONSES_TERMINAL for kind in kinds) == 1, f"more than one terminal event ({kinds}): {where}"
    sequence = [doc.get("sequence_number") for _, doc in events]
    assert all(type(s) is int for s in sequence) and sequence == sorted(set(sequence)), f"sequence numbers {sequence}: {where}"
    final = events[-1][1].get("response")
    assert isinstance(final, dict) and final.get("status") in RESPONSES_TERMINAL[kinds[-1]], f"terminal status: {where}"
    if "error" in kinds:
        k = kinds.index("error")
        _check_stream_error(events[k][1], where)
        assert kinds[k + 1 :] == ["response.failed"], f"after the error event: {kinds[k + 1 :]}: {where}"
    if kinds[-1] == "response.failed":
        assert "error" in kinds, f"response.failed without an error event: {where}"
        _check_stream_error(final.get("error"), where)


def check_health(client: httpx.Client, url: str) -> None:
    t0 = time.monotonic()
    r = client.get(f"{url}/healthz", timeout=1.0)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and elapsed < 1.0, f"/healthz: HTTP {r.status_code} after {elapsed:.2f} s"


# -- the tests -------------------------------------------------------------------------------


def _fuzz(
    make_proxy: Any,
    monkeypatch: Any,
    paths: tuple[str, ...],
    examples: int,
    explicit: list[Case],
    guard_retries: int | None = None,
) -> int:
    """Send ``examples`` generated requests (and the explicit ones first) to one proxy,
    checking each answer and /healthz; the number of requests sent."""
    monkeypatch.setenv("GUARDPROXY_FUZZ_KEYS", API_KEY)
    if guard_retries is None:
        proxy = make_proxy(PROXY_CONFIG)
    else:  # the first line lands in [guards.reasoningshield], where make_proxy puts `extra`
        retries = f"max_retries = {guard_retries}\n"
        proxy = make_proxy(retries + PROXY_CONFIG, flexguard=retries)
    sent = 0
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:

        def run(case: Case) -> None:
            nonlocal sent
            try:
                r = client.post(f"{proxy.url}{case.path}", content=case.body, headers=list(case.headers))
            except httpx.LocalProtocolError:
                reject()  # httpx refuses to send it (a header h11 calls illegal): nothing to test
            except httpx.TimeoutException:
                raise AssertionError(f"no answer within {REQUEST_TIMEOUT_S:g} s: {case!r}") from None
            except httpx.TransportError as exc:
                raise AssertionError(f"connection failed ({type(exc).__name__}: {exc}): {case!r}") from None
            sent += 1
            note(f"HTTP {r.status_code}: {r.content[:300]!r}")
            check_response(case, r)
            if sent % HEALTH_EVERY == 0:
                check_health(client, proxy.url)

        test = run
        for case in reversed(explicit):
            test = example(case=case)(test)
        test = given(case=cases(paths))(test)
        test = settings(
            max_examples=examples,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
                HealthCheck.filter_too_much,
            ],
        )(test)
        test()
        check_health(client, proxy.url)
    return sent


def test_fuzz_chat_and_moderations(make_proxy, monkeypatch):
    """>= 1,000 generated hostile requests: no undocumented 5xx, every error OpenAI-shaped,
    every success well-formed, /healthz 200 within 1 s throughout (see the module docstring)."""
    sent = _fuzz(make_proxy, monkeypatch, (CHAT, CHAT, CHAT, MODERATIONS, MODERATIONS), EXAMPLES, EXPLICIT)
    assert sent >= 1000, f"only {sent} requests were sent"


# The Responses and completions proxies do not retry a failed guard call: every "guard500"
# would cost the client's backoff (0.25 + 0.5 s) and the retries are fuzzed by the chat test.
NO_GUARD_RETRIES = 0


def test_fuzz_responses(make_proxy, monkeypatch):
    """POST /v1/responses: the same checks, a typed SSE stream ending in one terminal event."""
    sent = _fuzz(make_proxy, monkeypatch, (RESPONSES,), RESPONSES_EXAMPLES, EXPLICIT_RESPONSES, NO_GUARD_RETRIES)
    assert sent >= 900, f"only {sent} requests were sent"


def test_fuzz_completions(make_proxy, monkeypatch):
    """POST /v1/completions: the same checks, a `data:` stream ending with [DONE]."""
    sent = _fuzz(make_proxy, monkeypatch, (COMPLETIONS,), COMPLETIONS_EXAMPLES, EXPLICIT_COMPLETIONS, NO_GUARD_RETRIES)
    assert sent >= 900, f"only {sent} requests were sent"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
