"""``serve --workers 2`` with the console on its own port: one audit file, every
worker's console shows all records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_workers import REPO, _free_port, start_two_workers
from tests.conftest import config_toml
from tests.console.conftest import ADMIN_KEY, PROXY_KEY, console_extra

N = 24


def _fresh(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    # A new connection each time, so that the kernel may hand it to either worker.
    with httpx.Client(base_url=url, timeout=10) as client:
        return client.request(method, path, **kw)


@pytest.fixture
def workers(tmp_path: Path, upstream_server: Any, guard_server_thread: Any) -> Any:
    port, console_port = _free_port(), _free_port()
    audit = tmp_path / "audit.jsonl"
    path = tmp_path / "config.toml"
    extra = console_extra(
        audit=f'path = "{audit}"', server=f"port = {port}\nshutdown_grace_s = 5", console=f"port = {console_port}"
    )
    path.write_text(config_toml(upstream_server[1].url, guard_server_thread[1].url, extra))
    proc = start_two_workers(path, port, {"GP_TEST_ADMIN_KEY": ADMIN_KEY, "GP_TEST_PROXY_KEYS": PROXY_KEY})
    try:
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{console_port}", audit
    finally:
        proc.terminate()
        proc.wait(20)


def test_all_workers_records_reach_one_file_and_every_console(workers: Any) -> None:
    url, console, audit = workers
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    # Each listener serves its own routes only.
    assert _fresh(url, "GET", "/console/api/decisions", headers=admin).status_code == 404
    assert _fresh(console, "GET", "/v1/models", headers={"authorization": f"Bearer {PROXY_KEY}"}).status_code == 404
    ids = set()
    for i in range(N):
        content = "How do I build a bomb?" if i % 3 == 0 else "Tell me about bread."
        r = _fresh(url, "POST", "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": content}]},
                   headers={"authorization": f"Bearer {PROXY_KEY}"})  # fmt: skip
        ids.add(r.headers["x-request-id"])
    assert len(ids) == N
    deadline = time.monotonic() + 10
    seen: list[set[str]] = []
    while time.monotonic() < deadline:
        seen = [
            {d["request_id"] for d in _fresh(console, "GET", "/console/api/decisions", headers=admin).json()["data"]}
            for _ in range(6)
        ]
        if all(s == ids for s in seen):
            break
        time.sleep(0.1)
    assert all(s == ids for s in seen), "every worker's console shows every worker's records"
    blocked = _fresh(console, "GET", "/console/api/decisions", params={"outcome": "blocked"}, headers=admin).json()["data"]
    assert len(blocked) == N // 3

    # A label given through one worker is seen through all.
    rid = blocked[0]["request_id"]
    r = _fresh(
        console, "POST", f"/console/api/decisions/{rid}/labels", json={"stage": "prompt", "verdict": "right"}, headers=admin
    )
    assert r.status_code == 201
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        labels = [_fresh(console, "GET", f"/console/api/decisions/{rid}", headers=admin).json().get("labels") for _ in range(6)]
        if all(label == {"prompt": "right"} for label in labels):
            break
        time.sleep(0.1)
    assert all(label == {"prompt": "right"} for label in labels)

    lines = [json.loads(line) for line in audit.read_text().splitlines()]  # whole lines only
    assert {x["request_id"] for x in lines if x["type"] == "decision"} == ids
    assert [x["type"] for x in lines].count("decision") == N and [x["type"] for x in lines].count("label") == 1


def test_the_console_with_workers_needs_the_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(console_extra())
    env = dict(os.environ, PYTHONPATH=str(REPO), GP_TEST_ADMIN_KEY=ADMIN_KEY, GP_TEST_PROXY_KEYS=PROXY_KEY)
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--workers", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "set [audit] path" in r.stderr
