"""Legacy completions (POST /v1/completions) through the OpenAI SDK: every stage guarded."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.ops._helpers import UNSAFE_TRACE, eventually
from tests.support.scripted import ScriptedUpstream

REFUSAL = "I can't help with that request."


def _wire(url: str, body: dict) -> list[str]:
    with httpx.Client(timeout=30) as client:
        raw = client.post(f"{url}/v1/completions", json=dict(body, stream=True)).content.decode()
    return [block[6:] for block in raw.split("\n\n") if block.startswith("data: ")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_benign_completion_passes(make_proxy, upstream: ScriptedUpstream, guard, stream):
    proxy = make_proxy()
    result = proxy.client.completions.create(model="m", prompt="Tell me about bread.", stream=stream)
    if stream:
        chunks = list(result)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"]
        assert (
            chunks[0].model_extra["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]["action"]
            == "pass"
        )
        assert {c.id for c in chunks} == {"cmpl-scripted"}
    else:
        text = result.choices[0].text
        assert result.choices[0].finish_reason == "stop" and result.object == "text_completion"
        assert result.usage is not None and result.usage.total_tokens > 0
        assert result.model_extra["guardproxy"]["prompt"]["action"] == "pass"
    assert text == "Hello there!"
    assert upstream.calls[-1].path == "/v1/completions" and upstream.calls[-1].body["stream"] is True
    assert [r for r in guard.roles()] == ["flexguard", "flexguard"]  # prompt, then the answer


@pytest.mark.parametrize("prompt", ["how to build a bomb", ["hello", "how to build a bomb"]])
def test_a_harmful_prompt_is_blocked(make_proxy, upstream, prompt):
    proxy = make_proxy('[policy.prompt]\nmode = "before"')
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            result = proxy.client.completions.create(model="m", prompt=prompt, stream=stream)
            list(result) if stream else None
        assert info.value.code == "content_policy_violation"
    assert upstream.calls == []


def test_token_prompts_are_refused(make_proxy, upstream):
    proxy = make_proxy()
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client.completions.create(model="m", prompt=[1, 2, 3])
    assert info.value.param == "prompt" and "token ids" in info.value.message
    assert upstream.calls == []


def test_an_unsafe_answer_is_rewritten(make_proxy):
    proxy = make_proxy()
    script = {"answer": ["Here", " is", " how", " to", " build", " a", " bomb", "."]}
    completion = proxy.client.completions.create(model="m", prompt="hi", extra_body={"x_script": script})
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].text == REFUSAL
    assert completion.choices[0].model_extra["content_filter_results"]["guardproxy"]["answer"]["action"] == "rewrite"
    events = _wire(proxy.url, {"model": "m", "prompt": "hi", "x_script": script})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["text"] for c in chunks for ch in c["choices"])
    assert "bomb" not in text and text.endswith(REFUSAL)
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["content_filter"]


def test_unsafe_inline_reasoning_aborts_the_upstream(make_proxy, upstream):
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 4")
    script = {"reasoning": UNSAFE_TRACE, "delay": 0.01}
    chunks = list(proxy.client.completions.create(model="m", prompt="hi", stream=True, extra_body={"x_script": script}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert "UNSAFE" not in text
    call = upstream.calls[-1]
    assert eventually(lambda: call.finished_at is not None, timeout=5)
    assert call.disconnected and not call.completed


def test_every_prompt_and_choice(make_proxy, guard):
    proxy = make_proxy()
    completion = proxy.client.completions.create(model="m", prompt=["one", "two"], n=2)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert all(c.text == "Hello there!" and c.finish_reason == "stop" for c in completion.choices)
    answers = [r["messages"][1]["content"] for r in guard.requests[1:]]
    assert sum("[User]: one\n" in a for a in answers) == 2 and sum("[User]: two\n" in a for a in answers) == 2


def test_a_truncated_completion_stream_is_an_error(make_proxy):
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"')
    events = _wire(proxy.url, {"model": "m", "prompt": "hi", "x_script": {"truncate_after": 2}})
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_truncated"
