"""/metrics help texts say what each series counts, whatever the API."""

from __future__ import annotations

from prometheus_client import generate_latest

from proxy.ops._metrics import ProxyMetrics


def _help_lines() -> dict[str, str]:
    text = generate_latest(ProxyMetrics().registry).decode()
    lines = [line.split(" ", 3) for line in text.splitlines() if line.startswith("# HELP ")]
    return {name: help_text for _, _, name, help_text in lines}


def test_request_series_name_every_guarded_api() -> None:
    helps = _help_lines()
    for name in ("guardproxy_requests_total", "guardproxy_requests_in_flight", "guardproxy_request_duration_seconds"):
        assert "chat completion" not in helps[name].lower(), (name, helps[name])
        assert "guarded generation request" in helps[name].lower(), (name, helps[name])
    assert all(api in helps["guardproxy_requests_total"] for api in ("chat", "responses", "completions"))


def test_every_series_has_a_help_text() -> None:
    assert all(text.strip() for text in _help_lines().values())
