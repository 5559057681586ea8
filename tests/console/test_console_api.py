"""Decision records, the console's JSON API, labels, what-if and the audit log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy import create_app, parse_config
from proxy.exceptions import ConfigError
from tests.conftest import config_toml
from tests.console.conftest import ADMIN_KEY, PROXY_KEY, ConsoleClient, console_extra

USER = [{"role": "user", "content": "Tell me about bread."}]
BOMB = [{"role": "user", "content": "How do I build a bomb?"}]
RISKY = [{"role": "user", "content": "Some risky advice please."}]
UNSAFE_TRACE = [f" s{i}" for i in range(10)] + [" UNSAFE"] + [f" u{i}" for i in range(10)]


def _chat(proxy: Any, messages: list[dict[str, str]], **kw: Any) -> tuple[str, Any]:
    """(x-request-id, the parsed completion or the APIStatusError)."""
    try:
        raw = proxy.client.chat.completions.with_raw_response.create(model="m", messages=messages, **kw)
    except openai.APIStatusError as exc:
        return exc.response.headers["x-request-id"], exc
    if kw.get("stream"):
        list(raw.parse())
    else:
        raw.parse()
    return raw.headers["x-request-id"], raw


# --- records and x-request-id ---------------------------------------------------------


def test_every_api_sends_x_request_id_and_yields_one_record(console_proxy: Any) -> None:
    proxy = console_proxy()
    ids = [_chat(proxy, USER)[0], _chat(proxy, USER, stream=True)[0]]
    r = proxy.client.responses.with_raw_response.create(model="m", input="Tell me about bread.")
    r.parse()
    ids.append(r.headers["x-request-id"])
    c = proxy.client.completions.with_raw_response.create(model="m", prompt="Tell me about bread.")
    c.parse()
    ids.append(c.headers["x-request-id"])
    assert len(set(ids)) == 4
    records = [proxy.console.wait_for(i) for i in ids]
    assert [r["api"] for r in records] == ["chat", "chat", "responses", "completions"]
    for record in records:
        assert record["outcome"] == "passed"
        assert record["tenant"] == "default" and record["model"] == "m"
        prompt = record["stages"]["prompt"]["checks"]
        assert len(prompt) == 1 and prompt[0]["at_token"] is None and prompt[0]["action"] == "pass"
        assert prompt[0]["verdicts"][0]["guard"] == "flexguard" and prompt[0]["verdicts"][0]["risk_score"] == 5
        assert "output" not in prompt[0]["verdicts"][0]
        assert record["client"]["finish_reasons"] == {"0": "stop"}
        assert record["client"]["released_tokens"]["0"]["answer"] == 3
        assert "content" not in record  # capture is off by default
    assert proxy.console.decisions()[0]["request_id"] == ids[-1]  # newest first


def test_a_client_request_id_is_kept(console_proxy: Any) -> None:
    proxy = console_proxy()
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"authorization": f"Bearer {PROXY_KEY}", "x-request-id": "client-id-42"},
    )
    assert r.headers["x-request-id"] == "client-id-42"
    assert proxy.console.wait_for("client-id-42")["outcome"] == "passed"


def test_a_blocked_prompt_record_and_its_error_carry_the_id(console_proxy: Any) -> None:
    proxy = console_proxy()
    rid, exc = _chat(proxy, BOMB)
    assert exc.status_code == 400
    record = proxy.console.wait_for(rid)
    assert record["outcome"] == "blocked"
    assert record["stop"] == {"stage": "prompt", "action": "block"}
    check = record["stages"]["prompt"]["checks"][0]
    assert check["flagged"] and check["risk_score"] == 90 and check["categories"] == ["VIO", "ILG"]
    assert record["client"]["error"]["status"] == 400
    assert record["client"]["error"]["code"] == "content_policy_violation"


def test_reasoning_checks_have_token_positions_and_the_cut(console_proxy: Any) -> None:
    proxy = console_proxy()
    script = {"reasoning": UNSAFE_TRACE, "answer": ["ok"], "delay": 0.005}
    rid, _ = _chat(proxy, USER, stream=True, extra_body={"x_script": script})
    record = proxy.console.wait_for(rid)
    assert record["outcome"] == "aborted"
    reasoning = record["choices"]["0"]["reasoning"]
    positions = [c["at_token"] for c in reasoning["checks"]]
    assert positions == sorted(positions) and positions[0] >= 4
    last = reasoning["checks"][-1]
    assert last["flagged"] and last["verdicts"][0]["judgment"] == 1.0 and last["verdicts"][0]["guard"] == "reasoningshield"
    assert all(not c["flagged"] for c in reasoning["checks"][:-1])
    assert record["stop"]["stage"] == "reasoning" and record["stop"]["at_token"] == reasoning["aborted_at_token"]
    assert record["client"]["finish_reasons"] == {"0": "content_filter"}
    # "checked" release: what the client got stops before the flagged check's text.
    assert record["client"]["released_tokens"]["0"]["reasoning"] < last["at_token"]


# --- filters --------------------------------------------------------------------------


def test_every_filter(console_proxy: Any) -> None:
    proxy = console_proxy()
    passed, _ = _chat(proxy, USER)
    blocked, _ = _chat(proxy, BOMB)
    t_mid = time.time()
    time.sleep(0.05)
    risky, _ = _chat(proxy, RISKY)
    aborted, _ = _chat(proxy, USER, stream=True, extra_body={"x_script": {"reasoning": UNSAFE_TRACE, "answer": ["x"]}})
    other = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "other-model", "messages": USER},
        headers={"authorization": f"Bearer {PROXY_KEY}"},
    ).headers["x-request-id"]
    c = proxy.console
    c.wait_for(other)

    def ids(**params: Any) -> list[str]:
        return [r["request_id"] for r in c.decisions(**params)]

    assert ids() == [other, aborted, risky, blocked, passed]
    assert ids(outcome="blocked") == [risky, blocked]
    assert ids(outcome="aborted,passed") == [other, aborted, passed]
    assert ids(stage="prompt") == [risky, blocked]
    assert ids(stage="reasoning") == [aborted]
    assert ids(stage="answer") == []
    assert ids(category="VIO") == [blocked]
    assert ids(category="MIS") == [risky]
    assert ids(category="harmful_reasoning") == [aborted]
    assert ids(model="other-model") == [other]
    assert ids(tenant="default") == ids() and ids(tenant="nobody") == []
    assert ids(since=t_mid) == [other, aborted, risky]
    assert ids(until=t_mid) == [blocked, passed]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_mid - 3600))
    assert ids(since=iso) == ids()
    assert ids(limit=2) == [other, aborted]
    for bad in ({"since": "yesterday"}, {"stage": "tool"}, {"limit": "0"}):
        r = c.http.get("/console/api/decisions", params=bad)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert c.http.get("/console/api/decisions/nope").status_code == 404


def test_tenants_are_named(make_proxy: Any, console_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GP_TENANT_KEY", "sk-tenant-abc")
    proxy = make_proxy(console_extra() + '\n[[tenants]]\nname = "support"\nkey_env = "GP_TENANT_KEY"\n')
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"authorization": "Bearer sk-tenant-abc"},
    )
    record = ConsoleClient(proxy.url).wait_for(r.headers["x-request-id"])
    assert record["tenant"] == "support"
    assert ConsoleClient(proxy.url).decisions(tenant="support")[0]["request_id"] == record["request_id"]


# --- the admin key --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/console/api/decisions", "/console/api/events", "/console/api/whatif", "/console/api/calibration"]
)
def test_the_api_needs_the_admin_key_and_refuses_a_proxy_key(console_proxy: Any, path: str) -> None:
    proxy = console_proxy()
    assert httpx.get(proxy.url + path).status_code == 401
    assert httpx.get(proxy.url + path, headers={"authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(proxy.url + path, headers={"authorization": f"Bearer {PROXY_KEY}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert "set-cookie" not in r.headers
    # And the admin key is no proxy key.
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert r.status_code == 401


def test_the_page_is_a_shell_with_a_strict_csp(console_proxy: Any) -> None:
    proxy = console_proxy()
    r = httpx.get(proxy.url + "/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "set-cookie" not in r.headers
    assert httpx.get(proxy.url + "/console/static/console.js").status_code == 200
    assert httpx.get(proxy.url + "/console/static/../_routes.py").status_code == 404


def test_a_missing_admin_key_refuses_the_start(make_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GP_TEST_PROXY_KEYS", PROXY_KEY)
    monkeypatch.delenv("GP_TEST_ADMIN_KEY", raising=False)
    config = parse_config(config_toml("http://127.0.0.1:9", "http://127.0.0.1:9", console_extra()))
    with pytest.raises(ConfigError, match="GP_TEST_ADMIN_KEY"):
        create_app(config)


def test_the_console_is_off_by_default(make_proxy: Any) -> None:
    proxy = make_proxy()
    assert httpx.get(proxy.url + "/console/api/decisions").status_code == 404
    r = proxy.client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert len(r.headers["x-request-id"]) == 32  # the id is sent with the console off too


def test_the_console_is_rate_limited(console_proxy: Any) -> None:
    proxy = console_proxy(console="requests_per_minute = 5")
    codes = [proxy.console.http.get("/console/api/decisions").status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    r = proxy.console.http.get("/console/api/decisions")
    assert r.json()["error"]["type"] == "rate_limit_error" and int(r.headers["retry-after"]) >= 1


# --- live events ----------------------------------------------------------------------


def test_events_stream_a_record_as_the_request_ends(console_proxy: Any) -> None:
    proxy = console_proxy()
    with proxy.console.http.stream("GET", "/console/api/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        assert next(lines).startswith("retry:")
        start = time.monotonic()
        rid, _ = _chat(proxy, BOMB)
        for line in lines:
            if line.startswith("data: "):
                doc = json.loads(line[6:])
                break
        assert time.monotonic() - start < 1.0
    assert doc["request_id"] == rid and doc["outcome"] == "blocked"


# --- labels, what-if, calibration ------------------------------------------------------


def test_labels_what_if_and_calibration(console_proxy: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = console_proxy(audit=f'path = "{audit}"\ncapture = "all"')
    c = proxy.console
    risky, _ = _chat(proxy, RISKY)  # MIS 45: blocked at moderate (40), passes at loose (60)
    blocked, _ = _chat(proxy, BOMB)  # 90: blocked at any strictness
    passed, _ = _chat(proxy, USER)
    c.wait_for(passed)
    w = c.http.get("/console/api/whatif", params={"strictness": "loose"}).json()
    by_id = {r["request_id"]: r for r in w["data"]}
    # Stopped at the prompt: the prompt check would pass, and nothing after it was ever checked.
    assert by_id[risky]["outcome"] == "passed" and by_id[risky]["changed"] and by_id[risky]["partial"] is True
    assert by_id[blocked]["outcome"] == "blocked" and not by_id[blocked]["changed"]
    assert by_id[passed]["outcome"] == "passed"
    assert w["changed"] == 1 and w["after"] == {"passed": 2, "blocked": 1}
    strict = c.http.get("/console/api/whatif", params={"strictness": "3"}).json()
    assert {r["request_id"]: r["outcome"] for r in strict["data"]}[passed] == "blocked"
    assert c.http.get("/console/api/whatif", params={"strictness": "extreme"}).status_code == 400

    # The operator says the risky prompt should have passed; the bomb was right to block.
    r = c.http.post(f"/console/api/decisions/{risky}/labels", json={"stage": "prompt", "verdict": "wrong"})
    assert r.status_code == 201
    c.http.post(f"/console/api/decisions/{blocked}/labels", json={"stage": "prompt", "verdict": "right"})
    c.http.post(f"/console/api/decisions/{passed}/labels", json={"stage": "prompt", "verdict": "right"})
    assert c.wait_for(risky)["labels"] == {"prompt": "wrong"}
    assert c.http.post(f"/console/api/decisions/{risky}/labels", json={"stage": "prompt", "verdict": "maybe"}).status_code == 400
    assert c.http.post("/console/api/decisions/nope/labels", json={"stage": "prompt", "verdict": "right"}).status_code == 404
    cal = c.http.get("/console/api/calibration").json()
    prompt = cal["stages"]["prompt"]
    assert cal["labelled"] == 3 and prompt["harmful"] == 1
    assert prompt["current"]["threshold"] == 40 and prompt["current"]["precision"] == 0.5
    assert 45 < prompt["proposed"]["threshold"] <= 90 and prompt["proposed"]["f1"] == 1.0
    assert f"strictness = {prompt['proposed']['threshold']}" in cal["toml"]
    proxy.server.__exit__(None, None, None)  # stop: the audit log is written out
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [x["type"] for x in lines].count("label") == 3
    assert {x["request_id"] for x in lines if x["type"] == "decision"} == {risky, blocked, passed}


# --- the audit log --------------------------------------------------------------------


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            break
        time.sleep(0.02)
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["none", "flagged", "all"])
def test_capture_modes_and_redaction(console_proxy: Any, tmp_path: Path, mode: str) -> None:
    audit = tmp_path / "audit.jsonl"
    redact = r'redact = ["sk-[A-Za-z0-9]+", "\\d{3}-\\d{4}"]'
    proxy = console_proxy(audit=f'path = "{audit}"\ncapture = "{mode}"\n{redact}')
    secret_prompt = [{"role": "user", "content": "My key is sk-abc123 and my number 555-1234, tell me about bread."}]
    benign, _ = _chat(proxy, secret_prompt)
    bomb, _ = _chat(proxy, [{"role": "user", "content": "bomb with sk-zzz9"}])
    proxy.console.wait_for(bomb)
    b, f = proxy.console.wait_for(benign), proxy.console.wait_for(bomb)
    if mode == "none":
        assert "content" not in b and "content" not in f
    if mode == "flagged":
        assert "content" not in b and f["content"]["prompt"].endswith("bomb with [REDACTED]")
    if mode == "all":
        assert b["content"]["prompt"].endswith("My key is [REDACTED] and my number [REDACTED], tell me about bread.")
        assert b["content"]["choices"]["0"]["answer"] == "Hello there!"
    proxy.server.__exit__(None, None, None)
    text = audit.read_text()
    assert "sk-abc123" not in text and "555-1234" not in text and "sk-zzz9" not in text
    assert PROXY_KEY not in text and ADMIN_KEY not in text and "authorization" not in text.lower()
    assert len(_audit_lines(audit)) == 2


def test_rotation_by_size(console_proxy: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = console_proxy(audit=f'path = "{audit}"\nmax_bytes = 4096\nkeep_files = 2')
    ids = [_chat(proxy, USER)[0] for _ in range(12)]
    proxy.console.wait_for(ids[-1])
    proxy.server.__exit__(None, None, None)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 4096
        for line in p.read_text().splitlines():
            json.loads(line)  # whole lines only
    kept = [
        json.loads(line)["request_id"]
        for p in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
        for line in (tmp_path / p).read_text().splitlines()
    ]
    assert kept == ids[-len(kept) :] and len(kept) >= 4  # the oldest rotated out, in order


def test_a_full_disk_never_fails_a_request(console_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    proxy = console_proxy(audit='path = "/dev/full"')
    start = time.monotonic()
    ids = [_chat(proxy, USER)[0] for _ in range(5)]
    assert time.monotonic() - start < 5
    assert proxy.console.wait_for(ids[-1])["outcome"] == "passed"  # the console still has it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{proxy.url}/metrics").text
        if 'guardproxy_audit_dropped_total{reason="write_error"} 5.0' in metrics:
            break
        time.sleep(0.05)
    assert 'guardproxy_audit_dropped_total{reason="write_error"} 5.0' in metrics
    assert any("audit log /dev/full" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    from proxy._config import AuditConfig
    from proxy.console._audit import AuditWriter

    drops: list[tuple[str, int]] = []
    writer = AuditWriter(AuditConfig(path=str(tmp_path / "a.jsonl"), queue=3), lambda r, n: drops.append((r, n)))
    for i in range(5):  # not started: nothing drains the queue
        writer.submit(b'{"n":%d}' % i)
    assert drops == [("queue_full", 1), ("queue_full", 1)] and writer.dropped == 2
    writer.start()
    writer.close()
    assert (tmp_path / "a.jsonl").read_text().splitlines() == ['{"n":0}', '{"n":1}', '{"n":2}']


# --- reload ---------------------------------------------------------------------------


def test_reload_from_the_console(
    make_proxy: Any, console_env: None, upstream_server: Any, guard_server_thread: Any, tmp_path: Path
) -> None:
    from proxy.ops._reload import ConfigSource

    text = config_toml(upstream_server[1].url, guard_server_thread[1].url, console_extra())
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    proxy = make_proxy(console_extra(), config_source=ConfigSource(path))
    c = ConsoleClient(proxy.url)
    assert httpx.post(f"{proxy.url}/console/api/reload", headers={"authorization": f"Bearer {PROXY_KEY}"}).status_code == 403
    path.write_text(text + '\n[policy]\nstrictness = "loose"\n')
    r = c.http.post("/console/api/reload")
    assert r.status_code == 200 and r.json()["ok"] and "policy.strictness" in r.json()["changed"]
    # The next request is decided, and recorded, under the new policy.
    rid, _ = _chat_key(proxy, RISKY)
    record = c.wait_for(rid)
    assert record["outcome"] == "passed" and record["policy"]["threshold"] == 60
    path.write_text("[policy]\nstrictness = 'extreme'\n")
    r = c.http.post("/console/api/reload")
    assert r.status_code == 409 and not r.json()["ok"] and "strictness" in r.json()["error"]


def _chat_key(proxy: Any, messages: list[dict[str, str]]) -> tuple[str, httpx.Response]:
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": messages},
        headers={"authorization": f"Bearer {PROXY_KEY}"},
    )
    return r.headers["x-request-id"], r


def test_shadow_mode_records_and_what_if_enforcing(console_proxy: Any) -> None:
    proxy = console_proxy(more="[policy]\nenforce = false")
    rid, r = _chat(proxy, BOMB)
    record = proxy.console.wait_for(rid)
    assert record["outcome"] == "would_block" and record["policy"]["enforce"] is False
    check = record["stages"]["prompt"]["checks"][0]
    assert check["action"] == "flag" and check["would"] == "block"
    c = proxy.console.http
    assert {x["request_id"]: x["outcome"] for x in c.get("/console/api/whatif").json()["data"]}[rid] == "would_block"
    enforced = {x["request_id"]: x for x in c.get("/console/api/whatif", params={"enforce": "true"}).json()["data"]}
    assert enforced[rid]["outcome"] == "blocked" and enforced[rid]["changed"]
    loose = {x["request_id"]: x["outcome"] for x in c.get("/console/api/whatif", params={"strictness": "95"}).json()["data"]}
    assert loose[rid] == "passed"  # 90 < 95
    assert c.get("/console/api/whatif", params={"enforce": "yes"}).status_code == 400
    assert c.get("/console/api/decisions", params={"outcome": "would_block"}).json()["data"][0]["request_id"] == rid


def test_what_if_reasoning_flag_at(console_proxy: Any) -> None:
    proxy = console_proxy()
    maybe = [f" s{i}" for i in range(6)] + [" MAYBE"] + [f" u{i}" for i in range(6)]
    rid, _ = _chat(proxy, USER, stream=True, extra_body={"x_script": {"reasoning": maybe, "answer": ["ok"]}})
    assert proxy.console.wait_for(rid)["outcome"] == "aborted"  # Judgment 0.5 flags at moderate
    c = proxy.console.http
    at_one = {x["request_id"]: x for x in c.get("/console/api/whatif", params={"flag_at": "1"}).json()["data"]}
    assert at_one[rid]["outcome"] == "passed" and at_one[rid]["partial"] and at_one[rid]["reasoning_flag_at"] == 1.0
    assert {x["request_id"]: x["outcome"] for x in c.get("/console/api/whatif", params={"strictness": "loose"}).json()["data"]}[
        rid
    ] == "passed"
    assert c.get("/console/api/whatif", params={"flag_at": "0.7"}).status_code == 400


def test_the_log_line_and_the_record_share_the_request_id(console_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    proxy = console_proxy()
    rid, _ = _chat(proxy, USER)
    proxy.console.wait_for(rid)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"]
    assert [line["request_id"] for line in lines] == [rid]


def test_a_slow_subscriber_is_told_it_lagged() -> None:
    import asyncio

    from proxy.console import DecisionStore

    async def main() -> list[str]:
        store = DecisionStore(keep=5000)
        q = store.subscribe()
        for i in range(1001):  # one more than a subscriber's queue holds
            store.add({"request_id": str(i), "outcome": "passed", "time": 0.0})
        store.add({"request_id": "last", "outcome": "passed", "time": 0.0})
        return [q.get_nowait()[0] for _ in range(q.qsize())]

    assert asyncio.run(main()) == ["lagged", "decision"]


def test_an_open_events_stream_does_not_hold_the_shutdown(
    console_env: None, upstream_server: Any, guard_server_thread: Any
) -> None:
    """The real server (ProxyServer) with shutdown_grace_s = 30: an events stream that
    held the drain would keep the process up for 30 s."""
    import socket
    import threading

    from proxy.ops._shutdown import server_for

    config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url, console_extra()))
    server = server_for(create_app(config), grace_s=30.0, log_level="warning")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    ended = threading.Event()

    def listen() -> None:
        try:
            with ConsoleClient(url).http.stream("GET", "/console/api/events") as events:
                for _ in events.iter_lines():
                    pass
        except httpx.HTTPError:
            pass
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(0.3)
    start = time.monotonic()
    server.should_exit = True
    thread.join(10)
    sock.close()
    assert ended.is_set() and not thread.is_alive()
    assert time.monotonic() - start < 3


def test_a_verdict_cache_hit_is_recorded(console_proxy: Any) -> None:
    proxy = console_proxy()
    first, _ = _chat(proxy, [{"role": "user", "content": "A question asked twice."}])
    second, _ = _chat(proxy, [{"role": "user", "content": "A question asked twice."}])
    caches = [proxy.console.wait_for(rid)["stages"]["prompt"]["checks"][0]["verdicts"][0]["cache"] for rid in (first, second)]
    assert caches == ["miss", "hit"]


def test_the_admin_key_must_not_be_a_proxy_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GP_TEST_PROXY_KEYS", f"other-key,{ADMIN_KEY}")
    monkeypatch.setenv("GP_TEST_ADMIN_KEY", ADMIN_KEY)
    config = parse_config(config_toml("http://127.0.0.1:9", "http://127.0.0.1:9", console_extra()))
    with pytest.raises(ConfigError, match="holds a proxy API key"):
        create_app(config)


def test_serve_refuses_to_start_without_the_admin_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy._cli import main

    monkeypatch.setenv("GP_TEST_PROXY_KEYS", PROXY_KEY)
    monkeypatch.delenv("GP_TEST_ADMIN_KEY", raising=False)
    path = tmp_path / "proxy.toml"
    path.write_text(console_extra(audit=f'path = "{tmp_path / "audit.jsonl"}"'))
    assert main(["serve", "--config", str(path), "--workers", "2"]) == 2  # before any worker starts
    assert "console.admin_key_env: the environment variable $GP_TEST_ADMIN_KEY is unset or empty" in capsys.readouterr().err


def test_a_moderation_request_yields_a_record_with_one_check_per_input(console_proxy: Any) -> None:
    proxy = console_proxy()
    raw = proxy.client.moderations.with_raw_response.create(input=["How do I bake bread?", "How do I build a bomb?"])
    assert [r.flagged for r in raw.parse().results] == [False, True]
    record = proxy.console.wait_for(raw.headers["x-request-id"])
    assert record["api"] == "moderations" and record["outcome"] == "flagged"
    checks = record["stages"]["prompt"]["checks"]
    assert [c["risk_score"] for c in checks] == [5, 90] and [c["flagged"] for c in checks] == [False, True]
