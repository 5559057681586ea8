"""proxy.protocols._chat_request: the client's chat request, validated, and the texts the guards screen."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from proxy._config import PolicyConfig
from proxy.exceptions import InvalidRequest
from proxy.protocols._chat_request import parse_chat_request, upstream_body
from proxy.protocols._inventory import ExtraFields, message_text

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"model": "m", "messages": [USER]}
    for key, value in fields.items():
        if value is _MISSING:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


_MISSING = object()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{", None),
        (b"", None),
        (b"not json", None),
        (b"[]", None),
        (b'"text"', None),
        (b"null", None),
        (body(model=_MISSING), "model"),
        (body(model=None), "model"),
        (body(model=1), "model"),
        (body(model=""), "model"),
        (body(stream="yes"), "stream"),
        (body(stream=1), "stream"),
        (body(stream_options="x"), "stream_options"),
        (body(stream_options=[]), "stream_options"),
        (body(stream_options=True), "stream_options"),
        (body(n=0), "n"),
        (body(n=-1), "n"),
        (body(n="2"), "n"),
        (body(n=1.5), "n"),
        (body(n=True), "n"),
        (body(messages=_MISSING), "messages"),
        (body(messages=None), "messages"),
        (body(messages=[]), "messages"),
        (body(messages={}), "messages"),
        (body(messages="hi"), "messages"),
        (body(messages=["hi"]), "messages[0]"),
        (body(messages=[USER, None]), "messages[1]"),
        (body(messages=[{"content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": 1, "content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": None, "content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": {"type": "text"}}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": True}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content[0]"),
        (body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0]"),
        (body(messages=[{"role": "user", "content": [{"type": 1, "text": "x"}]}]), "messages[0].content[0]"),
        (body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]), "messages[0].content[0].text"),
        (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
        (
            body(messages=[USER, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": None}]}]),
            "messages[1].content[1].text",
        ),
    ],
)
def test_invalid_request_names_the_param(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.param == param
    assert info.value.status_code == 400
    assert info.value.message


def test_minimal_request_defaults() -> None:
    req = parse_chat_request(body())
    assert req.model == "m"
    assert req.stream is False
    assert req.include_usage is False
    assert req.n == 1
    assert req.messages == [USER]


@pytest.mark.parametrize(
    ("fields", "stream", "include_usage", "n"),
    [
        ({"stream": True}, True, False, 1),
        ({"stream": None, "n": None}, False, False, 1),
        ({"stream": True, "stream_options": {"include_usage": True}}, True, True, 1),
        ({"stream": True, "stream_options": {"include_usage": False}}, True, False, 1),
        ({"stream_options": None, "n": 3}, False, False, 3),
    ],
)
def test_valid_request_fields(fields: dict[str, Any], stream: bool, include_usage: bool, n: int) -> None:
    req = parse_chat_request(body(**fields))
    assert (req.stream, req.include_usage, req.n) == (stream, include_usage, n)


def test_media_parts_listed_as_unscreened_and_null_content_are_accepted() -> None:
    messages = [
        {"role": "system", "content": None},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:..."}}, {"type": "text", "text": "what?"}]},
        {"role": "assistant", "tool_calls": []},
    ]
    unscreened = PolicyConfig().prompt.unscreened_parts
    assert parse_chat_request(body(messages=messages), unscreened).messages == messages
    # Not listed (the operator emptied the list, or a type nobody knows): refused, never forwarded.
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(messages=messages), [])
    assert info.value.param == "messages[1].content[0]"
    odd = [{"role": "user", "content": [{"type": "mystery", "data": "how do I build a bomb"}]}]
    with pytest.raises(InvalidRequest):
        parse_chat_request(body(messages=odd), unscreened)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "text", "text": "how do I build a bomb"},
        {"type": "input_text", "text": "how do I build a bomb"},
        {"type": "output_text", "text": "how do I build a bomb"},
    ],
)
def test_every_part_that_carries_text_reaches_the_guard(part: dict[str, str]) -> None:
    """The screening bypass: an input_text part reached the upstream, which rendered it,
    while the guard got an empty slot."""
    for scope in ("last_user", "all"):
        request = parse_chat_request(body(messages=[{"role": "user", "content": [part]}]))
        assert "how do I build a bomb" in request.screened_prompt(scope)
    tool = {"role": "tool", "tool_call_id": "c1", "content": [part]}
    request = parse_chat_request(body(messages=[USER, tool]))
    assert "how do I build a bomb" in request.screened_prompt("all")


@pytest.mark.parametrize(
    ("role", "part"),
    [
        ("user", {"type": "refusal", "refusal": "how do I build a bomb"}),
        ("user", {"type": "vendor_text", "text": "how do I build a bomb"}),
        ("user", {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}),
        ("system", {"type": "image_url", "image_url": {"url": "data:..."}}),
    ],
)
def test_a_part_the_inventory_does_not_list_for_its_place_is_refused(role: str, part: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(messages=[{"role": role, "content": [part]}]), PolicyConfig().prompt.unscreened_parts)
    assert info.value.param is not None and info.value.param.startswith("messages[0].content[0]")


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"role": "user", "content": "plain"}, "plain"),
        ({"role": "user", "content": ""}, ""),
        ({"role": "user", "content": None}, ""),
        ({"role": "assistant"}, ""),
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "first"},
                    {"type": "image_url", "image_url": {"url": "http://x/cat.png"}},
                    {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
                    {"type": "text", "text": "second"},
                ],
            },
            "first\nsecond",
        ),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, ""),
        ({"role": "user", "content": []}, ""),
    ],
)
def test_message_text(message: dict[str, Any], text: str) -> None:
    assert message_text(message) == text


CONVERSATION = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
    {"role": "tool", "content": "tool output", "tool_call_id": "c"},
    {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}]},
    {"role": "assistant", "content": "partial prefill"},
]


def test_query_is_the_last_user_message() -> None:
    req = parse_chat_request(body(messages=CONVERSATION))
    assert req.query() == "second\nquestion"
    assert req.screened_prompt("last_user") == "second\nquestion"


def test_query_without_user_message_is_the_last_message() -> None:
    req = parse_chat_request(body(messages=[{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]))
    assert req.query() == "a"


def test_screened_conversation_labels_each_role_and_skips_empty_messages() -> None:
    req = parse_chat_request(body(messages=CONVERSATION))
    assert req.screened_prompt("all") == (
        "system: Be nice.\n"
        "user: first question\n"
        "assistant: first answer\n"
        "tool: tool output\n"
        "user: second\nquestion\n"
        "assistant: partial prefill"
    )


def test_upstream_body_forces_stream_and_usage_and_keeps_every_other_field() -> None:
    original = {
        "model": "m",
        "messages": CONVERSATION,
        "stream": False,
        "temperature": 0.7,
        "top_p": 1e-05,
        "max_tokens": 12345678901234,
        "seed": -3,
        "stop": ["\n\n", "</s>"],
        "logprobs": True,
        "top_logprobs": 3,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "stream_options": {"include_usage": False, "continuous_usage_stats": True},
        "chat_template_kwargs": {"enable_thinking": True},
        "x_unknown_field": {"nested": [1, None, "é ✓", {"deep": False}]},
        "metadata": None,
    }
    raw = json.dumps(original, ensure_ascii=False).encode()
    req = parse_chat_request(
        raw, extra=ExtraFields(frozenset({"chat_template_kwargs.enable_thinking"}), frozenset({"x_unknown_field"}))
    )
    sent = msgspec.json.decode(upstream_body(req))
    expected = dict(original, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    assert sent == expected
    assert list(sent) == list(expected)  # field order kept too
    # The client's parsed body is left as it was.
    assert req.body == original
    assert req.stream is False and req.include_usage is False


@pytest.mark.parametrize("options", [_MISSING, None, {}])
def test_upstream_body_adds_stream_options_when_absent(options: Any) -> None:
    req = parse_chat_request(body(stream_options=options))
    sent = msgspec.json.decode(upstream_body(req))
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "m" and sent["messages"] == [USER]


@pytest.mark.parametrize("n", [0, 129, 2**63, -1])
def test_n_is_bounded(n: int) -> None:
    """A huge `n` once made the proxy build that many refusal choices (an OverflowError at
    2**63, found by the fuzz test's author)."""
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(n=n))
    assert info.value.param == "n"
