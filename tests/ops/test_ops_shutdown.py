"""Graceful shutdown with a stream in flight: it finishes within the grace period, or it is
ended well-formed at the deadline (final chunk, then ``data: [DONE]``)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy import create_app, parse_config
from proxy.ops._shutdown import ProxyServer, server_for
from tests.conftest import config_toml
from tests.ops._helpers import BENIGN
from tests.support.sse import WireStream


class _Served:
    def __init__(self, server: ProxyServer, url: str, thread: threading.Thread) -> None:
        self.server, self.url, self.thread = server, url, thread

    def shutdown(self) -> None:
        """What SIGTERM does: uvicorn's exit flag."""
        self.server.should_exit = True


@pytest.fixture
def serve(upstream_server: Any, guard_server_thread: Any) -> Iterator[Any]:
    stack = contextlib.ExitStack()

    def start(grace_s: float, extra: str = "") -> _Served:
        extra = f"[server]\nshutdown_grace_s = {grace_s}\n{extra}"
        config = parse_config(config_toml(upstream_server[1].url, guard_server_thread[1].url, extra))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = server_for(create_app(config), grace_s=config.server.shutdown_grace_s, log_level="warning")
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.01)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()

        stack.callback(stop)
        return _Served(server, f"http://127.0.0.1:{sock.getsockname()[1]}", thread)

    with stack:
        yield start


class _Reader(threading.Thread):
    """Reads a stream in the background; ``first`` is set once the first event arrived."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, dict(body, stream=True)
        self.first = threading.Event()
        self.raw = b""
        self.status = 0
        self.ended_at = 0.0

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            with client.stream("POST", f"{self.url}/v1/chat/completions", json=self.body) as r:
                self.status = r.status_code
                for piece in r.iter_bytes():
                    self.raw += piece
                    if b"\n\n" in self.raw:
                        self.first.set()
        self.ended_at = time.monotonic()
        self.first.set()

    def wire(self) -> WireStream:
        events = [b[6:] for b in self.raw.decode().split("\n\n") if b.startswith("data: ")]
        return WireStream(self.status, httpx.Headers(), events, self.raw)


def _body(tokens: int, delay: float) -> dict[str, Any]:
    answer = [f" w{i}" for i in range(tokens)]
    return {"model": "m", "messages": BENIGN, "x_script": {"answer": answer, "delay": delay}}


def test_a_stream_that_ends_within_the_grace_period_completes(serve, upstream):
    served = serve(grace_s=5.0)
    reader = _Reader(served.url, _body(tokens=20, delay=0.04))  # about one second
    reader.start()
    assert reader.first.wait(5)
    served.shutdown()
    # New connections are refused at once, while the stream goes on.
    time.sleep(0.25)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/healthz", timeout=2)
    assert reader.is_alive()
    reader.join(5)
    wire = reader.wire()
    wire.assert_well_formed()
    assert wire.finish_reasons() == ["stop"]
    assert wire.text() == "".join(f" w{i}" for i in range(20))
    assert upstream.calls[-1].completed
    served.thread.join(5)
    assert not served.thread.is_alive()


def test_a_stream_past_the_deadline_ends_well_formed(serve, upstream):
    served = serve(grace_s=0.5, extra="[policy.answer]\ncheck_every_tokens = 4")
    reader = _Reader(served.url, _body(tokens=200, delay=0.02))  # about four seconds
    reader.start()
    assert reader.first.wait(5)
    started = time.monotonic()
    served.shutdown()
    reader.join(5)
    assert not reader.is_alive()
    assert 0.4 < reader.ended_at - started < 2.0  # the deadline, not the stream's end
    wire = reader.wire()
    wire.assert_well_formed()
    assert wire.status == 200
    final = wire.chunks[-1]
    assert final["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert final["guardproxy"] == {"ended_by": "shutdown"} and final["id"] == "chatcmpl-scripted"
    assert wire.finish_reasons() == ["length"]
    # What passed its checks was released; what had not, was not.
    released = wire.text()
    assert 0 < len(released) < len("".join(f" w{i}" for i in range(200)))
    assert "".join(f" w{i}" for i in range(200)).startswith(released)
    # The upstream call was closed (vLLM aborts the generation), and the server exited.
    # The scripted upstream notices the close at its next token: wait for that.
    deadline = time.monotonic() + 5
    while upstream.calls[-1].finished_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.calls[-1].disconnected and not upstream.calls[-1].completed
    served.thread.join(5)
    assert not served.thread.is_alive()


def test_a_response_not_started_at_the_deadline_is_a_503(serve, guard):
    guard.slow_delay = 1.0  # longer than the grace period; short for the guard server's own shutdown
    served = serve(grace_s=0.3)
    result: dict[str, Any] = {}

    def call() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "guardslow question"}]}
        r = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=10)
        result.update(status=r.status_code, body=r.json())

    t = threading.Thread(target=call, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not guard.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    served.shutdown()
    t.join(5)
    assert result["status"] == 503
    assert result["body"]["error"]["code"] == "shutting_down"


def test_readyz_is_503_while_draining(serve):
    served = serve(grace_s=5.0)
    app = served.server.config.app
    app.state.drain.draining = True
    r = httpx.get(f"{served.url}/readyz")
    assert r.status_code == 503 and json.loads(r.text)["checks"] == {"shutting_down": True}
