"""The chat-completion response: an ASGI app that writes the pipeline's events.

It chooses the status only once the prompt verdict is in (a blocked prompt is an HTTP
400 for streaming clients too), watches for the client's disconnect from the first
moment (so the upstream call and pending checks are cancelled even before the first
byte), and always ends a started stream well-formed: ``data: [DONE]`` last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar.types import Receive, Scope, Send

from ._annotations import decision_headers, filter_results
from ._chunks import CompletionBuilder, ResponseIds, content_filter_chunks, guardproxy_summary, prompt_annotation_chunk
from ._pipeline import Ended, Event, Exchange, Released, RequestReport, Started, Stopped, run_exchange
from ._policy import Decision
from ._protocol import error_body
from ._shutdown import Drain
from ._sse import DONE_EVENT, encode_data
from .exceptions import ContentPolicyViolation, ProxyError, UpstreamHTTPError

__all__ = ["ChatResponse", "error_response", "policy_violation"]

logger = logging.getLogger("guardproxy")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON = [(b"content-type", b"application/json")]


def error_response(exc: ProxyError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of an error; an upstream's own error passes through as is."""
    if isinstance(exc, UpstreamHTTPError):
        ctype = (exc.content_type or "application/json").encode()
        return exc.status_code, [(b"content-type", ctype)], exc.body
    return exc.status_code, list(_JSON), error_body(exc.message, exc.error_type, exc.code, exc.param)


