"""Tracing, and the per-request observer that feeds traces, metrics and the request log.

``Telemetry`` is the app's: created in the lifespan from ``[telemetry]``, kept on
``app.state.telemetry``, shut down (spans flushed) in its ``finally``. Its tracer comes
from a ``TracerProvider`` of its own, never the global one, so two apps in one process
(tests) stay apart and a test can pass an ``InMemorySpanExporter``. With
``traces = "none"`` there is no provider at all: no span objects, no context work.

``RequestTelemetry`` is one request's: the pipeline calls its hooks (prompt check and
each reasoning / answer check started and done, upstream started, first chunk, upstream
done) and the response calls ``finish(report, outcome)``. The span tree:

    guardproxy.request (SERVER)          gen_ai.request.model, guardproxy.outcome, ...
    ├── guardproxy.prompt_check          guardproxy.risk_score, guardproxy.action, ...
    ├── chat {model} (CLIENT)            the upstream call; gen_ai.response.*, usage, TTFT
    ├── guardproxy.reasoning_check       one per check, guardproxy.tokens_checked
    └── guardproxy.answer_check

Attribute names are OpenTelemetry's GenAI semantic conventions where one exists
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.evaluation.score.value``
for a guard's risk score, ...) and ``guardproxy.*`` for the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._config import TelemetryConfig
from ..exceptions import ConfigError
from ..pipeline._observer import NO_TELEMETRY, RequestObserver
from ..protocols._inventory import message_text
from ..protocols._wire import encode
from ._logging import RequestLog
from ._metrics import ProxyMetrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from ..pipeline._report import Decision, RequestReport, SteerRecord
    from ..protocols._base import ApiRequest

__all__ = ["Telemetry", "RequestTelemetry", "request_id_of"]

logger = logging.getLogger("guardproxy")

# gen_ai.operation.name per API (OpenTelemetry GenAI conventions).
_OPERATIONS = {"chat": "chat", "completions": "text_completion", "responses": "chat"}
_SPAN_NAMES = {stage: f"guardproxy.{stage}_check" for stage in ("prompt", "reasoning", "answer")}
_ERROR_OUTCOMES = frozenset({"upstream_error", "error"})


class Telemetry:
    """The app's tracer, metrics and request log, as configured."""

    def __init__(self, config: TelemetryConfig, *, span_exporter: SpanExporter | None = None) -> None:
        self.config = config
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if span_exporter is not None or config.traces != "none":
            self.provider = _provider(config, span_exporter)
            self.tracer = self.provider.get_tracer("guardproxy")
        self.metrics = ProxyMetrics() if config.metrics else None
        self.log = RequestLog(message_text=config.log_message_text) if config.log_requests else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None or self.metrics is not None or self.log is not None

    def request(
        self,
        chat: ApiRequest,
        headers: Mapping[str, str],
        api: str = "chat",
        upstream: str = "default",
        request_id: str | None = None,
    ) -> RequestObserver:
        """The observer of one generation request (a shared no-op one when all is off);
        ``api`` names it: "chat", "responses" or "completions"; ``upstream``: the
        upstream it was routed to; ``request_id``: the proxy's id of it (else one is
        taken from ``X-Request-Id`` or made)."""
        if not self.enabled:
            return NO_TELEMETRY
        return RequestTelemetry(self, chat, headers, api, upstream, request_id)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def _provider(config: TelemetryConfig, exporter: SpanExporter | None) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}), shutdown_on_exit=False)
    if exporter is not None:  # given by the caller (tests): exported as each span ends
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif config.traces == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError("telemetry.traces = \"otlp\" needs the OTLP exporter: pip install 'guardproxy[otlp]'") from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint)))
    return provider


