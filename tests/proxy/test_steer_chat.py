"""Steering on chat completions and legacy completions, against the scripted upstream.

A reasoning flag under ``action = "steer"`` rolls the reasoning back to its last passing
check and continues it on the same upstream; these tests pin the continuation request
each mechanism sends, the stream the client gets, the limits and the failures.
"""

from __future__ import annotations

import json
import time

import openai
import pytest

from proxy._config import DEFAULT_STEER_TEXT, parse_config
from proxy.exceptions import ConfigError
from tests.support.scripted import chatml
from tests.support.sse import raw_stream

BENIGN = [{"role": "user", "content": "How do plants grow?"}]
UNSAFE_AT = 20
TRACE = [f" s{i}" for i in range(UNSAFE_AT)] + [" UNSAFE"] + [f" u{i}" for i in range(30)]
SAFE_CONTINUATION = {"reasoning": [" I", " will", " explain", " photosynthesis."], "answer": ["Plants", " use", " light", "."]}
STEER = '[policy.reasoning]\naction = "steer"\ncheck_every_tokens = 8\n'


def _script(fmt: str = "reasoning", cont: object = SAFE_CONTINUATION, delay: float = 0.002, **extra: object) -> dict:
    return {"format": fmt, "reasoning": TRACE, "answer": ["never", " sent"], "delay": delay, "continue": cont, **extra}


def _calls(upstream, path: str) -> list:
    return [c for c in upstream.calls if c.path.endswith(path)]


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _stream(proxy, script: dict, **kwargs):
    return list(
        proxy.client.chat.completions.create(
            model="m",
            messages=BENIGN,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"x_script": script},
            **kwargs,
        )
    )


def _reasoning(chunks) -> str:
    return "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices)


def _content(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_flagged_reasoning_is_steered_and_answered(make_proxy, upstream):
    proxy = make_proxy(STEER)
    chunks = _stream(proxy, _script())
    reasoning, content = _reasoning(chunks), _content(chunks)
    # The client's stream: the kept reasoning, the steering text, the continued reasoning, the answer.
    assert "UNSAFE" not in reasoning + content and " u0" not in reasoning
    assert reasoning.startswith(" s0 s1") and DEFAULT_STEER_TEXT in reasoning
    assert reasoning.endswith(DEFAULT_STEER_TEXT + " I will explain photosynthesis.")
    assert content.strip() == "Plants use light."
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert len({c.id for c in chunks}) == 1  # one response id from first chunk to last
    summary = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
    steering = summary["steering"]
    assert summary["action"] == "steer" and steering["steers"] == 1 and steering["outcome"] == "answered"
    assert steering["mechanism"] == "completions" and steering["categories"] == []
    kept = steering["kept_tokens"][0]
    assert 0 < kept <= UNSAFE_AT < steering["flagged_check_tokens"][0] <= steering["at_tokens"][0]
    # The kept reasoning is exactly what passed: the first `kept` tokens of the trace.
    assert reasoning.startswith("".join(TRACE[:kept]) + DEFAULT_STEER_TEXT)

    # What the upstream was asked: its template's rendering of the request, then the prefix.
    tokenize = _calls(upstream, "/tokenize")
    assert len(tokenize) == 3
    (cont,) = _calls(upstream, "/v1/completions")
    expected = chatml(BENIGN) + "<think>" + "".join(TRACE[:kept]) + DEFAULT_STEER_TEXT
    assert cont.prompt_text == expected and "UNSAFE" not in cont.prompt_text
    assert cont.body["stream"] is True and cont.body["x_script"]["continue"] == SAFE_CONTINUATION
    assert "messages" not in cont.body and "max_tokens" not in cont.body
    # The flagged generation was aborted; the continuation ran to its end.
    first = _calls(upstream, "/v1/chat/completions")[0]
    assert _wait(lambda: first.finished_at is not None) and first.disconnected and first.sent_tokens < len(TRACE)

    # usage adds both generations: the aborted one (its prompt, its streamed tokens) and the continuation.
    usage = chunks[-1].usage
    prompt_ids = len(chatml(BENIGN))
    assert usage.prompt_tokens == prompt_ids + len(expected)
    assert usage.completion_tokens > len(SAFE_CONTINUATION["reasoning"]) + 2 + first.sent_tokens - 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_json_answer_is_steered(make_proxy, upstream):
    proxy = make_proxy(STEER)
    raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=BENIGN, extra_body={"x_script": _script()})
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content.strip() == "Plants use light."
    reasoning = choice.message.model_extra["reasoning"]
    assert DEFAULT_STEER_TEXT in reasoning and "UNSAFE" not in reasoning
    assert raw.headers["x-guardproxy-reasoning"] == "steer"
    assert raw.headers["x-guardproxy-steers"] == "1" and raw.headers["x-guardproxy-steer-outcome"] == "answered"
    at = choice.model_extra["content_filter_results"]["guardproxy"]["reasoning"]["steering"]["at_tokens"]
    assert raw.headers["x-guardproxy-steer-at-tokens"] == str(at[0]) and raw.headers["x-guardproxy-reasoning-risk-score"] == "100"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0


