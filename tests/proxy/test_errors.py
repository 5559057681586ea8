"""Guard errors under both policies, bad input, upstream failures and client auth."""

from __future__ import annotations

import json
import logging
import socket

import httpx
import openai
import pytest

from proxy import create_app, parse_config
from proxy.ops._http11 import http_protocol
from tests.conftest import config_toml
from tests.support.serving import ServerThread
from tests.support.sse import raw_stream

BENIGN = [{"role": "user", "content": "Tell me about bread."}]


@pytest.mark.parametrize("trigger", ["guard500", "garbled", "guardslow"])
def test_guard_error_is_an_outage_not_a_block(make_proxy, guard, trigger):
    """Fail-closed: the request is refused as 503 guard_unavailable with Retry-After
    (which the SDKs retry), never reported as a policy violation."""
    guard.slow_delay = 2.0
    proxy = make_proxy(flexguard="timeout_s = 0.5\nmax_retries = 1")
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            result = proxy.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"hello {trigger}"}], stream=stream
            )
            list(result) if stream else None
        assert info.value.status_code == 503
        assert info.value.code == "guard_unavailable"
        assert info.value.body["type"] == "server_error"
        assert "FlexGuard could not check the prompt" in info.value.body["message"]
        headers = info.value.response.headers
        assert headers["retry-after"] == "1"
        assert headers["x-guardproxy-prompt"] == "fail"
        assert headers["x-guardproxy-prompt-guard-error"] in {"GuardBackendError", "GuardTimeout", "VerdictParseError"}


@pytest.mark.parametrize("trigger", ["guard500", "garbled"])
def test_guard_error_allowed_when_configured(make_proxy, trigger):
    proxy = make_proxy('[policy]\non_guard_error = "allow"')
    raw = proxy.client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": f"hello {trigger}"}]
    )
    assert raw.parse().choices[0].message.content == "Hello there!"
    assert raw.headers["x-guardproxy-prompt"] == "pass"
    assert raw.headers["x-guardproxy-prompt-guard-error"] in {"GuardBackendError", "VerdictParseError"}


def test_guard_error_in_an_answer_check_fails_closed(make_proxy):
    proxy = make_proxy()
    script = {"x_script": {"answer": ["this", " is", " garbled"]}}
    with pytest.raises(openai.InternalServerError) as info:
        proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body=script)
    assert info.value.status_code == 503 and info.value.code == "guard_unavailable"
    assert "the model's answer" in info.value.body["message"]
    # Mid-stream: an error event with the same code, then [DONE]; no text the check did
    # not pass, and no content_filter (it was not a policy decision).
    wire = raw_stream(proxy.url, {"model": "m", "messages": BENIGN, **script})
    wire.assert_well_formed()
    error = json.loads(wire.events[-2])["error"]
    assert error["code"] == "guard_unavailable" and error["type"] == "server_error"
    chunks = [json.loads(e) for e in wire.events[:-2]]
    assert all(ch.get("finish_reason") != "content_filter" for c in chunks for ch in c.get("choices", []))
    assert "garbled" not in "".join(ch["delta"].get("content") or "" for c in chunks for ch in c.get("choices", []))


def test_a_guard_that_refuses_the_connection_is_an_outage_named_as_such(upstream_server, caplog):
    """A refused connection is neither a timeout nor a block: 503 guard_unavailable with
    GuardUnreachable, and the log line says "connection refused"."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    guard_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    config = parse_config(config_toml(upstream_server[1].url, guard_url))
    assert config.upstream.http_transport == "aiohttp"  # the transport that reported it as ConnectTimeout
    caplog.set_level(logging.WARNING, logger="guardproxy")
    with ServerThread(create_app(config), http=http_protocol(config.server)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-client", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="m", messages=BENIGN)
    assert info.value.status_code == 503 and info.value.code == "guard_unavailable"
    assert "GuardUnreachable" in info.value.body["message"]
    assert info.value.response.headers["x-guardproxy-prompt-guard-error"] == "GuardUnreachable"
    lines = [r.getMessage() for r in caplog.records if "guard error" in r.getMessage()]
    assert lines and all("connection refused" in line and "Timeout" not in line for line in lines)


def _post(url: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", content=content, headers={"content-type": "application/json", **(headers or {})}
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": 3, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}', "stream"),
        (b'{"model": "m", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}', "messages[0].content[0]"),
        (b'{"model": "m", "n": 0, "messages": [{"role": "user", "content": "hi"}]}', "n"),
    ],
)
def test_bad_input_is_an_openai_400(make_proxy, upstream, body, param):
    proxy = make_proxy()
    r = _post(proxy.url, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["param"] == param and error["message"]
    assert upstream.calls == []


def test_sdk_sees_bad_input_as_bad_request(make_proxy):
    proxy = make_proxy()
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client.chat.completions.create(model="m", messages=[])
    assert info.value.body["param"] == "messages"


def test_body_over_the_limit_is_413(make_proxy, upstream):
    proxy = make_proxy("[server]\nmax_body_bytes = 1000")
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}'
    r = _post(proxy.url, big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert upstream.calls == []


def test_unknown_route_and_method_are_openai_shaped(make_proxy):
    proxy = make_proxy()
    r = httpx.get(f"{proxy.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(f"{proxy.url}/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type", "code"),
    [
        ("GET", "/nothing", 404, "not_found_error", "not_found"),  # no route at all: Litestar's 404
        ("GET", "/v1/chat/completions", 405, "invalid_request_error", "method_not_allowed"),
        ("DELETE", "/healthz", 405, "invalid_request_error", "method_not_allowed"),
    ],
)
def test_litestar_refusals_are_the_proxys_errors(make_proxy, method, path, status, error_type, code):
    """What Litestar refuses before a route runs is answered as the proxy's own error:
    the OpenAI shape, the proxy's type and code for the status, JSON content type."""
    proxy = make_proxy()
    r = httpx.request(method, f"{proxy.url}{path}")
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (error_type, code) and error["message"]
    if status == 404:
        assert "/v1/chat/completions" in error["message"]