def policy_violation(decision: Decision) -> ContentPolicyViolation:
    cats = ", ".join(decision.categories) or ("none (guard error)" if decision.error else "none")
    what = {"prompt": "prompt", "reasoning": "model's reasoning", "answer": "model's answer"}[decision.stage]
    score = decision.risk_score
    detail = f"guard error: {decision.error}" if decision.error else f"risk score {score} >= threshold {decision.threshold}"
    return ContentPolicyViolation(f"The {what} was blocked by the content policy ({detail}; categories: {cats}).")


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ChatResponse:
    """ASGI app for one chat completion; ``on_done(report, outcome)`` is told how it ended.

    With a ``drain``, a shutdown past its deadline stops the response and ends it
    well-formed (see ``_shutdown``).
    """

    def __init__(
        self,
        exchange: Exchange,
        on_done: Callable[[RequestReport | None, str], None] | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.exchange = exchange
        self.on_done = on_done
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = _write_stream if self.exchange.request.stream else _write_json
        state = _Outcome()
        work = asyncio.ensure_future(writer(self.exchange, run_exchange(self.exchange), send, state))
        watch = asyncio.ensure_future(_disconnected(receive))
        if self.drain is not None:
            self.drain.register(state, lambda: _stop_for_shutdown(state, work))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                state.outcome = "client_disconnected"
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            if state.shutdown:
                await _end_for_shutdown(self.exchange, state, send)
            elif work.done() and not work.cancelled() and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
        finally:
            watch.cancel()
            if self.drain is not None:
                self.drain.unregister(state)
            if self.on_done is not None:
                self.on_done(state.report, state.outcome)


class _Outcome:
    __slots__ = ("report", "outcome", "started", "closing", "shutdown", "finished")

    def __init__(self) -> None:
        self.report: RequestReport | None = None
        self.outcome = "error"
        self.started = False  # the response's headers went out
        self.closing = False  # its last bytes are being written: let it finish
        self.shutdown = False  # stopped by the shutdown deadline
        self.finished: set[int] = set()  # choices whose finish chunk went out


def _stop_for_shutdown(state: _Outcome, work: asyncio.Future[None]) -> None:
    if not state.closing and not work.done():
        state.shutdown = True
        work.cancel()


async def _end_for_shutdown(ex: Exchange, state: _Outcome, send: Send) -> None:
    """End a response stopped by the shutdown deadline: well-formed, nothing unchecked."""
    state.outcome = "shutdown"
    logger.warning("response ended by the shutdown deadline")
    if not state.started:
        body = error_body("The proxy is shutting down; retry the request.", "server_error", "shutting_down")
        await _send_whole(send, 503, _JSON, body)
        return
    report = state.report
    ids = ResponseIds(ex.request.model, report.id, report.created) if report is not None else ResponseIds(ex.request.model)
    indexes = set(range(ex.request.n)) | (set(report.choices) if report is not None else set())
    chunks = [
        ids.chunk([{"index": i, "delta": {}, "finish_reason": "length"}], guardproxy={"ended_by": "shutdown"})
        for i in sorted(indexes - state.finished)
    ]
    await _send_events(send, chunks)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _outcome_of(report: RequestReport) -> str:
    stop = report.stop or (report.prompt.decision if report.prompt.decision and report.prompt.decision.stops else None)
    if stop is not None:
        if stop.stage == "reasoning":
            return "aborted"
        return "blocked" if stop.action == "block" else "rewritten"
    decisions = [report.prompt.decision] + [s.decision for c in report.choices.values() for s in (c.reasoning, c.answer)]
    if any(d is not None and d.error for d in decisions):
        return "guard_error"
    if any(d is not None and d.flagged for d in decisions):
        return "flagged"
    return "passed"


async def _write_stream(ex: Exchange, events: AsyncIterator[Event], send: Send, state: _Outcome) -> None:
    started = False
    include_usage = ex.request.include_usage
    ids = ResponseIds(ex.request.model)
    try:
        async for event in events:
            if isinstance(event, Released):
                body = b"".join(encode_data(o.data) for o in event.outputs if include_usage or not o.usage_only)
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                for output in event.outputs:
                    for ch in output.chunk.choices:
                        if ch.finish_reason is not None:
                            state.finished.add(ch.index)
            elif isinstance(event, Started):
                state.report = report = event.report
                prompt = report.prompt.decision
                if prompt is not None and prompt.action == "block":
                    status, headers, body = error_response(policy_violation(prompt))
                    state.closing = True
                    await _send_whole(send, status, headers + decision_headers({"prompt": report.prompt}), body)
                    state.outcome = "blocked"
                    return
                headers = _SSE_HEADERS + decision_headers({"prompt": report.prompt})
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = state.started = True
                if prompt is not None:
                    body = encode_data(prompt_annotation_chunk(ids, report.prompt))
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if prompt is not None and prompt.action == "rewrite":
                    report.stop = prompt
                    chunks = content_filter_chunks(ids, prompt, {0: {}}, ex.policy.refusal_message)
                    state.closing = True
                    await _send_events(send, chunks)
                    state.outcome = "rewritten"
                    return
            elif isinstance(event, Stopped):
                ids = ResponseIds(ex.request.model, event.report.id, event.report.created)
                message = ex.policy.refusal_message if event.decision.action == "rewrite" else None
                stages = {i: event.report.choices[i].stages() for i in event.choices if i in event.report.choices}
                state.closing = True
                await _send_events(send, content_filter_chunks(ids, event.decision, stages or {0: {}}, message))
                state.outcome = _outcome_of(event.report)
                return
            elif isinstance(event, Ended):
                state.outcome = _outcome_of(event.report)
                state.closing = True
                await send({"type": "http.response.body", "body": DONE_EVENT, "more_body": False})
                return
    except ProxyError as exc:
        state.closing = True
        state.outcome = "upstream_error" if not isinstance(exc, ContentPolicyViolation) else "blocked"
        if not started:
            await _send_whole(send, *error_response(exc))
            return
        # Mid-stream failure: one error event, then the end of the stream.
        status, _, body = error_response(exc)
        logger.warning("stream ended by an error after it started: %s", type(exc).__name__)
        await send({"type": "http.response.body", "body": encode_data(body.replace(b"\n", b" ")), "more_body": True})
        await send({"type": "http.response.body", "body": DONE_EVENT, "more_body": False})
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _send_events(send: Send, chunks: list[bytes]) -> None:
    body = b"".join(encode_data(c) for c in chunks) + DONE_EVENT
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _write_json(ex: Exchange, events: AsyncIterator[Event], send: Send, state: _Outcome) -> None:
    builder = CompletionBuilder()
    report: RequestReport | None = None
    try:
        async for event in events:
            if isinstance(event, Released):
                for output in event.outputs:
                    builder.add(output.chunk)
                continue
            if isinstance(event, Started):
                state.report = report = event.report
                prompt = report.prompt.decision
                if prompt is not None and prompt.action == "block":
                    raise policy_violation(prompt)
                if prompt is not None and prompt.action == "rewrite":
                    report.stop = prompt
                    builder.stop(0, ex.policy.refusal_message, {})
                    break
                continue
            assert report is not None
            if isinstance(event, Stopped):
                if event.decision.action == "block":
                    raise policy_violation(event.decision)
                for i in event.choices:
                    stages = event.report.choices[i].stages() if i in event.report.choices else {}
                    builder.stop(i, ex.policy.refusal_message, filter_results(stages))
            break
        assert report is not None
        state.outcome = _outcome_of(report)
        for i, c in report.choices.items():
            builder.set_filter_results(i, filter_results(c.stages()))
        ids = ResponseIds(ex.request.model, report.id, report.created)
        extra: dict[str, Any] = {
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_results({"prompt": report.prompt})}],
            "guardproxy": guardproxy_summary(report.prompt, {i: c.stages() for i, c in report.choices.items()}),
        }
        body = builder.build(ids, report.usage, extra)
        headers = _JSON + decision_headers(
            {"prompt": report.prompt, "reasoning": report.worst("reasoning"), "answer": report.worst("answer")}
        )
        state.closing = True
        await _send_whole(send, 200, headers, body)
    except ProxyError as exc:
        state.closing = True
        if state.outcome == "error":
            state.outcome = "blocked" if isinstance(exc, ContentPolicyViolation) else "upstream_error"
        if isinstance(exc, ContentPolicyViolation) and report is not None:
            stop = report.stop or report.prompt.decision
            if stop is not None and stop.stage != "prompt":
                state.outcome = "aborted" if stop.stage == "reasoning" else "blocked"
        status, headers, body = error_response(exc)
        if report is not None:
            headers = headers + decision_headers({"prompt": report.prompt})
        await _send_whole(send, status, headers, body)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
