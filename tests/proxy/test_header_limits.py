"""Bounded request headers: too many header fields, or too many bytes of them, get an
OpenAI-shaped 431 before the app sees the request, on both of uvicorn's HTTP parsers.
Before the limits, 8,000 headers of 8 KB each were read whole and accepted."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from proxy import create_app, parse_config
from proxy.ops._http11 import _h11_protocol, _httptools_protocol, http_protocol
from proxy.ops._shutdown import server_for
from tests.conftest import config_toml
from tests.support.serving import ServerThread

LIMITS = "[server]\nmax_header_count = 20\nmax_header_bytes = 4096"
REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Tell me about bread."}]}).encode()


def _exchange(port: int, pieces: list[bytes], pause_s: float = 0.0) -> bytes:
    """Send ``pieces`` (a pause between them: separate network reads), then read until
    the server closes or a whole response arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before the rest
            time.sleep(pause_s)
        data = b""
        try:
            while piece := sock.recv(65536):
                data += piece
                head, sep, body = data.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                if sep and length and len(body) >= length[0]:
                    break
        except ConnectionResetError:
            pass
    return data


def _assert_431(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_header_fields_too_large"
    assert "20 fields" in error["message"] and "4096 bytes" in error["message"]


def _with_body(headers: bytes) -> bytes:
    return REQUEST + headers + b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY


def _fields(count: int, size: int = 1) -> bytes:
    return b"".join(b"x-f%d: %s\r\n" % (i, b"v" * size) for i in range(count))


def test_too_many_header_fields_get_a_431_and_reach_nothing(make_proxy, upstream, guard):
    proxy = make_proxy(LIMITS)
    _assert_431(_exchange(proxy.server.port, [_with_body(_fields(30))]))
    assert upstream.calls == [] and guard.requests == []
    # Within the limits (3 + 15 fields, about 1 KB) the same request is served.
    ok = _exchange(proxy.server.port, [_with_body(_fields(15, 40))])
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]


def test_one_huge_header_is_refused_while_it_still_arrives(make_proxy, upstream):
    """The block never ends: the 431 comes from the bytes counted so far, so the proxy
    never holds more than the limit and one network read of it."""
    proxy = make_proxy(LIMITS)
    pieces = [REQUEST + b"x-huge: "] + [b"h" * 2048] * 64  # 128 KiB and no end of line
    _assert_431(_exchange(proxy.server.port, pieces, pause_s=0.01))
    assert upstream.calls == []


def test_many_large_headers_arriving_whole_are_refused(make_proxy, upstream):
    proxy = make_proxy(LIMITS)
    _assert_431(_exchange(proxy.server.port, [_with_body(_fields(8, 1024))]))  # 8 fields, 8 KiB
    assert upstream.calls == []


@pytest.mark.parametrize("protocol", [_httptools_protocol, _h11_protocol], ids=["httptools", "h11"])
def test_both_parsers_enforce_the_limits(protocol):
    limits = parse_config(LIMITS).server

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with ServerThread(app, lifespan="off", http=protocol(limits)) as server:
        _assert_431(_exchange(server.port, [_with_body(_fields(30))]))
        _assert_431(_exchange(server.port, [REQUEST + b"x-huge: "] + [b"h" * 2048] * 64, pause_s=0.01))
        _assert_431(_exchange(server.port, [_with_body(_fields(8, 1024))]))
        assert _exchange(server.port, [_with_body(_fields(15, 40))]).startswith(b"HTTP/1.1 200")
        # A request line or header block that does not parse is still a 400.
        bad = _exchange(server.port, [b"GARBAGE / HTTP/1.1\r\n\x00\x01\r\n\r\n"])
        assert (
            bad.startswith(b"HTTP/1.1 400")
            and json.loads(bad.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_http_request"
        )


def test_the_server_runs_with_the_configured_limits():
    config = parse_config(config_toml("http://127.0.0.1:9", "http://127.0.0.1:9", LIMITS))
    server = server_for(create_app(config), grace_s=1)
    assert server.config.http.header_limits is config.server
    defaults = http_protocol().header_limits
    assert (defaults.max_header_count, defaults.max_header_bytes) == (100, 65536)


@pytest.mark.parametrize("line", ["max_header_count = 0", "max_header_bytes = 0"])
def test_header_limits_must_be_positive(line):
    with pytest.raises(Exception, match=line.split()[0]):
        parse_config(f"[server]\n{line}")