@pytest.mark.parametrize("fmt", ["reasoning_content", "think"])
def test_the_continuation_keeps_the_upstream_reasoning_format(make_proxy, fmt):
    proxy = make_proxy(STEER)
    chunks = _stream(proxy, _script(fmt))
    if fmt == "think":
        content = _content(chunks)
        assert content.startswith("<think>") and content.count("<think>") == 1 and content.count("</think>") == 1
        reasoning, answer = content[len("<think>") :].split("</think>")
    else:
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        answer = _content(chunks)
    assert DEFAULT_STEER_TEXT in reasoning and "UNSAFE" not in reasoning + answer
    assert answer.strip() == "Plants use light."


def test_a_second_flag_steers_again_then_max_steers_falls_back(make_proxy, upstream):
    # Safe at first (a check passes and keeps the first steering text), then flagged again.
    unsafe_again = {"reasoning": [f" a{i}" for i in range(10)] + [" UNSAFE"] + [f" x{i}" for i in range(20)], "answer": ["bad"]}
    # Two steers allowed: the first continuation is flagged, the second answers.
    proxy = make_proxy(STEER + "max_steers = 2\n")
    chunks = _stream(proxy, _script(cont=[unsafe_again, SAFE_CONTINUATION]))
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    steering = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]["steering"]
    assert steering["steers"] == 2 and steering["outcome"] == "answered"
    assert _content(chunks).strip() == "Plants use light." and "UNSAFE" not in _reasoning(chunks)
    second = _calls(upstream, "/v1/completions")[-1]
    assert second.prompt_text.count("Wait") == 2 and "UNSAFE" not in second.prompt_text
    # One steer allowed: the flagged continuation ends the request by the fallback.
    upstream.calls.clear()
    proxy = make_proxy(STEER + 'max_steers = 1\nsteer_fallback = "rewrite"\n[policy]\nrefusal_message = "Stopped."')
    chunks = _stream(proxy, _script(cont=[unsafe_again, SAFE_CONTINUATION]))
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["content_filter"]
    assert _content(chunks).endswith("Stopped.") and "UNSAFE" not in _reasoning(chunks) + _content(chunks)
    summary = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
    assert summary["action"] == "rewrite"
    assert summary["steering"]["steers"] == 1 and summary["steering"]["outcome"] == "fell_back"
    assert summary["steering"]["fallback_reason"] == "max_steers (1) reached"
    assert len(_calls(upstream, "/v1/completions")) == 1


def test_block_fallback_and_zero_steers(make_proxy, upstream):
    proxy = make_proxy(STEER + 'max_steers = 0\nsteer_fallback = "block"\n')
    chunks = _stream(proxy, _script())
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["content_filter"]
    summary = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
    assert summary["action"] == "block" and summary["steering"]["outcome"] == "fell_back"
    assert not _calls(upstream, "/tokenize") and not _calls(upstream, "/v1/completions")


def test_continuation_none_falls_back_and_says_why(make_proxy, upstream):
    proxy = make_proxy(STEER, upstream='continuation = "none"')
    chunks = _stream(proxy, _script())
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["content_filter"]
    steering = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]["steering"]
    assert steering["steers"] == 0 and steering["outcome"] == "fell_back" and "continuation" in steering["fallback_reason"]
    assert not _calls(upstream, "/v1/completions")


def test_n_greater_than_one_falls_back(make_proxy, upstream):
    proxy = make_proxy(STEER)
    chunks = _stream(proxy, _script(), n=2)
    assert {c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason} == {"content_filter"}
    assert not _calls(upstream, "/v1/completions")


def test_chat_mechanism_prefills_a_final_assistant_message(make_proxy, upstream):
    proxy = make_proxy(STEER, upstream='continuation = "chat"')
    chunks = _stream(proxy, _script(), max_completion_tokens=500)
    assert _content(chunks).strip() == "Plants use light." and DEFAULT_STEER_TEXT in _reasoning(chunks)
    first, cont = _calls(upstream, "/v1/chat/completions")
    assert not _calls(upstream, "/tokenize")
    assert cont.body["continue_final_message"] is True and cont.body["add_generation_prompt"] is False
    last = cont.body["messages"][-1]
    assert cont.body["messages"][:-1] == BENIGN and last["role"] == "assistant"
    assert last["content"].startswith("<think> s0") and last["content"].endswith(DEFAULT_STEER_TEXT)
    assert "UNSAFE" not in last["content"]
    kept = len(last["content"][len("<think>") : -len(DEFAULT_STEER_TEXT)].split())
    assert cont.body["max_completion_tokens"] == 500 - kept  # the client's budget covers what was kept


