"""``guardproxy serve --workers N``: one port, N processes, the instance's metrics, one drain.

The real CLI (``python -m proxy serve``) as a subprocess, against the scripted upstream
and guard servers; the OpenAI SDK is the client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import config_toml

REPO = Path(__file__).resolve().parents[2]
BENIGN = [{"role": "user", "content": "How do plants make food?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "guardproxy_requests_total"
    )


def _worker_pids(pid: int) -> set[int]:
    """The workers (not multiprocessing's resource tracker)."""
    return {c.pid for c in psutil.Process(pid).children() if "spawn_main" in " ".join(c.cmdline())}


def start_two_workers(config: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``guardproxy serve --workers 2`` on ``config``, once it answers and both workers run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", "2", "--log-level", "warning"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and len(_worker_pids(proc.pid)) == 2:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        time.sleep(0.2)
    return proc


@pytest.fixture
def workers(tmp_path, upstream_server, guard_server_thread):
    """A 2-worker proxy; yields (process, base url)."""
    _, up = upstream_server
    _, guard = guard_server_thread
    port = _free_port()
    path = tmp_path / "config.toml"
    path.write_text(f"[server]\nport = {port}\nshutdown_grace_s = 5\n" + config_toml(up.url, guard.url))
    proc = start_two_workers(path, port)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
                child.kill()
        proc.wait(10)


def test_two_workers_serve_one_port_report_the_instance_and_drain_on_sigterm(workers):
    proc, url = workers
    pids = _worker_pids(proc.pid)
    assert len(pids) == 2

    # Served, by both workers: each accepts some of the concurrent connections.
    clients = [openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=30) for _ in range(12)]
    before = {pid: psutil.Process(pid).cpu_times().user + psutil.Process(pid).cpu_times().system for pid in pids}
    answers: list[str] = []

    def ask(client: openai.OpenAI) -> None:
        script = {"answer": "Photosynthesis.", "delay": 0.05}
        r = client.chat.completions.create(model="m", messages=BENIGN, extra_body={"x_script": script})
        answers.append(r.choices[0].message.content or "")

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == ["Photosynthesis."] * 24
    used = {pid: psutil.Process(pid).cpu_times().user + psutil.Process(pid).cpu_times().system - before[pid] for pid in pids}
    # An idle worker uses next to no CPU; one that served its share of 24 requests uses
    # a few tens of milliseconds (0.04 s was the least seen in CI).
    assert all(v > 0.015 for v in used.values()), used

    # The instance's metrics, whichever worker answers the scrape.
    assert [_requests_total(url) for _ in range(6)] == [24.0] * 6

    # SIGTERM drains every worker: a held stream finishes, then the instance exits 0.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="m", messages=BENIGN, stream=True, extra_body={"x_script": {"answer": "a" * 40, "delay": 0.05}}
    )
    first = next(iter(stream))
    proc.send_signal(signal.SIGTERM)
    rest = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert text == "a" * 40 and rest[-1].choices[0].finish_reason == "stop"
    assert proc.wait(30) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_in_process_guards_refuse_more_than_one_worker(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[guards.reasoningshield]\nbackend = "transformers"\nmodel = "tiny-rs"\n')
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--workers", "2"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "guards.reasoningshield runs in process" in run.stderr and "tiny-rs" in run.stderr


@pytest.mark.parametrize(("value", "message"), [("0", "at least 1"), ("many", "a number of processes")])
def test_a_bad_workers_value_is_a_clear_error(value, message, capsys):
    from proxy._cli import main

    assert main(["serve", "--workers", value]) == 2
    assert message in capsys.readouterr().err
