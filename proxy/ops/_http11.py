"""uvicorn's HTTP/1.1 protocols, answering requests they cannot parse in the OpenAI shape.

uvicorn answers a request line or header block it cannot parse itself, before any ASGI
app sees it, with ``text/plain`` "Invalid HTTP request received.". An OpenAI SDK then
reports an unreadable error; these subclasses send the same 400 as a JSON error body.
``server_for`` (``_shutdown``) and the tests' servers run with ``http_protocol()``.
"""

from __future__ import annotations

from typing import Any

from ..protocols._wire import error_body

__all__ = ["http_protocol"]

_BODY = error_body("Invalid HTTP request received.", "invalid_request_error", "invalid_http_request")


def _response_bytes(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 400 Bad Request\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        _BODY,
    ]
    return b"".join(lines)


def http_protocol() -> type[Any]:
    """The protocol class uvicorn's "auto" would pick (httptools if installed, else
    h11), with an OpenAI-shaped 400."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class OpenAIShaped400(base):  # type: ignore[misc]
        def send_400_response(self, msg: str) -> None:
            self.transport.write(_response_bytes(list(self.server_state.default_headers)))
            self.transport.close()

    return OpenAIShaped400
