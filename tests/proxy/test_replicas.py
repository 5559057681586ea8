"""Replicas of the upstream and of a guard server (``base_urls``): least outstanding
requests, a refused replica passed over before any byte reaches the client, health checks
that take a replica out and bring it back (proxy/upstream/_replicas.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import openai
import pytest

from proxy.upstream._replicas import ReplicaTransport
from tests.support.scripted import ScriptedUpstream
from tests.support.serving import ServerThread

BENIGN = [{"role": "user", "content": "How do plants make food?"}]


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_a_refused_replica_is_passed_over_with_no_client_error(make_proxy, upstream_server, upstream):
    live = f"{upstream_server[1].url}/v1"
    proxy = make_proxy(upstream=f'base_urls = ["{_dead_url()}", "{live}"]')
    for _ in range(3):
        r = proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": {"answer": "Sunlight."}})
        assert r.choices[0].message.content == "Sunlight."
        chunks = list(
            proxy.client.chat.completions.create(
                model="m", messages=BENIGN, stream=True, extra_body={"x_script": {"answer": "Sunlight."}}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sunlight."
    assert len([c for c in upstream.calls if c.path.endswith("/chat/completions")]) == 6


def test_requests_go_to_the_replica_with_the_fewest_outstanding(make_proxy, upstream_server, upstream):
    second = ScriptedUpstream()
    with ServerThread(second) as other:
        proxy = make_proxy(upstream=f'base_urls = ["{upstream_server[1].url}/v1", "{other.url}/v1"]')
        script = {"answer": "x" * 20, "delay": 0.05}  # each stream held for about a second

        def hold() -> None:
            list(proxy.client.chat.completions.create(model="m", messages=BENIGN, stream=True, extra_body={"x_script": script}))

        threads = [threading.Thread(target=hold) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.1)  # each request sees the ones before it outstanding
        for t in threads:
            t.join(30)
        counts = [len([c for c in app.calls if c.path.endswith("/chat/completions")]) for app in (upstream, second)]
        assert counts == [3, 3]


def test_a_stopped_replica_s_requests_move_to_the_other(make_proxy, upstream_server, upstream):
    second = ScriptedUpstream()
    other = ServerThread(second).__enter__()
    proxy = make_proxy(upstream=f'base_urls = ["{other.url}/v1", "{upstream_server[1].url}/v1"]')
    for _ in range(4):
        proxy.client.chat.completions.create(model="m", messages=BENIGN)
    served_before = len(second.calls)
    assert served_before >= 1  # both replicas took requests
    other.__exit__(None, None, None)  # the replica stops
    for _ in range(8):
        r = proxy.client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": {"answer": "ok"}})
        assert r.choices[0].message.content == "ok"
    assert len(second.calls) == served_before


def test_health_checks_take_a_replica_out_and_bring_it_back():
    down = {"b": False}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "b.test" and down["b"]:
            raise httpx.ConnectError("connection refused")
        if request.url.path.endswith("/chat/completions"):
            seen.append(request.url.host)
        return httpx.Response(200, json={"data": []})

    async def main() -> None:
        t = ReplicaTransport(
            ["http://a.test/v1", "http://b.test/v1"], httpx.MockTransport(handler), health_interval_s=0.05, unhealthy_after=2
        )
        client = httpx.AsyncClient(transport=t, base_url="http://a.test/v1")
        try:
            await client.post("/chat/completions", json={})
            down["b"] = True
            await asyncio.sleep(0.3)
            assert [h for _, _, h in t.replicas] == [True, False]
            seen.clear()
            for _ in range(4):
                await client.post("/chat/completions", json={})
            assert seen == ["a.test"] * 4  # out of the rotation
            down["b"] = False
            await asyncio.sleep(0.2)
            assert [h for _, _, h in t.replicas] == [True, True]
            seen.clear()
            for _ in range(4):
                await client.post("/chat/completions", json={})
            assert sorted(set(seen)) == ["a.test", "b.test"]  # back, sharing the load
            assert all(outstanding == 0 for _, outstanding, _ in t.replicas)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_guard_replica_down_is_retried_on_the_other_within_the_deadline(make_proxy, guard_server_thread, guard):
    live, dead = f"{guard_server_thread[1].url}/v1", _dead_url()
    proxy = make_proxy(
        f'base_urls = ["{dead}", "{live}"]',  # ReasoningShield's replicas
        flexguard=f'base_urls = ["{dead}", "{live}"]\ntimeout_s = 3',
    )
    start = time.monotonic()
    chunks = list(
        proxy.client.chat.completions.create(
            model="m",
            messages=BENIGN,
            stream=True,
            extra_body={"x_script": {"reasoning": "Light is energy.", "answer": "Sugar."}},
        )
    )
    assert time.monotonic() - start < 3
    stages = next(c for c in chunks if c.choices and c.choices[0].finish_reason).choices[0].model_extra
    assert stages["content_filter_results"]["guardproxy"]["reasoning"]["checks"] >= 1
    # The checks ran on the live replica: a harmful prompt is still blocked, not failed.
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a bomb, now"}])
    assert {r["model"] for r in guard.requests} == {"flexguard-test", "reasoningshield-test"}
