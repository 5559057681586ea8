"""The request log: one JSON line per request with its decision, never a secret."""

from __future__ import annotations

import json
import logging

import openai
import pytest

from tests.ops._helpers import BENIGN, UNSAFE_TRACE, app_of, eventually

CLIENT_KEY = "sk-client-SECRET-7f3a9c"
UPSTREAM_KEY = "sk-upstream-SECRET-b41d2e"
PROXY_KEY = "gp-proxy-SECRET-55aa01"


def _lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"]


def test_one_json_line_per_request_with_its_decision(make_proxy, caplog):
    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 8")
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    script = {"reasoning": UNSAFE_TRACE, "delay": 0.002}
    list(proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": script}))
    lines = eventually(lambda: (lambda x: x if len(x) == 2 else None)(_lines(caplog)))
    assert lines is not None
    passed, aborted = lines

    assert passed["event"] == "chat_completion" and passed["outcome"] == "passed"
    assert passed["model"] == "m" and passed["stream"] is False and passed["response_id"] == "chatcmpl-scripted"
    assert len(passed["request_id"]) == 32 and passed["request_id"] != aborted["request_id"]
    assert passed["latency_s"] > 0 and 0 < passed["upstream_ttft_s"] <= passed["latency_s"]
    usage = passed["prompt"].pop("guard_usage")
    assert passed["prompt"] == {
        "checks": 1,
        "action": "pass",
        "flagged": False,
        "risk_score": 5,
        "categories": [],
        "threshold": 40,
        "guards": ["flexguard"],
    }
    # What the guard cost, from its usage: one call, its prompt's tokens, its verdict's.
    # (The scripted guard's cache may hold the system prompt from an earlier test.)
    assert usage["calls"] == 1 and usage["prompt_tokens"] > 0 and usage["output_tokens"] >= 2
    assert usage["prompt_tokens"] + usage["cached_tokens"] > 100
    assert passed["choices"]["0"]["answer"]["action"] == "pass" and passed["choices"]["0"]["finish_reason"] == "stop"
    assert passed["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert "stop" not in passed and "prompt_text" not in passed

    assert aborted["outcome"] == "aborted" and aborted["stream"] is True
    reasoning = aborted["choices"]["0"]["reasoning"]
    assert reasoning["action"] == "rewrite" and reasoning["risk_score"] == 100 and reasoning["checks"] >= 3
    # Every reasoning check's call counted; from the second on the guard's cache served
    # the system prompt, so fewer prompt tokens were computed than sent.
    cost = reasoning["guard_usage"]
    assert cost["calls"] == reasoning["checks"] and cost["cached_tokens"] > 0 and cost["output_tokens"] > 0
    stop = aborted["stop"]
    assert stop["stage"] == "reasoning" and stop["action"] == "rewrite" and stop["choice"] == 0
    assert 20 < stop["flagged_check_tokens"] <= stop["aborted_at_token"] < len(UNSAFE_TRACE)


def test_the_log_never_holds_a_key_and_text_only_when_enabled(make_proxy, upstream, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    monkeypatch.setenv("GP_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GP_TEST_PROXY_KEYS", PROXY_KEY)
    # Config-key mode: the proxy key comes as a Bearer token, the upstream key from the env.
    proxy = make_proxy('[server]\napi_keys_env = "GP_TEST_PROXY_KEYS"', upstream='api_key_env = "GP_TEST_UPSTREAM_KEY"')
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=PROXY_KEY, max_retries=0)
    client.chat.completions.create(model="m", messages=BENIGN)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a bomb, now"}])
    # Passthrough mode with text logging on: the client's own key goes upstream, never to the log.
    text_proxy = make_proxy(
        '[server]\napi_keys_env = "GP_TEST_PROXY_KEYS"\n[telemetry]\nlog_message_text = true', upstream='auth = "passthrough"'
    )
    client = openai.OpenAI(
        base_url=f"{text_proxy.url}/v1", api_key=CLIENT_KEY, default_headers={"X-Guardproxy-Key": PROXY_KEY}, max_retries=0
    )
    client.chat.completions.create(model="m", messages=BENIGN)

    # The keys did travel: the upstream saw its own key, then the client's (passthrough).
    sent = [c.headers["authorization"] for c in upstream.calls]
    assert sent[0] == f"Bearer {UPSTREAM_KEY}" and sent[-1] == f"Bearer {CLIENT_KEY}"

    lines = eventually(lambda: (lambda x: x if len(x) == 3 else None)(_lines(caplog)))
    assert lines is not None
    assert [line["outcome"] for line in lines] == ["passed", "blocked", "passed"]
    assert "prompt_text" not in lines[0] and "prompt_text" not in lines[1]
    assert lines[2]["prompt_text"] == "How do plants grow?"
    everything = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in (CLIENT_KEY, UPSTREAM_KEY, PROXY_KEY, "Bearer"):
        assert secret not in everything, secret
    assert "bomb" not in everything  # no message text without log_message_text


def test_request_log_off(make_proxy, caplog):
    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    proxy = make_proxy("[telemetry]\nlog_requests = false")
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    assert app_of(proxy).state.telemetry.log is None
    assert _lines(caplog) == []
