"""The one client that talks to the upstream model server.

httpx errors become the proxy's own (``UpstreamUnreachable``, ``UpstreamTimeout``,
``UpstreamHTTPError``) here and nowhere else. Closing an ``UpstreamStream`` before its
end closes the connection, which is how the proxy stops a generation: vLLM aborts a
request whose client went away and frees its KV cache.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx

from ._config import UpstreamConfig
from ._sse import iter_sse_data
from .exceptions import UpstreamError, UpstreamHTTPError, UpstreamTimeout, UpstreamUnreachable

__all__ = ["UpstreamClient", "UpstreamStream", "create_http_client"]

_MAX_ERROR_BODY = 1 << 20


def create_http_client(config: UpstreamConfig, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The HTTP client for the upstream: the single place where its transport is chosen.

    "aiohttp" (the default) keeps httpx's API over aiohttp's C parser and pool: measured
    side by side (bench scenario 5, concurrency 256) it relays 1.8x the streams of
    httpx's own transport per CPU second (encode/httpx#3215). Its errors arrive as
    httpx's, so the translation below holds for both.
    """
    t = config.timeouts
    timeout = httpx.Timeout(connect=t.connect_s, read=t.read_s or None, write=t.write_s, pool=t.pool_s)
    limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections)
    if transport is None and config.http_transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport, trust_env=False)


class UpstreamStream:
    """An open streaming response; iterate ``events()``, always ``aclose()``."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def events(self) -> AsyncIterator[bytes]:
        try:
            async for data in iter_sse_data(self._response.aiter_bytes()):
                yield data
        except httpx.HTTPError as exc:
            if _timed_out(exc):
                raise UpstreamTimeout("The upstream stopped sending within the read timeout.") from exc
            raise UpstreamUnreachable(f"The upstream connection broke: {_kind(exc)}.") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        # Parsed once: httpx's URL parsing is a visible part of each request's cost.
        self._chat_url = httpx.URL(f"{config.base_url}/chat/completions")

    def _headers(self, client_authorization: str | None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self._config.auth == "passthrough":
            if client_authorization:
                headers["authorization"] = client_authorization
        elif self._key:
            headers["authorization"] = f"Bearer {self._key}"
        return headers

    async def open_chat_stream(self, body: bytes, client_authorization: str | None = None) -> UpstreamStream:
        request = self._http.build_request(
            "POST",
            self._chat_url,
            content=body,
            headers=self._headers(client_authorization),
        )
        response = await self._send(request)
        if response.status_code >= 400:
            try:
                raw = await _read_limited(response)
            finally:
                await response.aclose()
            raise UpstreamHTTPError(response.status_code, raw, response.headers.get("content-type"))
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            # A server that ignored `stream: true`: relaying its body as an empty stream
            # would drop the answer silently.
            await response.aclose()
            raise UpstreamError(
                f"The upstream answered with {ctype or 'no content type'} instead of an event stream; "
                "guardproxy needs an upstream that streams chat completions."
            )
        return UpstreamStream(response)

    async def get(self, path: str, client_authorization: str | None = None) -> httpx.Response:
        request = self._http.build_request("GET", f"{self._config.base_url}{path}", headers=self._headers(client_authorization))
        response = await self._send(request)
        try:
            await response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(f"The upstream connection broke: {_kind(exc)}.") from exc
        finally:
            await response.aclose()
        return response

    async def ready(self) -> bool:
        try:
            response = await self.get("/models")
        except UpstreamError:
            return False
        return response.status_code < 400

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            if _timed_out(exc):
                raise UpstreamTimeout("The upstream did not answer in time.") from exc
            raise UpstreamUnreachable(f"The upstream could not be reached: {_kind(exc)}.") from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _timed_out(exc: httpx.HTTPError) -> bool:
    """Was it a timeout? httpx-aiohttp maps every aiohttp connection error (refused,
    reset, disconnected) to ConnectTimeout, so its original exception decides."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        return isinstance(cause, TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


def _kind(exc: httpx.HTTPError) -> str:
    """The error's class name (never its text, which may quote the URL)."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        return type(cause).__name__
    return type(exc).__name__


async def _read_limited(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for piece in response.aiter_bytes():
            parts.append(piece)
            size += len(piece)
            if size >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # relay what arrived
    return b"".join(parts)
