"""Hardening: each way past the guards, or to take the proxy down, stays closed.

Each test here pins one such way: a content-part type that bypassed screening,
proxy keys that failed open, a moderation batch that froze the event loop, bodies with no
read deadline, hostile JSON answered with 500, uvicorn's and the upstream's non-JSON
errors, a truncated upstream reported as a success, a prompt rewrite that answered one
of n choices, a stream whose first chunk had its own id, and check tasks that outlived
their response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from proxy import create_app, parse_config
from proxy.exceptions import ConfigError
from tests.conftest import config_toml
from tests.ops._helpers import app_of, eventually
from tests.support.sse import raw_stream

BENIGN = [{"role": "user", "content": "Tell me about bread."}]
HARMFUL = "how do I build a bomb"


def _post(url: str, path: str, content: bytes, headers: dict[str, str] | None = None, timeout: float = 10) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", content=content, headers={"content-type": "application/json", **(headers or {})}, timeout=timeout
    )


def _openai_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] == code, error
    return error


# -- 1. every part that carries text is screened; a part the proxy cannot read is refused


@pytest.mark.parametrize("kind", ["input_text", "output_text", "text"])
def test_text_in_any_part_type_is_screened(make_proxy, upstream, guard, kind):
    proxy = make_proxy()
    messages = [{"role": "user", "content": [{"type": kind, "text": HARMFUL}]}]
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client.chat.completions.create(model="m", messages=messages)
    assert info.value.code == "content_policy_violation"
    assert HARMFUL in guard.requests[0]["messages"][1]["content"]


@pytest.mark.parametrize("part", [{"type": "mystery", "payload": HARMFUL}, {"type": "vendor_text", "text": HARMFUL}])
def test_a_part_the_guards_cannot_read_is_refused_and_never_forwarded(make_proxy, upstream, guard, part):
    proxy = make_proxy()
    messages = [{"role": "user", "content": [part]}]
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client.chat.completions.create(model="m", messages=messages)
    assert info.value.code == "unsupported_parameter" and info.value.param == "messages[0].content[0]"
    assert upstream.calls == [] and guard.requests == []


def test_conversation_screening_reads_tool_and_assistant_parts(make_proxy, guard):
    proxy = make_proxy('[policy.prompt]\nscreen = "conversation"')
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "input_text", "text": HARMFUL}]},
        {"role": "user", "content": "go on"},
    ]
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=messages)


# -- 2. proxy keys and other named secrets fail closed at the start


@pytest.mark.parametrize(
    ("extra", "variable"),
    [
        ('[server]\napi_keys_env = "GP_TEST_UNSET_KEYS"', "GP_TEST_UNSET_KEYS"),
        ('[server]\napi_keys_env = "GP_TEST_EMPTY"', "GP_TEST_EMPTY"),
        ('[server]\napi_keys_env = "GP_TEST_COMMAS"', "GP_TEST_COMMAS"),
        ('[[tenants]]\nname = "t"\nkey_env = "GP_TEST_UNSET_TENANT"', "GP_TEST_UNSET_TENANT"),
        ('[[tenants]]\nname = "t"\nkey_env = "GP_TEST_EMPTY"', "GP_TEST_EMPTY"),
    ],
)
def test_a_named_key_variable_that_is_unset_or_empty_stops_the_start(monkeypatch, extra, variable):
    monkeypatch.delenv("GP_TEST_UNSET_KEYS", raising=False)
    monkeypatch.delenv("GP_TEST_UNSET_TENANT", raising=False)
    monkeypatch.setenv("GP_TEST_EMPTY", "  ")
    monkeypatch.setenv("GP_TEST_COMMAS", " , ,")
    config = parse_config(config_toml("http://127.0.0.1:1", "http://127.0.0.1:1", extra))
    with pytest.raises(ConfigError) as info:
        create_app(config)
    assert f"${variable}" in str(info.value)


def test_an_absent_upstream_or_guard_key_stops_the_start(monkeypatch):
    monkeypatch.delenv("GP_TEST_UPSTREAM_KEY", raising=False)
    config = parse_config(
        config_toml("http://127.0.0.1:1", "http://127.0.0.1:1", upstream='api_key_env = "GP_TEST_UPSTREAM_KEY"')
    )
    with pytest.raises(ConfigError, match=r"upstream\.api_key_env.*\$GP_TEST_UPSTREAM_KEY"):
        create_app(config)
    config = parse_config(
        config_toml("http://127.0.0.1:1", "http://127.0.0.1:1", flexguard='api_key_env = "GP_TEST_UPSTREAM_KEY"')
    )
    with pytest.raises(ConfigError, match=r"guards\.flexguard\.api_key_env"):
        create_app(config)


# -- 4. bounded guard work: the moderation cap, a bounded queue, /healthz under load


def test_moderation_inputs_are_capped(make_proxy, guard):
    proxy = make_proxy("[server]\nmax_moderation_inputs = 4")
    r = _post(proxy.url, "/v1/moderations", json.dumps({"input": ["hi"] * 5}).encode())
    error = _openai_error(r, 400, "invalid_request")
    assert "at most 4" in error["message"] and error["param"] == "input"
    assert guard.requests == []


def test_a_2000_input_moderation_batch_leaves_the_proxy_responsive(make_proxy, guard):
    """The batch that froze a fresh proxy for 11 minutes: with the cap raised to 2,000,
    its checks wait their turn in the bounded queue and /healthz answers throughout."""
    guard.latency = 0.002
    proxy = make_proxy("[server]\nmax_moderation_inputs = 2000")
    result: dict[str, Any] = {}

    def run() -> None:
        result["response"] = _post(
            proxy.url, "/v1/moderations", json.dumps({"input": [f"text {i}" for i in range(2000)]}).encode(), timeout=120
        )

    worker = threading.Thread(target=run)
    worker.start()
    slowest = 0.0
    polls = 0
    with httpx.Client(timeout=5) as client:
        while worker.is_alive():
            start = time.monotonic()
            assert client.get(f"{proxy.url}/healthz").status_code == 200
            slowest = max(slowest, time.monotonic() - start)
            polls += 1
            time.sleep(0.05)
    worker.join()
    response = result["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2000
    assert polls >= 3 and slowest < 1.0, (polls, slowest)
    assert guard.max_in_flight <= 8  # one request takes at most its share of the guard


def test_a_full_guard_queue_answers_503_with_retry_after(make_proxy, guard):
    guard.slow_delay = 1.5
    proxy = make_proxy("[server]\nguard_concurrency = 1\nguard_queue = 0")
    slow = threading.Thread(target=lambda: _post(proxy.url, "/v1/moderations", b'{"input": "guardslow"}'))
    slow.start()
    eventually(lambda: guard.in_flight == 1)
    r = _post(proxy.url, "/v1/moderations", b'{"input": "hello"}')
    _openai_error(r, 503, "guard_overloaded")
    assert r.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError) as info:
        proxy.client.chat.completions.create(model="m", messages=BENIGN)
    assert info.value.code == "guard_overloaded"
    slow.join()


# -- 5. a body that never finishes arriving gets 408


def test_a_slow_body_gets_408(make_proxy):
    proxy = make_proxy("[server]\nbody_read_timeout_s = 0.5")
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        )
        start = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
    assert time.monotonic() - start < 3
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"


# -- 6-8. hostile JSON and non-JSON errors are OpenAI-shaped


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/moderations"])
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"model": "m", "messages": ' + b"[" * 100000,
        b'{"model": "m", "x": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b', "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe bad"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
    ],
)
def test_hostile_json_is_a_400(make_proxy, path, body):
    proxy = make_proxy()
    _openai_error(_post(proxy.url, path, body), 400, "invalid_request")
    assert httpx.get(f"{proxy.url}/healthz").status_code == 200


def test_an_unknown_content_type_is_refused(make_proxy, upstream):
    proxy = make_proxy()
    body = json.dumps({"model": "m", "messages": BENIGN}).encode()
    for ctype in ("text/plain", "multipart/form-data; boundary=x", "application/json; charset=latin-1"):
        _openai_error(_post(proxy.url, "/v1/chat/completions", body, {"content-type": ctype}), 415, "unsupported_media_type")
    assert upstream.calls == []


def test_an_unparseable_http_request_gets_an_openai_shaped_400(make_proxy):
    proxy = make_proxy()
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=5) as sock:
        sock.sendall(b"GARBAGE / HTTP/1.1\r\n\x00\x01\r\n\r\n")
        data = b""
        while piece := sock.recv(4096):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http_request"


def test_an_upstream_html_error_keeps_its_status_in_the_openai_shape(make_proxy):
    proxy = make_proxy()
    for stream in (False, True):
        r = _post(
            proxy.url,
            "/v1/chat/completions",
            json.dumps({"model": "m", "messages": BENIGN, "stream": stream, "x_script": {"html_status": 502}}).encode(),
        )
        error = _openai_error(r, 502, "upstream_error")
        assert "502 Bad Gateway" in error["message"]


def test_models_has_one_charset(make_proxy):
    proxy = make_proxy()
    r = httpx.get(f"{proxy.url}/v1/models")
    assert r.status_code == 200
    assert r.headers["content-type"].count("charset") <= 1
    assert r.json()["data"][0]["id"] == "scripted-model"


# -- 9. a truncated or empty upstream is an error, never a success


def test_a_truncated_stream_ends_with_an_error_event(make_proxy, caplog):
    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"')
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN, "x_script": {"truncate_after": 3}})
    assert wire.status == 200
    wire.assert_well_formed()
    error = json.loads(wire.events[-2])["error"]
    assert error["code"] == "upstream_truncated" and "no finish_reason" in error["message"]
    assert "stop" not in wire.finish_reasons()
    line = eventually(lambda: [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"])
    assert line[-1]["outcome"] == "upstream_error"
    assert line[-1]["error"]["code"] == "upstream_truncated"


def test_a_truncated_completion_is_a_502(make_proxy):
    proxy = make_proxy()
    with pytest.raises(openai.APIStatusError) as info:
        proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": {"truncate_after": 3}})
    assert info.value.status_code == 502 and info.value.code == "upstream_truncated"


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_upstream_stream_is_a_502(make_proxy, stream):
    proxy = make_proxy()
    r = _post(
        proxy.url,
        "/v1/chat/completions",
        json.dumps({"model": "m", "messages": BENIGN, "stream": stream, "x_script": {"empty": True}}).encode(),
    )
    error = _openai_error(r, 502, "upstream_truncated")
    assert "no chunk" in error["message"]


# -- 11-12. a prompt rewrite answers every choice; a stream has one id


def test_a_prompt_rewrite_answers_every_choice(make_proxy):
    proxy = make_proxy('[policy.prompt]\naction = "rewrite"')
    messages = [{"role": "user", "content": HARMFUL}]
    completion = proxy.client.chat.completions.create(model="m", messages=messages, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(
        c.finish_reason == "content_filter" and c.message.content == "I can't help with that request." for c in completion.choices
    )
    wire = raw_stream(proxy.url, {"model": "m", "messages": messages, "n": 2})
    wire.assert_well_formed()
    assert wire.text(index=0) == wire.text(index=1) == "I can't help with that request."
    assert wire.finish_reasons() == ["content_filter", "content_filter"]
    assert len({c["id"] for c in wire.chunks}) == 1


def test_a_stream_has_one_id(make_proxy):
    proxy = make_proxy()
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN})
    wire.assert_well_formed()
    assert "prompt_filter_results" in wire.chunks[0]
    assert {c["id"] for c in wire.chunks} == {"chatcmpl-scripted"}


# -- 13. cleanup happens when the request ends


def _leak_probe(proxy) -> list[list[str]]:
    """After each response ends, the names of the proxy's tasks still pending (of every
    request: so run one request at a time)."""
    telemetry = app_of(proxy).state.telemetry
    seen: list[list[str]] = []
    original = telemetry.request

    class Probe:
        def __init__(self, observer: Any) -> None:
            self.observer = observer

        def __getattr__(self, name: str) -> Any:
            return getattr(self.observer, name)

        def finish(self, report: Any, outcome: str, error: Any = None) -> None:
            pending = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("guardproxy-") and not t.done()]
            seen.append(sorted(pending))
            self.observer.finish(report, outcome, error)

    def request(chat, headers, api="chat", upstream="default", request_id=None):
        return Probe(original(chat, headers, api, upstream, request_id))

    telemetry.request = request
    return seen


def test_no_check_task_outlives_a_stopped_response(make_proxy, guard):
    guard.latency = 0.05
    proxy = make_proxy("[policy.reasoning]\ncheck_every_tokens = 2\n[policy.answer]\ncheck_every_tokens = 2")
    seen = _leak_probe(proxy)
    script = {"reasoning": [f" s{i}" for i in range(6)] + [" UNSAFE"] + [f" u{i}" for i in range(40)], "delay": 0.005}
    for n, stream in enumerate((True, False), start=1):
        result = proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=stream, extra_body={"x_script": script})
        list(result) if stream else None
        assert eventually(lambda n=n: len(seen) == n)  # one request at a time: its own tasks only
    assert seen == [[], []]


def test_no_check_task_outlives_a_disconnected_response(make_proxy, guard, upstream):
    guard.latency = 0.2
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"\ncheck_every_tokens = 1')
    seen = _leak_probe(proxy)
    body = {
        "model": "m",
        "messages": BENIGN,
        "stream": True,
        "x_script": {"answer": [f" t{i}" for i in range(200)], "delay": 0.01},
    }
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as r:
            for i, _ in enumerate(r.iter_bytes()):
                if i >= 3:
                    break
    assert eventually(lambda: len(seen) == 1)
    assert seen == [[]]


# -- 14. logs say why


def test_logs_name_the_guard_server_and_the_upstream_ttft_is_the_upstreams(make_proxy, guard, caplog):
    caplog.set_level(logging.INFO)
    proxy = make_proxy()
    with pytest.raises(openai.InternalServerError):
        proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "guard500"}])
    warning = next(r.getMessage() for r in caplog.records if "guard error in the prompt check" in r.getMessage())
    assert "guard server http://127.0.0.1:" in warning and "HTTP 500" in warning

    caplog.clear()
    guard.latency = 0.4  # the prompt check takes far longer than the upstream's first chunk
    proxy.client.chat.completions.create(model="m", messages=BENIGN)
    lines = eventually(
        lambda: [
            x
            for r in caplog.records
            if r.name == "guardproxy.requests" and (x := json.loads(r.getMessage()))["outcome"] == "passed"
        ]
    )
    assert lines[-1]["upstream_ttft_s"] < 0.3 < lines[-1]["latency_s"]


@pytest.mark.parametrize("trigger", ["garbled", "guardslow"])
def test_every_guard_error_log_line_names_the_guard_and_its_server(make_proxy, guard, caplog, trigger):
    """A timeout or an unparseable answer names neither by itself."""
    caplog.set_level(logging.WARNING)
    guard.slow_delay = 2.0
    proxy = make_proxy(flexguard="timeout_s = 0.5\nmax_retries = 0")
    with pytest.raises(openai.InternalServerError):
        proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": trigger}])
    line = eventually(
        lambda: next((r.getMessage() for r in caplog.records if "guard error in the prompt check" in r.getMessage()), None)
    )
    assert "flexguard (guard server http://127.0.0.1:" in line and "model flexguard-test" in line
    assert ("no verdict within 0.5 s" if trigger == "guardslow" else "VerdictParseError") in line
