"""The Litestar application: assembled in one call, its resources owned by the lifespan.

The upstream client and the guard backends are created when the app starts, kept on
``app.state`` and closed when it stops; nothing is created at import.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from guards import FlexGuard, GuardBackend, ReasoningShield, VerdictCache

from ._auth import KeyRing, check_secrets
from ._config import ProxyConfig
from ._errors import from_http_exception
from ._routes import ROUTES
from .console import ConsoleAccess, Recorder, console_router, split_listeners
from .exceptions import InternalError, ProxyError
from .ops._heap import settle_heap
from .ops._metrics import METRICS_ROUTES
from .ops._open_guards import fit_contexts, open_guard
from .ops._readiness import Readiness
from .ops._shutdown import Drain
from .ops._telemetry import Telemetry
from .pipeline._guardset import GuardSet
from .pipeline._response import error_response
from .upstream._client import guard_transport
from .upstream._router import open_upstreams

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from .ops._reload import ConfigSource

__all__ = ["create_app"]

logger = logging.getLogger("guardproxy")


def _proxy_error(_: Request[Any, Any, Any], exc: ProxyError) -> Response[bytes]:
    status, headers, body = error_response(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return _proxy_error(request, from_http_exception(exc))


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.exception("internal error", exc_info=exc)
    return _proxy_error(request, InternalError())


def guards_needed(config: ProxyConfig) -> dict[str, bool]:
    p = config.policy
    return {
        # FlexGuard also serves /v1/moderations, so an enabled one is always opened.
        "flexguard": config.guards.flexguard.enabled,
        "reasoningshield": config.guards.reasoningshield.enabled
        and (p.reasoning.enabled or (p.answer.enabled and p.reasoning.screen_answer)),
    }


def create_app(
    config: ProxyConfig,
    *,
    guard_backends: dict[str, GuardBackend] | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    span_exporter: SpanExporter | None = None,
    shared_audit: bool = False,
    config_source: ConfigSource | None = None,
) -> Litestar:
    """Build the proxy. ``guard_backends`` replaces the configured backends (tests);
    ``upstream_transport`` the only upstream's transport (bench);
    ``span_exporter`` receives every span, whatever ``telemetry.traces`` says (tests);
    ``shared_audit``: one of several workers, whose console follows the shared audit log;
    ``config_source``: where ``config`` came from, read again on a reload (ops/_reload.py)."""
    given = dict(guard_backends or {})
    check_secrets(config)  # a named secret that is absent stops the start, naming it
    console_access = ConsoleAccess(config) if config.console.enabled else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        upstreams = open_upstreams(config, upstream_transport)
        opened: dict[str, GuardBackend] = {}
        backends: dict[str, GuardBackend] = {}
        telemetry: Telemetry | None = None
        recorder: Recorder | None = None
        try:
            app.state.telemetry = telemetry = Telemetry(config.telemetry, span_exporter=span_exporter)
            if config.console.enabled or config.audit.path:
                recorder = Recorder(config, telemetry.metrics, follow=shared_audit)
                recorder.start()
            app.state.recorder = recorder
            app.state.console_access = console_access
            for name, needed in guards_needed(config).items():
                if not needed:
                    continue
                if name in given:
                    backends[name] = given[name]
                else:
                    backends[name] = opened[name] = await open_guard(
                        name,
                        getattr(config.guards, name),
                        functools.partial(guard_transport, config.upstream, getattr(config.guards, name)),
                    )
            flex = backends.get("flexguard")
            shield = backends.get("reasoningshield")
            app.state.upstreams = upstreams
            app.state.keyring = KeyRing.from_config(config)
            app.state.guard_backends = backends
            app.state.readiness = Readiness(upstreams, {n: (b, getattr(config.guards, n)) for n, b in backends.items()})
            g = config.guards
            cache = VerdictCache(g.cache_entries, g.cache_ttl_s) if g.cache_entries else None
            app.state.guards = GuardSet(
                FlexGuard(flex, g.flexguard, cache) if flex is not None else None,
                ReasoningShield(shield, g.reasoningshield, cache) if shield is not None else None,
                config.server,
            )
            await fit_contexts(app.state.guards.flexguard, app.state.guards.reasoningshield)
            settle_heap()
            yield
        finally:
            gc.unfreeze()  # what the app held may be freed again
            await upstreams.aclose()
            for backend in opened.values():
                await backend.aclose()
            if telemetry is not None:
                telemetry.shutdown()
            if recorder is not None:
                recorder.close()  # writes what is queued for the audit log

    return Litestar(
        route_handlers=ROUTES
        + (METRICS_ROUTES if config.telemetry.metrics else [])
        + ([console_router()] if config.console.enabled else []),
        state=State({"drain": Drain(), "config": config, "config_source": config_source}),
        lifespan=[lifespan],
        middleware=[split_listeners(config.console.port)] if config.console.enabled and config.console.port else [],
        request_max_body_size=config.server.max_body_bytes,
        exception_handlers={
            ProxyError: _proxy_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        openapi_config=None,
        logging_config=None,
    )
