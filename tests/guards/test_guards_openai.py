"""The OpenAI-compatible backend against a scripted server on 127.0.0.1 (uvicorn in a thread)."""

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from guards import (
    ChatMessage,
    ChatPrompt,
    FlexGuard,
    GuardBackendError,
    GuardModelConfig,
    GuardTimeout,
    GuardUnreachable,
    VerdictTruncated,
    open_backend,
)
from guards.backends._openai import OpenAIBackend

SECRET = "sk-test-7f3a9c"
PROMPT = ChatPrompt(
    messages=(ChatMessage("user", "hi"),),
    max_tokens=16,
    chat_template_kwargs={"enable_thinking": True},
)


class ScriptedServer:
    """Answers each POST with the next scripted reply: (status, json body, delay seconds)."""

    def __init__(self):
        self.replies: list[tuple[int, object, float]] = []
        self.requests: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "headers": headers, "body": json.loads(body or b"null")})
        if scope["method"] == "GET":
            status, payload, delay = 200, {"data": [{"id": "m"}]}, 0.0
        else:
            status, payload, delay = self.replies.pop(0) if self.replies else (500, {"error": "unscripted"}, 0)
        await asyncio.sleep(delay)
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


def completion(content, reasoning_key=None, reasoning=None, finish_reason="stop"):
    message = {"role": "assistant", "content": content}
    if reasoning_key:
        message[reasoning_key] = reasoning
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": 700,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 640},
        },
    }


@pytest.fixture(scope="module")
def server():
    app = ScriptedServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    app.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    yield app
    srv.should_exit = True
    thread.join(5)


@pytest.fixture
def app(server):
    server.replies.clear()
    server.requests.clear()
    return server


def make(app, **kw):
    cfg = GuardModelConfig(model="guard-model", base_url=app.base_url, **kw)
    return OpenAIBackend(cfg, backoff_s=0.01)


async def generate(backend, prompt=PROMPT):
    try:
        return await backend.generate(prompt)
    finally:
        await backend.aclose()


def test_request_body_and_usage(app, monkeypatch):
    monkeypatch.setenv("GUARD_KEY", SECRET)
    app.replies.append((200, completion("<think>x</think>\nSAFE\n5"), 0))
    prompt = ChatPrompt(
        messages=PROMPT.messages,
        max_tokens=16,
        chat_template_kwargs={"enable_thinking": True},
        regex="SAFE",
    )
    gen = asyncio.run(generate(make(app, api_key_env="GUARD_KEY"), prompt))
    assert (gen.text, gen.prompt_tokens, gen.cached_tokens, gen.finish_reason) == (
        "<think>x</think>\nSAFE\n5",
        700,
        640,
        "stop",
    )
    (req,) = app.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {SECRET}"
    assert req["body"] == {
        "model": "guard-model",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 16,
        "skip_special_tokens": False,
        "chat_template_kwargs": {"enable_thinking": True},
        "structured_outputs": {"regex": "SAFE"},
    }


@pytest.mark.parametrize("status", [503, 429, 502, 520])
def test_retries_then_success(app, status):
    app.replies += [(status, {"error": "busy"}, 0), (200, completion("SAFE\n1"), 0)]
    gen = asyncio.run(generate(make(app, max_retries=2)))
    assert gen.text == "SAFE\n1" and len(app.requests) == 2


def test_retries_exhausted(app):
    app.replies += [(503, {"error": "busy"}, 0)] * 3
    with pytest.raises(GuardBackendError, match="HTTP 503") as info:
        asyncio.run(generate(make(app, max_retries=1)))
    assert len(app.requests) == 2 and info.value.__cause__ is not None


def test_client_error_not_retried(app):
    app.replies += [(400, {"error": "bad"}, 0), (200, completion("SAFE\n1"), 0)]
    with pytest.raises(GuardBackendError, match="HTTP 400"):
        asyncio.run(generate(make(app, max_retries=2)))
    assert len(app.requests) == 1


