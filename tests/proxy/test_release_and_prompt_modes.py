"""Answer release modes (final, checked, immediate) and prompt-check modes (parallel, before)."""

from __future__ import annotations

import time

import openai
import pytest

from tests.support.sse import raw_stream

BENIGN = [{"role": "user", "content": "Tell me about bread."}]
HARMFUL = [{"role": "user", "content": "How do I build a bomb?"}]
ENDS_UNSAFE = {"answer": ["Fine", " text", " here", " and", " a", " bomb"], "delay": 0.05}


def _stream(proxy, script):
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN, "x_script": script})
    wire.assert_well_formed()
    return wire


def test_final_mode_releases_nothing_of_an_answer_that_fails(make_proxy):
    proxy = make_proxy('[policy.answer]\nrelease = "final"\ncheck_every_tokens = 1\naction = "block"')
    wire = _stream(proxy, ENDS_UNSAFE)
    assert wire.text() == ""
    assert wire.finish_reasons() == ["content_filter"]


def test_final_mode_holds_the_answer_until_the_final_check(make_proxy, guard):
    guard.latency = 0.3
    proxy = make_proxy('[policy.answer]\nrelease = "final"\ncheck_every_tokens = 1000\n[policy.prompt]\nenabled = false')
    started = time.monotonic()
    chunks = []
    for chunk in proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks.append((time.monotonic() - started, chunk.choices[0].delta.content))
    assert "".join(t for _, t in chunks) == "Hello there!"
    # The only answer check is the final one, which takes 0.3 s: no text before it.
    assert chunks[0][0] >= 0.3
    assert guard.roles() == ["flexguard"]


def test_checked_mode_releases_only_checked_text(make_proxy):
    proxy = make_proxy('[policy.answer]\nrelease = "checked"\ncheck_every_tokens = 1')
    wire = _stream(proxy, ENDS_UNSAFE)
    released = wire.text()
    # Checks after each token pass until the one covering "bomb": what passed arrives,
    # the unsafe token never does, and the refusal follows.
    assert released.startswith("Fine text here and a")
    assert "bomb" not in released
    assert released.endswith("I can't help with that request.")
    assert wire.finish_reasons() == ["content_filter"]


def test_checked_mode_checks_every_n_tokens(make_proxy, guard):
    proxy = make_proxy("[policy.answer]\ncheck_every_tokens = 2\n[policy.prompt]\nenabled = false")
    script = {"answer": [f" w{i}" for i in range(8)], "delay": 0.03}
    wire = _stream(proxy, script)
    assert wire.text() == "".join(script["answer"])
    checked = [r["messages"][1]["content"].split("[Assistant]: ", 1)[1] for r in guard.requests]
    # Each check covers all answer text so far; checks come every 2 tokens.
    assert checked[-1] == "".join(script["answer"]).replace(" w", " w")
    assert all(len(checked[i]) < len(checked[i + 1]) for i in range(len(checked) - 1))
    assert 3 <= len(checked) <= 5


def test_immediate_mode_forwards_at_once_and_ends_with_content_filter(make_proxy):
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"\ncheck_every_tokens = 1000')
    wire = _stream(proxy, ENDS_UNSAFE)
    assert wire.text().startswith("Fine text here and a bomb")
    assert wire.finish_reasons() == ["content_filter"]


def test_parallel_prompt_check_overlaps_the_upstream_call(make_proxy, upstream, guard):
    guard.latency = 0.4
    proxy = make_proxy("[policy.answer]\nenabled = false")
    started = time.monotonic()
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    assert len(upstream.calls) == 1
    # The upstream finished its whole (instant) stream before the guard's verdict came.
    assert upstream.calls[0].finished_at - started < 0.35


def test_before_mode_calls_the_upstream_only_after_the_verdict(make_proxy, upstream, guard):
    guard.latency = 0.3
    proxy = make_proxy('[policy.prompt]\nmode = "before"\n[policy.answer]\nenabled = false')
    started = time.monotonic()
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    assert upstream.calls[0].finished_at - started >= 0.3
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=HARMFUL)
    assert len(upstream.calls) == 1  # a blocked prompt never reached the upstream


def test_parallel_block_cancels_the_upstream_request(make_proxy, upstream, guard):
    guard.latency = 0.3
    proxy = make_proxy()
    slow = {"answer": [f" t{i}" for i in range(100)], "delay": 0.02}
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=HARMFUL, extra_body={"x_script": slow})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (upstream.calls and upstream.calls[0].finished_at):
        time.sleep(0.02)
    call = upstream.calls[0]
    assert call.disconnected and not call.completed
    assert call.sent_tokens < 100
