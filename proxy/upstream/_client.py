"""The one client that talks to the upstream model server.

httpx errors become the proxy's own (``UpstreamUnreachable``, ``UpstreamTimeout``,
``UpstreamHTTPError``) here and nowhere else. Closing an ``UpstreamStream`` before its
end closes the connection, which is how the proxy stops a generation: vLLM aborts a
request whose client went away and frees its KV cache.

Requests go straight to an httpx transport, not through ``httpx.AsyncClient``: a proxy
shared by many callers must not keep the upstream's cookies (the client's jar would
send one caller's cookies with the next caller's request), and it follows no redirects
and runs no auth flows. Skipping those layers also saves CPU on every request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from guards import GuardModelConfig

from .._config import UpstreamConfig
from ..exceptions import UpstreamError, UpstreamHTTPError, UpstreamTimeout, UpstreamUnreachable
from ..protocols._sse import iter_sse_batches
from ._replicas import REPLICA, server_root, with_replicas

__all__ = ["UpstreamClient", "UpstreamStream", "create_transport", "guard_transport"]

_MAX_ERROR_BODY = 1 << 20


def _user_agent() -> str:
    try:
        return f"guardproxy/{version('guardproxy')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "guardproxy"


def create_transport(config: UpstreamConfig) -> httpx.AsyncBaseTransport:
    """The upstream's HTTP transport: the single place where it is chosen.

    "aiohttp" (the default) keeps httpx's request and response types over aiohttp's C
    parser and pool, which relay more concurrent streams at less CPU per request than
    httpx's own transport. Its errors arrive as httpx's, so the translation below holds
    for both.
    """
    inner = _transport(config.http_transport, config.max_connections)
    return with_replicas(
        config.replica_urls,
        inner,
        name="upstream",
        health_interval_s=config.health_interval_s,
        unhealthy_after=config.unhealthy_after,
    )


def guard_transport(upstream: UpstreamConfig, guard: GuardModelConfig) -> httpx.AsyncBaseTransport:
    """A guard server's transport: the kind chosen for the upstream (the same reasons
    hold for the guard calls: they are the proxy's other half of its HTTP work),
    with a pool as large, since a guard server batches whatever checks reach it, over the
    guard's replicas."""
    inner = _transport(upstream.http_transport, upstream.max_connections)
    return with_replicas(
        guard.replica_urls,
        inner,
        name=f"guard {guard.model}",
        health_interval_s=upstream.health_interval_s,
        unhealthy_after=upstream.unhealthy_after,
    )


def _transport(kind: str, max_connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if kind != "aiohttp":
        return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def session() -> aiohttp.ClientSession:  # called on the first request, inside the event loop
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=limits.keepalive_expiry, ssl=transport.ssl_context
        )
        # No Accept-Encoding: a compressing upstream would hold back stream chunks.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("Accept-Encoding",)
        )

    transport = AiohttpTransport(limits=limits, trust_env=False, client=session)
    return transport


