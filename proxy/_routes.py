"""HTTP routes: thin handlers that parse, authenticate, and hand over to the pipeline."""

from __future__ import annotations

import logging

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.types import ASGIApp

from ._auth import bearer
from ._pipeline import Exchange, RequestReport
from ._request import parse_chat_request
from ._response import ChatResponse

__all__ = ["chat_completions", "list_models", "healthz", "readyz", "ROUTES"]

logger = logging.getLogger("guardproxy")


def _authenticate(request: Request, state: State) -> str | None:
    """Check the proxy key; returns the Authorization header to send upstream, if any."""
    authorization = request.headers.get("authorization")
    if state.config.upstream.auth == "passthrough":
        state.proxy_keys.check(request.headers.get("x-guardproxy-key"))
        return authorization
    state.proxy_keys.check(bearer(authorization) or request.headers.get("x-guardproxy-key"))
    return None


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request, state: State) -> ASGIApp:
    authorization = _authenticate(request, state)
    chat = parse_chat_request(await request.body())
    exchange = Exchange(
        request=chat,
        policy=state.config.policy,
        guards=state.guards,
        upstream=state.upstream,
        authorization=authorization,
    )
    return ChatResponse(exchange, on_done=_log_outcome)


def _log_outcome(report: RequestReport | None, outcome: str) -> None:
    logger.info("chat completion: %s", outcome)


@get("/v1/models")
async def list_models(request: Request, state: State) -> Response[bytes]:
    authorization = _authenticate(request, state)
    upstream = await state.upstream.get("/models", authorization)
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
    )


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, object]]:
    checks = {"upstream": await state.upstream.ready()}
    for name, backend in state.guard_backends.items():
        try:
            checks[name] = await backend.ready()
        except Exception:  # a readiness probe reports, it does not raise
            checks[name] = False
    ready = all(checks.values())
    return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


ROUTES = [chat_completions, list_models, healthz, readyz]
