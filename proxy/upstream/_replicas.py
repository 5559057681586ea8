"""Replicas of one server: an upstream's or a guard's ``base_urls``.

``ReplicaTransport`` wraps the HTTP transport the proxy chose, so the upstream client and
the guard backends share it unchanged: requests are built against the first base URL,
and the transport sends each one to a replica.

- Balance: the healthy replica with the fewest outstanding requests (a streamed response
  counts until it is closed); ties go round-robin.
- A replica that refuses the connection (nothing was sent) is marked out and the request
  goes to the next one, before any byte could reach the client. Any later failure is the
  request's own: a generation is not idempotent, so it is never sent twice.
- Health checks (``GET <base>/models`` every ``health_interval_s``, from the first request
  on) take a replica out after ``unhealthy_after`` failures in a row, and bring it back
  at its first pass. With every replica out, each is tried anyway: an outage of all of
  them is the request's error, not a refusal made up here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import httpx

__all__ = ["REPLICA", "ReplicaTransport", "server_root", "with_replicas"]

logger = logging.getLogger("guardproxy")

_HEALTH_TIMEOUT = httpx.Timeout(2.0).as_dict()

# The request and response extension naming a replica: on a response, the one that
# served it; on a request, the one it should go to while that replica is healthy.
REPLICA = "guardproxy.replica"


def server_root(base_url: str) -> str:
    """The server's root below an OpenAI base URL: vLLM serves /tokenize beside /v1."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


class _Replica:
    __slots__ = ("base", "prefix", "outstanding", "healthy", "failures")

    def __init__(self, base_url: str) -> None:
        self.base = httpx.URL(base_url.rstrip("/"))
        self.prefix = str(self.base)
        self.outstanding = 0
        self.healthy = True
        self.failures = 0


class _Released(httpx.AsyncByteStream):
    """A response stream that gives its replica's slot back when closed, once."""

    def __init__(self, stream: httpx.AsyncByteStream, replica: _Replica) -> None:
        self._stream = stream
        self._replica: _Replica | None = replica

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._replica is not None:
            self._replica.outstanding -= 1
            self._replica = None
        await self._stream.aclose()


def _not_reached(exc: httpx.HTTPError) -> bool:
    """The request never reached the server: the connection was refused or could not be
    made. httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; its
    cause tells a refused connection from one the server dropped mid-request."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        import aiohttp

        return isinstance(cause, aiohttp.ClientConnectorError)
    return isinstance(exc, httpx.ConnectError)


class ReplicaTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        base_urls: Sequence[str],
        inner: httpx.AsyncBaseTransport,
        *,
        name: str = "upstream",
        health_interval_s: float = 5.0,
        unhealthy_after: int = 2,
    ) -> None:
        self._replicas = [_Replica(u) for u in base_urls]
        self._inner = inner
        self._name = name
        self._interval = health_interval_s
        self._unhealthy_after = unhealthy_after
        self._next = 0
        self._health: asyncio.Task[None] | None = None

    @property
    def replicas(self) -> list[tuple[str, int, bool]]:
        """(base URL, outstanding requests, healthy) per replica."""
        return [(r.prefix, r.outstanding, r.healthy) for r in self._replicas]

    def _order(self, prefer: str | None = None) -> list[_Replica]:
        healthy = [r for r in self._replicas if r.healthy] or self._replicas
        self._next = (self._next + 1) % len(self._replicas)
        rotated = sorted(healthy, key=lambda r: (self._replicas.index(r) - self._next) % len(self._replicas))
        order = sorted(rotated, key=lambda r: r.outstanding)  # stable: ties keep the rotation
        # A steered generation's continuation goes where its prompt is in the prefix cache.
        return sorted(order, key=lambda r: r.prefix != prefer) if prefer else order

    def _retarget(self, request: httpx.Request, replica: _Replica) -> httpx.Request:
        primary = self._replicas[0]
        if replica is primary:
            return request
        url = str(request.url)
        # Below base_url (/v1/...), or beside it at the server's root (vLLM's /tokenize).
        pairs = ((primary.prefix, replica.prefix), (server_root(primary.prefix), server_root(replica.prefix)))
        source, target = next(((s, t) for s, t in pairs if url.startswith(s)), ("", ""))
        if not source:
            return request
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
        return httpx.Request(
            request.method,
            target + url[len(source) :],
            headers=headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._health is None and len(self._replicas) > 1:
            self._health = asyncio.create_task(self._check_health(), name=f"guardproxy-health-{self._name}")
        last: httpx.HTTPError | None = None
        for replica in self._order(request.extensions.get(REPLICA)):
            replica.outstanding += 1
            try:
                response = await self._inner.handle_async_request(self._retarget(request, replica))
            except httpx.HTTPError as exc:
                replica.outstanding -= 1
                if not _not_reached(exc):
                    raise
                self._mark(replica, healthy=False, why=type(exc.__cause__ or exc).__name__)
                last = exc
                continue
            except BaseException:
                replica.outstanding -= 1
                raise
            response.extensions = {**response.extensions, REPLICA: replica.prefix}
            if response.is_closed:  # read already (a transport may answer in full)
                replica.outstanding -= 1
            else:
                response.stream = _Released(response.stream, replica)  # type: ignore[arg-type]
            return response
        assert last is not None
        raise last

    def _mark(self, replica: _Replica, *, healthy: bool, why: str = "") -> None:
        if replica.healthy and not healthy:
            logger.warning("%s replica %s left the rotation: %s", self._name, replica.prefix, why)
        elif healthy and not replica.healthy:
            logger.info("%s replica %s is back in the rotation", self._name, replica.prefix)
        replica.healthy = healthy
        replica.failures = 0 if healthy else replica.failures

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for replica in self._replicas:
                request = httpx.Request("GET", f"{replica.prefix}/models", extensions={"timeout": _HEALTH_TIMEOUT})
                try:
                    response = await self._inner.handle_async_request(request)
                    await response.aclose()
                    ok = response.status_code < 500
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self._mark(replica, healthy=True)
                else:
                    replica.failures += 1
                    if replica.failures >= self._unhealthy_after:
                        self._mark(replica, healthy=False, why=f"{replica.failures} failed health checks")

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await self._inner.aclose()


def with_replicas(
    base_urls: Sequence[str], inner: httpx.AsyncBaseTransport, *, name: str, health_interval_s: float, unhealthy_after: int
) -> httpx.AsyncBaseTransport:
    """``inner`` alone for one URL (nothing to balance), else a ReplicaTransport."""
    if len(base_urls) <= 1:
        return inner
    return ReplicaTransport(base_urls, inner, name=name, health_interval_s=health_interval_s, unhealthy_after=unhealthy_after)
