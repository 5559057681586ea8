"""The scripted upstream's side of steering (tests/support/scripted.py): its toy /tokenize,
and the continuations it streams from a prefilled reasoning on /v1/completions and on
chat with continue_final_message."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.scripted import ScriptedUpstream, chatml
from tests.support.serving import ServerThread

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "How do plants "}, {"type": "text", "text": "make food?"}]},
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
CONTINUE = [
    {"reasoning": [" fine", " then"], "answer": ["Sun", "light."]},
    {"reasoning": [" second"], "answer": ["Two."], "tool_calls": [{"name": "lookup", "arguments": '{"q": "leaf"}'}]},
]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ScriptedUpstream, str]]:
    app = ScriptedUpstream()
    with ServerThread(app) as server:
        yield app, server.url


@pytest.fixture
def app(served: tuple[ScriptedUpstream, str]) -> ScriptedUpstream:
    served[0].calls.clear()
    return served[0]


@pytest.fixture
def url(served: tuple[ScriptedUpstream, str]) -> str:
    return served[1]


def _events(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _tokenize(url: str, body: dict[str, Any]) -> list[int]:
    r = httpx.post(f"{url}/tokenize", json=body)
    assert r.status_code == 200
    doc = r.json()
    assert doc["count"] == len(doc["tokens"]) and doc["max_model_len"] == 32768
    tokens: list[int] = doc["tokens"]
    return tokens


def test_tokenize_round_trips_messages_and_prompts(app: ScriptedUpstream, url: str) -> None:
    ids = _tokenize(url, {"model": "m", "messages": MESSAGES, "tools": TOOLS, "add_generation_prompt": True})
    text = "".join(map(chr, ids))
    assert text == chatml(MESSAGES, tools=TOOLS)
    assert text.startswith("<|im_start|>tools\n[{")
    assert text.endswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow do plants make food?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _tokenize(url, {"model": "m", "prompt": "<think>Wait", "add_special_tokens": False}) == [ord(c) for c in "<think>Wait"]
    assert [c.path for c in app.calls] == ["/tokenize", "/tokenize"]
    assert app.calls[0].prompt_text == text and app.calls[1].prompt_text == "<think>Wait"
    assert httpx.post(f"{url}/tokenize", json={"model": "m"}).status_code == 400
    assert httpx.post(f"{url}/v1/tokenize", json={"model": "m", "prompt": "x"}).status_code == 404


def test_a_completions_continuation_closes_the_reasoning_then_answers_with_usage(app: ScriptedUpstream, url: str) -> None:
    prefix = "<think>Plants use light. Wait, stay on topic."
    ids = _tokenize(url, {"model": "m", "messages": MESSAGES, "add_generation_prompt": True})
    ids += _tokenize(url, {"model": "m", "prompt": prefix, "add_special_tokens": False})
    body = {
        "model": "m",
        "prompt": ids,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "x_script": {"reasoning": ["never", "sent"], "continue": CONTINUE},
    }
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 200
    events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert [c["choices"][0]["text"] for c in chunks] == [" fine", " then", "</think>", "\n\n", "Sun", "light."]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["stop"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert events[-2]["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}
    call = app.calls[-1]
    assert call.path == "/v1/completions" and call.continue_index == 0 and call.completed
    assert call.prompt_text == chatml(MESSAGES) + prefix


def test_the_number_of_waits_picks_the_entry_and_tool_calls_come_as_hermes_text(app: ScriptedUpstream, url: str) -> None:
    base = {"model": "m", "stream": True, "x_script": {"continue": CONTINUE}}
    prompt = "Q: Wait, leaves?\n<think>one. Wait, two. Wait, three. Wait, four."  # a legacy client's prompt + prefix
    r = httpx.post(f"{url}/v1/completions", json=dict(base, prompt=prompt))
    texts = [e["choices"][0]["text"] for e in _events(r)[:-1]]
    assert texts[:4] == [" second", "</think>", "\n\n", "Two."]
    tool_text = "".join(texts[4:])
    assert tool_text.startswith("<tool_call>\n") and tool_text.endswith("\n</tool_call>")
    assert json.loads(tool_text.split("\n")[1]) == {"name": "lookup", "arguments": {"q": "leaf"}}
    assert app.calls[-1].continue_index == 1  # three "Wait"s: clamped to the last entry
    assert not any("usage" in e for e in _events(r)[:-1])  # not asked for

    r = httpx.post(f"{url}/v1/completions", json=dict(base, prompt="<think>no steering word"))
    assert _events(r)[0]["choices"][0]["text"] == " fine" and app.calls[-1].continue_index == 0
    # Without "<think>" a legacy prompt is an ordinary request, answered from the top level.
    r = httpx.post(f"{url}/v1/completions", json=dict(base, prompt="Q: leaves?"))
    assert "".join(e["choices"][0]["text"] for e in _events(r)[:-1] if e["choices"]) == "Hello there!"
    assert app.calls[-1].continue_index is None and app.calls[-1].prompt_text == "Q: leaves?"


def test_errors_inside_a_continue_entry_apply_to_the_continuation_only(app: ScriptedUpstream, url: str) -> None:
    body = {"model": "m", "stream": True, "prompt": [ord(c) for c in "<think>Wait"]}
    r = httpx.post(f"{url}/v1/completions", json=dict(body, x_script={"continue": {"status": 500}}))
    assert r.status_code == 500
    r = httpx.post(
        f"{url}/v1/completions", json=dict(body, x_script={"continue": {"reasoning": ["a", "b", "c"], "truncate_after": 2}})
    )
    assert r.status_code == 200 and r.text.count("data: ") == 2 and "[DONE]" not in r.text
    assert app.calls[-1].sent_tokens == 2


def test_a_client_that_leaves_stops_the_continuation(app: ScriptedUpstream, url: str) -> None:
    script = {"delay": 0.05, "continue": {"reasoning": ["r"] * 200}}
    body = {"model": "m", "stream": True, "prompt": [ord(c) for c in "<think>Wait"], "x_script": script}
    with httpx.Client() as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
        for _ in r.iter_raw():
            break
    deadline = time.monotonic() + 5
    while app.calls[-1].finished_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    call = app.calls[-1]
    assert call.disconnected and not call.completed and call.sent_tokens < 50


def test_chat_continues_the_final_assistant_message(app: ScriptedUpstream, url: str) -> None:
    prefix = "<think>Light. Wait, rethink. Wait, again."
    messages = [*MESSAGES, {"role": "assistant", "content": prefix}]
    body = {
        "model": "m",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "continue_final_message": True,
        "add_generation_prompt": False,
        "x_script": {"format": "reasoning_content", "continue": CONTINUE},
    }
    events = _events(httpx.post(f"{url}/v1/chat/completions", json=body))
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    assert [d.get("reasoning_content") for d in deltas if "reasoning_content" in d] == [" second"]
    assert "".join(d.get("content") or "" for d in deltas) == "Two."
    tool = deltas[-2]["tool_calls"][0]
    assert tool["index"] == 0 and tool["function"]["arguments"] == '{"q": "leaf"}'
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
    call = app.calls[-1]
    assert call.continue_index == 1
    assert call.prompt_text == chatml(MESSAGES, add_generation_prompt=False) + "<|im_start|>assistant\n" + prefix
    assert events[-2]["usage"]["prompt_tokens"] == len(call.prompt_text)

    body["messages"] = [*MESSAGES, {"role": "assistant", "content": "<think>Light"}]
    body["x_script"] = {"format": "think", "continue": CONTINUE}
    events = _events(httpx.post(f"{url}/v1/chat/completions", json=body))
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert content == " fine then</think>Sunlight." and app.calls[-1].continue_index == 0
