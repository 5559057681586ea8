"""The garbage collector tuned for a long-running server, once the app has started."""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Once started: collect, then freeze what survives (the modules, the app, the guard
    clients) out of the garbage collector's reach, as vLLM's API server does.

    Every full collection walks every object that is not frozen, and a proxy with its
    guards on allocates enough per request (check tasks, verdicts, guard responses) to
    trigger full collections often: walking the libraries' long-lived objects each time
    is CPU taken from requests for nothing. The young generation's threshold is raised
    for the same reason: the default counts a few streamed chunks' allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
