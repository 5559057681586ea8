"""``[console] port``: the console on a listener of its own.

The one server (and with ``--workers N`` every worker) serves both sockets with the
one app; this middleware keeps them apart by the port a request arrived on: the
console's port serves ``/console`` only, the proxy's port everything but it. So the
console can be bound to another address (``[console] host``, e.g. loopback or an
admin network) than the API, and a firewall can tell them apart.
"""

from __future__ import annotations

import socket
from typing import Any

from litestar.types import ASGIApp

from .._config import ProxyConfig
from .._errors import error_body
from ..exceptions import NotFound

__all__ = ["console_socket", "split_listeners"]


def console_socket(config: ProxyConfig) -> socket.socket:
    """The console's listening socket (inheritable: the workers serve it too)."""
    assert config.console.port is not None
    host = config.console.host or config.server.host
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, config.console.port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _is_console(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


def split_listeners(console_port: int) -> Any:
    """Litestar middleware: 404 for the console on the proxy's port and for the rest on
    the console's."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def split(scope: Any, receive: Any, send: Any) -> None:  # raw ASGI, before Litestar's types
            if scope["type"] == "http":
                server = scope.get("server") or (None, None)
                on_console_port = server[1] == console_port
                if _is_console(scope["path"]) != on_console_port:
                    where = "the console's own port" if not on_console_port else "the proxy's port"
                    body = error_body(NotFound(f"Not found here: {scope['path']} is served on {where}."))
                    await send(
                        {"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]}
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
            await app(scope, receive, send)

        return split

    return middleware
