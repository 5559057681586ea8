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
- Decision records: every worker appends to the one ``[audit] path`` (whole lines under
  a file lock, rotation included) and every worker's console follows that file, so the
  console shows all workers' decisions whichever worker answers; the console with
  several workers therefore needs ``[audit] path``.
- SIGHUP to the supervisor reloads the config (ops/_reload.py): the supervisor reads
  the file, and if it is valid passes the signal to every worker, each of which applies
  it as a single process does, and starts any later worker with it; an invalid file is
  logged once and changes nothing. Workers start with SIGHUP held (the signal mask is
  inherited) until they can reload, so that one never ends a starting worker.
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
from ._reload import SUPERVISOR_PID_ENV, ConfigSource, ReloadResult, check_reload

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
    if config.console.enabled and not config.audit.path:
        raise ConfigError(
            f"--workers {workers}: the console shows every worker's decisions by following the one audit log; "
            "set [audit] path (or run one worker)"
        )
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


def _worker(
    config: ProxyConfig,
    sock: socket.socket,
    log_level: str,
    source: ConfigSource | None = None,
    console_sock: socket.socket | None = None,
) -> None:
    """One worker process: the single-process proxy, on the supervisor's socket (and the
    console's, with ``[console] port``)."""
    from .._app import create_app
    from ._shutdown import server_for

    logging.basicConfig(level=log_level.upper(), format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server = server_for(
        create_app(config, shared_audit=True, config_source=source),
        grace_s=config.server.shutdown_grace_s,
        log_level=log_level,
        access_log=False,
    )
    try:
        server.run(sockets=[sock] if console_sock is None else [sock, console_sock])
    except KeyboardInterrupt:
        pass
    raise SystemExit(0 if server.started else 1)


def run_workers(
    config: ProxyConfig, host: str, port: int, workers: int, log_level: str, source: ConfigSource | None = None
) -> int:
    """Run ``workers`` processes on ``host:port`` until SIGTERM or SIGINT, reloading
    ``source`` on SIGHUP; the exit status."""
    from .._app import guards_needed
    from ..console import console_socket

    sock = _bind(host, port)
    console_sock = console_socket(config) if config.console.enabled and config.console.port else None
    metrics_dir = tempfile.mkdtemp(prefix="guardproxy-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # inherited by the spawned workers
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # a worker asked to reload asks this process
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, tuple[BaseProcess, float]] = {}
    opened = {name for name, on in guards_needed(config).items() if on}
    stopping = False
    failed = False
    hangup = False

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            p = ctx.Process(
                target=_worker, args=(config, sock, log_level, source, console_sock), name="guardproxy-worker", daemon=False
            )
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        procs[p.pid or 0] = (p, time.monotonic())

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        nonlocal hangup
        hangup = True  # handled by the loop below, not inside a signal handler

    def reload_workers() -> None:
        nonlocal config
        if source is None:
            logger.warning("guardproxy: SIGHUP: started without a config file (serve --config): nothing to reload")
            return
        try:
            config, _, result = check_reload(config, source, opened)
        except ConfigError as exc:
            result = ReloadResult(ok=False, source=source.path, error=str(exc).removeprefix(f"{source.path}: "))
            logger.warning("guardproxy: %s", result.message())
            return
        logger.info("guardproxy: SIGHUP: %d workers reload %s", len(procs), source.path)
        for p, _ in procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGHUP)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            logger.info("guardproxy: %s: draining %d workers", signal.Signals(signum).name, len(procs))
        stopping = True
        for p, _ in procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        for _ in range(workers):
            start()
        logger.info("guardproxy: %d workers on http://%s:%d", workers, host, port)
        while procs:
            time.sleep(0.2)
            if hangup and not stopping:
                hangup = False
                reload_workers()
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
        if console_sock is not None:
            console_sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(METRICS_DIR_ENV, None)
        os.environ.pop(SUPERVISOR_PID_ENV, None)
    return 1 if failed else 0


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # its live gauges leave the sums
