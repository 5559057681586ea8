"""A proxy with the console (and optionally the audit log) on the scripted servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

ADMIN_KEY = "admin-secret-key-0123"
PROXY_KEY = "sk-proxy-key-4567"


def console_extra(*, audit: str = "", console: str = "", more: str = "", server: str = "") -> str:
    return f"""
[server]
api_keys_env = "GP_TEST_PROXY_KEYS"
{server}

[console]
enabled = true
admin_key_env = "GP_TEST_ADMIN_KEY"
{console}

[audit]
{audit}

[policy.reasoning]
check_every_tokens = 4
{more}
"""


class ConsoleClient:
    def __init__(self, url: str, key: str = ADMIN_KEY) -> None:
        self.http = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=10)

    def decisions(self, **params: Any) -> list[dict[str, Any]]:
        r = self.http.get("/console/api/decisions", params=params)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data

    def wait_for(self, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self.http.get(f"/console/api/decisions/{request_id}")
            if r.status_code == 200:
                doc: dict[str, Any] = r.json()
                return doc
            time.sleep(0.02)
        raise AssertionError(f"no record {request_id}")


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GP_TEST_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("GP_TEST_PROXY_KEYS", PROXY_KEY)


@pytest.fixture
def console_proxy(make_proxy: Any, console_env: None) -> Callable[..., Any]:
    def make(**kwargs: Any) -> Any:
        proxy = make_proxy(console_extra(**kwargs))
        proxy.client.api_key = PROXY_KEY
        proxy.aclient.api_key = PROXY_KEY
        proxy.console = ConsoleClient(proxy.url)
        return proxy

    return make
