"""The guards' backends opened as the app starts: an in-process model loaded (and how
long it took logged), a guard server's client made; then what every check of each guard
will fit, read from its context once and logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from guards import FlexGuard, GuardBackend, GuardModelConfig, ReasoningShield, open_backend

from ._readiness import guard_location

__all__ = ["fit_contexts", "open_guard"]

logger = logging.getLogger("guardproxy.startup")


async def open_guard(
    name: str, config: GuardModelConfig, transport: Callable[[], httpx.AsyncBaseTransport] | None = None
) -> GuardBackend:
    """Open a guard's backend; an in-process one loads its model here, and says so.
    ``transport`` makes a guard server's HTTP transport (the backend owns it)."""
    if config.backend == "openai":
        # A client only: check_at_startup probes the server.
        return await open_backend(config, transport=transport() if transport else None)
    where = guard_location(config)
    logger.info("%s (%s): loading", name, where)
    start = time.monotonic()
    try:
        backend = await open_backend(config)
    except Exception as exc:
        logger.error("%s (%s): NOT READY: the model failed to load: %s: %s", name, where, type(exc).__name__, exc)
        raise
    logger.info("%s (%s): loaded in %.1f s", name, where, time.monotonic() - start)
    return backend


async def fit_contexts(*guards: FlexGuard | ReasoningShield | None) -> None:
    """Read each guard's context once, as the guards are opened, and log what every
    check will fit (guards/_context.py). A guard that cannot tell within its check
    deadline keeps the configured or default context, which the log line names."""
    for guard in guards:
        if guard is None:
            continue
        where = guard_location(guard.config)
        try:
            async with asyncio.timeout(guard.config.timeout_s):
                fit = await guard.fit_context()
        except TimeoutError:
            fit = guard.context
            logger.warning("%s (%s): could not read its context in %g s", guard.name, where, guard.config.timeout_s)
        # A default context is a guess: the operator should know it is one.
        level = logging.WARNING if fit.source == "default" else logging.INFO
        logger.log(level, "%s (%s): %s", guard.name, where, fit.describe())
        if fit.problem is not None:
            logger.error("%s (%s): %s", guard.name, where, fit.problem)
