"""Where decision records go: the console's ring and the audit log.

The app creates one ``Recorder`` in its lifespan when ``[console] enabled`` or
``[audit] path`` is set (else nothing is recorded and a request pays nothing). A
guarded request's response calls ``on_done`` when it has finished, after telemetry: the
record is built from the request's report, added to the ring (and so to the live
stream), and its line queued for the audit log. Building it never raises into the
request: a failure is logged.

With ``serve --workers N`` every worker appends to the one audit file (see
``_audit``) and every worker's console follows that file (``_follow``) instead of
its own requests, so whichever worker answers ``/console`` shows the records and
labels of all of them; the console then needs ``[audit] path``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .._config import PolicyConfig, ProxyConfig
from ..protocols._wire import encode
from ._audit import AuditWriter
from ._follow import AuditFollower
from ._records import Capture, PolicySnapshots, Record, build_record
from ._store import DecisionStore

if TYPE_CHECKING:
    from ..ops._metrics import ProxyMetrics
    from ..pipeline._relay import Exchange
    from ..pipeline._report import RequestReport

__all__ = ["Recorder"]

logger = logging.getLogger("guardproxy")

Done = Callable[["RequestReport", str, BaseException | None], None]


class Recorder:
    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics | None = None, *, follow: bool = False) -> None:
        self.capture = Capture(config.audit)
        self._policies = PolicySnapshots()
        self.store = DecisionStore(config.console.keep) if config.console.enabled else None
        self.audit: AuditWriter | None = None
        self.follower: AuditFollower | None = None
        if config.audit.path:
            on_drop = (lambda reason, n: metrics.audit_dropped.labels(reason).inc(n)) if metrics is not None else None
            self.audit = AuditWriter(config.audit, on_drop)
            if follow and self.store is not None:
                self.follower = AuditFollower(config.audit.path, self.store)

    def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
        if self.follower is not None:
            self.follower.start()

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
        if self.follower is not None:
            self.follower.close()

    def on_done(self, ex: Exchange, tenant: str, upstream: str, then: Done) -> Done:
        """The response's end-of-request callback: ``then`` (telemetry), then the record."""
        started_wall = time.time()
        started = time.perf_counter()

        def done(report: RequestReport, outcome: str, error: BaseException | None) -> None:
            then(report, outcome, error)
            try:
                record = build_record(
                    request_id=report.request_id,
                    started=started_wall,
                    latency_s=time.perf_counter() - started,
                    tenant=tenant,
                    api=ex.adapter.name,
                    upstream=upstream,
                    request=ex.request,
                    policy=ex.policy,
                    report=report,
                    outcome=outcome,
                    error=error,
                    capture=self.capture if self.capture.enabled else None,
                    policy_doc=self._policies.of(ex.policy),
                )
                self.add(record)
            except Exception:  # the request is answered: a record that failed must not change that
                logger.exception("the decision record of request %s failed", report.request_id)

        return done

    def moderation(
        self,
        *,
        request_id: str,
        started: float,
        latency_s: float,
        tenant: str,
        texts: list[str],
        model: str,
        policy: PolicyConfig,
        report: RequestReport,
        outcome: str,
        error: BaseException | None,
    ) -> None:
        """The record of a moderation request: one prompt-mode check per input."""
        try:
            record = build_record(
                request_id=request_id,
                started=started,
                latency_s=latency_s,
                tenant=tenant,
                api="moderations",
                upstream="",
                request=_Moderation(model=model, n=len(texts), texts=texts),
                policy=policy,
                report=report,
                outcome=outcome,
                error=error,
                capture=self.capture if self.capture.enabled else None,
                policy_doc=self._policies.of(policy),
            )
            self.add(record)
        except Exception:  # the request is answered: a record that failed must not change that
            logger.exception("the decision record of request %s failed", request_id)

    def add(self, record: Record) -> None:
        data = encode(record)  # once: the ring keeps it, the audit log writes it
        if self.store is not None and self.follower is None:
            self.store.add(record, data)
        if self.audit is not None:
            self.audit.submit(data)

    def label(self, line: dict[str, Any]) -> None:
        if self.store is not None and self.follower is None:
            self.store.label(line)
        if self.audit is not None:
            self.audit.submit(encode(line))


class _Moderation(msgspec.Struct, kw_only=True):
    """A moderation request as a record reads it (the fields of ``ApiRequest`` it uses)."""

    model: str
    n: int
    texts: list[str]
    stream: bool = False

    def screened_prompt(self, scope: str) -> str:
        return "\n".join(self.texts)
