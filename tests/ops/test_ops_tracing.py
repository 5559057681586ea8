"""Traces: one span per request with children per guard check and the upstream call."""

from __future__ import annotations

import sys

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy import ConfigError
from proxy._config import TelemetryConfig
from proxy.ops._telemetry import Telemetry
from proxy.pipeline._observer import NO_TELEMETRY
from tests.ops._helpers import BENIGN, BENIGN_TRACE, UNSAFE_TRACE, app_of, eventually


def _tree(exporter: InMemorySpanExporter):
    root = eventually(lambda: next((s for s in exporter.get_finished_spans() if s.name == "guardproxy.request"), None))
    assert root is not None, [s.name for s in exporter.get_finished_spans()]
    children = [s for s in exporter.get_finished_spans() if s.parent is not None and s.parent.span_id == root.context.span_id]
    return root, children


def _named(spans, name):
    return [s for s in spans if s.name == name]


def test_a_passed_stream_has_a_span_per_check_and_one_for_the_upstream(make_proxy):
    exporter = InMemorySpanExporter()
    extra = "[policy.reasoning]\ncheck_every_tokens = 8\n[policy.answer]\ncheck_every_tokens = 2"
    proxy = make_proxy(extra, span_exporter=exporter)
    script = {"reasoning": BENIGN_TRACE, "answer": ["Plants", " use", " light", "."]}
    list(proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": script}))
    root, children = _tree(exporter)

    assert root.kind.name == "SERVER"
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m" and a["gen_ai.request.stream"] is True
    assert a["guardproxy.outcome"] == "passed"
    assert a["gen_ai.response.id"] == "chatcmpl-scripted" and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == 7 and a["gen_ai.usage.output_tokens"] == len(BENIGN_TRACE) + 4
    assert len(a["guardproxy.request_id"]) == 32
    # What the guards cost, per stage, beside the upstream tokens they protected.
    assert a["guardproxy.guard_usage.prompt.calls"] == 1 and a["guardproxy.guard_usage.prompt.prompt_tokens"] > 0
    assert a["guardproxy.guard_usage.reasoning.calls"] >= 2 and a["guardproxy.guard_usage.reasoning.output_tokens"] > 0
    assert a["guardproxy.upstream_tokens.reasoning"] == len(BENIGN_TRACE)
    # Every span of the request is a direct child of the request span, in one trace.
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {root.context.trace_id}
    assert len(children) == len(exporter.get_finished_spans()) - 1

    [prompt] = _named(children, "guardproxy.prompt_check")
    p = prompt.attributes
    assert p["guardproxy.stage"] == "prompt" and p["guardproxy.guard"] == "flexguard"
    assert p["guardproxy.risk_score"] == 5 and p["gen_ai.evaluation.score.value"] == 5.0
    assert p["guardproxy.action"] == "pass" and p["guardproxy.flagged"] is False and p["guardproxy.categories"] == ()
    assert p["guardproxy.latency_s"] > 0 and p["gen_ai.usage.input_tokens"] > 0 and p["gen_ai.usage.output_tokens"] > 0

    [upstream] = _named(children, "chat m")
    u = upstream.attributes
    assert upstream.kind.name == "CLIENT" and u["gen_ai.request.model"] == "m"
    assert u["gen_ai.response.model"] == "m" and u["gen_ai.usage.input_tokens"] == 7
    assert 0 < u["gen_ai.response.time_to_first_chunk"] < 5

    reasoning = _named(children, "guardproxy.reasoning_check")
    answer = _named(children, "guardproxy.answer_check")
    assert len(reasoning) >= 2 and len(answer) >= 2  # every 8 reasoning / 2 answer tokens
    for span in reasoning:
        assert span.attributes["guardproxy.guard"] == "reasoningshield"
        assert span.attributes["guardproxy.action"] == "pass" and span.attributes["guardproxy.risk_score"] == 0
        assert 0 < span.attributes["guardproxy.tokens_checked"] <= len(BENIGN_TRACE)
    assert sorted(s.attributes["guardproxy.tokens_checked"] for s in answer)[-1] == 4
    assert all(s.attributes["guardproxy.guard"] == "flexguard" for s in answer)


def test_an_aborted_stream_records_the_flag_and_its_position(make_proxy):
    exporter = InMemorySpanExporter()
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 8", span_exporter=exporter)
    script = {"reasoning": UNSAFE_TRACE, "delay": 0.002}
    list(proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": script}))
    root, children = _tree(exporter)

    a = root.attributes
    assert a["guardproxy.outcome"] == "aborted" and a["guardproxy.action"] == "rewrite"
    assert a["guardproxy.stop.stage"] == "reasoning"
    assert 20 < a["guardproxy.abort_position"] < len(UNSAFE_TRACE)
    flagged = [s for s in _named(children, "guardproxy.reasoning_check") if s.attributes.get("guardproxy.flagged")]
    [flag] = flagged
    assert flag.attributes["guardproxy.risk_score"] == 100 and flag.attributes["guardproxy.action"] == "rewrite"
    assert flag.attributes["gen_ai.evaluation.score.label"] == "rewrite"
    assert flag.attributes["guardproxy.tokens_checked"] > 20
    # The upstream span ended when the stream was cut, before its finish.
    [upstream] = _named(children, "chat m")
    assert "gen_ai.response.finish_reasons" not in upstream.attributes


def test_a_blocked_prompt_and_the_callers_trace_context(make_proxy):
    exporter = InMemorySpanExporter()
    proxy = make_proxy(span_exporter=exporter)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-request-id": "req-42"}
    body = {"model": "m", "messages": [{"role": "user", "content": "how to build a bomb"}]}
    r = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 400
    root, children = _tree(exporter)
    assert format(root.context.trace_id, "032x") == trace_id and root.parent.span_id == 0x00F067AA0BA902B7
    assert root.attributes["guardproxy.outcome"] == "blocked" and root.attributes["guardproxy.request_id"] == "req-42"
    assert root.attributes["guardproxy.action"] == "block" and root.attributes["guardproxy.stop.stage"] == "prompt"
    [prompt] = _named(children, "guardproxy.prompt_check")
    assert prompt.attributes["guardproxy.categories"] == ("VIO", "ILG") and prompt.attributes["guardproxy.risk_score"] == 90
    # No message text in spans unless log_message_text is on.
    assert not any("bomb" in str(v) for s in exporter.get_finished_spans() for v in s.attributes.values())


def test_message_text_in_spans_only_when_enabled(make_proxy):
    exporter = InMemorySpanExporter()
    proxy = make_proxy("[telemetry]\nlog_message_text = true", span_exporter=exporter)
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    root, _ = _tree(exporter)
    assert "How do plants grow?" in root.attributes["gen_ai.input.messages"]


def test_traces_none_creates_no_provider(make_proxy):
    proxy = make_proxy("[telemetry]\nmetrics = false\nlog_requests = false")
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    telemetry = app_of(proxy).state.telemetry
    assert telemetry.provider is None and telemetry.tracer is None
    assert telemetry.request(None, {}) is NO_TELEMETRY  # all off: a shared no-op observer


def test_console_and_otlp_exporters_are_built_from_config():
    telemetry = Telemetry(TelemetryConfig(traces="console"))
    assert telemetry.provider is not None and telemetry.tracer is not None
    telemetry.shutdown()
    # The [test] extra installs the exporter, so this path always runs.
    config = TelemetryConfig(traces="otlp", otlp_endpoint="http://127.0.0.1:9/v1/traces")
    telemetry = Telemetry(config)
    assert telemetry.provider is not None and telemetry.tracer is not None
    telemetry.shutdown()


def test_otlp_without_the_exporter_refuses_to_start(monkeypatch):
    """Without the `otlp` extra the proxy refuses to start, saying what to install. (A
    find_spec probe for this branch never ran: find_spec raises when a parent package is
    missing, so the import is made to fail instead.)"""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    config = TelemetryConfig(traces="otlp", otlp_endpoint="http://127.0.0.1:9/v1/traces")
    with pytest.raises(ConfigError, match=r"guardproxy\[otlp\]"):
        Telemetry(config)