class UpstreamStream:
    """An open streaming response; iterate ``events()`` (the events of one network read
    at a time), always ``aclose()``."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        # The replica that serves it, where the upstream has several.
        self.replica: str | None = response.extensions.get(REPLICA)

    async def events(self) -> AsyncGenerator[list[bytes], None]:
        try:
            # Closed with this generator, not left to the garbage collector.
            async with contextlib.aclosing(iter_sse_batches(self._response.aiter_bytes())) as batches:
                async for batch in batches:
                    yield batch
        except httpx.HTTPError as exc:
            if _timed_out(exc):
                raise UpstreamTimeout("The upstream stopped sending within the read timeout.") from exc
            raise UpstreamUnreachable(f"The upstream connection broke: {_kind(exc)}.") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, transport: httpx.AsyncBaseTransport) -> None:
        self._config = config
        self._transport = transport
        t = config.timeouts
        self._timeout = httpx.Timeout(connect=t.connect_s, read=t.read_s or None, write=t.write_s, pool=t.pool_s).as_dict()
        # Parsed once per path: httpx's URL parsing is a visible part of each request's cost.
        self._urls: dict[str, httpx.URL] = {}
        self._base_headers = {"user-agent": _user_agent(), "accept": "text/event-stream"}
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.auth != "passthrough" and key:
            self._base_headers["authorization"] = f"Bearer {key}"

    @property
    def continuation(self) -> str:
        """How this upstream continues a steered generation ([upstream] continuation)."""
        return self._config.continuation

    def _request(
        self,
        method: str,
        url: httpx.URL | str,
        client_authorization: str | None,
        body: bytes | None = None,
        replica: str | None = None,
    ) -> httpx.Request:
        headers = dict(self._base_headers)
        if body is not None:
            headers["content-type"] = "application/json"
        if self._config.auth == "passthrough" and client_authorization:
            headers["authorization"] = client_authorization
        extensions: dict[str, Any] = {"timeout": self._timeout}
        if replica is not None:
            extensions[REPLICA] = replica
        return httpx.Request(method, url, headers=headers, content=body, extensions=extensions)

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(f"{self._config.base_url}{path}")
        return url

    async def open_stream(
        self, path: str, body: bytes, client_authorization: str | None = None, replica: str | None = None
    ) -> UpstreamStream:
        """POST ``body`` to ``path`` (below base_url) and open its event stream (on
        ``replica`` while it is healthy, where the upstream has several)."""
        response = await self._send(self._request("POST", self._url(path), client_authorization, body, replica))
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
                "guardproxy needs an upstream that streams its answers."
            )
        return UpstreamStream(response)

    async def post_root(
        self, path: str, body: bytes, client_authorization: str | None = None, replica: str | None = None
    ) -> bytes:
        """POST ``body`` to ``path`` at the server's root (beside /v1: vLLM's /tokenize)
        and return the answer's body; an HTTP error is the upstream's error."""
        url = server_root(self._config.base_url) + path
        response = await self._read_whole(self._request("POST", url, client_authorization, body, replica))
        if response.status_code >= 400:
            raise UpstreamHTTPError(response.status_code, response.content, response.headers.get("content-type"))
        return response.content

    async def get(self, path: str, client_authorization: str | None = None) -> httpx.Response:
        return await self.forward("GET", path, None, client_authorization)

    async def forward(
        self, method: str, path: str, body: bytes | None, client_authorization: str | None = None, query: bytes = b""
    ) -> httpx.Response:
        """One request as it is (the pass-through paths), its whole answer read."""
        url = self._url(path)
        if query:
            url = url.copy_with(query=query)
        return await self._read_whole(self._request(method, url, client_authorization, body))

    async def _read_whole(self, request: httpx.Request) -> httpx.Response:
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
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            if _timed_out(exc):
                raise UpstreamTimeout("The upstream did not answer in time.") from exc
            raise UpstreamUnreachable(f"The upstream could not be reached: {_kind(exc)}.") from exc
        response.request = request  # what httpx.AsyncClient would set; transports need not
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


def _aiohttp_cause(exc: httpx.HTTPError) -> BaseException | None:
    """The aiohttp error behind an httpx one: httpx-aiohttp maps every aiohttp connection
    error (refused, reset, disconnected) to ConnectTimeout, so the original decides."""
    cause = exc.__cause__
    return cause if cause is not None and type(cause).__module__.startswith("aiohttp") else None


def _timed_out(exc: httpx.HTTPError) -> bool:
    cause = _aiohttp_cause(exc)
    return isinstance(cause, TimeoutError) if cause is not None else isinstance(exc, httpx.TimeoutException)


def _kind(exc: httpx.HTTPError) -> str:
    """The error's class name (never its text, which may quote the URL)."""
    return type(_aiohttp_cause(exc) or exc).__name__


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
