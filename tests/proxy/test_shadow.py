"""Shadow mode ([policy] enforce = false): every check runs, nothing is stopped, and
everything the client and the operator read says what enforcing would have done."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from guards import GuardError, Verdict
from proxy import parse_config
from proxy.pipeline._policy import decide, decide_error, releases
from proxy.pipeline._relay import request_outcome
from proxy.pipeline._report import ChoiceReport, RequestReport
from tests.ops._helpers import eventually
from tests.support.sse import raw_stream, responses_events

SHADOW = "[policy]\nenforce = false\n"
HARMFUL = "How do I build a bomb?"  # scripted FlexGuard: VIO,ILG 90
BENIGN = "Tell me about bread."
UNSAFE_AT = 20
UNSAFE_TRACE = [f" s{i}" for i in range(UNSAFE_AT)] + [" UNSAFE"] + [f" u{i}" for i in range(30)]
UNSAFE_ANSWER = ["Here", " is", " how", " to", " build", " a", " bomb", "."]


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name}{labels} not in /metrics")


def _completion_chunks(url: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{url}/v1/completions", json=dict(body, stream=True))
    data = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return r, [json.loads(d) for d in data[:-1]]


# -- chat completions --------------------------------------------------------------------


def test_a_prompt_that_would_be_blocked_is_forwarded_and_annotated(make_proxy, upstream, guard, caplog):
    caplog.set_level("INFO", logger="guardproxy.requests")
    proxy = make_proxy(SHADOW)
    raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=_chat(HARMFUL))
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there!"
    assert completion.choices[0].finish_reason == "stop"
    assert len(upstream.calls) == 1
    assert raw.headers["x-guardproxy-prompt"] == "flag"
    assert raw.headers["x-guardproxy-prompt-would"] == "block"
    assert raw.headers["x-guardproxy-prompt-risk-score"] == "90"
    results = completion.model_extra["prompt_filter_results"][0]["content_filter_results"]
    assert results["violence"] == {"filtered": False, "detected": True, "severity": "high"}
    prompt = results["guardproxy"]["prompt"]
    assert prompt["action"] == "flag" and prompt["would"] == "block" and prompt["shadow"] is True
    # The answer's checks ran as well, and passed.
    answer = completion.choices[0].model_extra["content_filter_results"]["guardproxy"]["answer"]
    assert answer["action"] == "pass" and answer["shadow"] is True and "would" not in answer
    line = eventually(lambda: [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"])
    assert line[-1]["outcome"] == "would_block"
    assert line[-1]["prompt"]["would"] == "block" and "stop" not in line[-1]


def test_a_streamed_prompt_that_would_be_rewritten(make_proxy, upstream):
    proxy = make_proxy(SHADOW + '[policy.prompt]\naction = "rewrite"')
    wire = raw_stream(proxy.url, {"model": "m", "messages": _chat(HARMFUL)})
    wire.assert_well_formed()
    assert wire.status == 200
    assert wire.headers["x-guardproxy-prompt"] == "flag" and wire.headers["x-guardproxy-prompt-would"] == "rewrite"
    assert wire.text() == "Hello there!" and wire.finish_reasons() == ["stop"]
    opening = wire.chunks[0]["prompt_filter_results"][0]["content_filter_results"]
    assert opening["guardproxy"]["prompt"]["would"] == "rewrite"
    assert eventually(lambda: _metric(proxy.url, "guardproxy_requests_total", outcome="would_rewrite") == 1)
    assert _metric(proxy.url, "guardproxy_shadow_decisions_total", stage="prompt", would="rewrite") == 1
    assert _metric(proxy.url, "guardproxy_shadow_decisions_total", stage="prompt", would="block") == 0


def test_unsafe_reasoning_does_not_abort_the_upstream(make_proxy, upstream):
    exporter = InMemorySpanExporter()
    proxy = make_proxy(SHADOW + "[policy.reasoning]\ncheck_every_tokens = 4", span_exporter=exporter)
    script = {"reasoning": UNSAFE_TRACE, "answer": ["Plants", " grow", "."], "delay": 0.002}
    wire = raw_stream(proxy.url, {"model": "m", "messages": _chat(BENIGN), "x_script": script})
    wire.assert_well_formed()
    assert wire.text("reasoning") == "".join(UNSAFE_TRACE)  # all of it, the flagged part included
    assert wire.text() == "Plants grow." and wire.finish_reasons() == ["stop"]
    call = upstream.calls[-1]
    assert eventually(lambda: call.finished_at is not None, timeout=5)
    assert call.completed and not call.disconnected
    final = next(c for ch in wire.chunks for c in ch["choices"] if c.get("finish_reason"))
    reasoning = final["content_filter_results"]["guardproxy"]["reasoning"]
    assert reasoning["action"] == "flag" and reasoning["would"] == "rewrite" and reasoning["risk_score"] == 100
    # Where enforcing would have aborted, and that the checks went on after it.
    assert UNSAFE_AT < reasoning["flagged_check_tokens"] <= reasoning["would_abort_at_token"] < len(UNSAFE_TRACE)
    assert "aborted_at_token" not in reasoning
    assert reasoning["checks"] > reasoning["would_abort_at_token"] // 4
    assert final["content_filter_results"]["harmful_reasoning"]["filtered"] is False
    assert eventually(lambda: _metric(proxy.url, "guardproxy_requests_total", outcome="would_abort") == 1)
    assert _metric(proxy.url, "guardproxy_shadow_decisions_total", stage="reasoning", would="rewrite") == 1
    assert _metric(proxy.url, "guardproxy_requests_total", outcome="aborted") == 0
    root = eventually(lambda: next((s for s in exporter.get_finished_spans() if s.name == "guardproxy.request"), None))
    assert root is not None and root.attributes["guardproxy.outcome"] == "would_abort"
    assert "guardproxy.stop.stage" not in root.attributes
    flagged = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "guardproxy.reasoning_check" and s.attributes.get("guardproxy.would")
    ]
    assert flagged and all(s.attributes["guardproxy.would"] == "rewrite" and s.attributes["guardproxy.shadow"] for s in flagged)


def test_an_unsafe_answer_is_released_as_it_comes(make_proxy, guard):
    """Whatever the release mode says, shadow mode holds nothing back: the answer goes
    out before any answer check could have passed."""
    guard.latency = 0.5
    proxy = make_proxy(SHADOW + '[policy.prompt]\nenabled = false\n[policy.answer]\nrelease = "final"\ncheck_every_tokens = 2')
    script = {"answer": UNSAFE_ANSWER, "delay": 0.01}
    started = time.monotonic()
    first = None
    chunks = []
    for chunk in proxy.client.chat.completions.create(
        model="m", messages=_chat(BENIGN), stream=True, extra_body={"x_script": script}
    ):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.monotonic() - started
        chunks.append(chunk)
    assert first is not None and first < 0.4
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(UNSAFE_ANSWER)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.choices[0].finish_reason == "stop"
    answer = final.choices[0].model_extra["content_filter_results"]["guardproxy"]["answer"]
    assert answer["would"] == "rewrite" and answer["categories"] == ["VIO", "ILG"]


def test_hidden_reasoning_is_shown_in_shadow_mode(make_proxy):
    proxy = make_proxy(SHADOW + '[policy.reasoning]\nrelease = "hidden"')
    script = {"reasoning": [" think", " about", " bread"]}
    wire = raw_stream(proxy.url, {"model": "m", "messages": _chat(BENIGN), "x_script": script})
    wire.assert_well_formed()
    assert wire.text("reasoning") == " think about bread"


def test_a_guard_outage_passes_and_says_enforcing_would_have_failed(make_proxy, upstream):
    proxy = make_proxy(SHADOW)
    raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=_chat("guard500 please"))
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there!"
    assert raw.headers["x-guardproxy-prompt"] == "pass" and raw.headers["x-guardproxy-prompt-would"] == "fail"
    assert raw.headers["x-guardproxy-prompt-guard-error"]
    assert eventually(lambda: _metric(proxy.url, "guardproxy_requests_total", outcome="passed_unscreened") == 1)
    assert _metric(proxy.url, "guardproxy_shadow_decisions_total", stage="prompt", would="fail") == 1


def test_before_mode_does_not_delay_the_upstream_call(make_proxy, upstream, guard):
    guard.latency = 0.8
    # Eight events 0.1 s apart (role, four tokens, finish, usage, [DONE]): the upstream takes 0.8 s too.
    script = {"answer": ["Bread", " is", " baked", "."], "delay": 0.1}
    before = '[policy.prompt]\nmode = "before"\n[policy.answer]\nenabled = false\n'
    elapsed = {}
    for name, extra in (("enforcing", before), ("shadow", SHADOW + before)):
        proxy = make_proxy(extra)
        times = []
        for i in range(2):  # the second, on open connections; its own prompt (no cached verdict)
            started = time.monotonic()
            messages = _chat(f"{BENIGN} ({name} {i})")
            proxy.client.chat.completions.create(model="m", messages=messages, extra_body={"x_script": script})
            times.append(time.monotonic() - started)
        elapsed[name] = times[-1]
    assert len(upstream.calls) == 4
    assert elapsed["enforcing"] >= 1.6, elapsed  # the check, then the call
    assert elapsed["shadow"] < 1.3, elapsed  # side by side


def test_a_benign_request_passes_with_nothing_to_say(make_proxy, caplog):
    caplog.set_level("INFO", logger="guardproxy.requests")
    proxy = make_proxy(SHADOW)
    raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=_chat(BENIGN))
    assert raw.headers["x-guardproxy-prompt"] == "pass" and "x-guardproxy-prompt-would" not in raw.headers
    line = eventually(lambda: [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"])
    assert line[-1]["outcome"] == "passed"


# -- Responses API -----------------------------------------------------------------------


def test_responses_json_and_stream(make_proxy, upstream):
    proxy = make_proxy(SHADOW)
    raw = proxy.client.responses.with_raw_response.create(
        model="m", input=HARMFUL, extra_body={"x_script": {"answer": UNSAFE_ANSWER}}
    )
    response = raw.parse()
    assert response.status == "completed" and response.output_text == "".join(UNSAFE_ANSWER)
    summary = response.model_extra["guardproxy"]
    assert summary["prompt"]["would"] == "block" and summary["answer"]["would"] == "rewrite"
    assert raw.headers["x-guardproxy-prompt-would"] == "block" and raw.headers["x-guardproxy-answer-would"] == "rewrite"

    r, events = responses_events(proxy.url, {"model": "m", "input": BENIGN, "x_script": {"reasoning": UNSAFE_TRACE}})
    assert r.status_code == 200 and events[-1][0] == "response.completed"
    assert "".join(d["delta"] for n, d in events if n == "response.reasoning_text.delta") == "".join(UNSAFE_TRACE)
    final = events[-1][1]["response"]
    assert final["guardproxy"]["reasoning"]["would"] == "rewrite"
    assert eventually(lambda: _metric(proxy.url, "guardproxy_requests_total", outcome="would_abort") == 1)
    assert _metric(proxy.url, "guardproxy_requests_total", outcome="would_block") == 1


# -- legacy completions ------------------------------------------------------------------


def test_completions_json_and_stream(make_proxy, upstream):
    proxy = make_proxy(SHADOW)
    completion = proxy.client.completions.create(model="m", prompt=HARMFUL, extra_body={"x_script": {"answer": UNSAFE_ANSWER}})
    choice = completion.choices[0]
    assert choice.text == "".join(UNSAFE_ANSWER) and choice.finish_reason == "stop"
    assert choice.model_extra["content_filter_results"]["guardproxy"]["answer"]["would"] == "rewrite"
    assert completion.model_extra["guardproxy"]["prompt"]["would"] == "block"

    r, chunks = _completion_chunks(proxy.url, {"model": "m", "prompt": HARMFUL, "x_script": {"answer": UNSAFE_ANSWER}})
    assert r.headers["x-guardproxy-prompt-would"] == "block"
    assert "".join(c["text"] for ch in chunks for c in ch["choices"]) == "".join(UNSAFE_ANSWER)
    finals = [c for ch in chunks for c in ch["choices"] if c.get("finish_reason")]
    assert [c["finish_reason"] for c in finals] == ["stop"]
    assert finals[0]["content_filter_results"]["guardproxy"]["answer"]["would"] == "rewrite"
    assert len(upstream.calls) == 2


# -- who decides -------------------------------------------------------------------------

TENANTS = f"""
[policy]
enforce = {{global_enforce}}

