"""Prometheus metrics, served as text at ``GET /metrics``.

Why prometheus_client with one ``CollectorRegistry`` per app, not OpenTelemetry metrics
with its Prometheus exporter: an observation is a lock and a float add (no aggregation
pipeline, no reader, no views), the text format is the library's own, the metric names
are exactly the ones written here (OpenTelemetry's exporter renames them with unit
suffixes), and a per-app registry keeps two apps in one process (tests) apart; the
OpenTelemetry exporter would add a dependency that itself depends on prometheus_client.

All series are created up front (outcomes, guards x stages) so that a scrape shows zeros
instead of missing series, and a request costs one counter increment, one histogram
observation per guard verdict, and two more at its end.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

if TYPE_CHECKING:
    from ..pipeline._report import Decision, RequestReport

__all__ = ["ProxyMetrics", "OUTCOMES", "METRICS_ROUTES", "metrics_endpoint"]

OUTCOMES = (
    "passed",
    "flagged",
    "rewritten",
    "blocked",
    "aborted",
    "guard_error",
    "passed_unscreened",
    "would_block",
    "would_rewrite",
    "would_abort",
    "steered",
    "would_steer",
    "upstream_error",
    "client_disconnected",
    "shutdown",
    "error",
)
_CHECKS = (("flexguard", "prompt"), ("reasoningshield", "reasoning"), ("flexguard", "answer"), ("reasoningshield", "answer"))
_STAGES = ("prompt", "reasoning", "answer")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class ProxyMetrics:
    """The proxy's metrics in their own registry; one instance per app."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "guardproxy_requests",
            "Guarded generation requests (chat, responses, completions) by how they ended.",
            ["outcome"],
            registry=r,
        )
        # With several workers (ops/_workers.py) the value lives in a file per process and
        # a scrape sums the live ones.
        self.in_flight = Gauge(
            "guardproxy_requests_in_flight", "Guarded generation requests being served.", registry=r, multiprocess_mode="livesum"
        )
        self.request_seconds = Histogram(
            "guardproxy_request_duration_seconds",
            "Guarded generation request time, first byte in to last byte out.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.guard_seconds = Histogram(
            "guardproxy_guard_check_duration_seconds",
            "Latency of one guard check, per guard and stage.",
            ["guard", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.checks = Counter(
            "guardproxy_guard_checks",
            "Guard checks by stage and result (pass, flag, error).",
            ["stage", "result"],
            registry=r,
        )
        # What protection costs: guard tokens per upstream token is the ratio of these.
        self.guard_prompt_tokens = Counter(
            "guardproxy_guard_prompt_tokens",
            "Guard prompt tokens computed (prompt tokens minus those the guard's prefix cache served).",
            ["guard", "stage"],
            registry=r,
        )
        self.guard_cached_tokens = Counter(
            "guardproxy_guard_cached_tokens",
            "Guard prompt tokens served by the guard's prefix cache.",
            ["guard", "stage"],
            registry=r,
        )
        self.guard_output_tokens = Counter(
            "guardproxy_guard_output_tokens",
            "Tokens the guards generated (analysis or thinking, and verdict).",
            ["guard", "stage"],
            registry=r,
        )
        # A hit is a verdict without a guard call: it is in neither the latency nor the
        # token counters above.
        self.guard_cache = Counter(
            "guardproxy_guard_cache",
            "Whole-text checks looked up in the verdict cache: hit (no guard call) or miss (the guard called).",
            ["guard", "result"],
            registry=r,
        )
        self.upstream_tokens = Counter(
            "guardproxy_upstream_tokens",
            "Tokens the upstream streamed through the proxy, per channel (reasoning, answer).",
            ["channel"],
            registry=r,
        )
        self.upstream_dropped = Counter(
            "guardproxy_upstream_dropped",
            "Fields and events from the upstream that the proxy does not know, dropped before the "
            "client (field: the path without list indexes; a few hundred names at most, then other).",
            ["api", "field"],
            registry=r,
        )
        # Shadow mode ([policy] enforce = false): requests let through that enforcing
        # would have stopped, once per stage and what it would have done.
        self.shadow_decisions = Counter(
            "guardproxy_shadow_decisions",
            "Shadow mode: requests let through that an enforcing policy would have stopped, by stage and "
            "what it would have done (block, rewrite, fail).",
            ["stage", "would"],
            registry=r,
        )
        self.ttft = Histogram(
            "guardproxy_upstream_ttft_seconds",
            "Upstream time to first chunk, from the upstream call's start.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.abort_tokens = Histogram(
            "guardproxy_abort_position_tokens",
            "Tokens generated in the stopped stage when a guard ended a stream.",
            ["stage"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.audit_dropped = Counter(
            "guardproxy_audit_dropped",
            "Decision records and labels the audit log dropped (queue_full, write_error); requests are unaffected.",
            ["reason"],
            registry=r,
        )
        self.steers = Counter(
            "guardproxy_steers",
            "Reasoning steers: a flagged reasoning rolled back and continued, by how the request's "
            "steering ended (answered, fell_back, or unfinished: an error or a client that left).",
            ["outcome"],
            registry=r,
        )
        self.steer_tokens = Counter(
            "guardproxy_steer_upstream_tokens",
            "Upstream tokens spent on steering: the continuations' prompts (prompt, mostly served by the "
            "prefix cache where counted) and the output of generations steering threw away (discarded).",
            ["kind"],
            registry=r,
        )
        self._steers = {o: self.steers.labels(o) for o in ("answered", "fell_back", "unfinished")}
        self._steer_tokens = {k: self.steer_tokens.labels(k) for k in ("prompt", "discarded")}
        self._outcomes = {o: self.requests.labels(o) for o in OUTCOMES}
        self._latency = {k: self.guard_seconds.labels(*k) for k in _CHECKS}
        self._checks = {(s, res): self.checks.labels(s, res) for s in _STAGES for res in ("pass", "flag", "error")}
        self._aborts = {s: self.abort_tokens.labels(s) for s in ("reasoning", "answer")}
        self._usage = {k: self._usage_children(k) for k in _CHECKS}
        self._upstream_tokens = {c: self.upstream_tokens.labels(c) for c in ("reasoning", "answer")}
        self._shadow = {
            (s, w): self.shadow_decisions.labels(s, w) for s in _STAGES for w in ("block", "rewrite", "steer", "fail")
        }
        self._cache = {
            (g, res): self.guard_cache.labels(g, res) for g in ("flexguard", "reasoningshield") for res in ("hit", "miss")
        }

    def _usage_children(self, key: tuple[str, str]) -> tuple[Counter, Counter, Counter]:
        return (
            self.guard_prompt_tokens.labels(*key),
            self.guard_cached_tokens.labels(*key),
            self.guard_output_tokens.labels(*key),
        )

    def check_done(self, decision: Decision) -> None:
        result = "error" if decision.error else ("flag" if decision.flagged else "pass")
        self._checks[(decision.stage, result)].inc()
        for v in decision.verdicts:
            if v.cache is not None:
                self._cache[(v.guard, v.cache)].inc()
                if v.cache == "hit":
                    continue
            child = self._latency.get((v.guard, v.stage))
            if child is None:
                child = self._latency[(v.guard, v.stage)] = self.guard_seconds.labels(v.guard, v.stage)
            child.observe(v.latency_s)
            usage = self._usage.get((v.guard, v.stage))
            if usage is None:
                usage = self._usage[(v.guard, v.stage)] = self._usage_children((v.guard, v.stage))
            cached = v.cached_tokens or 0
            usage[0].inc(max(0, (v.prompt_tokens or 0) - cached))
            usage[1].inc(cached)
            usage[2].inc(v.completion_tokens or 0)

    def request_done(self, report: RequestReport | None, outcome: str, seconds: float, ttft_s: float | None) -> None:
        counter = self._outcomes.get(outcome) or self.requests.labels(outcome)
        counter.inc()
        self.request_seconds.observe(seconds)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if report is not None:
            for c in report.choices.values():
                if c.reasoning.tokens:
                    self._upstream_tokens["reasoning"].inc(c.reasoning.tokens)
                if c.answer.tokens:
                    self._upstream_tokens["answer"].inc(c.answer.tokens)
        if report is not None:
            self._count_shadow(report)
            self._count_steers(report)
        if report is not None and report.stop is not None and report.stop_choice is not None:
            choice = report.choices.get(report.stop_choice)
            stage = report.stop.stage
            if choice is not None and stage in self._aborts:
                at = getattr(choice, stage).aborted_at_token
                if at is not None:
                    self._aborts[stage].observe(at)

    def _count_steers(self, report: RequestReport) -> None:
        for c in report.choices.values():
            r = c.reasoning
            if r.steers:
                self._steers[r.steer_outcome if r.steer_outcome in self._steers else "unfinished"].inc(len(r.steers))
        if report.continuation_prompt_tokens:
            self._steer_tokens["prompt"].inc(report.continuation_prompt_tokens)
        if report.steer_spent[1]:
            self._steer_tokens["discarded"].inc(report.steer_spent[1])

    def _count_shadow(self, report: RequestReport) -> None:
        """Each stage of a request once per kind of stop it would have had (choices apart)."""
        prompt = report.prompt.decision
        if prompt is not None and not prompt.shadow:
            return  # enforced: nothing was only "would"
        choices = report.choices.values()
        for stage, reports in (
            ("prompt", [report.prompt]),
            ("reasoning", [c.reasoning for c in choices]),
            ("answer", [c.answer for c in choices]),
        ):
            for would in {r.decision.would for r in reports if r.decision is not None and r.decision.would}:
                self._shadow[(stage, would)].inc()

    def exposition(self) -> bytes:
        """This process's metrics, or with several workers the whole instance's."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


@get("/metrics", sync_to_thread=False)
def metrics_endpoint(state: State) -> Response[bytes]:
    return Response(state.telemetry.metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)


METRICS_ROUTES = [metrics_endpoint]
