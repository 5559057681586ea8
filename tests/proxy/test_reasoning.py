"""Reasoning screening with ReasoningShield: early abort, release modes, the three formats."""

from __future__ import annotations

import time

import pytest

from tests.support.sse import raw_stream

BENIGN = [{"role": "user", "content": "How do plants grow?"}]
FORMATS = ["reasoning", "reasoning_content", "think"]
UNSAFE_AT = 40
TOTAL = 120
UNSAFE_TRACE = [f" s{i}" for i in range(UNSAFE_AT)] + [" UNSAFE"] + [f" u{i}" for i in range(TOTAL - UNSAFE_AT - 1)]
BENIGN_TRACE = [f" step{i}" for i in range(30)]


def _script(fmt: str, trace: list[str], delay: float = 0.0, answer: list[str] | None = None) -> dict:
    return {"format": fmt, "reasoning": trace, "answer": answer or ["Plants", " use", " light", "."], "delay": delay}


def _reasoning_seen(wire, fmt: str) -> str:
    if fmt == "think":
        content = wire.text("content")
        return content.split("<think>", 1)[1].split("</think>", 1)[0] if "<think>" in content else ""
    return wire.text(fmt)


def _wait_finished(upstream, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and upstream.calls[-1].finished_at is None:
        time.sleep(0.02)
    return upstream.calls[-1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsafe_reasoning_aborts_the_upstream_early(make_proxy, upstream, fmt):
    proxy = make_proxy('[policy.reasoning]\ncheck_every_tokens = 8\n[policy]\nrefusal_message = "Stopped."')
    chunks = list(
        proxy.client.chat.completions.create(
            model="m", messages=BENIGN, stream=True, extra_body={"x_script": _script(fmt, UNSAFE_TRACE, delay=0.01)}
        )
    )
    # The OpenAI SDK parsed the stream to its end: a refusal and a content_filter finish.
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["content_filter"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.endswith("Stopped.")
    seen = (
        "".join(
            (getattr(c.choices[0].delta, "reasoning", None) or getattr(c.choices[0].delta, "reasoning_content", None) or "")
            for c in chunks
            if c.choices
        )
        + content
    )
    assert "UNSAFE" not in seen  # "checked" release: flagged reasoning never reaches the client
    summary = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
    assert summary["action"] == "rewrite" and summary["flagged"] is True and summary["risk_score"] == 100
    assert UNSAFE_AT < summary["flagged_check_tokens"] <= summary["aborted_at_token"] < TOTAL
    # The upstream saw the disconnect well before the end of the trace.
    call = _wait_finished(upstream)
    assert call.disconnected and not call.completed
    assert call.sent_tokens < TOTAL


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsafe_reasoning_non_streaming_is_a_content_filter_completion(make_proxy, upstream, fmt):
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 8")
    completion = proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script(fmt, UNSAFE_TRACE, delay=0.005)}
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.content.endswith("I can't help with that request.")
    assert "UNSAFE" not in (choice.message.content or "")
    assert choice.model_extra["content_filter_results"]["harmful_reasoning"]["filtered"] is True
    assert _wait_finished(upstream).sent_tokens < TOTAL


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("release", ["immediate", "checked"])
def test_benign_reasoning_passes_unchanged_in_order(make_proxy, fmt, release):
    proxy = make_proxy(f'[policy.reasoning]\nrelease = "{release}"\ncheck_every_tokens = 4')
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN, "x_script": _script(fmt, BENIGN_TRACE, delay=0.002)})
    wire.assert_well_formed()
    assert _reasoning_seen(wire, fmt) == "".join(BENIGN_TRACE)
    answer = wire.text("content").split("</think>")[-1]
    assert answer == "Plants use light."
    assert wire.finish_reasons() == ["stop"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_hidden_reasoning_never_reaches_the_client(make_proxy, fmt):
    proxy = make_proxy('[policy.reasoning]\nrelease = "hidden"\ncheck_every_tokens = 4')
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN, "x_script": _script(fmt, BENIGN_TRACE)})
    wire.assert_well_formed()
    for chunk in wire.chunks:
        for choice in chunk.get("choices", []):
            assert "reasoning" not in choice.get("delta", {}) and "reasoning_content" not in choice.get("delta", {})
    assert wire.text("content") == "Plants use light."
    completion = proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script(fmt, BENIGN_TRACE)}
    )
    assert completion.choices[0].message.content == "Plants use light."
    assert "reasoning" not in (completion.choices[0].message.model_extra or {})


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_streaming_keeps_the_reasoning(make_proxy, fmt):
    proxy = make_proxy()
    completion = proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script(fmt, BENIGN_TRACE)}
    )
    message = completion.choices[0].message
    if fmt == "think":
        assert message.content == "<think>" + "".join(BENIGN_TRACE) + "</think>Plants use light."
    else:
        assert message.model_extra[fmt] == "".join(BENIGN_TRACE)
        assert message.content == "Plants use light."