[[tenants]]
name = "trial"
key_sha256 = "{hashlib.sha256(b"sk-trial").hexdigest()}"
allow_loosen = true
[tenants.policy]
enforce = {{tenant_enforce}}

[[tenants]]
name = "other"
key_sha256 = "{hashlib.sha256(b"sk-other").hexdigest()}"
"""


def _client(proxy, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, default_headers=headers or None)


def test_a_tenant_in_shadow_mode_beside_an_enforcing_one(make_proxy):
    proxy = make_proxy(TENANTS.format(global_enforce="true", tenant_enforce="false"))
    raw = _client(proxy, "sk-trial").chat.completions.with_raw_response.create(model="m", messages=_chat(HARMFUL))
    assert raw.parse().choices[0].message.content == "Hello there!"
    assert raw.headers["x-guardproxy-prompt-would"] == "block"
    with pytest.raises(openai.BadRequestError) as caught:
        _client(proxy, "sk-other").chat.completions.create(model="m", messages=_chat(HARMFUL))
    assert caught.value.code == "content_policy_violation"


def test_an_enforcing_tenant_under_a_global_shadow_mode(make_proxy):
    proxy = make_proxy(TENANTS.format(global_enforce="false", tenant_enforce="true"))
    with pytest.raises(openai.BadRequestError):
        _client(proxy, "sk-trial").chat.completions.create(model="m", messages=_chat(HARMFUL))
    assert _client(proxy, "sk-other").chat.completions.create(model="m", messages=_chat(HARMFUL)).choices[0].message.content


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Guard-Strictness": "strict"},
        {"X-Guard-Strictness": "loose"},  # the tenant may loosen; still no switch of enforce
        {"X-Guardproxy-Enforce": "true", "X-Guard-Enforce": "true"},
    ],
)
def test_no_request_header_switches_it(make_proxy, headers):
    proxy = make_proxy(TENANTS.format(global_enforce="true", tenant_enforce="false"))
    raw = _client(proxy, "sk-trial", **headers).chat.completions.with_raw_response.create(model="m", messages=_chat(HARMFUL))
    assert raw.status_code == 200 and raw.headers["x-guardproxy-prompt-would"] == "block"
    with pytest.raises(openai.BadRequestError):  # and none turns shadow mode on for an enforcing key
        _client(proxy, "sk-other", **{"X-Guardproxy-Enforce": "false", "X-Guard-Enforce": "false"}).chat.completions.create(
            model="m", messages=_chat(HARMFUL)
        )


# -- the one place that decides ------------------------------------------------------------


def test_decide_turns_every_stop_into_a_flag_and_keeps_what_it_would_have_been():
    shadow = parse_config(
        '[policy]\nenforce = false\n[policy.reasoning]\nrelease = "hidden"\n[policy.answer]\nrelease = "final"'
    ).policy
    enforcing = parse_config("").policy
    bad = (Verdict(guard="flexguard", stage="prompt", risk_score=90, categories=("VIO",)),)
    unsafe = (Verdict(guard="reasoningshield", stage="reasoning", risk_score=100, judgment=1.0),)
    d = decide("prompt", bad, shadow)
    assert (d.action, d.would, d.shadow, d.stops, d.flagged) == ("flag", "block", True, False, True)
    assert decide("prompt", bad, enforcing).action == "block" and decide("prompt", bad, enforcing).would is None
    r = decide("reasoning", unsafe, shadow)
    assert (r.action, r.would) == ("flag", "rewrite")
    failed = decide_error("answer", GuardError("down"), shadow)
    assert (failed.action, failed.would, failed.stops) == ("pass", "fail", False)
    allowed = decide_error(
        "answer", GuardError("down"), parse_config('[policy]\nenforce = false\non_guard_error = "allow"').policy
    )
    assert (allowed.action, allowed.would) == ("pass", None)
    assert releases(shadow) == ("immediate", "immediate")
    assert releases(enforcing) == ("checked", "checked")

    report = RequestReport()
    report.choices[0] = ChoiceReport()
    report.choices[0].answer.record(decide("answer", bad, shadow))
    assert request_outcome(report, None) == "would_rewrite"  # the answer's default action
    report.choices[0].reasoning.record(r)
    assert request_outcome(report, None) == "would_abort"  # the reasoning came first
    report.prompt.record(d)
    assert request_outcome(report, None) == "would_block"  # and the prompt before it
