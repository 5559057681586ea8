"""Chat completions through the proxy with the OpenAI SDK: sync and async, streamed and not."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from proxy import create_app, parse_config
from tests.conftest import config_toml
from tests.support.serving import ServerThread
from tests.support.sse import raw_stream

USER = [{"role": "user", "content": "Tell me about bread."}]


def test_sync_completion_assembles_the_upstream_stream(make_proxy, upstream):
    proxy = make_proxy()
    completion = proxy.client.chat.completions.create(model="m", messages=USER)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello there!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 10
    # The upstream is always streamed, with usage, even for a non-streaming client.
    sent = upstream.calls[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_sync_stream(make_proxy, upstream):
    proxy = make_proxy()
    chunks = list(proxy.client.chat.completions.create(model="m", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # The client did not ask for usage: the proxy's own include_usage stays invisible.
    assert all(c.usage is None for c in chunks)


def test_stream_with_usage_requested(make_proxy):
    proxy = make_proxy()
    chunks = list(
        proxy.client.chat.completions.create(model="m", messages=USER, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10


def test_async_completion_and_stream(make_proxy):
    proxy = make_proxy()

    async def main() -> tuple[str, str]:
        completion = await proxy.aclient.chat.completions.create(model="m", messages=USER)
        stream = await proxy.aclient.chat.completions.create(model="m", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return completion.choices[0].message.content, text

    assert asyncio.run(main()) == ("Hello there!", "Hello there!")


def test_allowed_extra_fields_reach_the_upstream_unchanged(make_proxy, upstream):
    proxy = make_proxy('[endpoints]\nallow_fields = ["top_k", "vendor_field"]')
    extra = {"top_k": 7, "vendor_field": {"nested": [1, 2]}, "x_script": {"answer": ["ok"]}}
    proxy.client.chat.completions.create(model="m", messages=USER, temperature=0.3, max_tokens=12, seed=4, extra_body=extra)
    sent = upstream.calls[0].body
    for key, value in extra.items():
        assert sent[key] == value
    assert (sent["temperature"], sent["max_tokens"], sent["seed"], sent["model"]) == (0.3, 12, 4, "m")
    assert sent["messages"] == USER


def test_system_developer_and_content_parts(make_proxy, upstream, guard):
    proxy = make_proxy()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in English."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "in one line."},
            ],
        },
    ]
    completion = proxy.client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "Hello there!"
    assert upstream.calls[0].body["messages"] == messages
    slots = [
        r["messages"][1]["content"].rsplit("[User]: ", 1)[1] for r in guard.requests if "[User]: " in r["messages"][1]["content"]
    ]
    # The operator's system and developer prompts too (screen_system), each a check.
    assert {"Describe this picture\nin one line.", "You are terse.", "Answer in English."} <= set(slots)


def test_tool_calls_assembled_and_streamed(make_proxy, upstream):
    proxy = make_proxy()
    script = {"answer": [], "tool_calls": [{"name": "get_weather", "arguments": ['{"city": ', '"Paris"}']}]}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    completion = proxy.client.chat.completions.create(model="m", messages=USER, tools=tools, extra_body={"x_script": script})
    call = completion.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_0", "get_weather", {"city": "Paris"})
    assert completion.choices[0].finish_reason == "tool_calls"
    assert upstream.calls[0].body["tools"] == tools

    stream = proxy.client.chat.completions.create(
        model="m", messages=USER, tools=tools, stream=True, extra_body={"x_script": script}
    )
    args = "".join(tc.function.arguments or "" for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or []))
    assert json.loads(args) == {"city": "Paris"}


def test_several_choices(make_proxy):
    proxy = make_proxy()
    completion = proxy.client.chat.completions.create(model="m", messages=USER, n=2)
    assert [c.message.content for c in completion.choices] == ["Hello there!", "Hello there!"]
    assert [c.index for c in completion.choices] == [0, 1]
    wire = raw_stream(proxy.url, {"model": "m", "messages": USER, "n": 2})
    wire.assert_well_formed()
    assert wire.text(index=0) == wire.text(index=1) == "Hello there!"


def test_models_pass_through(make_proxy):
    proxy = make_proxy()
    assert [m.id for m in proxy.client.models.list()] == ["scripted-model"]


def test_health_and_readiness(make_proxy):
    proxy = make_proxy()
    assert httpx.get(f"{proxy.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{proxy.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"upstream": True, "flexguard": True, "reasoningshield": True}}


def test_readiness_fails_when_the_upstream_is_down():
    # Port 9 (discard) is closed on loopback: nothing answers there.
    config = parse_config(config_toml("http://127.0.0.1:9", "http://127.0.0.1:9"))
    with ServerThread(create_app(config)) as server:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "checks": {"upstream": False, "flexguard": False, "reasoningshield": False}}


def test_upstream_key_from_the_environment(make_proxy, upstream, monkeypatch):
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-upstream-secret")
    proxy = make_proxy(upstream='api_key_env = "TEST_UPSTREAM_KEY"')
    proxy.client.chat.completions.create(model="m", messages=USER)
    # The client's own key is not forwarded; the configured one is.
    assert upstream.calls[0].headers["authorization"] == "Bearer sk-upstream-secret"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_upstream_cookies_are_not_kept_between_callers(make_proxy, upstream, transport):
    """One caller's upstream cookie must never ride along with another caller's request."""
    proxy = make_proxy(upstream=f'http_transport = "{transport}"')
    proxy.client.chat.completions.create(model="m", messages=USER, extra_body={"x_script": {"set_cookie": "session=caller-a"}})
    proxy.client.chat.completions.create(model="m", messages=USER)
    assert len(upstream.calls) == 2
    assert "cookie" not in upstream.calls[1].headers
    assert upstream.calls[1].headers["user-agent"].startswith("guardproxy")
    assert "accept-encoding" not in upstream.calls[1].headers  # compression would hold back chunks


def test_passthrough_of_the_client_authorization(make_proxy, upstream):
    proxy = make_proxy(upstream='auth = "passthrough"')
    proxy.client.chat.completions.create(model="m", messages=USER)
    assert upstream.calls[0].headers["authorization"] == "Bearer sk-client"
