"""The container: what can be checked without a Docker engine.

The Dockerfile's essentials are checked as text, the image's entry point is run as the
console script would run it, and the proxy is started with the image's CMD arguments and
stopped with SIGTERM. The image itself is built and run in the image tier (tests/image);
the compose file is checked in test_deploy_compose.py.
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

import httpx

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def test_dockerfile_essentials():
    # Debian's own Python: the base the image tier (tests/image) builds and runs on.
    assert _instructions("ARG") == ["BASE_IMAGE=debian:bookworm-slim"] and _instructions("FROM") == ["${BASE_IMAGE}"]
    assert DOCKERFILE.index("\nARG BASE_IMAGE") < DOCKERFILE.index("\nFROM ")
    [system] = [r for r in _instructions("RUN") if "apt-get install" in r]
    assert "python3 python3-venv ca-certificates" in system and "rm -rf /var/lib/apt/lists/*" in system
    assert "groupadd --system --gid 10001" in system and "useradd --system --uid 10001 --gid 10001" in system
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
