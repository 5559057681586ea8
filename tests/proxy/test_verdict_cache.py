"""The verdict cache through the proxy: an agent's conversation costs one guard call per
new message, a shared system prompt one call for concurrent requests, the annotation and
/metrics tell hits from guard calls, and a hit needs no slot of a busy guard."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops._helpers import eventually

SCREEN_ALL = '[policy.prompt]\nscreen = "conversation"\nscreen_system = true\n'
PROMPT_ONLY = SCREEN_ALL + "[policy.reasoning]\nenabled = false\n[policy.answer]\nenabled = false\n"
SYSTEM = {"role": "system", "content": "You are a travel agent. Use the tools to check trains."}
TURNS = 10


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _agent_loop(proxy: Any, guard: Any) -> list[tuple[int, dict[str, Any]]]:
    """Ten requests as an agent sends them, each with the whole history and one new user
    or tool message: (guard calls it cost, the prompt stage's annotation) per request."""
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "Find me a train from Lyon to Turin."}]
    out = []
    for turn in range(TURNS):
        before = len(guard.requests)
        completion = proxy.client.chat.completions.create(model="m", messages=messages)
        results = completion.model_extra["prompt_filter_results"][0]["content_filter_results"]
        out.append((len(guard.requests) - before, results["guardproxy"]["prompt"]))
        answer = completion.choices[0].message.content
        if turn % 2 == 0:  # the agent calls a tool, and sends its result
            call = {
                "id": f"call_{turn}",
                "type": "function",
                "function": {"name": "trains", "arguments": json.dumps({"leg": turn})},
            }
            messages.append({"role": "assistant", "content": answer, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"call_{turn}", "content": f"train {turn} leaves at 9:{turn:02d}"})
        else:
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": f"And the connection after leg {turn}?"})
    return out


def test_an_agent_loop_costs_one_guard_call_per_new_message(make_proxy, guard):
    proxy = make_proxy(PROMPT_ONLY)
    turns = _agent_loop(proxy, guard)
    # First request: the system prompt and the user message. Every later one: the
    # assistant turn the agent appended and its new user or tool message; each earlier
    # message is a hit.
    assert [calls for calls, _ in turns] == [2] * TURNS
    for k, (_, prompt) in enumerate(turns, start=1):
        usage = prompt["guard_usage"]
        assert (usage["calls"], usage["cache_misses"], usage["cache_hits"]) == (2, 2, 2 * k - 2), k
        assert prompt["checks"] == 1 and prompt["action"] == "pass"
    hits = sum(2 * k - 2 for k in range(1, TURNS + 1))
    assert _metric(proxy.url, "guardproxy_guard_cache_total", guard="flexguard", result="hit") == hits
    assert _metric(proxy.url, "guardproxy_guard_cache_total", guard="flexguard", result="miss") == 2 * TURNS
    # A hit is no guard call: neither its latency nor tokens are counted (earlier
    # assistant turns are checked in response mode, labelled as answers).
    assert _metric(proxy.url, "guardproxy_guard_check_duration_seconds_count", guard="flexguard") == 2 * TURNS
    assert _metric(proxy.url, "guardproxy_guard_prompt_tokens_total", guard="flexguard") == sum(
        t[1]["guard_usage"]["prompt_tokens"] for t in turns
    )


def test_without_the_cache_every_message_is_checked_on_every_turn(make_proxy, guard):
    proxy = make_proxy(PROMPT_ONLY + "[guards]\ncache_entries = 0\n")
    turns = _agent_loop(proxy, guard)
    assert [calls for calls, _ in turns] == [2 * k for k in range(1, TURNS + 1)]
    assert all("cache_hits" not in prompt["guard_usage"] for _, prompt in turns)
    assert _metric(proxy.url, "guardproxy_guard_cache_total") == 0


def test_a_flagged_message_is_flagged_again_from_the_cache(make_proxy, guard):
    proxy = make_proxy(SCREEN_ALL.replace("true\n", 'true\naction = "flag"\n') + PROMPT_ONLY[len(SCREEN_ALL) :])
    messages = [SYSTEM, {"role": "user", "content": "how to build a bomb"}]
    for cached in (False, True):
        raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=messages)
        assert raw.headers["x-guardproxy-prompt"] == "flag"
        assert raw.headers["x-guardproxy-prompt-risk-score"] == "90"
        prompt = raw.parse().model_extra["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]
        assert prompt["flagged_messages"] == ["messages[1] (user)"]
        assert prompt["guard_usage"]["cache_hits"] == (2 if cached else 0)
    assert sum("bomb" in r["messages"][1]["content"] for r in guard.requests) == 1


def test_concurrent_requests_share_one_check_of_their_system_prompt(make_proxy, guard):
    proxy = make_proxy(PROMPT_ONLY)
    guard.latency = 0.2  # the requests arrive while the first check of the system prompt runs

    async def main() -> None:
        await asyncio.gather(
            *(
                proxy.aclient.chat.completions.create(model="m", messages=[SYSTEM, {"role": "user", "content": f"trip {i}"}])
                for i in range(20)
            )
        )

    asyncio.run(main())
    systems = [r for r in guard.requests if "travel agent" in r["messages"][1]["content"]]
    assert len(systems) == 1 and len(guard.requests) == 21
    assert _metric(proxy.url, "guardproxy_guard_cache_total", guard="flexguard", result="hit") == 19


def test_a_cached_verdict_needs_no_slot_of_a_busy_guard(make_proxy, guard):
    guard.slow_delay = 1.5
    proxy = make_proxy(PROMPT_ONLY + "[server]\nguard_concurrency = 1\nguard_queue = 0\n")
    known = [{"role": "user", "content": "How do plants grow?"}]
    proxy.client.chat.completions.create(model="m", messages=known)
    slow = threading.Thread(target=lambda: httpx.post(f"{proxy.url}/v1/moderations", json={"input": "guardslow"}, timeout=10))
    slow.start()
    try:
        eventually(lambda: guard.in_flight == 1)
        assert proxy.client.chat.completions.create(model="m", messages=known).choices[0].finish_reason == "stop"
        with pytest.raises(openai.InternalServerError) as info:
            proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "A new question."}])
        assert info.value.code == "guard_overloaded"
    finally:
        slow.join()
