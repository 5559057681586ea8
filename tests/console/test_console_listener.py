"""``[console] port``: the console on its own listener of ``guardproxy serve`` (one process;
tests/console/test_console_workers.py has it with several)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import parse_config
from proxy.exceptions import ConfigError
from tests.cli.test_workers import REPO, _free_port
from tests.conftest import config_toml
from tests.console.conftest import ADMIN_KEY, PROXY_KEY, console_extra


def test_the_console_on_its_own_port(tmp_path: Path, upstream_server: Any, guard_server_thread: Any) -> None:
    port, console_port = _free_port(), _free_port()
    path = tmp_path / "config.toml"
    extra = console_extra(server=f"port = {port}", console=f'port = {console_port}\nhost = "127.0.0.1"')
    path.write_text(config_toml(upstream_server[1].url, guard_server_thread[1].url, extra))
    env = dict(os.environ, PYTHONPATH=str(REPO), GP_TEST_ADMIN_KEY=ADMIN_KEY, GP_TEST_PROXY_KEYS=PROXY_KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url, console = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{console_port}"
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
                       headers={"authorization": f"Bearer {PROXY_KEY}"})  # fmt: skip
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        assert httpx.get(f"{url}/console", timeout=5).status_code == 404
        assert httpx.get(f"{url}/console/api/decisions", headers=admin, timeout=5).status_code == 404
        assert httpx.get(f"{console}/healthz", timeout=5).status_code == 404
        assert httpx.get(f"{console}/console", timeout=5).status_code == 200
        assert httpx.get(f"{console}/console/api/decisions/{rid}", headers=admin, timeout=5).json()["outcome"] == "passed"
        assert httpx.get(f"{console}/console/api/decisions", headers={"authorization": f"Bearer {PROXY_KEY}"}).status_code == 403
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_console_port_needs_the_console() -> None:
    with pytest.raises(ConfigError, match="set `enabled = true` too"):
        parse_config("[console]\nport = 8090\n")
