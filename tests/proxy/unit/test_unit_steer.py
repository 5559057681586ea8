"""Steering's pure parts: the raw-text reader, the continuation body, the decision to steer."""

from __future__ import annotations

import json

import pytest

from guards import Verdict
from proxy._config import PolicyConfig, parse_config
from proxy.pipeline._policy import decide, steer_or_fallback
from proxy.pipeline._steer import RawTextReader, _opens_reasoning, continuation_body
from proxy.protocols._continued import ChatContinued, CompletionsContinued, Piece
from proxy.protocols._ids import ResponseIds


def _chunk(text: str, finish: str | None = None) -> bytes:
    return json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]}).encode()


def _read(reader: RawTextReader, *texts: str, finish: str = "stop") -> list[Piece]:
    pieces = []
    for i, text in enumerate(texts):
        pieces += reader.read(_chunk(text, finish if i == len(texts) - 1 else None))
    return pieces


def test_the_reasoning_ends_at_a_close_tag_split_across_chunks():
    pieces = _read(RawTextReader((0, 0), tools=False), " so I", " will</th", "ink>\n\nHello", " there")
    assert "".join(p.reasoning for p in pieces) == " so I will"
    assert "".join(p.content for p in pieces) == "\n\nHello there"
    assert pieces[-1].finish == "stop"


def test_a_partial_tag_at_the_end_is_text():
    pieces = _read(RawTextReader((0, 0), tools=False), " thinking </thi")
    assert "".join(p.reasoning for p in pieces) == " thinking </thi"


def test_hermes_tool_calls_are_parsed_where_tools_were_offered():
    reader = RawTextReader((0, 0), tools=True)
    pieces = _read(
        reader, " ok</think>", "\n\nLet me look.", "<tool_call>\n", '{"name": "lookup", "arguments": {"q": 1}}', "\n</tool_call>"
    )
    calls = [c for p in pieces for c in p.tool_calls]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("lookup", {"q": 1})]
    assert "".join(p.content for p in pieces) == "\n\nLet me look."
    assert pieces[-1].finish == "tool_calls"
    # Without tools the same text is the answer's.
    plain = _read(RawTextReader((0, 0), tools=False), " ok</think>", "<tool_call>{}</tool_call>")
    assert "".join(p.content for p in plain) == "<tool_call>{}</tool_call>"


def test_a_broken_tool_call_stays_text():
    pieces = _read(RawTextReader((0, 0), tools=True), "</think>", "<tool_call>not json</tool_call>")
    assert "".join(p.content for p in pieces) == "<tool_call>not json</tool_call>" and pieces[-1].finish == "stop"


def test_usage_adds_what_the_abandoned_generations_cost():
    reader = RawTextReader((100, 7), tools=False)
    (piece,) = reader.read(json.dumps({"choices": [], "usage": {"prompt_tokens": 130, "completion_tokens": 20}}).encode())
    assert piece.usage == {"prompt_tokens": 230, "completion_tokens": 27, "total_tokens": 257}


def test_the_continuation_body_keeps_sampling_and_extras_and_drops_chat_fields():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [],
        "temperature": 0.3,
        "seed": 7,
        "stop": ["x"],
        "x_script": {"a": 1},
        "max_completion_tokens": 100,
        "stream_options": {"include_usage": False},
        "n": 1,
        "logprobs": True,
    }
    out = continuation_body(body, [1, 2, 3], 40)
    assert out == {
        "model": "m",
        "temperature": 0.3,
        "seed": 7,
        "stop": ["x"],
        "x_script": {"a": 1},
        "prompt": [1, 2, 3],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 40,
    }
    assert continuation_body(body, "p", -5)["max_tokens"] == 1  # a spent budget still asks for one token


def test_a_template_that_opens_the_reasoning_block_is_detected():
    assert _opens_reasoning([5, 6, 9], [9]) and _opens_reasoning([5, 9, 10], [9]) and not _opens_reasoning([9, 5, 6], [9])


def test_steer_stands_until_max_steers_or_a_reason_it_cannot():
    policy = parse_config('[policy.reasoning]\naction = "steer"\nmax_steers = 2\nsteer_fallback = "block"\n').policy
    flagged = decide("reasoning", (Verdict(guard="reasoningshield", stage="reasoning", risk_score=100),), policy)
    assert flagged.action == "steer" and not flagged.stops
    assert steer_or_fallback(flagged, 1, policy, None) == (flagged, None)
    fallback, why = steer_or_fallback(flagged, 2, policy, None)
    assert fallback.action == "block" and fallback.stops and why == "max_steers (2) reached"
    fallback, why = steer_or_fallback(flagged, 0, policy, "the upstream cannot")
    assert fallback.action == "block" and why == "the upstream cannot"
    passed = decide("reasoning", (Verdict(guard="reasoningshield", stage="reasoning", risk_score=0),), policy)
    assert steer_or_fallback(passed, 5, policy, "x") == (passed, None)


def test_shadow_mode_reports_a_steer_it_would_have_made():
    policy = parse_config('[policy]\nenforce = false\n[policy.reasoning]\naction = "steer"\n').policy
    d = decide("reasoning", (Verdict(guard="reasoningshield", stage="reasoning", risk_score=100),), policy)
    assert d.action == "flag" and d.would == "steer"


@pytest.mark.parametrize("release", ["checked", "hidden"])
def test_steer_loads_with_checked_or_hidden_release(release):
    config = parse_config(f'[policy.reasoning]\naction = "steer"\nrelease = "{release}"\n')
    assert config.policy.reasoning.action == "steer" and config.upstream.continuation == "completions"
    assert PolicyConfig().reasoning.max_steers == 2 and PolicyConfig().reasoning.show_steer_text


def test_the_writers_follow_the_upstream_format():
    ids = ResponseIds("m", "chatcmpl-1", 5)
    inline = ChatContinued(ids, 0, inline=True)
    assert json.loads(inline.events(Piece(reasoning=" a"))[0])["choices"][0]["delta"] == {"content": " a"}
    assert json.loads(inline.events(Piece(content="Hi"))[0])["choices"][0]["delta"] == {"content": "</think>Hi"}
    field = ChatContinued(ids, 0, inline=False, reasoning_field="reasoning_content")
    chunk = json.loads(field.events(Piece(reasoning=" a", content="b"))[0])
    assert chunk["id"] == "chatcmpl-1" and chunk["choices"][0]["delta"] == {"reasoning_content": " a", "content": "b"}
    text = CompletionsContinued(ids, 0)
    assert json.loads(text.events(Piece(reasoning=" a"))[0])["choices"][0]["text"] == " a"
    assert json.loads(text.events(Piece(content="x", finish="stop"))[0])["choices"][0] == {
        "index": 0,
        "text": "</think>x",
        "logprobs": None,
        "finish_reason": "stop",
    }
