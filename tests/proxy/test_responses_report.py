"""What a streamed Response carries about its screening, and what the logs and spans read
of its usage: the prompt's verdict on the final Response object whatever the network
reads, ``prompt_filter_results`` as a JSON answer has them, and the Responses API's own
token counts (``input_tokens`` / ``output_tokens``) in the request log line and the span.
"""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.ops._helpers import eventually
from tests.support.sse import responses_events

BENIGN = "Tell me about bread."
REASONING = [" think", " about", " bread"]
CHECKS_OFF = "[policy.reasoning]\nenabled = false\n[policy.answer]\nenabled = false"


def _stream(url: str, body: dict) -> list[tuple[str, dict]]:
    r, events = responses_events(url, body)
    assert r.status_code == 200, r.text
    return events


def _prompt_passed(summary: dict) -> None:
    assert summary["checks"] == 1 and summary["action"] == "pass" and summary["guards"] == ["flexguard"]


def test_the_prompt_verdict_is_on_a_response_read_in_one_network_read(make_proxy, upstream):
    """With no reasoning or answer check to wait for, the whole stream is released from
    one read, before anything was written: the final object still names the prompt's
    verdict."""
    proxy = make_proxy(CHECKS_OFF)
    for _ in range(3):
        events = _stream(proxy.url, {"model": "m", "input": BENIGN, "x_script": {"reasoning": REASONING, "one_write": True}})
        assert events[-1][0] == "response.completed"
        final = events[-1][1]["response"]
        _prompt_passed(final["guardproxy"]["prompt"])
        assert {k: s["checks"] for k, s in final["content_filter_results"]["guardproxy"].items()} == {"reasoning": 0, "answer": 0}
    assert upstream.calls[-1].completed


def test_the_event_by_event_stream_names_the_prompt_verdict_too(make_proxy):
    proxy = make_proxy(CHECKS_OFF)
    events = _stream(proxy.url, {"model": "m", "input": BENIGN, "x_script": {"reasoning": REASONING}})
    _prompt_passed(events[-1][1]["response"]["guardproxy"]["prompt"])


def test_a_streamed_response_carries_prompt_filter_results(make_proxy):
    proxy = make_proxy()
    events = _stream(proxy.url, {"model": "m", "input": BENIGN, "x_script": {"reasoning": REASONING}})
    final = events[-1][1]["response"]
    results = final["prompt_filter_results"]
    assert [r["prompt_index"] for r in results] == [0]
    _prompt_passed(results[0]["content_filter_results"]["guardproxy"]["prompt"])
    # As the JSON answer has them (the guard's cost aside: the verdict cache served this one).
    whole = proxy.client.responses.create(model="m", input=BENIGN, extra_body={"x_script": {"reasoning": REASONING}})
    for r in (*whole.model_extra["prompt_filter_results"], *results):
        r["content_filter_results"]["guardproxy"]["prompt"].pop("guard_usage")
    assert whole.model_extra["prompt_filter_results"] == results


def test_a_stopped_streamed_response_carries_prompt_filter_results(make_proxy):
    proxy = make_proxy('[policy.answer]\naction = "rewrite"')
    events = _stream(proxy.url, {"model": "m", "input": BENIGN, "x_script": {"answer": ["a", " bomb", " recipe"]}})
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"] == {"reason": "content_filter"}
    _prompt_passed(final["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"])
    assert final["guardproxy"]["answer"]["action"] == "rewrite"


def test_responses_usage_reaches_the_log_line_and_the_span(make_proxy, caplog):
    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    exporter = InMemorySpanExporter()
    proxy = make_proxy(span_exporter=exporter)
    proxy.client.responses.create(model="m", input=BENIGN, extra_body={"x_script": {"reasoning": REASONING}})
    output = len(REASONING) + 3  # the scripted answer: "Hello", " there", "!"

    def line() -> dict | None:
        found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"]
        return found[-1] if found else None

    record = eventually(line)
    assert record is not None and record["event"] == "response"
    assert record["usage"] == {"prompt_tokens": 7, "completion_tokens": output, "total_tokens": 7 + output}
    root = eventually(lambda: next((s for s in exporter.get_finished_spans() if s.name == "guardproxy.request"), None))
    assert root is not None
    upstream = next(s for s in exporter.get_finished_spans() if s.parent is not None and "gen_ai.response.model" in s.attributes)
    assert upstream.attributes["gen_ai.usage.input_tokens"] == 7
    assert upstream.attributes["gen_ai.usage.output_tokens"] == output
