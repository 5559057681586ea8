"""Graceful shutdown: streams in flight get a deadline, then end well-formed.

On SIGTERM (or ``server.should_exit``) uvicorn stops accepting connections and waits
for the open ones. ``ProxyServer`` starts the app's ``Drain`` at that moment: responses
in flight go on normally until ``shutdown_grace_s`` has passed, then each one still
running is stopped (its upstream call closed, so vLLM aborts the generation) and ends
on its own terms: a started stream gets a final chunk per unfinished choice
(``finish_reason: "length"``, ``guardproxy.ended_by: "shutdown"``) and ``data: [DONE]``;
a response not yet started gets a 503 error. Text that had not passed its checks is
never released. uvicorn's own hard limit is set a little past the deadline, so that
these endings are written before it cancels anything.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from ._http11 import http_protocol

__all__ = ["Drain", "ProxyServer", "server_for", "HARD_STOP_MARGIN_S"]

# uvicorn cancels what is left this long after the drain deadline.
HARD_STOP_MARGIN_S = 3.0


class Drain:
    """The app's shutdown state: responses register a stop callback while they run."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._stops: dict[object, Callable[[], None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def register(self, key: object, stop: Callable[[], None]) -> None:
        if self.expired:
            stop()
        else:
            self._stops[key] = stop

    def unregister(self, key: object) -> None:
        self._stops.pop(key, None)

    def begin(self, grace_s: float) -> None:
        """Shutdown started: stop what still runs after ``grace_s`` seconds."""
        if self.draining:
            return
        self.draining = True
        if grace_s <= 0:
            self.expire()
        else:
            self._timer = asyncio.get_running_loop().call_later(grace_s, self.expire)

    def expire(self) -> None:
        self.expired = True
        stops, self._stops = list(self._stops.values()), {}
        for stop in stops:
            stop()

    @property
    def in_flight(self) -> int:
        return len(self._stops)


class ProxyServer(uvicorn.Server):
    """uvicorn's server, telling the app's ``Drain`` when shutdown begins; with the app's
    ``state``, it reloads the config on SIGHUP once it serves (ops/_reload.py)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float, state: Any = None) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s
        self.state = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.state is not None:
            from ._reload import listen_for_hangup

            listen_for_hangup(self.state)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin(self.grace_s)
        await super().shutdown(sockets)


def server_for(app: Any, *, grace_s: float, **uvicorn_options: Any) -> ProxyServer:
    """A ``ProxyServer`` for an app made by ``create_app`` (its drain and config are on
    ``app.state``)."""
    uvicorn_options.setdefault("http", http_protocol(app.state.config.server))
    config = uvicorn.Config(app, timeout_graceful_shutdown=math.ceil(grace_s + HARD_STOP_MARGIN_S), **uvicorn_options)
    return ProxyServer(config, app.state.drain, grace_s, app.state)
