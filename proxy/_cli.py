"""``guardproxy``: the command line (serve; further subcommands register here)."""

from __future__ import annotations

import argparse
import logging
import sys

from ._config import load_config
from .exceptions import ConfigError

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ._app import create_app

    config = load_config(args.config)
    host = args.host or config.server.host
    port = args.port or config.server.port
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=config.server.shutdown_grace_s,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardproxy", description="OpenAI-compatible guardrail proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, help="TOML config file (see config.example.toml)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"guardproxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