class RequestTelemetry(RequestObserver):
    __slots__ = (
        "_app",
        "_log",
        "chat",
        "api",
        "upstream_name",
        "request_id",
        "started",
        "upstream_at",
        "ttft_s",
        "span",
        "_ctx",
        "_checks",
        "_upstream",
    )

    def __init__(
        self,
        app: Telemetry,
        chat: ApiRequest,
        headers: Mapping[str, str],
        api: str = "chat",
        upstream: str = "default",
        request_id: str | None = None,
    ) -> None:
        self._app = app
        self._log = app.log  # as it was when the request started: a reload may change the app's
        self.chat = chat
        self.api = api
        self.upstream_name = upstream
        self.request_id = request_id or request_id_of(headers.get("x-request-id"))
        self.started = time.perf_counter()
        self.upstream_at: float | None = None
        self.ttft_s: float | None = None
        self.span: Span | None = None
        self._ctx: Any = None
        self._checks: dict[asyncio.Future[Any], Span] = {}
        self._upstream: Span | None = None
        if app.metrics is not None:
            app.metrics.in_flight.inc()
        if app.tracer is not None:
            self._start_request_span(app.tracer, headers)

    # -- hooks -----------------------------------------------------------------------

    def check_started(self, stage: str, task: asyncio.Future[Any], tokens: int | None = None) -> None:
        tracer = self._app.tracer
        if tracer is None:
            return
        attributes: dict[str, Any] = {"guardproxy.stage": stage}
        if tokens is not None:
            attributes["guardproxy.tokens_checked"] = tokens
        self._checks[task] = tracer.start_span(_SPAN_NAMES[stage], context=self._ctx, attributes=attributes)

    def check_done(self, task: asyncio.Future[Any], decision: Decision) -> None:
        metrics = self._app.metrics
        if metrics is not None:
            metrics.check_done(decision)
        span = self._checks.pop(task, None) if self._checks else None
        if span is not None:
            span.set_attributes(_decision_attributes(decision))
            if decision.error:
                _set_error(span, decision.error)
            span.end()

    def upstream_started(self) -> None:
        self.upstream_at = time.perf_counter()
        tracer = self._app.tracer
        if tracer is not None:
            from opentelemetry.trace import SpanKind

            self._upstream = tracer.start_span(
                f"{_OPERATIONS[self.api]} {self.chat.model}",
                context=self._ctx,
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": _OPERATIONS[self.api],
                    "gen_ai.request.model": self.chat.model,
                    "gen_ai.request.stream": True,  # the proxy always streams from the upstream
                },
            )

    def first_chunk(self) -> None:
        if self.ttft_s is None and self.upstream_at is not None:
            self.ttft_s = time.perf_counter() - self.upstream_at

    def steered(self, report: RequestReport, steer: SteerRecord) -> None:
        if self.span is not None:
            self.span.add_event(
                "guardproxy.steer",
                {
                    "guardproxy.steer.at_token": steer.at_token,
                    "guardproxy.steer.flagged_check_tokens": steer.flagged_check_tokens,
                    "guardproxy.steer.kept_tokens": steer.kept_tokens,
                    "guardproxy.steer.risk_score": steer.risk_score if steer.risk_score is not None else -1,
                    "guardproxy.steer.categories": list(steer.categories),
                    "guardproxy.steer.mechanism": steer.mechanism,
                },
            )

    def upstream_dropped(self, api: str, fields: tuple[str, ...]) -> None:
        metrics = self._app.metrics
        if metrics is not None:
            for field in fields:
                metrics.upstream_dropped.labels(api, field).inc()

    def upstream_done(self, report: RequestReport) -> None:
        span, self._upstream = self._upstream, None
        if span is not None:
            span.set_attributes(_response_attributes(report, self.ttft_s))
            span.end()

    def finish(self, report: RequestReport | None, outcome: str, error: BaseException | None = None) -> None:
        """The request is over: end the spans, count it, log it (never raises)."""
        try:
            self._finish(report, outcome, error)
        except Exception:  # telemetry must never fail a request that is already answered
            logger.exception("telemetry failed at the end of a request")

    def _finish(self, report: RequestReport | None, outcome: str, error: BaseException | None) -> None:
        app = self._app
        seconds = time.perf_counter() - self.started
        trace_id: str | None = None
        if self.span is not None:
            trace_id = format(self.span.get_span_context().trace_id, "032x")
            self._end_spans(report, outcome)
        if app.metrics is not None:
            app.metrics.in_flight.dec()
            app.metrics.request_done(report, outcome, seconds, self.ttft_s)
        if self._log is not None:
            self._log.emit(
                request_id=self.request_id,
                request=self.chat,
                report=report,
                outcome=outcome,
                latency_s=seconds,
                ttft_s=self.ttft_s,
                trace_id=trace_id,
                error=error,
                api=self.api,
                upstream=self.upstream_name,
            )

    # -- spans -----------------------------------------------------------------------

    def _start_request_span(self, tracer: Tracer, headers: Mapping[str, str]) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # The caller's W3C trace context, when it sent one: the request span joins its trace.
        traceparent = headers.get("traceparent")
        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
        chat = self.chat
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATIONS[self.api],
            "guardproxy.api": self.api,
            "gen_ai.request.model": chat.model,
            "gen_ai.request.stream": chat.stream,
            "guardproxy.request_id": self.request_id,
            "guardproxy.upstream": self.upstream_name,
        }
        if chat.n != 1:
            attributes["gen_ai.request.choice.count"] = chat.n
        if self._app.config.log_message_text:
            attributes["gen_ai.input.messages"] = _input_messages(chat)
        self.span = tracer.start_span("guardproxy.request", context=parent, kind=SpanKind.SERVER, attributes=attributes)
        self._ctx = set_span_in_context(self.span)

    def _end_spans(self, report: RequestReport | None, outcome: str) -> None:
        for check_span in self._checks.values():  # still in flight: cancelled by a stop or a disconnect
            check_span.set_attribute("guardproxy.cancelled", True)
            check_span.end()
        self._checks.clear()
        if self._upstream is not None and report is not None:
            self.upstream_done(report)
        elif self._upstream is not None:
            self._upstream.end()
        span = self.span
        assert span is not None
        attributes: dict[str, Any] = {"guardproxy.outcome": outcome}
        if report is not None:
            attributes.update(_response_attributes(report, self.ttft_s))
            attributes.update(_guard_usage_attributes(report))
            stop = report.stop or (report.prompt.decision if report.prompt.decision and report.prompt.decision.stops else None)
            if stop is not None:
                attributes["guardproxy.action"] = stop.action
                attributes["guardproxy.stop.stage"] = stop.stage
                choice = report.choices.get(report.stop_choice) if report.stop_choice is not None else None
                if choice is not None and stop.stage != "prompt":
                    at = getattr(choice, stop.stage).aborted_at_token
                    if at is not None:
                        attributes["guardproxy.abort_position"] = at
        span.set_attributes(attributes)
        if outcome in _ERROR_OUTCOMES:
            _set_error(span, outcome)
        span.end()


