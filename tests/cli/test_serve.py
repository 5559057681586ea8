"""``guardproxy serve``: its flags, its start-up check and ``--wait``, and /readyz's model check.

Against the scripted upstream and guard servers (tests/support/scripted.py); the proxy
under test runs in this process, or as ``python -m proxy serve`` where signals and the
process's own log matter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy import create_app, parse_config
from proxy._cli import build_parser, main, serve_config
from proxy.ops._readiness import check_at_startup
from tests.conftest import config_toml
from tests.support.scripted import ScriptedUpstream
from tests.support.serving import ServerThread

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _startup_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "guardproxy.startup"]


# -- the flags ---------------------------------------------------------------------------


def test_the_flags_build_the_config_the_toml_does():
    args = build_parser().parse_args(
        [
            "serve",
            "--upstream", "http://upstream.internal:8000/v1",
            "--flexguard", "http://fg.internal:8001/v1",
            "--flexguard-model", "Tommy-DING/FlexGuard-Qwen3-8B",
            "--reasoningshield", "http://rs.internal:8002/v1/",
        ]
    )  # fmt: skip
    toml = """
[upstream]
base_url = "http://upstream.internal:8000/v1"

[guards.flexguard]
base_url = "http://fg.internal:8001/v1"
model = "Tommy-DING/FlexGuard-Qwen3-8B"

