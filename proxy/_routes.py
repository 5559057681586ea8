"""HTTP routes: thin handlers that parse, authenticate, and hand over to the pipeline."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post, route
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.types import ASGIApp

from guards import GuardError, Verdict

from ._auth import STRICTNESS_HEADER, Principal, bearer, request_policy
from ._config import ProxyConfig
from ._errors import guard_error_class
from .console import Recorder
from .exceptions import (
    InvalidRequest,
    NotFound,
    RequestTimeout,
    UnsupportedMediaType,
    UpstreamHTTPError,
)
from .ops._telemetry import request_id_of
from .pipeline._guardset import GuardSet, gather_checks
from .pipeline._policy import decide, decide_error
from .pipeline._relay import Exchange
from .pipeline._report import RequestReport
from .pipeline._response import GuardedResponse
from .protocols._base import Adapter
from .protocols.chat import ChatAdapter
from .protocols.completions import CompletionsAdapter
from .protocols.moderations import moderation_response, moderation_result, parse_moderation_inputs
from .protocols.responses import ResponsesAdapter
from .upstream._client import UpstreamClient
from .upstream._router import Upstreams

__all__ = [
    "chat_completions",
    "completions",
    "responses",
    "passthrough",
    "moderations",
    "list_models",
    "healthz",
    "readyz",
    "read_body",
    "ROUTES",
]

logger = logging.getLogger("guardproxy")


def _authenticate(request: Request[Any, Any, Any], state: State) -> tuple[Principal, str | None]:
    """The caller, and the Authorization header to send upstream (passthrough only)."""
    authorization = request.headers.get("authorization")
    if state.config.upstream.auth == "passthrough":
        return state.keyring.identify(request.headers.get("x-guardproxy-key")), authorization
    return state.keyring.identify(bearer(authorization) or request.headers.get("x-guardproxy-key")), None


async def read_body(request: Request[Any, Any, Any], state: State) -> bytes:
    """The body, within the size limit and the read deadline; a JSON content type only.

    Without a deadline a client sending a byte a second holds its connection and its
    request open for ever; an unknown content type is refused rather than guessed at.
    """
    _check_content_type(request.headers.get("content-type"))
    server = state.config.server
    try:
        async with asyncio.timeout(server.body_read_timeout_s):
            return await request.body()
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {server.body_read_timeout_s:g} s.") from None


def _check_content_type(value: str | None) -> None:
    if value is None:
        return  # no content type: read as JSON, which the decoder checks
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type {media or '(empty)'!r} is not supported: send application/json.")
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("Only the UTF-8 charset is supported.")


async def _guarded(request: Request[Any, Any, Any], state: State, adapter: Adapter) -> ASGIApp:
    """Every generation API: parse with its adapter, then the one pipeline."""
    # The config and the keys as they are now, before any await: a reload (ops/_reload.py)
    # swaps them, and this request keeps what it started with.
    config: ProxyConfig = state.config
    principal, authorization = _authenticate(request, state)
    policy = request_policy(principal, request.headers.get(STRICTNESS_HEADER))
    raw = await read_body(request, state)
    # The upstream first (an unknown model is a 404 before any guard check): the fields
    # a request may carry beyond the inventory are its upstream's.
    model = _model_of(raw)
    found = state.upstreams.for_model(model) if isinstance(model, str) else None
    route = next((u for u in config.upstreams if found is not None and u.name == found[0]), config.upstream)
    parsed = adapter.parse(raw, policy, config.server, config.extra_fields(route))
    upstream_name, upstream = found or state.upstreams.for_model(parsed.model)
    request_id = request_id_of(request.headers.get("x-request-id"))
    telemetry = state.telemetry.request(parsed, request.headers, adapter.name, upstream_name, request_id)
    recorder: Recorder | None = state.recorder
    exchange = Exchange(
        request=parsed,
        policy=policy,
        guards=state.guards,
        upstream=upstream,
        adapter=adapter,
        authorization=authorization,
        telemetry=telemetry,
        report=RequestReport(request_id=request_id),
        capture=recorder is not None and recorder.capture.enabled,
    )
    on_done = (
        telemetry.finish if recorder is None else recorder.on_done(exchange, principal.name, upstream_name, telemetry.finish)
    )
    return GuardedResponse(exchange, on_done=on_done, drain=state.drain)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any], state: State) -> ASGIApp:
    return await _guarded(request, state, ChatAdapter())


@post("/v1/completions", status_code=200)
async def completions(request: Request[Any, Any, Any], state: State) -> ASGIApp:
    return await _guarded(request, state, CompletionsAdapter())


@post("/v1/responses", status_code=200)
async def responses(request: Request[Any, Any, Any], state: State) -> ASGIApp:
    return await _guarded(request, state, ResponsesAdapter(state.config.endpoints.allow_background_responses))


GUARDED = "POST /v1/chat/completions, /v1/responses, /v1/completions and /v1/moderations"


@route("/v1/{path:path}", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def passthrough(request: Request[Any, Any, Any], state: State, path: FromPath[str]) -> Response[bytes]:
    """A path the operator listed in ``[endpoints] passthrough``: forwarded unchanged,
    NOT screened (``x-guardproxy-screened: false`` says so). Anything else is a 404."""
    full = f"/v1{path}" if path.startswith("/") else f"/v1/{path}"
    if not _listed(request.method, full, state.config.endpoints.passthrough):
        listed = ", ".join(state.config.endpoints.passthrough) or "none"
        raise NotFound(
            f"{request.method} {full} is not served. Guarded: {GUARDED}; also GET /v1/models. "
            f"Forwarded unscreened (config [endpoints] passthrough): {listed}."
        )
    _, authorization = _authenticate(request, state)
    body = await read_body(request, state) if request.method in ("POST", "PUT", "PATCH") else None
    upstream = await _passthrough_upstream(state.upstreams, full, body).forward(
        request.method, full[3:], body, authorization, request.scope.get("query_string", b"")
    )
    if upstream.status_code >= 400:
        raise UpstreamHTTPError(upstream.status_code, upstream.content, upstream.headers.get("content-type"))
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=MediaType.JSON,
        headers={"content-type": upstream.headers.get("content-type", "application/json"), "x-guardproxy-screened": "false"},
    )


def _model_of(body: bytes) -> object:
    """The ``model`` a JSON body names, or None (the parser then says what is wrong)."""
    try:
        return msgspec.json.decode(body, type=_NamesModel).model
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _passthrough_upstream(upstreams: Upstreams, path: str, body: bytes | None) -> UpstreamClient:
    """The upstream of a forwarded request: by the model its body or path names
    (/v1/embeddings, /v1/models/{id}), else the first upstream."""
    if len(upstreams.routes) == 1:
        return upstreams.default
    model: object = None
    if path.startswith("/v1/models/"):
        model = path.removeprefix("/v1/models/")
    elif body:
        # Not a JSON object (or nested past the recursion limit): forwarded as it is, to the first upstream.
        model = _model_of(body)
    return upstreams.for_model(model)[1] if isinstance(model, str) else upstreams.default


class _NamesModel(msgspec.Struct):
    model: object = None


def _listed(method: str, path: str, entries: list[str]) -> bool:
    parts = path.rstrip("/").split("/")
    for entry in entries:
        m, _, pattern = entry.partition(" ")
        want = pattern.rstrip("/").split("/")
        if (
            m == method
            and len(want) == len(parts)
            and all(w == p or (w.startswith("{") and w.endswith("}") and p) for w, p in zip(want, parts, strict=True))
        ):
            return True
    return False


# One moderation request checks at most this many inputs at once, so that a large batch
# shares the guard with other requests instead of taking all of its slots.
_MODERATION_CONCURRENCY = 8


@post("/v1/moderations", status_code=200)
async def moderations(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    principal, _ = _authenticate(request, state)
    policy = request_policy(principal, request.headers.get(STRICTNESS_HEADER))
    server = state.config.server
    texts, model = parse_moderation_inputs(await read_body(request, state), server.max_moderation_inputs, server.max_json_depth)
    guards: GuardSet = state.guards
    if guards.flexguard is None:
        raise InvalidRequest("Moderations need FlexGuard, which is disabled in this proxy's config.")
    lanes = asyncio.Semaphore(_MODERATION_CONCURRENCY)
    request_id = request_id_of(request.headers.get("x-request-id"))
    recorder: Recorder | None = state.recorder
    started, clock = time.time(), time.perf_counter()
    report = RequestReport(request_id=request_id)

    def record(outcome: str, error: BaseException | None) -> None:
        if recorder is not None:
            latency = time.perf_counter() - clock
            recorder.moderation(
                request_id=request_id, started=started, latency_s=latency, tenant=principal.name, texts=texts,
                model=model, policy=policy, report=report, outcome=outcome, error=error,
            )  # fmt: skip

    async def one(text: str) -> Verdict:
        async with lanes:
            return (await guards.check_prompt(text))[0]

    try:
        verdicts = await gather_checks([one(text) for text in texts])
    except GuardError as exc:
        logger.warning("guard error in a moderation request: %s: %s", type(exc).__name__, exc)
        failed = guard_error_class(exc)(f"FlexGuard could not classify the input ({type(exc).__name__}).")
        report.prompt.record(decide_error("prompt", exc, policy))
        record("guard_error", failed)
        raise failed from exc
    for verdict in verdicts:
        report.prompt.record(decide("prompt", (verdict,), policy))
    report.prompt.checks = len(verdicts)
    results = [moderation_result(v, policy) for v in verdicts]
    record("flagged" if any(r["flagged"] for r in results) else "passed", None)
    return Response(moderation_response(model, results), headers={"x-request-id": request_id})


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    _, authorization = _authenticate(request, state)
    body, content_type = await state.upstreams.list_models(authorization)
    # The upstream's content type as sent: Litestar would append a second charset to a
    # media_type that already names one.
    return Response(body, media_type=MediaType.JSON, headers={"content-type": content_type})


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, object]]:
    if state.drain.draining:  # shutting down: take this instance out of rotation
        return Response({"ready": False, "checks": {"shutting_down": True}}, status_code=503)
    # What is wrong goes to the log (when it changes), not to whoever asks /readyz.
    checks = {probe.name: probe.ready for probe in await state.readiness.check()}
    ready = all(checks.values())
    return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


ROUTES = [chat_completions, completions, responses, moderations, list_models, healthz, readyz, passthrough]
