"""One structured JSON log line per generation request, with its decision.

The line goes to the ``guardproxy.requests`` logger at INFO; ``guardproxy serve`` logs
messages bare, so each line is one JSON object. What it holds is built here from the
request's report and nothing else: never a header (so never an API key or an
Authorization value), never a guard's raw output, and message text only when
``telemetry.log_message_text`` is on.

    {"event": "chat_completion", "request_id": "...", "model": "...", "upstream": "default", "stream": true,
     "outcome": "aborted", "latency_s": 0.84, "upstream_ttft_s": 0.12,
     "prompt": {"checks": 1, "action": "pass", "risk_score": 5, "categories": [], ...},
     "choices": {"0": {"finish_reason": null, "reasoning": {...}, "answer": {...}}},
     "stop": {"stage": "reasoning", "action": "rewrite", "choice": 0,
              "aborted_at_token": 64, "flagged_check_tokens": 64},
     "usage": {...}, "trace_id": "...",
     "error": {"code": "upstream_truncated", "message": "..."}}   (when one ended it)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..protocols._annotations import stage_summary
from ..protocols._wire import encode

if TYPE_CHECKING:
    from ..pipeline._report import RequestReport
    from ..protocols._base import ApiRequest

__all__ = ["RequestLog", "request_record"]

# The event name per API, as log queries select it.
_EVENTS = {"chat": "chat_completion", "responses": "response", "completions": "completion"}
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class RequestLog:
    def __init__(self, *, message_text: bool, logger: logging.Logger | None = None) -> None:
        self.message_text = message_text
        self.logger = logger or logging.getLogger("guardproxy.requests")

    def emit(
        self,
        *,
        request_id: str,
        request: ApiRequest,
        report: RequestReport | None,
        outcome: str,
        latency_s: float,
        ttft_s: float | None,
        trace_id: str | None = None,
        error: BaseException | None = None,
        api: str = "chat",
        upstream: str = "default",
    ) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        record = request_record(request_id, request, report, outcome, latency_s, ttft_s, trace_id, error, api, upstream)
        if self.message_text:
            record["prompt_text"] = request.query()
        self.logger.info(encode(record).decode())


def request_record(
    request_id: str,
    request: ApiRequest,
    report: RequestReport | None,
    outcome: str,
    latency_s: float,
    ttft_s: float | None,
    trace_id: str | None = None,
    error: BaseException | None = None,
    api: str = "chat",
    upstream: str = "default",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event": _EVENTS.get(api, api),
        "request_id": request_id,
        "model": request.model,
        "upstream": upstream,
        "stream": request.stream,
        "outcome": outcome,
        "latency_s": round(latency_s, 4),
        "upstream_ttft_s": round(ttft_s, 4) if ttft_s is not None else None,
    }
    if trace_id is not None:
        record["trace_id"] = trace_id
    if error is not None:
        # Why it failed: the proxy's own messages carry no secret and no client text.
        record["error"] = {
            "code": getattr(error, "code", None) or "internal_error",
            "message": getattr(error, "message", None) or type(error).__name__,
        }
    if report is None:
        return record
    if report.id:
        record["response_id"] = report.id
    record["prompt"] = stage_summary(report.prompt)
    record["choices"] = {
        str(i): {"finish_reason": c.finish_reason, "reasoning": stage_summary(c.reasoning), "answer": stage_summary(c.answer)}
        for i, c in sorted(report.choices.items())
    }
    stop = report.stop_entry()
    if stop is not None:
        record["stop"] = stop
    tokens = report.tokens
    if tokens is not None:  # under chat's names, whatever the API
        counts = (tokens.input_tokens, tokens.output_tokens, tokens.total_tokens)
        record["usage"] = {k: n for k, n in zip(_USAGE_KEYS, counts, strict=True) if n is not None}
    return record
