"""The response to a guarded generation request: an ASGI app that writes the pipeline's events.

The writers only format: the pipeline decides (prompt verdict, stops, errors; a stop
arrives as one ``Stopped`` that says how the request ends) and ``request_outcome`` names
the ending. The stream writer chooses the status once the
pipeline has started (a blocked prompt is an HTTP 400 for streaming clients too), and
always ends a started stream well-formed: ``data: [DONE]`` last. The writer and a
watch for the client's disconnect run in one TaskGroup, so a disconnect (even before the
first byte) cancels the pipeline, which closes the upstream call and waits for its
pending checks before the response ends.

``error_response`` is the one place where an error becomes an HTTP answer; the app's
exception handlers use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from litestar.types import Receive, Scope, Send

from .._errors import error_body
from ..exceptions import InternalError, ProxyError, ShuttingDown
from ..protocols._annotations import decision_headers, filter_results
from ..protocols._base import ResponseWriter
from ..protocols._chat_chunks import guardproxy_summary
from ..protocols._ids import ResponseIds
from ..protocols._wire import decode_json
from ._observer import ShutdownWatch
from ._relay import (
    Ended,
    Exchange,
    Released,
    Started,
    Stopped,
    answer_usage,
    request_outcome,
    run_exchange,
)
from ._report import RequestReport

__all__ = ["GuardedResponse", "error_response"]

logger = logging.getLogger("guardproxy")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON = [(b"content-type", b"application/json")]


def error_response(exc: ProxyError, report: RequestReport | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of an error: the body ``_errors.error_body`` writes, the
    status its class names (an upstream's own error keeps the upstream's)."""
    headers = list(_JSON)
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(round(exc.retry_after_s)).encode()))
    if report is not None:
        headers += decision_headers({"prompt": report.prompt}) + _id_header(report)
    return exc.status_code, headers, error_body(exc)


def _id_header(report: RequestReport) -> list[tuple[bytes, bytes]]:
    """``x-request-id``: the id the log line, the span and the decision record carry."""
    return [(b"x-request-id", report.request_id.encode())] if report.request_id else []


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _State:
    """How one response is going: what the writers did, and why it ended."""

    __slots__ = ("started", "closing", "shutdown", "disconnected", "error", "finished", "ids", "writer")

    def __init__(self, writer: ResponseWriter) -> None:
        self.writer = writer  # the response's own: it formats every byte of the body
        self.started = False  # the response's headers went out
        self.closing = False  # its last bytes are being written: let it finish
        self.shutdown = False  # stopped by the shutdown deadline
        self.disconnected = False  # the client went away first
        self.error: BaseException | None = None  # what ended it, if not the pipeline's end
        self.finished: set[int] = set()  # choices whose finish chunk went out
        self.ids: ResponseIds | None = None

    def response_ids(self, ex: Exchange) -> ResponseIds:
        """One id for every chunk: the upstream's once known, else the proxy's own."""
        if self.ids is None:
            report = ex.report
            self.ids = ResponseIds(ex.request.model, report.id, report.created, ex.adapter.id_prefix)
        return self.ids


Writer = Callable[[Exchange, Send, _State], Coroutine[Any, Any, None]]


class GuardedResponse:
    """ASGI app for one guarded generation request, whatever its API (the exchange's
    adapter formats it); ``on_done(report, outcome, error)`` is told how
    it ended, once everything the request started has stopped.

    With a ``drain``, a shutdown past its deadline stops the response and ends it
    well-formed (see ``_shutdown``).
    """

    def __init__(
        self,
        exchange: Exchange,
        on_done: Callable[[RequestReport, str, BaseException | None], None] | None = None,
        drain: ShutdownWatch | None = None,
    ) -> None:
        self.exchange = exchange
        self.on_done = on_done
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = self.exchange
        write: Writer = _write_stream if ex.request.stream else _write_json
        state = _State(ex.adapter.writer(ex.report.prompt))
        try:
            async with asyncio.TaskGroup() as tg:
                work = tg.create_task(write(ex, send, state), name="guardproxy-writer")
                watch = tg.create_task(_watch_disconnect(receive, state, work), name="guardproxy-disconnect-watch")
                work.add_done_callback(lambda _: watch.cancel())
                if self.drain is not None:
                    self.drain.register(state, lambda: _stop_for_shutdown(state, work))
            if state.shutdown:
                await _end_for_shutdown(ex, state, send)
        finally:
            if self.drain is not None:
                self.drain.unregister(state)
            if self.on_done is not None:
                outcome = request_outcome(ex.report, state.error, disconnected=state.disconnected, shutdown=state.shutdown)
                self.on_done(ex.report, outcome, state.error)


