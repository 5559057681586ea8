"""Bench-only launcher: the proxy with a chosen upstream transport and ASGI server.

    python -m bench._launch --config FILE --port P \\
        [--transport httpx|aiohttp] [--server uvicorn|granian]

It builds the app with the config's ``upstream.http_transport`` set to the stack's
transport. ``uvicorn`` runs like ``guardproxy serve`` (uvloop + httptools); ``granian``
serves the same app through its ASGI interface, one worker.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

_ENV_CONFIG = "BENCH_PROXY_CONFIG"
_ENV_TRANSPORT = "BENCH_PROXY_TRANSPORT"


def build_app(config_path: str, transport: str) -> Any:
    from proxy import create_app, load_config

    config = load_config(config_path)
    config.upstream.http_transport = transport  # the proxy's own option, set per stack
    return create_app(config)


def app_factory() -> Any:
    """For granian (``--factory``): the configuration comes from the environment."""
    return build_app(os.environ[_ENV_CONFIG], os.environ.get(_ENV_TRANSPORT, "httpx"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", default="httpx", choices=["httpx", "aiohttp"])
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "granian"])
    args = parser.parse_args(argv)
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            build_app(args.config, args.transport),
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            backlog=4096,
        )
        return 0
    from granian import Granian

    os.environ[_ENV_CONFIG] = os.path.abspath(args.config)
    os.environ[_ENV_TRANSPORT] = args.transport
    Granian(
        "bench._launch:app_factory",
        factory=True,
        address="127.0.0.1",
        port=args.port,
        interface="asgi",
        workers=1,
        loop="uvloop",
        log_level="warning",
        backlog=4096,
    ).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
