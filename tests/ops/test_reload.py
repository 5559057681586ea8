"""Live reload: the config file read again on SIGHUP (or by the console's reload),
validated whole, swapped in at once; requests in flight keep the config they started with.

In this process against the scripted upstream and guards, and as the real CLI
(``python -m proxy serve``, one process and ``--workers 2``) where the signal matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from proxy import create_app, load_config, parse_config
from proxy.ops._http11 import http_protocol
from proxy.ops._reload import SUPERVISOR_PID_ENV, ConfigSource, ReloadResult, live_config, reload, reload_now
from tests.conftest import config_toml
from tests.ops._helpers import eventually
from tests.support.serving import ServerThread

REPO = Path(__file__).resolve().parents[2]
BENIGN = [{"role": "user", "content": "Tell me about bread."}]
HARMFUL = [{"role": "user", "content": "How do I build a bomb?"}]
RISKY = [{"role": "user", "content": "a risky question"}]  # scripted FlexGuard: MIS 45
KEY_A, KEY_B = "sk-team-a", "sk-team-b"


def _tenants(*keys: str) -> str:
    return "".join(f'\n[[tenants]]\nname = "{k}"\nkey_sha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for k in keys)


class Reloadable:
    """A proxy in this process whose config is a file the test rewrites."""

    def __init__(self, path: Path, base: str, server: ServerThread) -> None:
        self.path = path
        self.base = base
        self.server = server
        self.url = server.url

    @property
    def state(self) -> Any:
        return self.server.server.config.app.state

    def write(self, extra: str) -> None:
        self.path.write_text(self.base + extra)

    def reload(self) -> ReloadResult:
        """As the console's endpoint does: on the server's own event loop."""
        loop = self.server.server.servers[0].get_loop()
        return asyncio.run_coroutine_threadsafe(reload(self.state), loop).result(10)

    def client(self, key: str = "sk-none") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def reloadable(tmp_path, upstream_server, guard_server_thread, upstream, guard) -> Iterator[Any]:
    servers: list[ServerThread] = []

    def make(extra: str = "") -> Reloadable:
        path = tmp_path / "config.toml"
        base = config_toml(upstream_server[1].url, guard_server_thread[1].url)
        path.write_text(base + extra)
        config = load_config(path)
        server = ServerThread(create_app(config, config_source=ConfigSource(path)), http=http_protocol(config.server))
        servers.append(server.__enter__())
        return Reloadable(path, base, server)

    yield make
    for server in servers:
        server.__exit__(None, None, None)


# -- what a reload applies ---------------------------------------------------------------


def test_live_options_change_and_the_others_are_kept():
    running = parse_config('[server]\nport = 8080\n[upstream]\nbase_url = "http://a:8000/v1"\n' + _tenants(KEY_A))
    new = parse_config(
        '[server]\nport = 9090\n[upstream]\nbase_url = "http://b:8000/v1"\n[policy]\nstrictness = "strict"\nenforce = false\n'
        '[policy.answer]\ncheck_every_tokens = 16\n[telemetry]\nlog_message_text = true\ntraces = "console"\n' + _tenants(KEY_B)
    )
    effective, changed, kept = live_config(running, new)
    assert effective.policy.strictness == "strict" and effective.policy.enforce is False
    assert [t.name for t in effective.tenants] == [KEY_B]
    assert effective.telemetry.log_message_text is True
    assert effective.server.port == 8080 and effective.upstream.base_url == "http://a:8000/v1"
    assert effective.telemetry.traces == "none"
    assert set(changed) == {
        "policy.strictness", "policy.enforce", "policy.answer.check_every_tokens", "telemetry.log_message_text",
        f"tenants[{KEY_A}]", f"tenants[{KEY_B}]",
    }  # fmt: skip
    assert set(kept) == {"server.port", "upstream.base_url", "telemetry.traces"}


def test_a_strictness_change_applies_from_the_next_request(reloadable):
    proxy = reloadable()
    with pytest.raises(openai.BadRequestError):  # MIS 45 >= moderate's 40
        proxy.client().chat.completions.create(model="m", messages=RISKY)
    proxy.write('[policy]\nstrictness = "loose"\n')
    result = proxy.reload()
    assert result.ok and result.changed == ("policy.strictness",) and result.kept == ()
    assert proxy.state.config.policy.strictness == "loose"
    raw = proxy.client().chat.completions.with_raw_response.create(model="m", messages=RISKY)
    assert raw.headers["x-guardproxy-prompt"] == "pass" and raw.headers["x-guardproxy-prompt-risk-score"] == "45"
    assert raw.parse().choices[0].model_extra["content_filter_results"]["guardproxy"]["answer"]["threshold"] == 60
    proxy.write("[policy]\nstrictness = 50\n")
    assert proxy.reload().ok
    assert _prompt_threshold(proxy.url) == 50


def _prompt_threshold(url: str) -> int:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": BENIGN}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]["threshold"])


def test_shadow_mode_switched_on_live(reloadable):
    proxy = reloadable()
    with pytest.raises(openai.BadRequestError):
        proxy.client().chat.completions.create(model="m", messages=HARMFUL)
    proxy.write("[policy]\nenforce = false\n")
    assert proxy.reload().changed == ("policy.enforce",)
    raw = proxy.client().chat.completions.with_raw_response.create(model="m", messages=HARMFUL)
    assert raw.status_code == 200 and raw.headers["x-guardproxy-prompt-would"] == "block"


def test_a_bad_file_changes_nothing(reloadable, caplog):
    caplog.set_level("INFO", logger="guardproxy")
    proxy = reloadable('[policy]\nstrictness = "moderate"\n' + _tenants(KEY_A))
    config, keyring = proxy.state.config, proxy.state.keyring
    for bad, says in [
        ('[policy]\nstrictness = "extreme"\n', "`strictness`"),
        ("[policy\nstrictness = 1", "not valid TOML"),
        ("[policy]\nspeed = 1\n", "`speed`"),
        ('[server]\napi_keys_env = "GUARDPROXY_TEST_UNSET_KEYS"\n', "$GUARDPROXY_TEST_UNSET_KEYS is unset or empty"),
        ('[policy]\nstrictness = "loose"\n[[tenants]]\nname = "x"\n', "exactly one of `key_sha256` and `key_env`"),
    ]:
        proxy.write(bad)
        result = proxy.reload()
        assert not result.ok and says in (result.error or ""), (bad, result)
        assert result.changed == () and result.kept == ()
        assert proxy.state.config is config and proxy.state.keyring is keyring
        assert says in caplog.records[-1].getMessage() and "the running config is unchanged" in caplog.records[-1].getMessage()
    # Still the running policy and keys.
    assert proxy.client(KEY_A).chat.completions.create(model="m", messages=BENIGN).choices[0].message.content
    proxy.path.unlink()
    result = proxy.reload()
    assert not result.ok and "cannot read config" in (result.error or "")


def test_a_policy_needing_a_guard_not_opened_is_refused(reloadable):
    proxy = reloadable("[policy.reasoning]\nenabled = false\n")
    assert "reasoningshield" not in proxy.state.guard_backends
    proxy.write("[policy.reasoning]\nenabled = true\n")
    result = proxy.reload()
    assert not result.ok and "guards.reasoningshield" in (result.error or "") and "restart" in (result.error or "")
    assert proxy.state.config.policy.reasoning.enabled is False


def test_a_revoked_key_is_refused_from_the_next_request(reloadable, monkeypatch):
    monkeypatch.setenv("GUARDPROXY_TEST_KEY_C", "sk-team-c")
    proxy = reloadable(_tenants(KEY_A, KEY_B) + '\n[[tenants]]\nname = "c"\nkey_env = "GUARDPROXY_TEST_KEY_C"\n')
    for key in (KEY_A, KEY_B, "sk-team-c"):
        assert proxy.client(key).chat.completions.create(model="m", messages=BENIGN).choices[0].message.content
    proxy.write(_tenants(KEY_A))  # B and C revoked
    result = proxy.reload()
    assert result.ok and set(result.changed) == {f"tenants[{KEY_B}]", "tenants[c]"}
    assert proxy.client(KEY_A).chat.completions.create(model="m", messages=BENIGN).choices[0].message.content
    for key in (KEY_B, "sk-team-c"):
        with pytest.raises(openai.AuthenticationError):
            proxy.client(key).chat.completions.create(model="m", messages=BENIGN)
    # A tenant's policy reloads with its key: B comes back as shadow-mode only.
    proxy.write(_tenants(KEY_A, KEY_B) + "[tenants.policy]\nenforce = false\n")
    assert proxy.reload().ok
    raw = proxy.client(KEY_B).chat.completions.with_raw_response.create(model="m", messages=HARMFUL)
    assert raw.headers["x-guardproxy-prompt-would"] == "block"
    with pytest.raises(openai.BadRequestError):
        proxy.client(KEY_A).chat.completions.create(model="m", messages=HARMFUL)


def test_what_cannot_change_live_is_reported_and_kept(reloadable, caplog):
    caplog.set_level("INFO", logger="guardproxy")
    proxy = reloadable()
    proxy.path.write_text(
        proxy.base.replace("timeout_s = 3", "timeout_s = 4", 1) + '[server]\nport = 9999\n[policy]\nstrictness = "loose"\n'
    )
    result = proxy.reload()
    assert result.ok and result.changed == ("policy.strictness",)
    assert set(result.kept) == {"server.port", "guards.flexguard.timeout_s"}
    assert proxy.state.config.server.port == 8080 and proxy.state.config.guards.flexguard.timeout_s == 3
    line = caplog.records[-1].getMessage()
    assert "kept until a restart" in line and "server.port" in line and "guards.flexguard.timeout_s" in line


def test_the_consoles_reload_asks_the_supervisor_so_that_every_worker_reloads(reloadable, monkeypatch):
    """Under ``--workers`` a reload asked of one worker is passed to the supervisor, which
    signals them all; SIGHUP itself (from the supervisor) is not passed back."""
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR_STAND_IN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert supervisor.stdout is not None and supervisor.stdout.readline().strip() == "ready"
        monkeypatch.setenv(SUPERVISOR_PID_ENV, str(supervisor.pid))
        proxy = reloadable()
        proxy.write('[policy]\nstrictness = "strict"\n')
        loop = proxy.server.server.servers[0].get_loop()
        assert asyncio.run_coroutine_threadsafe(_as_coroutine(reload_now, proxy.state), loop).result(10).ok
        time.sleep(0.5)
        assert supervisor.poll() is None  # SIGHUP's own reload asks nobody
        proxy.write('[policy]\nstrictness = "extreme"\n')
        assert not proxy.reload().ok
        time.sleep(0.5)
        assert supervisor.poll() is None  # nor does a reload that failed
        proxy.write('[policy]\nstrictness = "loose"\n')
        assert proxy.reload().ok
        assert supervisor.wait(10) == 0 and supervisor.stdout.read().strip() == "SIGHUP"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)


_SUPERVISOR_STAND_IN = """
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: (print("SIGHUP", flush=True), sys.exit(0)))
print("ready", flush=True)
time.sleep(30)
"""


async def _as_coroutine(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_without_a_config_file_there_is_nothing_to_reload(make_proxy):
    proxy = make_proxy()
    result = reload_now(proxy.server.server.config.app.state)
    assert not result.ok and "without a config file" in (result.error or "")


def test_requests_in_flight_keep_their_policy_across_reloads(reloadable, upstream):
    """Streams started before a reload end under the policy they started with, those
    started after it run under the new one, and none fails."""
    proxy = reloadable("[policy.answer]\ncheck_every_tokens = 1000\n")
    script = {"answer": [f" w{i}" for i in range(20)] + [" risky"], "delay": 0.02}  # MIS 45: flagged at moderate
    started = threading.Barrier(9)
    results: dict[str, list[tuple[int, int, str]]] = {"before": [], "after": []}

    def stream(batch: str, barrier: threading.Barrier | None) -> None:
        results[batch].append(_stream_policy(proxy.url, script, barrier))

    threads = [threading.Thread(target=stream, args=("before", started)) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait(10)  # every stream has its first chunk: all are in flight
    proxy.write('[policy]\nstrictness = "loose"\n[policy.answer]\ncheck_every_tokens = 1000\n')
    assert proxy.reload().changed == ("policy.strictness",)
    after = [threading.Thread(target=stream, args=("after", None)) for _ in range(4)]
    for t in after:
        t.start()
    for t in threads + after:
        t.join(30)
    assert results["before"] == [(40, 40, "content_filter")] * 8
    assert results["after"] == [(60, 60, "stop")] * 4


# -- the real CLI ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, path: Path, base: str, log: Path) -> None:
        self.proc, self.url, self.path, self.base, self.log = proc, url, path, base, log

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if text in line]

    def hangup(self, extra: str, expect: str, count: int = 1) -> list[str]:
        """Rewrite the file, SIGHUP the process, wait for ``count`` more log lines saying ``expect``."""
        before = len(self.lines(expect))
        self.path.write_text(self.base + extra)
        os.kill(self.proc.pid, signal.SIGHUP)
        found = eventually(lambda: len(self.lines(expect)) >= before + count and self.lines(expect), timeout=15)
        assert found, self.log.read_text()[-3000:]
        return found[before:]


@pytest.fixture
def cli(tmp_path, upstream_server, guard_server_thread, upstream, guard) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, extra: str = "") -> Cli:
        port = _free_port()
        path = tmp_path / "config.toml"
        base = f"[server]\nport = {port}\nshutdown_grace_s = 5\n" + config_toml(
            upstream_server[1].url, guard_server_thread[1].url
        )
        path.write_text(base + extra)
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--log-level", "info", *flags],
                cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        return Cli(proc, url, path, base, log)

    yield start
    for proc in procs:
        if proc.poll() is None:
            children = psutil.Process(proc.pid).children(recursive=True)
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                for child in children:
                    child.kill()
                proc.kill()
                proc.wait(10)


def _threshold(url: str, messages: list[dict[str, str]] = BENIGN) -> int:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": messages}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]["threshold"])


def test_sighup_reloads_the_cli_under_load(cli):
    proc = cli(extra="[policy.answer]\ncheck_every_tokens = 1000\n")
    assert _threshold(proc.url) == 40
    script = {"answer": [f" w{i}" for i in range(25)] + [" risky"], "delay": 0.02}
    first = threading.Barrier(7)
    outcomes: list[tuple[str, int, int, str]] = []
    errors: list[BaseException] = []

    def stream(batch: str, barrier: threading.Barrier | None) -> None:
        try:
            outcomes.append((batch, *_stream_policy(proc.url, script, barrier)))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    before = [threading.Thread(target=stream, args=("before", first)) for _ in range(6)]
    for t in before:
        t.start()
    first.wait(10)
    lines = proc.hangup('[policy]\nstrictness = "loose"\n[policy.answer]\ncheck_every_tokens = 1000\n', "config reloaded")
    assert "changed policy.strictness" in lines[0]
    after = [threading.Thread(target=stream, args=("after", None)) for _ in range(6)]
    for t in after:
        t.start()
    for t in before + after:
        t.join(30)
    assert errors == []
    assert sorted(o for o in outcomes if o[0] == "before") == [("before", 40, 40, "content_filter")] * 6
    assert sorted(o for o in outcomes if o[0] == "after") == [("after", 60, 60, "stop")] * 6
    # A bad file: said why, nothing changed, the process still serves.
    lines = proc.hangup('[policy]\nstrictness = "extreme"\n', "config reload from")
    assert "the running config is unchanged" in lines[0] and "`strictness`" in lines[0]
    assert _threshold(proc.url) == 60
    assert proc.proc.poll() is None


def test_sighup_reaches_every_worker(cli):
    proc = cli("--workers", "2", extra=_tenants(KEY_A, KEY_B))
    deadline = time.monotonic() + 30
    while len([c for c in psutil.Process(proc.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    workers = {c.pid for c in psutil.Process(proc.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())}
    client_b = openai.OpenAI(base_url=f"{proc.url}/v1", api_key=KEY_B, max_retries=0, timeout=30)
    assert client_b.chat.completions.create(model="m", messages=BENIGN).choices[0].message.content
    lines = proc.hangup('[policy]\nstrictness = "strict"\n' + _tenants(KEY_A), "config reloaded", count=2)
    assert {int(line.split("(pid ", 1)[1].split(")", 1)[0]) for line in lines} == workers
    # A tenant's policy is [policy] with its changes: a stricter [policy] changes it too.
    assert all("changed policy.strictness, tenants[sk-team-a].policy.strictness, tenants[sk-team-b]" in line for line in lines), (
        lines
    )
    # Whichever worker answers: the new policy and keys, on fresh connections.
    for _ in range(8):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{proc.url}/v1", api_key=KEY_B, max_retries=0, timeout=30).chat.completions.create(
                model="m", messages=BENIGN
            )
        r = httpx.post(
            f"{proc.url}/v1/chat/completions",
            json={"model": "m", "messages": BENIGN},
            headers={"authorization": f"Bearer {KEY_A}"},
        )
        assert r.json()["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]["threshold"] == 20
    # A bad file is refused once, by the supervisor, and reaches no worker.
    lines = proc.hangup("[policy\n", "config reload from")
    assert "not valid TOML" in lines[0]
    time.sleep(1)
    assert len(proc.lines("config reload from")) == 1
    assert {c.pid for c in psutil.Process(proc.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())} == workers


def _stream_policy(url: str, script: dict[str, Any], barrier: threading.Barrier | None) -> tuple[int, int, str]:
    """One streamed request: the prompt's and the answer's thresholds it was screened at,
    and its finish reason. With ``barrier``, waits there once the first chunk arrived."""
    body = {"model": "m", "messages": BENIGN, "stream": True, "x_script": script}
    with httpx.Client(timeout=30) as client, client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if barrier is not None and len(events) == 1:
                    barrier.wait(10)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    prompt = chunks[0]["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]
    final = next(c for ch in chunks for c in ch["choices"] if c.get("finish_reason"))
    return prompt["threshold"], final["content_filter_results"]["guardproxy"]["answer"]["threshold"], final["finish_reason"]