def _decision_attributes(d: Decision) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "guardproxy.action": d.action,
        "guardproxy.flagged": d.flagged,
        "guardproxy.threshold": d.threshold,
        "guardproxy.categories": list(d.categories),
    }
    if d.verdicts:
        guards = ",".join(v.guard for v in d.verdicts)
        risk = max(v.risk_score for v in d.verdicts)
        attributes.update(
            {
                "guardproxy.guard": guards,
                "guardproxy.risk_score": risk,
                "guardproxy.latency_s": max(v.latency_s for v in d.verdicts),
                "gen_ai.evaluation.name": guards,
                "gen_ai.evaluation.score.value": float(risk),
                "gen_ai.evaluation.score.label": d.action,
            }
        )
        input_tokens = [v.prompt_tokens for v in d.verdicts if v.prompt_tokens is not None]
        if input_tokens:
            attributes["gen_ai.usage.input_tokens"] = sum(input_tokens)
        cached = [v.cached_tokens for v in d.verdicts if v.cached_tokens is not None]
        if cached:
            attributes["gen_ai.usage.cache_read.input_tokens"] = sum(cached)
        output_tokens = [v.completion_tokens for v in d.verdicts if v.completion_tokens is not None]
        if output_tokens:
            attributes["gen_ai.usage.output_tokens"] = sum(output_tokens)
    if d.error:
        attributes["guardproxy.guard_error"] = d.error
    if d.shadow:  # shadow mode: what enforcing would have done, when not the same
        attributes["guardproxy.shadow"] = True
        if d.would:
            attributes["guardproxy.would"] = d.would
    return attributes


def _response_attributes(report: RequestReport, ttft_s: float | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if report.id:
        attributes["gen_ai.response.id"] = report.id
    if report.model:
        attributes["gen_ai.response.model"] = report.model
    reasons = [c.finish_reason for _, c in sorted(report.choices.items()) if c.finish_reason is not None]
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons
    tokens = report.tokens
    if tokens is not None:
        if tokens.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = tokens.input_tokens
        if tokens.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = tokens.output_tokens
    if ttft_s is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = ttft_s
    return attributes


def _guard_usage_attributes(report: RequestReport) -> dict[str, Any]:
    """What the guards cost the whole request, per stage (all choices together)."""
    attributes: dict[str, Any] = {}
    for stage, r in (("prompt", report.prompt), ("reasoning", report.worst("reasoning")), ("answer", report.worst("answer"))):
        if r.usage.verdicts:
            for key, value in r.usage.summary().items():
                attributes[f"guardproxy.guard_usage.{stage}.{key}"] = value
        if r.tokens:
            attributes[f"guardproxy.upstream_tokens.{stage}"] = r.tokens
    return attributes


def _input_messages(chat: ApiRequest) -> str:
    """``gen_ai.input.messages`` (only with log_message_text): roles and text parts."""
    messages = getattr(chat, "messages", None)
    if not isinstance(messages, list):  # the Responses API and completions: what is screened
        messages = [{"role": "user", "content": chat.screened_prompt("conversation")}]
    return encode([{"role": m.get("role"), "parts": [{"type": "text", "content": message_text(m)}]} for m in messages]).decode()


def _set_error(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


def request_id_of(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a plain token, else a new one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable() and " " not in given:
        return given
    return os.urandom(16).hex()
