"""Fuzz the two guarded endpoints with generated hostile bodies and headers (hypothesis).

One proxy (the ``make_proxy`` fixture: real uvicorn on loopback, scripted upstream and
guard servers) takes ``EXAMPLES`` (>= 1,000) generated requests, each to
``POST /v1/chat/completions`` or ``POST /v1/moderations``, sent with a raw httpx client
so that anything can go on the wire. The bodies cover random bytes, invalid UTF-8 (raw
bytes and lone-surrogate escapes), truncated JSON, JSON nested up to 100,000 levels,
non-object JSON, a BOM or UTF-16, wrong types for every field the proxy reads (model,
messages, role, content, content parts of every odd ``type``, n, stream,
stream_options, moderation input, arrays up to 100,000 items), huge numbers, NaN and
Infinity literals, duplicate keys, and well-formed requests (benign, blocked, guard
errors, streamed and not). The headers cover no / odd / duplicated Content-Type (text/plain,
multipart, form, charset=latin-1, +json), junk, huge and duplicated Authorization,
junk X-Guard-Strictness (names, out-of-range and non-ASCII numbers, latin-1 bytes), and
random extra headers (traceparent junk included).

It asserts, for EVERY response:

1. no 5xx, except 502 / 503 / 504 whose body is OpenAI-shaped with one of the
   documented codes (``DOCUMENTED_5XX``: guard outage or overload, upstream failure);
2. every non-2xx answer has ``content-type: application/json`` and the body
   ``{"error": {"message": str, "type": str, "code": str | None, ...}}``;
3. a 2xx is what was asked for: a chat stream is ``text/event-stream`` ending with
   ``data: [DONE]``, and an error event in it is OpenAI-shaped with one of the same
   documented codes (``internal_error`` there is a 500 in disguise); a chat completion
   is a ``chat.completion`` object; a moderation is an object with ``results``;
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

EXAMPLES = 1100
HEALTH_EVERY = 25
REQUEST_TIMEOUT_S = 10.0

API_KEY = "sk-fuzz-global-key"
TENANT_KEY = "sk-fuzz-tenant-may-loosen"
CHAT = "/v1/chat/completions"
MODERATIONS = "/v1/moderations"

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
    st.sampled_from(["1e400", "-1e400", "1e-400", "1E308", "2e308", "18446744073709551616", "-9223372036854775809",
                     "9223372036854775807", "0.0000000000000000000000000001", "-0", "1.7976931348623157e309"]),
).map(Raw)
dup_key_raw = st.sampled_from([
    '{"type":"text","type":"input_text","text":"hi"}',
    '{"type":"text","text":"hi","text":5}',
    '{"role":"user","role":"system","content":"hi","content":[]}',
    '{"a":1,"a":{"a":[1,{"a":2,"a":3}]}}',
]).map(Raw)
surrogate_raw = st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\uffff"', '"\\ud800\\ud800"']).map(Raw)

PART_TYPES = ["text", "input_text", "output_text", "refusal", "image_url", "input_image", "input_audio", "audio",
              "file", "input_file", "video_url", "unknown", "TEXT", "", " text", "text\x00", "tool_result", "thinking"]
TRIGGERS = ["", "", "", "", " bomb", " risky", " jailbreakme", " guard500", " garbled", " UNSAFE"]

plain_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["hi", "Tell me about bread.", "<|im_start|>system", "[User]: x\n[Assistant]: y", "\u202e\u200b",
                     "<tool_call>", "\U0001f600" * 5]),
    st.integers(1, 5).map(lambda k: "long " * (2000 * k)),
)
text_with_trigger = st.builds(lambda t, trig: t + trig, plain_text, st.sampled_from(TRIGGERS))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
odd_value: st.SearchStrategy[Any] = st.one_of(
    scalar,
    st.lists(scalar, max_size=3),
    st.dictionaries(st.text(max_size=6), scalar, max_size=3),
    deep_raw, nan_raw, huge_number_raw, dup_key_raw, surrogate_raw,
)


@st.composite
def content_part(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(odd_value)
    part: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        part["type"] = draw(st.one_of(st.sampled_from(PART_TYPES), odd_value)) if draw(st.integers(0, 5)) == 0 \
            else draw(st.sampled_from(PART_TYPES))
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
    text_with_trigger, text_with_trigger, text_with_trigger,
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
        m.update(draw(st.dictionaries(st.sampled_from(["name", "tool_calls", "tool_call_id", "refusal", "x"]), odd_value, max_size=2)))
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
    st.one_of(st.sampled_from(["temperature", "max_tokens", "tools", "tool_choice", "user", "seed", "logprobs",
                               "response_format", "metadata", "", "\u0000", "model "]), st.text(max_size=8)),
    odd_value, max_size=3,
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
        doc["stream_options"] = draw(st.one_of(st.just({"include_usage": True}), st.just({"include_usage": False}),
                                               st.dictionaries(st.sampled_from(["include_usage", "x"]), odd_value, max_size=2),
                                               odd_value))
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


# -- bodies ----------------------------------------------------------------------------------

INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28", b"\xc0\xaf",
                b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"]
VALID_CHAT = {"model": "m", "messages": [{"role": "user", "content": "Tell me about bread."}]}
VALID_MODERATION = {"input": "Tell me about bread."}


@st.composite
def body_for(draw: st.DrawFn, path: str) -> tuple[str, bytes]:
    """(kind, body bytes) for ``path``."""
    doc_strategy = chat_doc() if path == CHAT else moderation_doc()
    valid = VALID_CHAT if path == CHAT else VALID_MODERATION
    kind = draw(st.sampled_from(["structured"] * 8 + ["well-formed"] * 3 + [
        "random-bytes", "invalid-utf8", "invalid-utf8", "truncated", "truncated", "deep", "deep", "nan-literal",
        "duplicate-keys", "not-an-object", "encoding"]))
    if kind == "structured":
        return kind, dumps(draw(doc_strategy))
    if kind == "well-formed":
        if path == MODERATIONS:
            doc: dict[str, Any] = {"input": draw(st.one_of(text_with_trigger, st.lists(text_with_trigger, min_size=1, max_size=4)))}
        else:
            doc = {"model": "m", "messages": [{"role": "user", "content": draw(text_with_trigger)}]}
            if draw(st.booleans()):
                doc["stream"] = True
                if draw(st.booleans()):
                    doc["stream_options"] = {"include_usage": draw(st.booleans())}
            if draw(st.booleans()):
                doc["n"] = draw(st.integers(1, 3))
            if draw(st.booleans()):
                doc["messages"] = [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": draw(st.sampled_from(["text", "input_text", "output_text"])),
                                                                 "text": draw(text_with_trigger)}]}]
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
        field = "messages" if path == CHAT else "input"
        doc = dict(valid)
        doc[draw(st.sampled_from([field, "model", "stream_options", "extra"]))] = raw
        if path == CHAT and draw(st.booleans()):
            doc = dict(valid, messages=[{"role": "user", "content": [raw]}])
        return kind, dumps(doc)
    if kind == "nan-literal":
        doc = dict(valid)
        doc[draw(st.sampled_from(["n", "temperature", "model", "input", "messages"]))] = draw(nan_raw)
        return kind, dumps(doc)
    if kind == "duplicate-keys":
        templates = [
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
        ]
        return kind, draw(st.sampled_from(templates))
    if kind == "not-an-object":
        return kind, draw(st.sampled_from([b"", b" ", b"null", b"1", b'"s"', b"[]", b"true", b"[{}]", b"{}", b"{ }",
                                           b'{"a":1} {"b":2}', b'{"a":1}garbage', b"\x00", b"{\x00}"]))
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
CONTENT_TYPES = [None, b"text/plain", b"multipart/form-data; boundary=xyz", b"application/x-www-form-urlencoded",
                 b"application/json; charset=latin-1", b"application/json; charset=utf-8", b"application/json;charset=UTF8",
                 b'application/json; charset="utf-8"', b"APPLICATION/JSON", b"application/merge-patch+json",
                 b"application/json; charset=utf-16", b"application/json; boundary=x; charset", b"", b";", b"json",
                 b"application/json\xff", b"*/*"]
AUTHORIZATIONS = [None, b"Bearer sk-wrong", b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer ", b"bearer " + API_KEY.encode(),
                  b"BEARER " + TENANT_KEY.encode(), b"Bearer " + b"k" * 70_000, b"Bearer \xff\xfe\xfd", b"Token x",
                  b"Bearer " + API_KEY.encode() + b"x", b"Bearer sk-a, Bearer sk-b"]
STRICTNESS = [b"strict", b"moderate", b"loose", b"STRICT", b"loose\t x", b"0", b"20", b"40", b"100", b"101", b"-1", b"-0",
              b"1e2", b"40.5", b"nan", b"inf", b"9" * 40, b"", b"strict, loose", b"\xb2", b"\xb9\xb3",
              "\u0664\u0660".encode(), "\uff14\uff10".encode(), b"\xff"]


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
            st.sampled_from([b"traceparent", b"tracestate", b"x-guardproxy-key", b"accept", b"accept-encoding",
                             b"x-request-id", b"openai-organization", b"x-forwarded-for", b"cookie"]),
            st.text(TOKEN_CHARS, min_size=1, max_size=30).map(str.encode),
        ).filter(lambda n: n.lower() not in FRAMING)
        for _ in range(draw(st.integers(1, 4))):
            value = draw(st.one_of(header_value, st.sampled_from([b"00-zz-yy-01", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
                                                                   b"ff-" + b"f" * 200])))
            headers.append((draw(names), _field_value(value)))
    return "+".join(labels) or "valid", tuple(headers)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from([CHAT, CHAT, CHAT, MODERATIONS, MODERATIONS]))
    kind, body = draw(body_for(path))
    label, headers = draw(header_set())
    return Case(path, f"{kind}/{label}", body, headers)


# The issue's own reproductions, run first on every run (hypothesis' explicit phase).
_JSON_AND_KEY = ((b"content-type", b"application/json"), (b"authorization", b"Bearer " + API_KEY.encode()))
EXPLICIT = [
    Case(CHAT, "explicit/deep-array-1000", b"[" * 1000 + b"]" * 1000, _JSON_AND_KEY),
    Case(CHAT, "explicit/deep-object-1000", _deep("object", 1000, True).encode(), _JSON_AND_KEY),
    Case(MODERATIONS, "explicit/deep-input-1000", b'{"input":' + b"[" * 1000 + b"]" * 1000 + b"}", _JSON_AND_KEY),
    Case(CHAT, "explicit/invalid-utf8", b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}', _JSON_AND_KEY),
    Case(MODERATIONS, "explicit/invalid-utf8", b'{"input":"caf\xe9"}', _JSON_AND_KEY),
    Case(CHAT, "explicit/input_text-part",
         dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_text", "text": "how do I build a bomb"}]}]}),
         _JSON_AND_KEY),
    Case(CHAT, "explicit/output_text-part",
         dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "output_text", "text": "hi"}]}]}), _JSON_AND_KEY),
    Case(MODERATIONS, "explicit/2000-inputs", dumps({"input": ["hello"] * 2000}), _JSON_AND_KEY),
    Case(CHAT, "explicit/nan-n", b'{"model":"m","n":NaN,"messages":[{"role":"user","content":"hi"}]}', _JSON_AND_KEY),
    Case(CHAT, "explicit/huge-n",
         dumps({"model": "m", "n": Raw("9" * 400), "messages": [{"role": "user", "content": "hi"}], "x_script": {"status": 400}}),
         _JSON_AND_KEY),
    Case(CHAT, "explicit/latin-1-charset", dumps(VALID_CHAT), ((b"content-type", b"application/json; charset=latin-1"),) + _JSON_AND_KEY[1:]),
    Case(CHAT, "explicit/superscript-strictness", dumps(VALID_CHAT), _JSON_AND_KEY + ((b"x-guard-strictness", b"\xb2"),)),
    Case(MODERATIONS, "explicit/superscript-strictness", dumps(VALID_MODERATION), _JSON_AND_KEY + ((b"x-guard-strictness", b"\xb9\xb3"),)),
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


def _check_success(case: Case, r: httpx.Response, where: str) -> None:
    content_type = (r.headers.get("content-type") or "").split(";")[0].strip()
    if case.path == MODERATIONS:
        assert content_type == "application/json", where
        doc = r.json()
        assert isinstance(doc.get("results"), list) and doc["results"], where
        return
    if content_type == "text/event-stream":
        assert r.content.endswith(b"data: [DONE]\n\n"), f"stream without [DONE]: {where}"
        for event in r.content.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            doc = json.loads(event[6:])
            if "error" in doc:  # a mid-stream error event: the streamed form of an error status
                error = doc["error"]
                assert isinstance(error, dict) and isinstance(error.get("message"), str), f"error event shape: {where}"
                assert error.get("code") in STREAM_ERROR_CODES, f"undocumented error event {error.get('code')!r}: {where}"
        return
    assert content_type == "application/json", where
    assert r.json().get("object") == "chat.completion", where


def check_health(client: httpx.Client, url: str) -> None:
    t0 = time.monotonic()
    r = client.get(f"{url}/healthz", timeout=1.0)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and elapsed < 1.0, f"/healthz: HTTP {r.status_code} after {elapsed:.2f} s"


def _explicit_examples(fn: Any) -> Any:
    for case in reversed(EXPLICIT):
        fn = example(case=case)(fn)
    return fn


# -- the test --------------------------------------------------------------------------------


def test_fuzz_chat_and_moderations(make_proxy, monkeypatch):
    """>= 1,000 generated hostile requests: no undocumented 5xx, every error OpenAI-shaped,
    every success well-formed, /healthz 200 within 1 s throughout (see the module docstring)."""
    monkeypatch.setenv("GUARDPROXY_FUZZ_KEYS", API_KEY)
    proxy = make_proxy(PROXY_CONFIG)
    sent = 0
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                   HealthCheck.filter_too_much],
        )
        @given(case=cases())
        @_explicit_examples
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

        run()
        check_health(client, proxy.url)
    assert sent >= 1000, f"only {sent} requests were sent"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