def test_tool_calls_in_a_completions_continuation(make_proxy, upstream):
    proxy = make_proxy(STEER)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    cont = {
        "reasoning": [" I", " will", " look", " it", " up."],
        "answer": [],
        "tool_calls": [{"name": "lookup", "arguments": '{"q": "leaf"}'}],
    }
    chunks = _stream(proxy, _script(cont=cont), tools=tools)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("lookup", {"q": "leaf"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert "<tool_call>" not in _content(chunks)
    tokenize = _calls(upstream, "/tokenize")[0]
    assert tokenize.body["tools"] == tools and tokenize.body["add_generation_prompt"] is True


def test_upstream_error_on_the_continuation_is_an_error(make_proxy, upstream):
    proxy = make_proxy(STEER)
    with pytest.raises(openai.APIError) as caught:
        _stream(proxy, _script(cont={"status": 500}))
    assert "upstream" in str(caught.value).lower()
    # Streamed: the events before the error are well-formed and end with [DONE].
    wire = raw_stream(
        proxy.url, {"model": "m", "messages": BENIGN, "stream": True, "x_script": _script(cont={"truncate_after": 2})}
    )
    wire.assert_well_formed()
    errors = [c["error"] for c in wire.chunks if "error" in c]
    assert errors and errors[0]["type"] and "UNSAFE" not in wire.text("reasoning")


def test_guard_error_during_the_continuation_follows_on_guard_error(make_proxy, upstream):
    cont = {"reasoning": [" I", " guard500", " think"] + [f" y{i}" for i in range(12)], "answer": ["ok"]}
    proxy = make_proxy(STEER)
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN, "stream": True, "x_script": _script(cont=cont)})
    wire.assert_well_formed()
    errors = [c["error"] for c in wire.chunks if "error" in c]
    assert errors and errors[0]["code"] == "guard_unavailable"
    assert "y11" not in wire.text("reasoning")


def test_client_disconnect_during_the_continuation_cancels_it(make_proxy, upstream):
    cont = {"reasoning": [f" c{i}" for i in range(400)], "answer": ["ok"]}
    proxy = make_proxy(STEER)
    stream = proxy.client.chat.completions.create(
        model="m", messages=BENIGN, stream=True, extra_body={"x_script": _script(cont=cont, delay=0.01)}
    )
    for chunk in stream:
        if chunk.choices and DEFAULT_STEER_TEXT[:10] in (getattr(chunk.choices[0].delta, "reasoning", None) or ""):
            break
    stream.close()
    assert _wait(
        lambda: bool(_calls(upstream, "/v1/completions")) and _calls(upstream, "/v1/completions")[0].finished_at is not None
    )
    cont_call = _calls(upstream, "/v1/completions")[0]
    assert cont_call.disconnected and not cont_call.completed


