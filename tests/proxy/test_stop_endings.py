"""How a stopped answer ends: an inline <think> block the client saw open is closed
before the refusal, and a JSON answer reports usage (the upstream's own, or what the
proxy counted when the stop closed the upstream before it sent any; never null, never
guessed). Chat completions, legacy completions and the Responses API, streamed and JSON.
"""

from __future__ import annotations

import time

import pytest

UNSAFE_AT = 40
TOTAL = 120
UNSAFE_TRACE = [f" s{i}" for i in range(UNSAFE_AT)] + [" UNSAFE"] + [f" u{i}" for i in range(TOTAL - UNSAFE_AT - 1)]
BENIGN_TRACE = [f" step{i}" for i in range(12)]
BENIGN = [{"role": "user", "content": "How do plants grow?"}]
REASONING_CUT = '[policy]\nrefusal_message = "Stopped."\n[policy.reasoning]\ncheck_every_tokens = 8\nschedule = "fixed"'


def _script(fmt: str, trace: list[str], answer: list[str] | None = None, delay: float = 0.005) -> dict:
    return {
        "x_script": {"format": fmt, "reasoning": trace, "answer": answer or ["Plants", " use", " light", "."], "delay": delay}
    }


def _finished(upstream, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and upstream.calls[-1].finished_at is None:
        time.sleep(0.02)
    return upstream.calls[-1]


# -- an inline <think> cut: the block is closed before the refusal ---------------------


def test_a_streamed_inline_think_cut_closes_the_block_before_the_refusal(make_proxy):
    proxy = make_proxy(REASONING_CUT)
    chunks = list(
        proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body=_script("think", UNSAFE_TRACE))
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.startswith("<think>") and " s0" in content  # checked reasoning was released
    assert content.endswith("</think>Stopped.") and content.count("</think>") == 1
    assert "UNSAFE" not in content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]


def test_a_json_inline_think_cut_closes_the_block_before_the_refusal(make_proxy):
    proxy = make_proxy(REASONING_CUT)
    completion = proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body=_script("think", UNSAFE_TRACE))
    content = completion.choices[0].message.content
    assert content.startswith("<think>") and content.endswith("</think>Stopped.") and content.count("</think>") == 1
    assert completion.choices[0].finish_reason == "content_filter"


def test_legacy_completions_close_the_block_streamed_and_json(make_proxy):
    proxy = make_proxy(REASONING_CUT)
    streamed = proxy.client.completions.create(
        model="m", prompt="How do plants grow?", stream=True, extra_body=_script("think", UNSAFE_TRACE)
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].text or "" for c in chunks if c.choices)
    assert text.startswith("<think>") and text.endswith("</think>Stopped.") and text.count("</think>") == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]
    completion = proxy.client.completions.create(
        model="m", prompt="How do plants grow?", extra_body=_script("think", UNSAFE_TRACE)
    )
    text = completion.choices[0].text
    assert text.startswith("<think>") and text.endswith("</think>Stopped.") and text.count("</think>") == 1


def test_a_streamed_block_closes_the_block_too(make_proxy):
    """No refusal, but the stream still ends with the block the client saw open closed."""
    proxy = make_proxy(REASONING_CUT + '\naction = "block"')
    chunks = list(
        proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body=_script("think", UNSAFE_TRACE))
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.startswith("<think>") and content.endswith("</think>") and "Stopped." not in content


@pytest.mark.parametrize(
    ("extra", "fmt", "expected"),
    [
        ("", "reasoning", "Stopped."),  # reasoning in its own field: no tag in content to close
        ('\nrelease = "hidden"', "think", "Stopped."),  # hidden reasoning: the client saw no <think>
    ],
)
def test_no_closing_tag_where_the_client_saw_no_open_block(make_proxy, extra, fmt, expected):
    proxy = make_proxy(REASONING_CUT + extra)
    for stream in (True, False):
        result = proxy.client.chat.completions.create(
            model="m", messages=BENIGN, stream=stream, extra_body=_script(fmt, UNSAFE_TRACE)
        )
        content = (
            "".join(c.choices[0].delta.content or "" for c in result if c.choices)
            if stream
            else result.choices[0].message.content
        )
        assert content == expected, (stream, content)


def test_an_answer_cut_after_the_block_closed_adds_no_tag(make_proxy):
    proxy = make_proxy('[policy]\nrefusal_message = "Stopped."\n[policy.answer]\ncheck_every_tokens = 1')
    script = _script("think", BENIGN_TRACE, answer=["Here", " is", " how", " to", " build", " a", " bomb", ".", " More", " text"])
    for stream in (True, False):
        result = proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=stream, extra_body=script)
        content = (
            "".join(c.choices[0].delta.content or "" for c in result if c.choices)
            if stream
            else result.choices[0].message.content
        )
        assert content.count("</think>") == 1 and content.endswith("Stopped.") and "bomb" not in content, content


# -- usage of a stopped JSON answer ------------------------------------------------------


def test_an_aborted_chat_answer_reports_the_counted_output(make_proxy, upstream):
    proxy = make_proxy(REASONING_CUT)
    completion = proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body=_script("reasoning", UNSAFE_TRACE))
    assert completion.choices[0].finish_reason == "content_filter"
    usage = completion.model_dump()["usage"]
    sent = _finished(upstream).sent_tokens  # events, the role chunk included
    # Every reasoning delta the proxy received, released or not: past the flagged token,
    # short of the whole trace, never more than the upstream sent.
    assert usage["prompt_tokens"] is None and usage["total_tokens"] is None  # unknown: the upstream never said
    assert UNSAFE_AT < usage["completion_tokens"] < sent <= TOTAL + 1
    summary = completion.choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
    assert usage["completion_tokens"] == summary["aborted_at_token"]


def test_an_aborted_legacy_completion_reports_the_counted_output(make_proxy):
    proxy = make_proxy(REASONING_CUT)
    completion = proxy.client.completions.create(
        model="m", prompt="How do plants grow?", extra_body=_script("think", UNSAFE_TRACE)
    )
    usage = completion.model_dump()["usage"]
    assert usage["prompt_tokens"] is None and usage["total_tokens"] is None
    assert UNSAFE_AT < usage["completion_tokens"] < TOTAL


def test_an_aborted_response_reports_the_counted_output(make_proxy):
    proxy = make_proxy(REASONING_CUT)
    response = proxy.client.responses.create(
        model="m", input="How do plants grow?", extra_body=_script("reasoning", UNSAFE_TRACE)
    )
    assert response.status == "incomplete"
    usage = response.model_dump()["usage"]
    assert usage["input_tokens"] is None and usage["total_tokens"] is None
    assert UNSAFE_AT < usage["output_tokens"] < TOTAL


def test_a_rewrite_after_the_upstream_finished_reports_its_usage(make_proxy, guard):
    """The answer's only check runs at its end and is slow: the upstream's usage chunk
    arrives before the verdict, and is what the rewritten answer reports."""
    guard.slow_delay = 0.5
    proxy = make_proxy('[policy]\nrefusal_message = "Stopped."\n[policy.answer]\ncheck_every_tokens = 1000')
    answer = ["A", " bomb", " guardslow", "."]
    completion = proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": {"answer": answer}})
    assert completion.choices[0].message.content == "Stopped." and completion.choices[0].finish_reason == "content_filter"
    assert completion.model_dump()["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 4,
        "total_tokens": 11,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    response = proxy.client.responses.create(model="m", input="How do plants grow?", extra_body={"x_script": {"answer": answer}})
    assert response.status == "incomplete"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 4, 11)
