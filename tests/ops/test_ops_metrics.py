"""Metrics: a scrape of /metrics after a passed, a blocked and an aborted request."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops._helpers import BENIGN, UNSAFE_TRACE, eventually


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_after_a_passed_a_blocked_and_an_aborted_request(make_proxy):
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 8")
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a bomb, now"}])
    script = {"reasoning": UNSAFE_TRACE, "delay": 0.002}
    list(proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": script}))

    def scraped():
        s = _scrape(proxy.url)
        done = sum(_value(s, "guardproxy_requests_total", outcome=o) for o in ("passed", "blocked", "aborted"))
        return s if done == 3 else None

    s = eventually(scraped)
    assert s is not None
    for outcome, n in {"passed": 1, "blocked": 1, "aborted": 1, "rewritten": 0, "flagged": 0, "guard_error": 0}.items():
        assert _value(s, "guardproxy_requests_total", outcome=outcome) == n, outcome
    assert _value(s, "guardproxy_requests_in_flight") == 0
    assert _value(s, "guardproxy_request_duration_seconds_count") == 3

    # Guard latency per guard and stage: two prompt checks called the guard (the third
    # request's prompt is the first's: the verdict cache answered it), reasoning checks,
    # answer checks.
    flex_prompt = dict(guard="flexguard", stage="prompt")
    assert _value(s, "guardproxy_guard_check_duration_seconds_count", **flex_prompt) == 2
    assert _value(s, "guardproxy_guard_check_duration_seconds_bucket", le="+Inf", **flex_prompt) == 2
    assert _value(s, "guardproxy_guard_check_duration_seconds_bucket", le="10.0", **flex_prompt) == 2
    assert _value(s, "guardproxy_guard_cache_total", guard="flexguard", result="hit") == 1
    assert _value(s, "guardproxy_guard_cache_total", guard="flexguard", result="miss") == 2
    assert _value(s, "guardproxy_guard_cache_total", guard="reasoningshield", result="hit") == 0
    assert _value(s, "guardproxy_guard_check_duration_seconds_sum", **flex_prompt) > 0
    assert _value(s, "guardproxy_guard_check_duration_seconds_count", guard="reasoningshield", stage="reasoning") >= 3
    assert _value(s, "guardproxy_guard_check_duration_seconds_count", guard="flexguard", stage="answer") >= 1
    assert _value(s, "guardproxy_guard_checks_total", stage="prompt", result="flag") == 1
    assert _value(s, "guardproxy_guard_checks_total", stage="reasoning", result="flag") == 1

    # Upstream time to first chunk, measured on the upstream alone: the passed and the
    # aborted request read the upstream's stream; the blocked one did if its first chunk
    # came before the (parallel) prompt verdict cancelled it.
    ttfts = _value(s, "guardproxy_upstream_ttft_seconds_count")
    assert 2 <= ttfts <= 3
    assert _value(s, "guardproxy_upstream_ttft_seconds_bucket", le="+Inf") == ttfts

    # Early-abort position: one abort in the reasoning, past the unsafe token, before the end.
    assert _value(s, "guardproxy_abort_position_tokens_count", stage="reasoning") == 1
    assert 20 < _value(s, "guardproxy_abort_position_tokens_sum", stage="reasoning") < len(UNSAFE_TRACE)
    assert _value(s, "guardproxy_abort_position_tokens_bucket", stage="reasoning", le="8.0") == 0
    assert _value(s, "guardproxy_abort_position_tokens_bucket", stage="reasoning", le="+Inf") == 1
    assert _value(s, "guardproxy_abort_position_tokens_count", stage="answer") == 0


def test_a_guard_error_and_an_upstream_error_are_counted(make_proxy):
    proxy = make_proxy()
    with pytest.raises(openai.InternalServerError):  # fail-closed: 503, an outage, not a block
        proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "guard500"}])
    with pytest.raises(openai.APIStatusError):
        proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": {"status": 503}})

    def scraped():
        s = _scrape(proxy.url)
        return s if _value(s, "guardproxy_requests_total", outcome="upstream_error") else None

    s = eventually(scraped)
    assert s is not None
    assert _value(s, "guardproxy_guard_checks_total", stage="prompt", result="error") == 1
    assert _value(s, "guardproxy_requests_total", outcome="guard_error") == 1
    assert _value(s, "guardproxy_requests_total", outcome="blocked") == 0


def test_metrics_off_means_no_endpoint(make_proxy):
    proxy = make_proxy("[telemetry]\nmetrics = false")
    assert httpx.get(f"{proxy.url}/metrics").status_code == 404


def test_guard_usage_reaches_the_annotation_and_the_counters(make_proxy):
    """What the guards cost: each stage's guard calls and tokens in the response's
    annotation, and the same figures summed in /metrics beside the upstream's tokens."""
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 8")
    script = {"reasoning": "step " * 30, "answer": "fine " * 12, "delay": 0.001}
    stages = {}
    for _ in range(2):
        chunks = list(
            proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": script})
        )
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        stages[len(stages)] = final.choices[0].model_extra["content_filter_results"]["guardproxy"]
    first, second = stages[0], stages[1]
    reasoning = first["reasoning"]["guard_usage"]
    # One call per check (150 reasoning tokens, a check every 8 at most).
    assert reasoning["calls"] == first["reasoning"]["checks"] >= 4
    assert reasoning["prompt_tokens"] > 0 and reasoning["output_tokens"] > 0
    # The guard's cache served the system prompt from the second reasoning check on.
    assert reasoning["cached_tokens"] > 0
    assert first["answer"]["guard_usage"]["calls"] == first["answer"]["checks"] >= 1

    def scraped():
        s = _scrape(proxy.url)
        return s if _value(s, "guardproxy_requests_total", outcome="passed") == 2 else None

    s = eventually(scraped)
    assert s is not None
    for stage, guard in (("reasoning", "reasoningshield"), ("answer", "flexguard")):
        for key in ("prompt_tokens", "cached_tokens", "output_tokens"):
            total = first[stage]["guard_usage"][key] + second[stage]["guard_usage"][key]
            assert _value(s, f"guardproxy_guard_{key}_total", guard=guard, stage=stage) == total, (stage, key)
    # The scripted upstream streams a character per chunk: one token each.
    assert _value(s, "guardproxy_upstream_tokens_total", channel="reasoning") == 2 * len(script["reasoning"])
    assert _value(s, "guardproxy_upstream_tokens_total", channel="answer") == 2 * len(script["answer"])