def _aiohttp_transport():
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport()


@pytest.mark.parametrize("transport", [None, _aiohttp_transport], ids=["httpx", "aiohttp"])
def test_connection_refused_is_named_for_what_it_is(transport):
    """httpx-aiohttp (the proxy's transport) reports a refused connection as
    ConnectTimeout; it is a GuardUnreachable "connection refused", retried, never a timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cfg = GuardModelConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)

    async def check():
        backend = OpenAIBackend(cfg, transport=transport() if transport else None, backoff_s=0.01)
        try:
            with pytest.raises(GuardUnreachable, match="connection refused") as info:
                await FlexGuard(backend, cfg).check_prompt("x")
            return info.value, await backend.why_not_ready()
        finally:
            await backend.aclose()

    error, why = asyncio.run(check())
    assert not isinstance(error, GuardTimeout) and isinstance(error, GuardBackendError)
    assert f"127.0.0.1:{port}" in str(error) and "Timeout" not in str(error)
    assert why == "unreachable (connection refused)"


def test_a_name_that_does_not_resolve_is_unreachable():
    cfg = GuardModelConfig(model="m", base_url="http://guard.invalid:8000/v1", max_retries=0)
    with pytest.raises(GuardUnreachable, match="does not resolve"):
        asyncio.run(generate(OpenAIBackend(cfg, transport=_aiohttp_transport())))


def test_slow_server_times_out(app):
    app.replies.append((200, completion("SAFE\n1"), 2.0))
    with pytest.raises(GuardTimeout):
        asyncio.run(generate(make(app, timeout_s=0.2)))


def test_slow_server_check_deadline(app):
    # Retries and waits together stay within the check's deadline.
    app.replies += [(503, {}, 0.1)] * 2 + [(200, completion("SAFE\n1"), 1.0)]
    backend = make(app, timeout_s=0.4, max_retries=5)

    async def check():
        try:
            return await FlexGuard(backend, backend.config).check_prompt("x")
        finally:
            await backend.aclose()

    start = time.perf_counter()
    with pytest.raises(GuardTimeout):
        asyncio.run(check())
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_reasoning_field_rebuilt(app, key):
    app.replies.append((200, completion("VIO\n77", key, "step1\nstep8"), 0))
    gen = asyncio.run(generate(make(app)))
    assert gen.text == "<think>step1\nstep8</think>\nVIO\n77"


def test_cut_generation_is_a_guard_error(app):
    app.replies.append((200, completion("<think>x</think>\nSAFE\n1", finish_reason="length"), 0))
    backend = make(app)

    async def check():
        try:
            return await FlexGuard(backend, backend.config).check_prompt("x")
        finally:
            await backend.aclose()

    with pytest.raises(VerdictTruncated, match="max_tokens"):
        asyncio.run(check())


def test_no_tokenizer_so_no_added_tokens(app):
    # The guards then fall back on their static list (test_guards_prompts).
    assert make(app).added_tokens() == frozenset()


def test_api_key_never_in_error(app, monkeypatch):
    monkeypatch.setenv("GUARD_KEY", SECRET)
    app.replies.append((401, {"error": f"bad key Bearer {SECRET}"}, 0))
    with pytest.raises(GuardBackendError) as info:
        asyncio.run(generate(make(app, api_key_env="GUARD_KEY")))
    assert app.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(info.value) and "401" in str(info.value)


def test_malformed_completion(app):
    app.replies.append((200, {"choices": []}, 0))
    with pytest.raises(GuardBackendError, match="malformed"):
        asyncio.run(generate(make(app)))


def test_open_backend_and_ready(app):
    async def go():
        backend = await open_backend(GuardModelConfig(model="m", base_url=app.base_url))
        try:
            return await backend.ready()
        finally:
            await backend.aclose()

    assert asyncio.run(go())
    assert app.requests[0]["path"] == "/v1/models"
