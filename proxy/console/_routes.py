"""The console's HTTP side: the page, its static files, and the JSON and SSE API.

Every route first passes the rate limit (per client address), then, except the page
shell and its static files (which hold no data), the admin key: sent by the page's
script as ``Authorization: Bearer <key>`` (or ``X-Guardproxy-Admin-Key``), kept in the
tab's sessionStorage, never in a cookie. A missing or unknown key gets 401, a proxy
key 403. The key is compared by digest in constant time and never logged.

    GET  /console                                   the page (server-rendered shell)
    GET  /console/static/{name}                     console.js, console.css
    GET  /console/api/decisions                     newest first, {"data": [...]}; filters:
         outcome (comma-separated), stage, category, tenant, model, since, until, limit
    GET  /console/api/decisions/{request_id}
    POST /console/api/decisions/{request_id}/labels {"stage": ..., "verdict": "right"|"wrong"}
    GET  /console/api/events                        server-sent events: decision, label
    GET  /console/api/whatif                        the filtered records' outcomes at
         strictness=, flag_at= and/or enforce= (shadow mode off or on), recomputed from
         the stored scores
    GET  /console/api/calibration                   precision and recall from the labels
    POST /console/api/reload                        read the config file again (as SIGHUP;
         with several workers, all of them): {"ok", "changed", "kept", "error"}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Stream

from .._auth import KeyRing, bearer
from .._config import ProxyConfig
from ..exceptions import AuthenticationFailed, ConfigError, InvalidRequest, NotFound, PermissionDenied, RateLimited
from ..ops._reload import reload
from ..ops._shutdown import Drain
from ..protocols._wire import encode
from ._recorder import Recorder
from ._store import LABEL_STAGES, LABEL_VERDICTS, DecisionStore, Filter, parse_time
from ._whatif import calibration, calibration_items, strictness_value, what_if

__all__ = ["ConsoleAccess", "console_router"]

_ADMIN_HEADER = "x-guardproxy-admin-key"
_STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
_MAX_LIMIT = 5000
_KEEPALIVE_S = 15.0
_DRAIN_POLL_S = 0.5
_PAGE_HEADERS = {
    # The page runs only its own script and style: a prompt that slipped through as
    # markup could not run anything.
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class ConsoleAccess:
    """The admin key's digest, the proxy's key ring (to tell a proxy key apart), and
    the per-address rate limit (a sliding minute)."""

    def __init__(self, config: ProxyConfig, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = config.console.admin_key_env
        key = env.get(name, "").strip()
        if not key:
            raise ConfigError(f"console.admin_key_env: the environment variable ${name} is unset or empty")
        keyring = KeyRing.from_config(config, env)
        if keyring.required:
            try:
                keyring.identify(key)
            except AuthenticationFailed:
                pass
            else:
                raise ConfigError(f"console.admin_key_env: ${name} holds a proxy API key; the console's key must be its own")
        self._digest = hashlib.sha256(key.encode()).digest()
        self.per_minute = config.console.requests_per_minute
        self._hits: dict[str, deque[float]] = {}

    def admit(self, request: Request[Any, Any, Any]) -> None:
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        hits = self._hits.get(client)
        if hits is None:
            if len(self._hits) > 10_000:  # many addresses: forget the idle ones
                self._hits = {k: v for k, v in self._hits.items() if v and now - v[-1] < 60}
            hits = self._hits[client] = deque()
        while hits and now - hits[0] >= 60:
            hits.popleft()
        if len(hits) >= self.per_minute:
            raise RateLimited("Too many console requests; retry in a minute.", retry_after_s=60 - (now - hits[0]))
        hits.append(now)

    def authorize(self, request: Request[Any, Any, Any], state: State) -> None:
        presented = request.headers.get(_ADMIN_HEADER) or bearer(request.headers.get("authorization"))
        if not presented:
            raise AuthenticationFailed("The console needs its admin key: `Authorization: Bearer <admin key>`.")
        if hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest):
            return
        keyring = state.keyring
        if keyring.required:
            try:
                keyring.identify(presented)
            except AuthenticationFailed:
                pass
            else:
                raise PermissionDenied("A proxy API key cannot open the console: use its admin key.")
        raise AuthenticationFailed("Incorrect console admin key.")


def _guard(request: Request[Any, Any, Any], state: State, *, admin: bool = True) -> Recorder:
    access: ConsoleAccess = state.console_access
    access.admit(request)
    if admin:
        access.authorize(request, state)
    recorder: Recorder = state.recorder
    return recorder


def _store(recorder: Recorder) -> DecisionStore:
    assert recorder.store is not None  # the console routes exist only with the store
    return recorder.store


def _filter(request: Request[Any, Any, Any]) -> Filter:
    q = request.query_params
    args: dict[str, Any] = {k: q.get(k) for k in ("outcome", "stage", "category", "tenant", "model") if q.get(k)}
    for key in ("since", "until"):
        if q.get(key):
            try:
                args[key] = parse_time(q[key])
            except ValueError as exc:
                raise InvalidRequest(f"`{key}`: {exc}", param=key) from None
    if args.get("stage") not in (None, *LABEL_STAGES):
        raise InvalidRequest(f"`stage` must be one of {', '.join(LABEL_STAGES)}", param="stage")
    return Filter(**args)


def _limit(request: Request[Any, Any, Any], default: int = 500) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= _MAX_LIMIT:
        raise InvalidRequest(f"`limit` must be 1..{_MAX_LIMIT}", param="limit")
    return int(raw)


def _json(doc: Any, status: int = 200) -> Response[bytes]:
    return Response(encode(doc), status_code=status, media_type=MediaType.JSON, headers={"cache-control": "no-store"})


@get("/", media_type=MediaType.HTML, sync_to_thread=False)
def page(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    _guard(request, state, admin=False)
    config: ProxyConfig = state.config
    p = config.policy
    template = resources.files(__package__).joinpath("templates/console.html").read_text("utf-8")
    values = {
        "strictness": str(p.strictness),
        "threshold": str(p.threshold),
        "flag_at": f"{p.reasoning_flag_at:g}",
        "keep": str(config.console.keep),
        "capture": config.audit.capture,
        "enforce": "enforcing" if getattr(p, "enforce", True) else "shadow mode",
    }
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", html.escape(value, quote=True))
    return Response(template.encode(), media_type=MediaType.HTML, headers=_PAGE_HEADERS)


@get("/static/{name:str}", sync_to_thread=False)
def static(request: Request[Any, Any, Any], state: State, name: FromPath[str]) -> Response[bytes]:
    _guard(request, state, admin=False)
    media = _STATIC.get(name)
    if media is None:
        raise NotFound(f"/console/static/{name} does not exist.")
    body = resources.files(__package__).joinpath(f"static/{name}").read_bytes()
    return Response(body, headers={"content-type": media, "x-content-type-options": "nosniff", "cache-control": "no-cache"})


@get("/api/decisions", sync_to_thread=False)
def decisions(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    store = _store(_guard(request, state))
    # The records' JSON as kept: no decoding.
    body = b'{"data":[' + b",".join(e.data for e in store.newest(_filter(request), _limit(request))) + b"]}"
    return Response(body, media_type=MediaType.JSON, headers={"cache-control": "no-store"})


@get("/api/decisions/{request_id:str}", sync_to_thread=False)
def decision(request: Request[Any, Any, Any], state: State, request_id: FromPath[str]) -> Response[bytes]:
    store = _store(_guard(request, state))
    entry = store.get(request_id)
    if entry is None:
        raise NotFound(f"No decision record {request_id!r} in the console's memory.")
    return Response(entry.data, media_type=MediaType.JSON, headers={"cache-control": "no-store"})


class _Label(msgspec.Struct, forbid_unknown_fields=True):
    stage: str
    verdict: str


@post("/api/decisions/{request_id:str}/labels", status_code=201)
async def label(request: Request[Any, Any, Any], state: State, request_id: FromPath[str]) -> Response[bytes]:
    recorder = _guard(request, state)
    store = _store(recorder)
    try:
        body = msgspec.json.decode(await request.body(), type=_Label)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f'The body must be {{"stage": ..., "verdict": "right" | "wrong"}}: {exc}') from None
    if body.stage not in LABEL_STAGES or body.verdict not in LABEL_VERDICTS:
        raise InvalidRequest(f"`stage` must be one of {', '.join(LABEL_STAGES)}; `verdict` right or wrong")
    if store.get(request_id) is None and recorder.follower is None:
        raise NotFound(f"No decision record {request_id!r} in the console's memory.")
    line = {
        "type": "label",
        "request_id": request_id,
        "stage": body.stage,
        "verdict": body.verdict,
        "time": round(time.time(), 3),
    }
    recorder.label(line)
    return _json(line, 201)


@get("/api/events")
async def events(request: Request[Any, Any, Any], state: State) -> Stream:
    store = _store(_guard(request, state))
    queue = store.subscribe()
    drain: Drain = state.drain

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            quiet_since = time.monotonic()
            # Ends when the proxy starts shutting down: an open console must not hold
            # the drain (the page reconnects to the next process).
            while not drain.draining:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), _DRAIN_POLL_S)
                except TimeoutError:
                    if time.monotonic() - quiet_since >= _KEEPALIVE_S:
                        quiet_since = time.monotonic()
                        yield b": keepalive\n\n"
                    continue
                quiet_since = time.monotonic()
                yield b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        finally:
            store.unsubscribe(queue)

    return Stream(stream(), media_type="text/event-stream", headers={"cache-control": "no-store", "x-accel-buffering": "no"})


@get("/api/whatif", sync_to_thread=False)
def whatif(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    store = _store(_guard(request, state))
    q = request.query_params
    strictness: int | str | None = None
    flag_at: float | None = None
    raw_enforce = q.get("enforce")
    if raw_enforce not in (None, "true", "false"):
        raise InvalidRequest("`enforce` must be true or false", param="enforce")
    enforce = None if raw_enforce is None else raw_enforce == "true"
    try:
        if q.get("strictness"):
            strictness = strictness_value(q["strictness"])
        if q.get("flag_at"):
            flag_at = float(q["flag_at"])
            if flag_at not in (0.5, 1.0):
                raise ValueError("`flag_at` must be 0.5 or 1")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    rows = []
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for entry in store.newest(_filter(request), _limit(request)):
        record = entry.record()
        result = what_if(record, strictness, flag_at, enforce)
        rows.append({"request_id": record["request_id"], "outcome": record["outcome"], **result})
        before[record["outcome"]] = before.get(record["outcome"], 0) + 1
        after[result["outcome"]] = after.get(result["outcome"], 0) + 1
    return _json({"data": rows, "before": before, "after": after, "changed": sum(r["changed"] for r in rows)})


@get("/api/calibration", sync_to_thread=False)
def calibrate(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    store = _store(_guard(request, state))
    config: ProxyConfig = state.config
    items = calibration_items(e.record() for e in store.newest(_filter(request)))
    return _json({"labelled": len(items), **calibration(items, config.policy)})


@post("/api/reload", status_code=200)
async def reload_config(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    _guard(request, state)
    result = await reload(state)
    return _json(msgspec.to_builtins(result), 200 if result.ok else 409)


def console_router() -> Router:
    return Router(
        path="/console", route_handlers=[page, static, decisions, decision, label, events, whatif, calibrate, reload_config]
    )