def test_body_over_the_limit_is_413_for_every_guarded_api(make_proxy, upstream):
    proxy = make_proxy("[server]\nmax_body_bytes = 1000")
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/moderations"):
        r = httpx.post(
            f"{proxy.url}{path}", content=b'{"input": "' + b"x" * 2000 + b'"}', headers={"content-type": "application/json"}
        )
        assert r.status_code == 413, path
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large"), path
        assert error["message"] == "The request body is larger than the proxy accepts."
    assert upstream.calls == []


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_passes_through(make_proxy, stream):
    proxy = make_proxy()
    with pytest.raises(openai.UnprocessableEntityError) as info:
        result = proxy.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=stream, extra_body={"x_script": {"status": 422}}
        )
        list(result)  # pragma: no cover
    assert info.value.status_code == 422
    assert info.value.body == {"message": "scripted upstream error", "type": "invalid_request_error", "code": "scripted"}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_unreachable_upstream_is_502(transport):
    from proxy import create_app, parse_config
    from tests.conftest import config_toml
    from tests.support.serving import ServerThread

    upstream = f'http_transport = "{transport}"'
    config = parse_config(
        config_toml("http://127.0.0.1:9", "http://127.0.0.1:9", upstream=upstream)
        + "\n[policy.prompt]\nenabled = false\n[policy.answer]\nenabled = false\n[policy.reasoning]\nenabled = false\n"
    )
    with ServerThread(create_app(config)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=10)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 502
        assert info.value.body["code"] == "upstream_unreachable"
        with pytest.raises(openai.InternalServerError):
            list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))


def test_mid_stream_upstream_error_ends_the_stream_well_formed(make_proxy):
    proxy = make_proxy('[policy.answer]\nrelease = "immediate"')
    body = {"model": "m", "messages": BENIGN, "x_script": {"error_midstream": 2}}
    wire = raw_stream(proxy.url, body)
    wire.assert_well_formed()
    assert "error" in wire.chunks[-1]
    # The tokens sent before the failure (in the same network read, with no delay) still
    # reach the client, ahead of the error.
    before = "".join(c["choices"][0]["delta"].get("content") or "" for c in wire.chunks[:-1] if c.get("choices"))
    assert before == "Hello"  # the role chunk and "Hello" are the two events before it
    with pytest.raises(openai.APIError):
        list(
            proxy.client.chat.completions.create(
                model="m", messages=BENIGN, stream=True, extra_body={"x_script": {"error_midstream": 2}}
            )
        )


def test_proxy_api_keys(make_proxy, upstream, monkeypatch):
    monkeypatch.setenv("TEST_PROXY_KEYS", "sk-alpha, sk-beta")
    proxy = make_proxy('[server]\napi_keys_env = "TEST_PROXY_KEYS"')
    with pytest.raises(openai.AuthenticationError) as info:
        proxy.client.chat.completions.create(model="m", messages=BENIGN)
    assert info.value.body["code"] == "invalid_api_key"
    assert "sk-client" not in info.value.body["message"]
    good = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-beta", max_retries=0)
    assert good.chat.completions.create(model="m", messages=BENIGN).choices[0].message.content == "Hello there!"
    assert "sk-beta" not in str(upstream.calls[-1].headers)
    r = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "m", "messages": BENIGN})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_upstream_that_does_not_stream_is_a_502_not_an_empty_answer(make_proxy):
    proxy = make_proxy()
    with pytest.raises(openai.InternalServerError) as info:
        proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": {"plain_json": True}})
    assert info.value.status_code == 502
    assert "instead of an event stream" in info.value.body["message"]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_upstream_read_timeout_is_504(make_proxy, transport):
    proxy = make_proxy(upstream=f'http_transport = "{transport}"\ntimeouts = {{read_s = 0.3}}')
    slow = {"x_script": {"answer": ["a", "b"], "delay": 1.0}}
    with pytest.raises(openai.InternalServerError) as info:
        proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body=slow)
    assert info.value.status_code == 504 and info.value.body["code"] == "upstream_timeout"
