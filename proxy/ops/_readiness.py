"""Whether the proxy's dependencies can serve: the upstream and each guard it uses.

One probe per dependency, shared by the start of ``guardproxy serve`` (one log line per
dependency; ``--wait`` keeps probing until all are ready) and by ``GET /readyz`` (503
while one is not; a log line when a dependency's state changes, not at every probe).

- Each upstream: ``GET {base_url}/models`` answers with a model list, with at least one
  model that its ``models`` routes to it (``[upstream]`` alone routes every model).
- A guard on a server (backend ``openai``): the server answers and serves the configured
  model name (a server that serves another name would answer every check with a 404,
  and fail-closed would block every request).
- A guard in process (``vllm``, ``transformers``): its model loaded (``_open_guards``
  logs how long it took, or why it failed) and its engine still answers.

Where a policy steers reasoning, the start also says whether each upstream can continue a
steered generation (``probe_continuation``): a warning, not a failure, since a steer that
cannot continue falls back to ``steer_fallback``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from guards import GuardBackend, GuardModelConfig, open_backend

from .._config import ProxyConfig, UpstreamRoute
from ..exceptions import UpstreamError
from ..upstream._client import UpstreamClient, guard_transport
from ..upstream._router import Upstreams, open_upstreams

__all__ = [
    "Probe",
    "Readiness",
    "check_at_startup",
    "guard_location",
    "probe_continuation",
    "probe_guard",
    "probe_upstream",
]

logger = logging.getLogger("guardproxy.startup")

_LISTED = 5  # model names quoted in a log line; a server may serve many


@dataclass(frozen=True, slots=True)
class Probe:
    """One dependency's state: ``problem`` is None when it is ready."""

    name: str
    where: str
    problem: str | None = None
    note: str = ""

    @property
    def ready(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        if self.problem is not None:
            return f"{self.name} ({self.where}): NOT READY: {self.problem}"
        return f"{self.name} ({self.where}): ready" + (f", {self.note}" if self.note else "")


def guard_location(config: GuardModelConfig) -> str:
    if config.backend == "openai":
        return f"{config.base_url}, model {config.model}"
    return f"in-process {config.backend}, model {config.model}"


def _root_cause(exc: BaseException) -> str:
    # The upstream client's own messages leave out the error's text (it may reach
    # clients); the operator's log wants it: "Connect call failed ('127.0.0.1', 8000)".
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip()
    return f"{type(root).__name__}: {text}"[:300] if text else type(root).__name__


def _model_ids(payload: Any) -> list[str] | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def probe_upstream(upstream: UpstreamClient, route: UpstreamRoute, *, named: bool = False) -> Probe:
    """``named``: there are several upstreams, so the probe says which one."""
    name = f"upstream {route.name}" if named else "upstream"
    where = route.base_url if len(route.replica_urls) == 1 else ", ".join(route.replica_urls)
    try:
        response = await upstream.get("/models")
    except UpstreamError as exc:
        return Probe(name, where, f"unreachable ({_root_cause(exc)})")
    status = response.status_code
    if status in (401, 403) and route.auth == "passthrough":
        # Its /models wants a client's key, which the proxy only has inside a request.
        return Probe(name, where, note=f"answers (HTTP {status} to GET /models without a client's key)")
    if status >= 400:
        hint = " (check upstream.api_key_env)" if status in (401, 403) else ""
        return Probe(name, where, f"GET /models answered HTTP {status}{hint}")
    try:
        ids = _model_ids(response.json())
    except ValueError:
        ids = None
    if ids is None:
        return Probe(name, where, note="answers GET /models")
    if not ids:
        return Probe(name, where, "serves no model (GET /models lists none)")
    more = f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else ""
    served = f"{', '.join(ids[:_LISTED])}{more}"
    # Requests for its models would all come back 404 from it: a config error.
    globs = route.model_globs
    if not any(i in route.exact_models or any(g.match(i) for g in globs) for i in ids):
        return Probe(name, where, f"serves none of the models routed to it ({', '.join(route.models)}); it serves {served}")
    return Probe(name, where, note=f"serves {served}")


async def probe_continuation(upstream: UpstreamClient, route: UpstreamRoute, *, named: bool = False) -> Probe:
    """Can this upstream continue a steered generation its ``continuation`` way? The
    ``completions`` way needs the server's POST /tokenize (vLLM's); ``chat`` needs
    ``continue_final_message``, which only a request can show; ``none`` cannot."""
    name = f"steering on upstream {route.name}" if named else "steering"
    where = route.base_url
    fallback = "every steer falls back to steer_fallback"
    if route.continuation == "none":
        return Probe(name, where, f'continuation = "none": {fallback}')
    if route.continuation == "chat":
        return Probe(name, where, note="continues with chat completions and continue_final_message (not probed)")
    body: dict[str, Any] = {"prompt": "<think>", "add_special_tokens": False}
    if route.exact_models:
        body["model"] = route.exact_models[0]
    try:
        raw = await upstream.post_root("/tokenize", msgspec.json.encode(body))
        tokens = msgspec.json.decode(raw).get("tokens")
    except (UpstreamError, msgspec.DecodeError, AttributeError) as exc:
        return Probe(name, where, f'POST /tokenize failed ({_root_cause(exc)}): {fallback}; set continuation = "chat" or "none"')
    if not isinstance(tokens, list):
        return Probe(name, where, f"POST /tokenize gave no token ids: {fallback}")
    return Probe(name, where, note="continues through POST /tokenize and /completions")


def steers(config: ProxyConfig) -> bool:
    """Does any policy (the global one or a tenant's) steer reasoning?"""
    policies = [config.policy, *(t.policy for t in config.tenants)]
    return any(p.reasoning.enabled and p.reasoning.action == "steer" for p in policies)


async def probe_guard(name: str, backend: GuardBackend, config: GuardModelConfig) -> Probe:
    """Backends that can say why they are not ready offer ``why_not_ready()`` (the
    server backend does); for the others ``ready()`` is all there is to know."""
    where = guard_location(config)
    explain = getattr(backend, "why_not_ready", None)
    try:
        if explain is not None:
            problem = await explain()
        else:
            problem = None if await backend.ready() else f"the in-process {config.backend} engine is not healthy"
    except Exception as exc:  # a probe reports, it does not raise
        problem = f"the readiness check failed ({_root_cause(exc)})"
    return Probe(name, where, problem, note="serves it" if config.backend == "openai" else "loaded")


class Readiness:
    """Probes every dependency of one proxy; logs only what changed since the last probe.

    A load balancer asks /readyz every few seconds: a line per probe would bury the log,
    a line per change says when a dependency went away and came back.
    """

    def __init__(
        self,
        upstreams: Upstreams,
        guards: Mapping[str, tuple[GuardBackend, GuardModelConfig]],
    ) -> None:
        self._upstreams = upstreams
        self._guards = dict(guards)
        # The last problem logged per dependency; a dependency not seen yet counts as ready
        # (the start has logged its state already).
        self._logged: dict[str, str | None] = {}

    async def check(self, *, log_all: bool = False) -> list[Probe]:
        named = len(self._upstreams.routes) > 1
        probes = await asyncio.gather(
            *(probe_upstream(client, route, named=named) for route, client in self._upstreams.routes),
            *(probe_guard(name, backend, config) for name, (backend, config) in self._guards.items()),
        )
        for probe in probes:
            if log_all or probe.problem != self._logged.get(probe.name):
                logger.log(logging.INFO if probe.ready else logging.WARNING, "%s", probe.line())
            self._logged[probe.name] = probe.problem
        return list(probes)


async def check_at_startup(
    config: ProxyConfig,
    guards: Mapping[str, GuardModelConfig],
    *,
    wait_s: float = 0.0,
    poll_s: float = 1.0,
) -> bool:
    """Probe the upstream and the guard servers, one log line each; True when all are ready.

    With ``wait_s`` > 0, probe again every ``poll_s`` until all are ready or ``wait_s``
    has passed (containers start in any order), logging each change. Guards run in
    process are not probed here: ``_open_guards.open_guard`` reports them as they load.
    """
    upstreams = open_upstreams(config)
    served = {name: guard for name, guard in guards.items() if guard.backend == "openai"}
    backends: dict[str, GuardBackend] = {}
    try:
        for name, guard in served.items():
            backends[name] = await open_backend(guard, transport=guard_transport(config.upstream, guard))
        readiness = Readiness(upstreams, {n: (backends[n], served[n]) for n in served})
        start = time.monotonic()
        probes = await readiness.check(log_all=True)
        waiting = [p.name for p in probes if not p.ready]
        if steers(config) and not waiting:
            named = len(upstreams.routes) > 1
            for probe in await asyncio.gather(*(probe_continuation(c, r, named=named) for r, c in upstreams.routes)):
                logger.log(logging.INFO if probe.ready else logging.WARNING, "%s", probe.line())
        if waiting and wait_s > 0:
            logger.info("waiting up to %g s for %s", wait_s, ", ".join(waiting))
        while waiting and time.monotonic() - start < wait_s:
            await asyncio.sleep(min(poll_s, max(0.0, wait_s - (time.monotonic() - start))))
            probes = await readiness.check()
            waiting = [p.name for p in probes if not p.ready]
        if wait_s > 0:
            if waiting:
                logger.error("not ready after %g s: %s", wait_s, ", ".join(waiting))
            else:
                logger.info("all dependencies ready after %.1f s", time.monotonic() - start)
        return not waiting
    finally:
        await upstreams.aclose()
        for backend in backends.values():
            await backend.aclose()
