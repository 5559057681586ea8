"""``serve --workers N``: N proxy processes on one listening socket, one supervisor.

The supervisor binds the socket, then starts each worker with the ``spawn`` method (a
fresh interpreter: nothing of the supervisor's state, no forked event loop) and hands it
the socket; the kernel spreads the connections over the workers that accept. Each worker
is an ordinary single-process proxy (``create_app`` and ``ProxyServer``), so the HTTP
protocol class, the startup checks and the graceful drain are the same code as with one
process.

- SIGTERM or SIGINT to the supervisor is passed to every worker; each drains its streams
  for ``shutdown_grace_s`` as a single process does, and the supervisor exits 0 once all
  have ended (1 if a worker failed).
- A worker that dies is restarted. One that dies within ``_FAST_FAIL_S`` of its start
  (a guard model that did not load, a port it cannot serve) stops the whole instance:
  restarting it would only repeat the failure.
- ``/metrics`` reports the whole instance: the supervisor gives every worker one
  ``PROMETHEUS_MULTIPROC_DIR`` (created at start, removed at exit), each worker's
  metrics live in files there (prometheus_client's multiprocess mode), and whichever
  worker answers a scrape sums them: counters and histograms over every worker that
  ever ran, the in-flight gauge over the live ones only (``livesum``).
- In-process guard backends (vllm, transformers) are refused with more than one worker:
  each worker would load its own copy of the model.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from .._config import ProxyConfig
from ..exceptions import ConfigError

__all__ = ["METRICS_DIR_ENV", "check_workers", "resolve_workers", "run_workers"]

logger = logging.getLogger("guardproxy")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FAST_FAIL_S = 10.0


def resolve_workers(value: str) -> int:
    """``--workers``: a count, or ``auto`` for the number of cores."""
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--workers {value!r}: a number of processes, or auto") from None
    if n < 1:
        raise ConfigError(f"--workers {value!r}: at least 1")
    return n


def check_workers(config: ProxyConfig, workers: int, needed: dict[str, Any]) -> None:
    """More than one worker with a guard model in process would load it once per worker."""
    if workers <= 1:
        return
    for name, guard in needed.items():
        if guard.backend != "openai":
            raise ConfigError(
                f"--workers {workers}: guards.{name} runs in process (backend {guard.backend!r}), and each "
                f"worker would load its own copy of {guard.model}; serve it with `vllm serve` (backend "
                '"openai") to use several workers, or run one worker'
            )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(config: ProxyConfig, sock: socket.socket, log_level: str) -> None:
    """One worker process: the single-process proxy, on the supervisor's socket."""
    from .._app import create_app
    from ._shutdown import server_for

    logging.basicConfig(level=log_level.upper(), format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server = server_for(
        create_app(config), grace_s=config.server.shutdown_grace_s, log_level=log_level, access_log=False
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    raise SystemExit(0 if server.started else 1)


def run_workers(config: ProxyConfig, host: str, port: int, workers: int, log_level: str) -> int:
    """Run ``workers`` processes on ``host:port`` until SIGTERM or SIGINT; the exit status."""
    sock = _bind(host, port)
    metrics_dir = tempfile.mkdtemp(prefix="guardproxy-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # inherited by the spawned workers
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, tuple[BaseProcess, float]] = {}
    stopping = False
    failed = False

    def start() -> None:
        p = ctx.Process(target=_worker, args=(config, sock, log_level), name="guardproxy-worker", daemon=False)
        p.start()
        procs[p.pid or 0] = (p, time.monotonic())

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            logger.info("guardproxy: %s: draining %d workers", signal.Signals(signum).name, len(procs))
        stopping = True
        for p, _ in procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(workers):
            start()
        logger.info("guardproxy: %d workers on http://%s:%d", workers, host, port)
        while procs:
            time.sleep(0.2)
            for pid, (p, started) in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[pid]
                _mark_dead(pid)
                if stopping:
                    failed = failed or p.exitcode not in (0, -signal.SIGTERM)
                    continue
                logger.error("guardproxy: worker %d exited with %s", pid, p.exitcode)
                if time.monotonic() - started < _FAST_FAIL_S:
                    logger.error("guardproxy: it failed at start: stopping the instance")
                    failed = True
                    on_signal(signal.SIGTERM, None)
                else:
                    start()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(METRICS_DIR_ENV, None)
    return 1 if failed else 0


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # its live gauges leave the sums
