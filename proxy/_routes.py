"""HTTP routes: thin handlers that parse, authenticate, and hand over to the pipeline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.types import ASGIApp

from guards import GuardError

from ._auth import STRICTNESS_HEADER, Principal, bearer, request_policy
from ._moderation import moderation_response, moderation_result, parse_moderation_inputs
from ._pipeline import Exchange
from ._request import parse_chat_request
from ._response import ChatResponse
from .exceptions import GuardUnavailable, InvalidRequest

__all__ = ["chat_completions", "moderations", "list_models", "healthz", "readyz", "ROUTES"]

logger = logging.getLogger("guardproxy")


def _authenticate(request: Request, state: State) -> tuple[Principal, str | None]:
    """The caller, and the Authorization header to send upstream (passthrough only)."""
    authorization = request.headers.get("authorization")
    if state.config.upstream.auth == "passthrough":
        return state.keyring.identify(request.headers.get("x-guardproxy-key")), authorization
    return state.keyring.identify(bearer(authorization) or request.headers.get("x-guardproxy-key")), None


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request, state: State) -> ASGIApp:
    principal, authorization = _authenticate(request, state)
    policy = request_policy(principal, request.headers.get(STRICTNESS_HEADER))
    chat = parse_chat_request(await request.body())
    telemetry = state.telemetry.request(chat, request.headers)
    exchange = Exchange(
        request=chat,
        policy=policy,
        guards=state.guards,
        upstream=state.upstream,
        authorization=authorization,
        telemetry=telemetry,
    )
    return ChatResponse(exchange, on_done=telemetry.finish, drain=state.drain)


@post("/v1/moderations", status_code=200)
async def moderations(request: Request, state: State) -> dict[str, Any]:
    principal, _ = _authenticate(request, state)
    policy = request_policy(principal, request.headers.get(STRICTNESS_HEADER))
    texts, model = parse_moderation_inputs(await request.body())
    flexguard = state.guards.flexguard
    if flexguard is None:
        raise InvalidRequest("Moderations need FlexGuard, which is disabled in this proxy's config.")
    try:
        verdicts = await asyncio.gather(*(flexguard.check_prompt(text) for text in texts))
    except GuardError as exc:
        logger.warning("guard error in a moderation request: %s", type(exc).__name__)
        raise GuardUnavailable(f"FlexGuard could not classify the input ({type(exc).__name__}).") from exc
    return moderation_response(model, [moderation_result(v, policy) for v in verdicts])


@get("/v1/models")
async def list_models(request: Request, state: State) -> Response[bytes]:
    _, authorization = _authenticate(request, state)
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
    if state.drain.draining:  # shutting down: take this instance out of rotation
        return Response({"ready": False, "checks": {"shutting_down": True}}, status_code=503)
    checks = {"upstream": await state.upstream.ready()}
    for name, backend in state.guard_backends.items():
        try:
            checks[name] = await backend.ready()
        except Exception:  # a readiness probe reports, it does not raise
            checks[name] = False
    ready = all(checks.values())
    return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


ROUTES = [chat_completions, moderations, list_models, healthz, readyz]
