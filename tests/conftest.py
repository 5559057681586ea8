"""Shared fixtures: scripted upstream and guard servers, and a proxy factory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from proxy import create_app, parse_config
from proxy.ops._http11 import http_protocol
from tests.support.scripted import GuardServer, ScriptedUpstream
from tests.support.serving import ServerThread


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[tuple[ScriptedUpstream, ServerThread]]:
    app = ScriptedUpstream()
    with ServerThread(app) as server:
        yield app, server


@pytest.fixture(scope="session")
def guard_server_thread() -> Iterator[tuple[GuardServer, ServerThread]]:
    app = GuardServer()
    with ServerThread(app) as server:
        yield app, server


@pytest.fixture
def upstream(upstream_server: tuple[ScriptedUpstream, ServerThread]) -> ScriptedUpstream:
    app, _ = upstream_server
    app.calls.clear()
    app.default_delay = 0.0
    return app


@pytest.fixture
def guard(guard_server_thread: tuple[GuardServer, ServerThread]) -> GuardServer:
    app, _ = guard_server_thread
    app.requests.clear()
    app.latency = 0.0
    app.slow_delay = 5.0
    app.max_in_flight = 0
    return app


class Proxy:
    def __init__(self, server: ServerThread, config: Any) -> None:
        self.server = server
        self.config = config
        self.url = server.url
        self.client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-client", max_retries=0, timeout=30)
        self.aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-client", max_retries=0, timeout=30)


def config_toml(upstream_url: str, guard_url: str, extra: str = "", upstream: str = "", flexguard: str = "") -> str:
    """A test config; ``upstream`` and ``flexguard`` add lines to those sections."""
    if "timeout_s" not in flexguard:
        flexguard += "\ntimeout_s = 3"
    if "unscreened_fields" not in upstream:
        # The scripted upstream reads its script from this field; no model reads it.
        upstream += '\nunscreened_fields = ["x_script"]'
    return f"""
[upstream]
base_url = "{upstream_url}/v1"
{upstream}

[guards.flexguard]
model = "flexguard-test"
base_url = "{guard_url}/v1"
{flexguard}

[guards.reasoningshield]
model = "reasoningshield-test"
base_url = "{guard_url}/v1"
timeout_s = 3
{extra}
"""


@pytest.fixture
def make_proxy(
    upstream_server: tuple[ScriptedUpstream, ServerThread],
    guard_server_thread: tuple[GuardServer, ServerThread],
    upstream: ScriptedUpstream,
    guard: GuardServer,
) -> Iterator[Any]:
    stack = contextlib.ExitStack()

    def make(extra: str = "", upstream: str = "", flexguard: str = "", **app_kwargs: Any) -> Proxy:
        config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url, extra, upstream, flexguard))
        server = stack.enter_context(ServerThread(create_app(config, **app_kwargs), http=http_protocol(config.server)))
        return Proxy(server, config)

    with stack:
        yield make
