"""uvicorn's HTTP/1.1 protocols: OpenAI-shaped answers to requests they refuse, and bounded headers.

uvicorn answers a request line or header block it cannot parse itself, before any ASGI
app sees it, with ``text/plain`` "Invalid HTTP request received.". An OpenAI SDK then
reports an unreadable error; these subclasses send the same 400 as a JSON error body.

Neither parser bounds the header block: httptools (llhttp) accepts any number of header
fields of any size, h11 only the bytes of a block still incomplete. The protocol refuses
a request whose header block passes ``[server] max_header_count`` fields or
``max_header_bytes`` bytes (its request line included) with 431 (Request Header Fields
Too Large), as the parser reads it: a block still arriving is counted as its bytes come
in, so the proxy holds at most about ``max_header_bytes`` plus one network read of it,
never the whole block, and no request reaches the app.

``server_for`` (``_shutdown``) and the tests' servers run with ``http_protocol()``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from .._config import ServerConfig
from .._errors import error_body
from ..exceptions import HeaderFieldsTooLarge, InvalidRequest, ProxyError

__all__ = ["http_protocol"]


def _refusal(exc: ProxyError) -> tuple[bytes, bytes]:
    """The status line's status (``400 Bad Request``) and the body of a refusal."""
    return f"{exc.status_code} {HTTPStatus(exc.status_code).phrase}".encode(), error_body(exc)


_BAD_REQUEST = _refusal(InvalidRequest("Invalid HTTP request received.", code="invalid_http_request"))


def _too_large(limits: ServerConfig) -> tuple[bytes, bytes]:
    return _refusal(
        HeaderFieldsTooLarge(
            f"The request's header fields are too large: at most {limits.max_header_count} fields "
            f"and {limits.max_header_bytes} bytes."
        )
    )


def _response_bytes(status: bytes, body: bytes, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 " + status + b"\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


def http_protocol(limits: ServerConfig | None = None) -> type[Any]:
    """The protocol class uvicorn's "auto" would pick (httptools if installed, else
    h11), with OpenAI-shaped refusals and the header limits of ``limits`` (the
    defaults when None)."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return _h11_protocol(limits or ServerConfig())
    return _httptools_protocol(limits or ServerConfig())


def _httptools_protocol(limits: ServerConfig) -> type[Any]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    max_count, max_bytes = limits.max_header_count, limits.max_header_bytes
    too_large = _too_large(limits)

    class OpenAIShapedHttpTools(HttpToolsProtocol):
        header_limits = limits

        # The head of the request being read: its fields and bytes so far, and the
        # bytes received while it is incomplete (a field llhttp is still accumulating
        # reaches no callback until it ends).
        _in_head = True
        _head_fields = 0
        _head_bytes = 0
        _raw_bytes = 0
        _too_large = False

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._raw_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._raw_bytes > max_bytes and not self.transport.is_closing():
                self._too_large = True
                self.send_400_response("")

        def _over_limit(self) -> None:
            # An exception in a callback stops llhttp there; uvicorn answers it as an
            # unparseable request, with the 431 below.
            self._too_large = True
            raise ValueError("request header fields too large")

        def send_400_response(self, msg: str) -> None:
            refused = too_large if self._too_large else _BAD_REQUEST
            if self._too_large:
                self.logger.warning("Request header fields too large: answered 431.")
            self.transport.write(_response_bytes(*refused, list(self.server_state.default_headers)))
            self.transport.close()

        def on_message_begin(self) -> None:
            self._in_head = True
            self._head_fields = self._head_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            if self._head_bytes > max_bytes:
                self._over_limit()
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_fields += 1
            self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
            if self._head_fields > max_count or self._head_bytes > max_bytes:
                self._over_limit()
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._raw_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()

    return OpenAIShapedHttpTools


def _h11_protocol(limits: ServerConfig) -> type[Any]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    max_count, max_bytes = limits.max_header_count, limits.max_header_bytes
    too_large = _too_large(limits)

    class BoundedConnection(h11.Connection):
        """h11 bounds the bytes of an incomplete head (``max_incomplete_event_size``);
        a head that arrived whole is measured here."""

        refused_too_large = False

        def next_event(self) -> Any:
            try:
                event = super().next_event()
            except h11.RemoteProtocolError as exc:
                self.refused_too_large = exc.error_status_hint == 431
                raise
            if isinstance(event, h11.Request):
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers.raw_items())
                if len(event.headers) > max_count or size > max_bytes:
                    self.refused_too_large = True
                    raise h11.RemoteProtocolError("request header fields too large", error_status_hint=431)
            return event

    class OpenAIShapedH11(H11Protocol):
        header_limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bounded = self.conn = BoundedConnection(h11.SERVER, max_incomplete_event_size=max_bytes)

        def send_400_response(self, msg: str) -> None:
            refused = too_large if self.bounded.refused_too_large else _BAD_REQUEST
            if self.bounded.refused_too_large:
                self.logger.warning("Request header fields too large: answered 431.")
            self.transport.write(_response_bytes(*refused, list(self.server_state.default_headers)))
            self.transport.close()

    return OpenAIShapedH11