async def _watch_disconnect(receive: Receive, state: _State, work: asyncio.Task[None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not work.done() and not state.closing:
                state.disconnected = True
                work.cancel()
            return


def _stop_for_shutdown(state: _State, work: asyncio.Task[None]) -> None:
    if not state.closing and not work.done():
        state.shutdown = True
        work.cancel()


async def _end_for_shutdown(ex: Exchange, state: _State, send: Send) -> None:
    """End a response stopped by the shutdown deadline: well-formed, nothing unchecked."""
    logger.warning("response ended by the shutdown deadline")
    if not state.started:
        body = error_body(ShuttingDown())
        await _send_whole(send, 503, _JSON + _id_header(ex.report), body)
        return
    indexes = set(range(ex.request.n)) | set(ex.report.choices)
    events = state.writer.shutdown_ending(state.response_ids(ex), sorted(indexes - state.finished))
    await _send_last(send, state, events)


async def _write_stream(ex: Exchange, send: Send, state: _State) -> None:
    include_usage = ex.request.include_usage
    report = ex.report
    writer = state.writer
    opening = False  # what the adapter sends first goes out with the first event, under its id
    error: ProxyError | None = None  # a stop that ends the request with an error
    try:
        async with contextlib.aclosing(run_exchange(ex, state.writer)) as events:
            async for event in events:
                if isinstance(event, Released):
                    parts = [
                        writer.frame(o.data, o.event)
                        for o in event.outputs
                        if o.data and (include_usage or not o.event.usage_only)
                    ]
                    if opening and parts:
                        parts[:0] = writer.opening(state.response_ids(ex))
                        opening = False
                    if parts:
                        await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                    for output in event.outputs:
                        state.finished.update(o.index for o in output.event.outputs if o.finish is not None)
                elif isinstance(event, Started):
                    headers = _SSE_HEADERS + decision_headers({"prompt": report.prompt}) + _id_header(report)
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    state.started = True
                    opening = True
                elif isinstance(event, Stopped):
                    if event.error is not None:  # written once the pipeline has stopped
                        error = event.error
                        break
                    ids = state.response_ids(ex)
                    stages = {i: report.choices[i].stages() if i in report.choices else {} for i in event.choices}
                    out = writer.opening(ids) if opening else []
                    out += writer.stopped(ids, event.decision, stages, event.refusal, event.closing)
                    await _send_last(send, state, out)
                    state.closing = True
                    return
                elif isinstance(event, Ended):
                    state.closing = True
                    out = writer.opening(state.response_ids(ex)) if opening else []
                    await _send_last(send, state, out)
                    return
        if error is not None:
            await _write_error(ex, send, state, error)
    except ProxyError as exc:
        await _write_error(ex, send, state, exc)
    except Exception as exc:  # a bug: the client still gets an OpenAI-shaped ending
        logger.exception("internal error in a streamed response")
        await _write_error(ex, send, state, exc)


async def _write_error(ex: Exchange, send: Send, state: _State, exc: Exception) -> None:
    state.error = exc
    state.closing = True
    if not isinstance(exc, ProxyError):
        exc = InternalError()
    logger.warning("request failed (%s): %s", exc.code, exc.message)
    status, headers, body = error_response(exc, ex.report)
    if not state.started:
        await _send_whole(send, status, headers, body)
        return
    # Mid-stream: one error event in the API's shape (the SDKs raise on it), then the end.
    error = decode_json(body)["error"]
    await _send_last(send, state, [state.writer.error_event(state.response_ids(ex), error)])


async def _send_last(send: Send, state: _State, events: list[bytes]) -> None:
    body = b"".join(events) + state.writer.end_of_stream
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _write_json(ex: Exchange, send: Send, state: _State) -> None:
    builder = state.writer.builder()
    report = ex.report
    try:
        async with contextlib.aclosing(run_exchange(ex, state.writer)) as events:
            async for event in events:
                if isinstance(event, Released):
                    for output in event.outputs:
                        builder.add(output.event)
                elif isinstance(event, Stopped):
                    if event.error is not None:  # written once the pipeline has stopped
                        raise event.error
                    for i in event.choices:
                        stages = report.choices[i].stages() if i in report.choices else {}
                        builder.stop(i, event.refusal, filter_results(stages), event.closing.get(i, ""))
                    break
                elif isinstance(event, Ended):
                    break
        results = {i: filter_results(c.stages()) for i, c in report.choices.items()}
        extra: dict[str, Any] = {
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_results({"prompt": report.prompt})}],
            "guardproxy": guardproxy_summary(report.prompt, {i: c.stages() for i, c in report.choices.items()}),
        }
        body = builder.build(state.response_ids(ex), answer_usage(report), extra, results)
        headers = (
            _JSON
            + decision_headers(
                {"prompt": report.prompt, "reasoning": report.worst("reasoning"), "answer": report.worst("answer")}
            )
            + _id_header(report)
        )
        state.closing = True
        await _send_whole(send, 200, headers, body)
    except ProxyError as exc:
        await _write_error(ex, send, state, exc)
    except Exception as exc:
        logger.exception("internal error in a completion")
        await _write_error(ex, send, state, exc)
