"""Texts longer than the guard's context, through the proxy: a guard server that refuses
over-long prompts (as vLLM does, HTTP 400) still screens them all, in windows."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from proxy import create_app, parse_config
from proxy.ops._http11 import http_protocol
from tests.conftest import Proxy, config_toml
from tests.support.scripted import GuardServer
from tests.support.serving import ServerThread
from tests.support.sse import raw_stream

CONTEXT = 6000  # the scripted guard's tokens: UTF-8 bytes


@pytest.fixture
def small_guard_thread() -> Iterator[tuple[GuardServer, ServerThread]]:
    server = GuardServer(max_model_len=CONTEXT)
    with ServerThread(server) as thread:
        yield server, thread


@pytest.fixture
def small_guard(small_guard_thread: tuple[GuardServer, ServerThread]) -> GuardServer:
    return small_guard_thread[0]


@pytest.fixture
def proxy(
    upstream_server: Any, upstream: Any, small_guard_thread: tuple[GuardServer, ServerThread], caplog: pytest.LogCaptureFixture
) -> Iterator[Proxy]:
    caplog.set_level(logging.INFO, logger="guardproxy.startup")
    config = parse_config(config_toml(upstream_server[1].url, small_guard_thread[1].url, flexguard="timeout_s = 10"))
    with ServerThread(create_app(config), http=http_protocol()) as server:
        yield Proxy(server, config)


def _words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i} bread flour" for i in range(n))


def _prompt_checks(guard: GuardServer) -> list[str]:
    """The user text of each prompt-mode FlexGuard check the guard server answered."""
    systems = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in guard.requests]
    return [user for system, user in systems if "Risk Auditor" not in system and "**Assistant** message" not in system]


def test_a_prompt_three_times_the_context_is_screened(
    proxy: Proxy, small_guard: GuardServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The proxy read the guard's context when it opened the guards, and said so.
    assert any(
        "flexguard" in r.message and f"context {CONTEXT} tokens (served)" in r.message for r in caplog.get_records("setup")
    )
    text = _words(1200)
    assert len(text.encode()) > 3 * CONTEXT
    raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": text}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there!"
    assert raw.headers["x-guardproxy-prompt"] == "pass"
    assert small_guard.refused == []  # no check exceeded the guard's context
    checks = _prompt_checks(small_guard)
    assert len(checks) > 3
    seen = " ".join(checks)
    assert all(f"w{i} " in seen for i in range(1200))  # every part of the prompt was read
    # The annotation counts every window's guard call.
    usage = completion.model_extra["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]["guard_usage"]
    assert usage["calls"] == len(checks)


@pytest.mark.parametrize("stream", [False, True])
def test_a_harmful_phrase_in_the_middle_window_blocks(proxy: Proxy, small_guard: GuardServer, stream: bool) -> None:
    text = _words(500, "a") + " how to build a bomb " + _words(500, "b")
    with pytest.raises(openai.BadRequestError) as info:
        result = proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], stream=stream)
        list(result) if stream else None  # pragma: no cover - only reached if no error
    assert info.value.code == "content_policy_violation"
    assert info.value.response.headers["x-guardproxy-prompt-risk-score"] == "90"
    assert small_guard.refused == []
    checks = _prompt_checks(small_guard)
    flagged = [i for i, c in enumerate(checks) if "bomb" in c]
    assert len(checks) > 3 and flagged and 0 < flagged[0] and flagged[-1] < len(checks) - 1


def test_reasoning_longer_than_the_context_is_checked_in_a_sliding_window(proxy: Proxy, small_guard: GuardServer) -> None:
    """A trace of about four contexts: every ReasoningShield check fits, each keeps the
    query, and a harmful step late in the trace still stops the stream."""
    trace = [f" step{i} knead the dough" for i in range(1000)]
    trace[900] = " detonator"
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "How do I bake bread?"}],
        "stream": True,
        "x_script": {"reasoning": trace, "answer": ["Bread."]},
    }
    wire = raw_stream(proxy.url, body)
    wire.assert_well_formed()
    finals = [
        json.loads(e)["choices"][0]
        for e in wire.events[:-1]
        if json.loads(e).get("choices") and json.loads(e)["choices"][0].get("finish_reason")
    ]
    assert [c["finish_reason"] for c in finals] == ["content_filter"]
    assert small_guard.refused == []
    shield = [r["messages"][1]["content"] for r in small_guard.requests if "Risk Auditor" in r["messages"][0]["content"]]
    assert len(shield) > 5
    assert all(c.startswith("Query: How do I bake bread?\nThought: ") for c in shield)
    assert sum(len(c.encode()) for c in shield[-3:]) < 3 * CONTEXT
    assert not any("step0 " in c for c in shield[-3:])  # the window moved on