def test_think_tags_split_across_chunks(make_proxy, guard):
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 2")
    script = {
        "format": "content",
        "reasoning": [],
        "answer": ["  <th", "ink>", "a b", " UNS", "AFE c", "</thi", "nk>\n", "Done."],
    }
    # "format": "content" with no reasoning: the scripted server sends the answer tokens as is.
    completion = proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": script})
    assert completion.choices[0].finish_reason == "content_filter"
    thoughts = [r["messages"][1]["content"] for r in guard.requests if "Risk Auditor" in r["messages"][0]["content"]]
    assert thoughts and "UNS" in thoughts[-1] and "<think>" not in thoughts[-1] and "Done" not in thoughts[-1]


def test_successive_reasoning_checks_extend_each_other(make_proxy, guard):
    proxy = make_proxy(
        "[policy.reasoning]\ncheck_every_tokens = 5\n[policy.prompt]\nenabled = false\n[policy.answer]\nenabled = false"
    )
    trace = [f" thought{i}" for i in range(40)]
    proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script("reasoning", trace, delay=0.003)}
    )
    prompts = [r["messages"] for r in guard.requests]
    assert len(prompts) >= 3
    for earlier, later in zip(prompts, prompts[1:], strict=False):
        assert earlier[0] == later[0]  # the same system prompt
        assert later[1]["content"].startswith(earlier[1]["content"])
        assert len(later[1]["content"]) > len(earlier[1]["content"])
    assert prompts[-1][1]["content"] == "Query: How do plants grow?\nThought: " + "".join(trace)


def test_at_most_one_reasoning_check_in_flight(make_proxy, guard):
    guard.latency = 0.1
    proxy = make_proxy(
        "[policy.reasoning]\ncheck_every_tokens = 1\n[policy.prompt]\nenabled = false\n[policy.answer]\nenabled = false"
    )
    trace = [f" t{i}" for i in range(60)]
    proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script("reasoning", trace, delay=0.005)}
    )
    assert guard.max_in_flight == 1
    # A slow guard makes the checks sparser, not queued: far fewer checks than tokens.
    assert 2 <= len(guard.requests) < 20


@pytest.mark.parametrize(
    ("policy", "flagged"),
    [
        # The authors count 0.5 as harmful: strict and moderate flag it, loose does not.
        ('strictness = "strict"', True),
        ('strictness = "moderate"', True),
        ('strictness = "loose"', False),
        # A number is FlexGuard's threshold: ReasoningShield stays at 0.5, wherever it is.
        ("strictness = 10", True),
        ("strictness = 90", True),
        # Its own setting decides, whatever the strictness.
        ('strictness = "strict"\n[policy.reasoning]\nflag_at = 1', False),
        ('strictness = "loose"\n[policy.reasoning]\nflag_at = 0.5', True),
    ],
)
def test_potentially_harmful_reasoning_by_strictness(make_proxy, policy, flagged):
    # The scripted ReasoningShield judges "MAYBE" 0.5 (risk 50).
    config = f"[policy]\n{policy}\n"
    config += "check_every_tokens = 1" if "[policy.reasoning]" in policy else "[policy.reasoning]\ncheck_every_tokens = 1"
    proxy = make_proxy(config)
    completion = proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script("reasoning", [" a", " MAYBE", " b"])}
    )
    assert completion.choices[0].finish_reason == ("content_filter" if flagged else "stop")
    summary = completion.choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
    assert summary["risk_score"] == 50 and summary["flagged"] is flagged


def test_reasoningshield_can_screen_the_answer_too(make_proxy, guard):
    proxy = make_proxy("[policy.reasoning]\nscreen_answer = true")
    completion = proxy.client.chat.completions.create(
        model="m", messages=BENIGN, extra_body={"x_script": _script("reasoning", BENIGN_TRACE, answer=["It", " is", " UNSAFE"])}
    )
    assert completion.choices[0].finish_reason == "content_filter"
    answer = completion.choices[0].model_extra["content_filter_results"]["guardproxy"]["answer"]
    assert answer["guards"] == ["flexguard", "reasoningshield"] and answer["risk_score"] == 100