[guards.reasoningshield]
base_url = "http://rs.internal:8002/v1/"
model = "ReasoningShield-3B"
"""
    config = serve_config(args)
    assert config == parse_config(toml)
    assert config.guards.reasoningshield.model == "ReasoningShield-3B"  # the default name


def test_without_a_file_or_flags_every_option_has_its_default():
    assert serve_config(build_parser().parse_args(["serve"])) == parse_config("")


def test_the_config_file_wins_where_it_sets_a_key(tmp_path, caplog):
    path = tmp_path / "config.toml"
    path.write_text('[upstream]\nbase_url = "http://from-file:8000/v1"\n\n[policy]\nstrictness = "strict"\n')
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--upstream", "http://from-flag:9000/v1", "--flexguard", "http://fg:8001/v1"]
    )
    with caplog.at_level(logging.WARNING, logger="guardproxy"):
        config = serve_config(args)
    assert config.upstream.base_url == "http://from-file:8000/v1"
    assert config.guards.flexguard.base_url == "http://fg:8001/v1"  # the file leaves it out
    assert config.policy.strictness == "strict"
    assert "--upstream http://from-flag:9000/v1 ignored" in caplog.text and "upstream.base_url" in caplog.text


def test_upstream_flag_is_refused_beside_a_routing_table(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text('[[upstreams]]\nname = "a"\nbase_url = "http://a:8000/v1"\nmodels = ["*"]\n')
    assert (
        serve_config(build_parser().parse_args(["serve", "--config", str(path), "--flexguard", "http://fg/v1"])).routes()[0].name
        == "a"
    )
    assert main(["serve", "--config", str(path), "--upstream", "http://b:8000/v1"]) == 2
    assert "routes by model with [[upstreams]]" in capsys.readouterr().err


def test_a_bad_flag_is_a_config_error_naming_the_key(capsys):
    assert main(["serve", "--upstream", "ftp://nowhere"]) == 2
    err = capsys.readouterr().err
    assert "the command line" in err and "`base_url` must start with http://" in err and "`upstream`" in err


# -- the start-up check -------------------------------------------------------------------


def test_startup_logs_one_line_per_dependency_with_url_and_cause(guard_server_thread, guard, caplog, monkeypatch):
    monkeypatch.setattr(guard, "models", ("Tommy-DING/FlexGuard-Qwen3-8B",))
    upstream_port = _closed_port()
    config = parse_config(config_toml(f"http://127.0.0.1:{upstream_port}", guard_server_thread[1].url))
    guards = {"flexguard": config.guards.flexguard, "reasoningshield": config.guards.reasoningshield}
    with caplog.at_level(logging.INFO):
        ready = asyncio.run(check_at_startup(config, guards))
    assert not ready
    lines = _startup_lines(caplog)
    assert len(lines) == 3, lines
    upstream, flexguard, shield = lines
    assert upstream.startswith(f"upstream (http://127.0.0.1:{upstream_port}/v1): NOT READY: unreachable (")
    guard_url = f"{guard_server_thread[1].url}/v1"
    assert flexguard.startswith(
        f"flexguard ({guard_url}, model flexguard-test): NOT READY: serves Tommy-DING/FlexGuard-Qwen3-8B, "
    )
    assert "not the configured model flexguard-test" in flexguard and "--served-model-name flexguard-test" in flexguard
    assert shield.startswith("reasoningshield (") and "NOT READY" in shield


def test_startup_says_ready_and_what_the_upstream_serves(upstream_server, guard_server_thread, guard, caplog):
    config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url))
    guards = {"flexguard": config.guards.flexguard, "reasoningshield": config.guards.reasoningshield}
    with caplog.at_level(logging.INFO):
        assert asyncio.run(check_at_startup(config, guards))
    assert _startup_lines(caplog) == [
        f"upstream ({upstream_server[1].url}/v1): ready, serves scripted-model",
        f"flexguard ({guard_server_thread[1].url}/v1, model flexguard-test): ready, serves it",
        f"reasoningshield ({guard_server_thread[1].url}/v1, model reasoningshield-test): ready, serves it",
    ]


def test_wait_gives_up_after_its_time_and_exits_1(guard_server_thread, guard, caplog):
    guard_url = f"{guard_server_thread[1].url}/v1"
    argv = [
        "serve", "--upstream", f"http://127.0.0.1:{_closed_port()}/v1",
        "--flexguard", guard_url, "--flexguard-model", "flexguard-test",
        "--reasoningshield", guard_url, "--reasoningshield-model", "reasoningshield-test",
        "--wait", "1.5",
    ]  # fmt: skip
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 1
    assert 1.5 <= time.monotonic() - start < 10
    lines = _startup_lines(caplog)
    assert "waiting up to 1.5 s for upstream" in lines
    assert lines[-1] == "not ready after 1.5 s: upstream"
    # The guard servers' GET /models went through httpx: its INFO line stays out.
    assert "HTTP Request" not in caplog.text
    assert logging.getLogger("httpx").level == logging.WARNING


def test_httpx_request_lines_come_back_with_debug_logging():
    main(["serve", "--upstream", "ftp://bad", "--log-level", "debug"])  # exits at the config error
    assert logging.getLogger("httpx").level == logging.DEBUG
    main(["serve", "--upstream", "ftp://bad"])
    assert logging.getLogger("httpx").level == logging.WARNING


def test_wait_waits_for_the_upstream_then_starts(guard_server_thread, guard):
    """Containers start in any order: the proxy waits for an upstream that comes up later."""
    upstream = ServerThread(ScriptedUpstream())  # bound, not listening: connections are refused
    port = _closed_port()
    guard_url = f"{guard_server_thread[1].url}/v1"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "proxy", "serve", "--port", str(port),
            "--upstream", f"{upstream.url}/v1",
            "--flexguard", guard_url, "--flexguard-model", "flexguard-test",
            "--reasoningshield", guard_url, "--reasoningshield-model", "reasoningshield-test",
            "--wait", "60",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        _until(lambda: any(line.startswith("waiting up to 60 s for upstream") for line in lines), proc, lines)
        time.sleep(1.5)  # it keeps waiting, and does not serve meanwhile
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")
        with upstream:
            _until(lambda: _answers(f"http://127.0.0.1:{port}/readyz"), proc, lines)
            assert any(line.startswith(f"upstream ({upstream.url}/v1): ready") for line in lines), lines
            assert any(line.startswith("all dependencies ready after") for line in lines), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=5)
    startup = [line for line in lines if line.startswith(("upstream (", "flexguard (", "reasoningshield ("))]
    assert startup[0].startswith(f"upstream ({upstream.url}/v1): NOT READY: unreachable"), startup
    assert not any("HTTP Request" in line for line in lines), lines


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _until(condition, proc: subprocess.Popen[str], lines: list[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("".join(lines))
        time.sleep(0.1)


# -- /readyz --------------------------------------------------------------------------------


def test_readyz_is_503_while_a_guard_serves_another_model_and_logs_it(
    upstream_server, guard_server_thread, guard, caplog, monkeypatch
):
    config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url))
    with caplog.at_level(logging.INFO, logger="guardproxy.startup"), ServerThread(create_app(config)) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        monkeypatch.setattr(guard, "models", ("Tommy-DING/FlexGuard-Qwen3-8B", "ReasoningShield/ReasoningShield-3B"))
        for _ in range(3):  # a probe every few seconds: one log line per change, not per probe
            ready = httpx.get(f"{server.url}/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"ready": False, "checks": {"upstream": True, "flexguard": False, "reasoningshield": False}}
        problems = [line for line in _startup_lines(caplog) if "NOT READY" in line]
        assert len(problems) == 2, problems
        assert problems[0].startswith(f"flexguard ({guard_server_thread[1].url}/v1, model flexguard-test): NOT READY: ")
        assert (
            "serves Tommy-DING/FlexGuard-Qwen3-8B, ReasoningShield/ReasoningShield-3B, not the configured model flexguard-test"
            in problems[0]
        )
        monkeypatch.undo()
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert _startup_lines(caplog)[-1].endswith("): ready, serves it")


def test_a_serve_that_returns_leaves_sighup_as_it_found_it(tmp_path):
    """serve holds SIGHUP until its handler is in place; one that stops before (a config
    that names an absent secret) must not leave the signal held for whatever this
    process starts next (a held mask is inherited by child processes)."""
    import signal

    from proxy._cli import main

    config = tmp_path / "config.toml"
    config.write_text('[server]\napi_keys_env = "GP_TEST_SURELY_UNSET_KEYS"\n')
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert signal.SIGHUP not in before
    assert main(["serve", "--config", str(config)]) == 2
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_startup_says_whether_each_upstream_can_continue_a_steer(upstream_server, guard_server_thread, guard, caplog):
    steer = '[policy.reasoning]\naction = "steer"\n'
    config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url, steer))
    guards = {"flexguard": config.guards.flexguard, "reasoningshield": config.guards.reasoningshield}
    with caplog.at_level(logging.INFO):
        assert asyncio.run(check_at_startup(config, guards))
    assert _startup_lines(caplog)[-1] == (
        f"steering ({upstream_server[1].url}/v1): ready, continues through POST /tokenize and /completions"
    )
    # An upstream without vLLM's /tokenize (the guard server's answers 400 to this body)
    # cannot continue: a warning that every steer falls back, not a failed start.
    caplog.clear()
    config = parse_config(config_toml(guard_server_thread[1].url, guard_server_thread[1].url, steer))
    with caplog.at_level(logging.INFO):
        asyncio.run(check_at_startup(config, guards))
    line = _startup_lines(caplog)[-1]
    assert line.startswith("steering (") and "NOT READY" in line and "falls back to steer_fallback" in line
    caplog.clear()
    config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url, steer, 'continuation = "none"'))
    with caplog.at_level(logging.INFO):
        assert asyncio.run(check_at_startup(config, guards))
    assert 'continuation = "none"' in _startup_lines(caplog)[-1]
