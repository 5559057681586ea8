"""Which upstream serves a request: the named upstreams and the models each one serves.

The choice is made here, from the request's ``model`` and before any guard check, so an
unknown model costs the guards nothing and gets OpenAI's own 404. An exact name wins
over any glob; among globs, the first upstream in the config that matches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from .._config import ProxyConfig, UpstreamRoute
from ..exceptions import ModelNotFound, UpstreamError, UpstreamHTTPError
from ._client import UpstreamClient, create_transport

__all__ = ["Upstreams", "open_upstreams"]

# The model named in an error message, cut: it comes from the client.
_NAMED = 200


class Upstreams:
    """The upstream clients, by name, with the routing table built once at start."""

    def __init__(self, routes: Sequence[tuple[UpstreamRoute, UpstreamClient]]) -> None:
        self.routes = list(routes)
        self._exact = {model: (route.name, client) for route, client in self.routes for model in route.exact_models}
        self._globs = [(glob, route.name, client) for route, client in self.routes for glob in route.model_globs]

    @property
    def default(self) -> UpstreamClient:
        """The upstream of requests that name no model (pass-through paths): the first."""
        return self.routes[0][1]

    def for_model(self, model: str) -> tuple[str, UpstreamClient]:
        """The name and client of the upstream serving ``model``; ModelNotFound if none."""
        found = self._exact.get(model)
        if found is not None:
            return found
        for glob, name, client in self._globs:
            if glob.match(model):
                return name, client
        shown = model if len(model) <= _NAMED else model[:_NAMED] + "…"
        raise ModelNotFound(
            f"The model `{shown}` does not exist or you do not have access to it. "
            "GET /v1/models lists the models this proxy serves.",
            param="model",
        )

    def routes_to(self, model: str, name: str) -> bool:
        try:
            return self.for_model(model)[0] == name
        except ModelNotFound:
            return False

    async def list_models(self, authorization: str | None) -> tuple[bytes, str]:
        """GET /v1/models: the body and its content type.

        One upstream: its answer as it is. Several: the models of each that requests can
        reach there, merged into one list; an upstream that fails fails the listing,
        since a partial list would say a served model does not exist.
        """
        if len(self.routes) == 1:
            response = await self.default.get("/models", authorization)
            _raise_for_status(response.status_code, response.content, response.headers.get("content-type"))
            return response.content, response.headers.get("content-type", "application/json")
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [(route.name, tg.create_task(client.get("/models", authorization))) for route, client in self.routes]
        except* UpstreamError as failed:
            raise failed.exceptions[0] from None  # the first upstream that failed; the others were cancelled
        merged: list[Any] = []
        seen: set[str] = set()
        for name, task in tasks:
            response = task.result()
            _raise_for_status(response.status_code, response.content, response.headers.get("content-type"))
            try:
                data = msgspec.json.decode(response.content).get("data")
            except (msgspec.DecodeError, AttributeError):
                data = None
            if not isinstance(data, list):
                raise UpstreamError(f"Upstream {name!r} answered GET /models with no model list.")
            for entry in data:
                model = entry.get("id") if isinstance(entry, dict) else None
                if isinstance(model, str) and model not in seen and self.routes_to(model, name):
                    seen.add(model)
                    merged.append(entry)
        return msgspec.json.encode({"object": "list", "data": merged}), "application/json"

    async def aclose(self) -> None:
        for _, client in self.routes:
            await client.aclose()


def open_upstreams(config: ProxyConfig, transport: httpx.AsyncBaseTransport | None = None) -> Upstreams:
    """A client per upstream; ``transport`` replaces the only upstream's (tests, bench)."""
    routes = config.routes()
    if transport is not None and len(routes) > 1:
        raise ValueError("a given upstream transport needs a config with one upstream")
    return Upstreams([(route, UpstreamClient(route, transport or create_transport(route))) for route in routes])


def _raise_for_status(status: int, body: bytes, content_type: str | None) -> None:
    if status >= 400:
        raise UpstreamHTTPError(status, body, content_type)
