"""A client that goes away cancels the upstream request and the pending checks."""

from __future__ import annotations

import time

import httpx
import pytest

BENIGN = [{"role": "user", "content": "Tell me about bread."}]
LONG = {"answer": [f" t{i}" for i in range(200)], "delay": 0.02}


def _wait_finished(upstream, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if upstream.calls and upstream.calls[-1].finished_at is not None:
            return upstream.calls[-1]
        time.sleep(0.02)
    raise AssertionError("the upstream request did not end")


def test_streaming_client_disconnect_cancels_the_upstream(make_proxy, upstream, guard):
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"\ncheck_every_tokens = 4')
    body = {"model": "m", "messages": BENIGN, "stream": True, "x_script": LONG}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as r:
            received = 0
            for _ in r.iter_bytes():
                received += 1
                if received >= 5:
                    break
    call = _wait_finished(upstream)
    assert call.disconnected and not call.completed
    assert call.sent_tokens < 150
    checks_after = len(guard.requests)
    time.sleep(0.3)
    assert len(guard.requests) == checks_after  # no check starts after the disconnect


def test_sdk_stream_closed_early_cancels_the_upstream(make_proxy, upstream):
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"')
    stream = proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": LONG})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    call = _wait_finished(upstream)
    assert call.disconnected and not call.completed


def test_non_streaming_client_disconnect_cancels_the_upstream(make_proxy, upstream):
    proxy = make_proxy()
    body = {"model": "m", "messages": BENIGN, "x_script": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
    call = _wait_finished(upstream)
    assert call.disconnected and not call.completed
    assert call.sent_tokens < 150


def test_disconnect_while_the_prompt_check_is_pending(make_proxy, upstream, guard):
    guard.latency = 1.0
    proxy = make_proxy()
    body = {"model": "m", "messages": BENIGN, "stream": True, "x_script": LONG}
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(timeout=httpx.Timeout(10, read=0.3)) as client:
            with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as r:
                r.read()
    call = _wait_finished(upstream)
    assert call.disconnected and not call.completed
