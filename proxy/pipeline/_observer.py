"""What the pipeline tells whoever watches a request, and how a shutdown reaches it.

The pipeline owns these interfaces and ``ops`` implements them (spans, metrics and the
request log; the shutdown drain), so that the pipeline never imports ``ops``. The base
observer does nothing: ``NO_TELEMETRY`` is the observer of a request nobody watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ._report import Decision, RequestReport, SteerRecord

__all__ = ["NO_TELEMETRY", "RequestObserver", "ShutdownWatch"]


class RequestObserver:
    """The hooks the pipeline and the response call; this base does nothing."""

    __slots__ = ()

    def check_started(self, stage: str, task: asyncio.Future[Any], tokens: int | None = None) -> None:
        pass

    def check_done(self, task: asyncio.Future[Any], decision: Decision) -> None:
        pass

    def upstream_started(self) -> None:
        pass

    def first_chunk(self) -> None:
        pass

    def upstream_done(self, report: RequestReport) -> None:
        pass

    def steered(self, report: RequestReport, steer: SteerRecord) -> None:
        """A flagged reasoning was rolled back and its continuation asked for."""

    def upstream_dropped(self, api: str, fields: tuple[str, ...]) -> None:
        """The upstream sent fields the proxy does not know; they were dropped."""

    def finish(self, report: RequestReport | None, outcome: str, error: BaseException | None = None) -> None:
        pass


NO_TELEMETRY = RequestObserver()


class ShutdownWatch(Protocol):
    """Where a running response registers the callback that stops it when the shutdown
    deadline passes (``ops._shutdown.Drain``)."""

    def register(self, key: object, stop: Callable[[], None]) -> None: ...

    def unregister(self, key: object) -> None: ...
