"""``guardproxy``: the command line: serve, calibrate, check."""

from __future__ import annotations

import argparse
import logging
import sys

from guards import GuardError

from ._config import load_config
from .exceptions import ConfigError

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from ._app import create_app
    from ._shutdown import server_for

    config = load_config(args.config)
    host = args.host or config.server.host
    port = args.port or config.server.port
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    # On SIGTERM: stop accepting, give streams in flight shutdown_grace_s, then end
    # them well-formed (see _shutdown).
    server = server_for(
        create_app(config),
        grace_s=config.server.shutdown_grace_s,
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=False,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._calibrate import calibrate

    config = load_config(args.config)
    calibrate(
        config,
        Path(args.data),
        mode=args.mode,
        cache_path=Path(args.cache) if args.cache else None,
        plot_path=Path(args.plot) if args.plot else None,
        concurrency=args.concurrency,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from ._calibrate import check

    config = load_config(args.config)
    try:
        return check(config, args.text, response=args.response, reasoning=args.reasoning, raw=args.raw)
    except GuardError as exc:
        print(f"guardproxy: the guard failed: {type(exc).__name__}", file=sys.stderr)
        return 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardproxy", description="OpenAI-compatible guardrail proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, help="TOML config file (see config.example.toml)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    cal = sub.add_parser("calibrate", help="find the threshold that maximises F1 on a labelled JSONL dev set")
    cal.add_argument("data", help="JSONL: prompt (and response), label / label_strict / label_moderate / label_loose")
    cal.add_argument("--config", required=True, help="the proxy config whose [guards.flexguard] scores the data")
    cal.add_argument("--mode", choices=["prompt", "response"], default="prompt")
    cal.add_argument("--cache", help="score cache (default: DATA.scores.json beside the data)")
    cal.add_argument("--plot", default="calibration.png", help="PNG of precision, recall and F1 against the threshold")
    cal.add_argument("--concurrency", type=int, default=8)
    cal.set_defaults(func=_calibrate)

    chk = sub.add_parser("check", help="print a guard's verdict on a text, under the config's policy")
    chk.add_argument("text", help="the user prompt (or the query, with --reasoning)")
    chk.add_argument("--config", required=True)
    mode = chk.add_mutually_exclusive_group()
    mode.add_argument("--response", help="judge this answer to TEXT (FlexGuard response mode)")
    mode.add_argument("--reasoning", help="judge this reasoning trace for TEXT (ReasoningShield)")
    chk.add_argument("--raw", action="store_true", help="also print the guard's raw output")
    chk.set_defaults(func=_check)
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