def test_legacy_completions_continue_their_own_prompt(make_proxy, upstream):
    proxy = make_proxy(STEER)
    chunks = list(
        proxy.client.completions.create(model="m", prompt="Q: plants?", stream=True, extra_body={"x_script": _script("think")})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith("<think>") and DEFAULT_STEER_TEXT in text and "UNSAFE" not in text
    assert text.rstrip().endswith("Plants use light.")
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    conts = [c for c in _calls(upstream, "/v1/completions") if c.continue_index is not None]
    assert len(conts) == 1 and conts[0].body["prompt"].startswith("Q: plants?<think>")
    assert conts[0].body["prompt"].endswith(DEFAULT_STEER_TEXT) and "UNSAFE" not in conts[0].body["prompt"]


def test_hidden_release_steers_without_showing_reasoning(make_proxy):
    proxy = make_proxy(STEER + 'release = "hidden"\n')
    chunks = _stream(proxy, _script())
    assert _reasoning(chunks) == "" and _content(chunks).strip() == "Plants use light."


def test_steer_text_can_be_kept_from_the_client(make_proxy, upstream):
    proxy = make_proxy(STEER + 'show_steer_text = false\nsteer_text = " Wait, careful now."\n')
    chunks = _stream(proxy, _script())
    assert "careful" not in _reasoning(chunks) and _reasoning(chunks).endswith(" I will explain photosynthesis.")
    assert _calls(upstream, "/v1/completions")[0].prompt_text.endswith(" Wait, careful now.")


def test_immediate_release_is_refused_with_steer_at_load():
    with pytest.raises(ConfigError) as caught:
        parse_config('[policy.reasoning]\naction = "steer"\nrelease = "immediate"\n')
    assert "policy.reasoning" in str(caught.value) and "release" in str(caught.value)
    with pytest.raises(ConfigError):
        parse_config('[policy.reasoning]\naction = "steer"\nmax_steers = -1\n')
    with pytest.raises(ConfigError) as caught:
        parse_config('[upstream]\ncontinuation = "prefill"\n')
    assert "continuation" in str(caught.value)


def test_a_tenant_can_steer_while_the_default_rewrites(make_proxy, upstream, monkeypatch):
    monkeypatch.setenv("STEER_TENANT_KEY", "sk-steer")
    monkeypatch.setenv("PLAIN_TENANT_KEY", "sk-client")
    proxy = make_proxy(
        '[policy.reasoning]\ncheck_every_tokens = 8\n[[tenants]]\nname = "plain"\nkey_env = "PLAIN_TENANT_KEY"\n'
        '[[tenants]]\nname = "steerer"\nkey_env = "STEER_TENANT_KEY"\n[tenants.policy.reasoning]\naction = "steer"\n'
    )
    default = _stream(proxy, _script())
    assert [c.choices[0].finish_reason for c in default if c.choices and c.choices[0].finish_reason] == ["content_filter"]
    tenant = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-steer", max_retries=0)
    chunks = list(tenant.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": _script()}))
    assert _content(chunks).strip() == "Plants use light."


def test_the_continuation_goes_to_the_replica_that_served_the_flagged_generation(make_proxy, upstream_server, upstream):
    from tests.support.scripted import ScriptedUpstream
    from tests.support.serving import ServerThread

    second = ScriptedUpstream()
    with ServerThread(second) as other:
        proxy = make_proxy(STEER, upstream=f'base_urls = ["{upstream_server[1].url}/v1", "{other.url}/v1"]')
        for i in range(4):  # the balancer alternates; every continuation follows its generation
            messages = [{"role": "user", "content": f"How do plants grow, question {i}?"}]
            chunks = list(
                proxy.client.chat.completions.create(
                    model="m", messages=messages, stream=True, extra_body={"x_script": _script()}
                )
            )
            assert _content(chunks).strip() == "Plants use light."
        for app in (upstream, second):
            firsts = {c.body["messages"][0]["content"] for c in _calls(app, "/v1/chat/completions")}
            assert firsts, "both replicas served first generations"
            for path in ("/v1/completions", "/tokenize"):
                asked = {q for c in _calls(app, path) for q in (f"question {i}?" for i in range(4)) if q in c.prompt_text}
                assert asked == {f.split(", ", 1)[1] for f in firsts}, path


def test_a_steer_is_in_the_log_line_the_span_and_the_metrics(make_proxy, upstream, caplog):
    import logging

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.ops._helpers import eventually
    from tests.proxy.test_shadow import _metric

    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    exporter = InMemorySpanExporter()
    proxy = make_proxy(STEER, span_exporter=exporter)
    assert _content(_stream(proxy, _script())).strip() == "Plants use light."
    assert eventually(lambda: _metric(proxy.url, "guardproxy_requests_total", outcome="steered") == 1)
    assert _metric(proxy.url, "guardproxy_steers_total", outcome="answered") == 1
    assert _metric(proxy.url, "guardproxy_steers_total", outcome="fell_back") == 0
    continuation = _calls(upstream, "/v1/completions")[0]
    assert _metric(proxy.url, "guardproxy_steer_upstream_tokens_total", kind="prompt") == len(continuation.prompt_text)
    assert _metric(proxy.url, "guardproxy_steer_upstream_tokens_total", kind="discarded") > UNSAFE_AT
    root = eventually(lambda: next((s for s in exporter.get_finished_spans() if s.name == "guardproxy.request"), None))
    assert root.attributes["guardproxy.outcome"] == "steered"
    (event,) = [e for e in root.events if e.name == "guardproxy.steer"]
    assert event.attributes["guardproxy.steer.mechanism"] == "completions"
    assert 0 < event.attributes["guardproxy.steer.kept_tokens"] < event.attributes["guardproxy.steer.at_token"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"]
    steering = lines[-1]["choices"]["0"]["reasoning"]["steering"]
    assert lines[-1]["outcome"] == "steered" and steering["steers"] == 1 and steering["outcome"] == "answered"


def test_legacy_completions_json_answer_is_steered(make_proxy, upstream):
    proxy = make_proxy(STEER)
    completion = proxy.client.completions.create(model="m", prompt="Q: plants?", extra_body={"x_script": _script("think")})
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.text.startswith("<think>")
    assert (
        DEFAULT_STEER_TEXT in choice.text and "UNSAFE" not in choice.text and choice.text.rstrip().endswith("Plants use light.")
    )
    steering = choice.model_extra["content_filter_results"]["guardproxy"]["reasoning"]["steering"]
    assert steering["steers"] == 1 and steering["outcome"] == "answered" and steering["mechanism"] == "prompt"
    assert completion.usage.completion_tokens > len(SAFE_CONTINUATION["reasoning"])
