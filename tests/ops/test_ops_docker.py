"""The container: what can be checked without a Docker engine.

The Dockerfile's essentials are checked as text, the image's entry point is run as the
console script would run it, the compose layout is checked against deploy/config.toml,
and the proxy is started with the image's CMD arguments and stopped with SIGTERM.
Building the image and running the compose file need Docker and GPUs: not done here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from proxy import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def test_dockerfile_essentials():
    assert _instructions("FROM") == ["python:3.11-slim"]
    [user] = _instructions("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert "useradd" in " ".join(_instructions("RUN"))
    [install] = [r for r in _instructions("RUN") if "pip install" in r]
    assert '".[otlp]"' in install and "vllm" not in install and "torch" not in install
    [health] = _instructions("HEALTHCHECK")
    assert "python" in health and "urllib.request" in health and "curl" not in health
    assert re.search(r"GUARDPROXY_HEALTH_URL=http://127\.0\.0\.1:8080/healthz", DOCKERFILE)
    assert [json.loads(e) for e in _instructions("ENTRYPOINT")] == [["guardproxy", "serve"]]
    assert [json.loads(c) for c in _instructions("CMD")] == [["--config", "/etc/guardproxy/config.toml", "--host", "0.0.0.0"]]
    assert _instructions("EXPOSE") == ["8080"]
    # The user is set before the entry point, so the proxy never runs as root.
    assert DOCKERFILE.index("\nUSER ") < DOCKERFILE.index("\nENTRYPOINT ")


def _entry_point_command() -> list[str]:
    """``guardproxy`` as pip's console-script wrapper runs it, from pyproject.toml."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["guardproxy"]
    module, func = target.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.argv[0] = 'guardproxy'; sys.exit({func}())"]


def test_the_entry_point_serve_help():
    out = subprocess.run([*_entry_point_command(), "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: guardproxy serve") and "--config" in out.stdout and "--host" in out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_image_command_starts_answers_healthz_and_stops_on_sigterm():
    port = _free_port()
    # The image's CMD, with the deploy config and loopback instead of 0.0.0.0.
    args = ["--config", str(ROOT / "deploy/config.toml"), "--host", "127.0.0.1", "--port", str(port)]
    # deploy/config.toml names the proxy keys' variable: without it the start is refused.
    env = dict(os.environ, PYTHONUNBUFFERED="1", GUARDPROXY_API_KEYS="sk-docker-test")
    command = [sys.executable, "-m", "proxy", "serve", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.05)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: exit status 128 + 15.
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
        out = proc.stdout.read().decode()
        assert "Application shutdown complete." in out and "Finished server process" in out
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_compose_layout_matches_the_deploy_config():
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"proxy", "upstream", "flexguard", "reasoningshield"}
    config = load_config(ROOT / "deploy/config.toml")

    proxy = services["proxy"]
    assert proxy["build"]["context"] == ".." and "./config.toml:/etc/guardproxy/config.toml:ro" in proxy["volumes"]
    assert set(proxy["depends_on"]) == {"upstream", "flexguard", "reasoningshield"}
    grace = int(proxy["stop_grace_period"].rstrip("s"))
    assert grace > config.server.shutdown_grace_s + 3  # the drain deadline, then the hard stop
    assert config.server.host == "0.0.0.0" and proxy["ports"][0].endswith(":8080") and config.server.port == 8080

    for name in ("upstream", "flexguard", "reasoningshield"):
        service = services[name]
        assert service["image"].startswith("vllm/vllm-openai:")
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
        assert any(v.endswith(f":/models/{name}:ro") for v in service["volumes"])
        assert f"--model=/models/{name}" in service["command"]
    assert "--reasoning-parser=qwen3" in services["upstream"]["command"]
    for name in ("flexguard", "reasoningshield"):
        command = services[name]["command"]
        assert not any(a.startswith("--reasoning-parser") for a in command)
        guard = getattr(config.guards, name)
        assert f"--served-model-name={guard.model}" in command
        assert urlsplit(guard.base_url).hostname == name and urlsplit(guard.base_url).port == 8000
    assert urlsplit(config.upstream.base_url).hostname == "upstream"
