"""The decisions of one chat completion: prompt check, upstream relay, release gate.

``run_exchange`` yields events that the two writers (SSE stream, JSON completion) turn
into bytes; it never formats a response itself. The flow:

1. The prompt check starts; the upstream call starts beside it ("parallel") or after
   it ("before"). Nothing is released before the prompt verdict.
2. Upstream chunks are split into reasoning and answer text per choice; each channel
   has a ChannelMonitor that checks it every N tokens, at most one check in flight.
3. A chunk is released once every channel it carries text for has passed far enough
   (per the release modes); a choice's finish chunk waits for all of its checks, so a
   stream never says "stop" before the verdict is in.
4. A flag whose action is block or rewrite stops everything: the upstream response is
   closed (vLLM aborts the generation), pending checks are cancelled, unreleased text
   is discarded, and the writers end with ``finish_reason: "content_filter"``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Union

import msgspec

from guards import GuardError, Stage, Verdict

from ._annotations import StageReport, filter_results
from ._channels import ThinkSplitter, split_delta
from ._config import PolicyConfig
from ._guardset import GuardSet
from ._monitor import ChannelMonitor
from ._policy import Decision, decide, decide_error
from ._protocol import Chunk, decode_chunk, decode_json, encode, present
from ._request import ChatRequest, upstream_body
from ._sse import DONE
from ._telemetry import NO_TELEMETRY, RequestObserver
from ._upstream import UpstreamClient, UpstreamStream
from .exceptions import ProxyError, UpstreamError, UpstreamHTTPError

__all__ = ["Exchange", "Started", "Output", "Released", "Stopped", "Ended", "Event", "RequestReport", "run_exchange"]

logger = logging.getLogger("guardproxy")


class Exchange(msgspec.Struct, kw_only=True):
    """Everything one request needs, resolved before the pipeline starts."""

    request: ChatRequest
    policy: PolicyConfig
    guards: GuardSet
    upstream: UpstreamClient
    authorization: str | None = None
    # Spans, metrics and the request log; the default observes nothing.
    telemetry: RequestObserver = NO_TELEMETRY


class ChoiceReport(msgspec.Struct, kw_only=True):
    reasoning: StageReport = msgspec.field(default_factory=StageReport)
    answer: StageReport = msgspec.field(default_factory=StageReport)
    finish_reason: str | None = None

    def stages(self) -> dict[str, StageReport]:
        return {"reasoning": self.reasoning, "answer": self.answer}


class RequestReport(msgspec.Struct, kw_only=True):
    prompt: StageReport = msgspec.field(default_factory=StageReport)
    choices: dict[int, ChoiceReport] = msgspec.field(default_factory=dict)
    id: str = ""
    model: str = ""
    created: int = 0
    usage: Any = None
    stop: Decision | None = None
    stop_choice: int | None = None

    def worst(self, stage: str) -> StageReport:
        """One report per stage over all choices, for headers and logs."""
        merged = StageReport()
        for c in self.choices.values():
            r = getattr(c, stage)
            merged.checks += r.checks
            merged.tokens += r.tokens
            if r.decision is not None:
                merged.record(r.decision)
            if r.aborted_at_token is not None:
                merged.aborted_at_token = r.aborted_at_token
                merged.flagged_check_tokens = r.flagged_check_tokens
        return merged


class Started(msgspec.Struct):
    """The prompt verdict is in and the upstream answered: the response can start."""

    report: RequestReport


class Output(msgspec.Struct):
    """A chunk for the client: raw bytes, and its parsed form."""

    data: bytes
    chunk: Chunk
    usage_only: bool = False


class Released(msgspec.Struct):
    """Chunks that became releasable together (one write to the client)."""

    outputs: list[Output]


class Stopped(msgspec.Struct):
    """A guard stopped the request; the named choices end with content_filter."""

    decision: Decision
    choices: tuple[int, ...]
    report: RequestReport


class Ended(msgspec.Struct):
    report: RequestReport


Event = Union[Started, Released, Stopped, Ended]


async def run_exchange(ex: Exchange) -> AsyncIterator[Event]:
    report = RequestReport()
    policy = ex.policy
    body = upstream_body(ex.request)
    prompt_task: asyncio.Task[tuple[Verdict, ...]] | None = None
    open_task: asyncio.Task[UpstreamStream] | None = None
    stream: UpstreamStream | None = None

    def open_upstream() -> asyncio.Task[UpstreamStream]:
        ex.telemetry.upstream_started()
        return asyncio.create_task(ex.upstream.open_chat_stream(body, ex.authorization))

    try:
        if policy.prompt.enabled and ex.guards.flexguard is not None:
            text = ex.request.screened_prompt(policy.prompt.screen)
            prompt_task = asyncio.create_task(ex.guards.check_prompt(text))
            ex.telemetry.check_started("prompt", prompt_task)
            if policy.prompt.mode == "parallel":
                open_task = open_upstream()
            decision = await _verdict_of(prompt_task, "prompt", policy)
            ex.telemetry.check_done(prompt_task, decision)
            report.prompt.checks = 1
            report.prompt.record(decision)
            if decision.stops:
                yield Started(report)
                return
        if open_task is None:
            open_task = open_upstream()
        stream = await open_task
        yield Started(report)
        async for event in _Relay(ex, report, stream).run():
            yield event
    finally:
        for task in (prompt_task, open_task):
            if task is not None and not task.done():
                task.cancel()
        if stream is None and open_task is not None and open_task.done() and not open_task.cancelled():
            if open_task.exception() is None:
                stream = open_task.result()
        if stream is not None:
            await stream.aclose()
        ex.telemetry.upstream_done(report)


async def _verdict_of(task: asyncio.Future[tuple[Verdict, ...]], stage: Stage, policy: PolicyConfig) -> Decision:
    try:
        verdicts = await task
    except GuardError as exc:
        return _guard_error(stage, exc, policy)
    except Exception as exc:  # a bug in a backend must fail closed too, not pass
        logger.exception("unexpected error in the %s check", stage)
        return _guard_error(stage, GuardError(type(exc).__name__), policy)
    return decide(stage, verdicts, policy)


def _guard_error(stage: Stage, exc: GuardError, policy: PolicyConfig) -> Decision:
    decision = decide_error(stage, exc, policy)
    logger.warning(
        "guard error in the %s check: %s (on_guard_error=%s)", stage, type(exc).__name__, policy.on_guard_error
    )
    return decision


class _Choice:
    __slots__ = ("index", "splitter", "reasoning", "answer", "report")

    def __init__(self, ex: Exchange, index: int, report: ChoiceReport) -> None:
        self.index = index
        p = ex.policy
        query = ex.request.query()
        self.splitter = ThinkSplitter()
        self.reasoning = ChannelMonitor(
            ex.guards.reasoning_check(query) if p.reasoning.enabled else None, p.reasoning.check_every_tokens
        )
        self.answer = ChannelMonitor(
            ex.guards.answer_check(query, p.reasoning.screen_answer) if p.answer.enabled else None,
            p.answer.check_every_tokens,
        )
        self.report = report

    def finish(self) -> None:
        r, a = self.splitter.flush()
        self.reasoning.add(r)
        self.reasoning.finish()
        self.answer.add(a)
        self.answer.finish()


class _Held(msgspec.Struct):
    data: bytes
    chunk: Chunk
    # (choice, reasoning chars needed, answer chars needed, is its finish chunk)
    needs: list[tuple[_Choice, float, float, bool]]
    answer_pieces: dict[int, str]


class _Relay:
    """The per-request state of the relay loop (one instance per request)."""

    def __init__(self, ex: Exchange, report: RequestReport, stream: UpstreamStream) -> None:
        self.ex = ex
        self.policy = ex.policy
        self.report = report
        self.stream = stream
        self.choices: dict[int, _Choice] = {}
        self.queue: deque[_Held] = deque()
        self.checks: dict[asyncio.Task[tuple[Verdict, ...]], tuple[_Choice, Stage, ChannelMonitor]] = {}
        self.stop: Decision | None = None
        self.stop_choice: int | None = None
        self.error: ProxyError | None = None  # an upstream failure, raised after the release

    def _choice(self, index: int) -> _Choice:
        c = self.choices.get(index)
        if c is None:
            c = self.choices[index] = _Choice(self.ex, index, self.report.choices.setdefault(index, ChoiceReport()))
        return c

    async def run(self) -> AsyncIterator[Event]:
        events = self.stream.events().__aiter__()
        next_task: asyncio.Task[list[bytes]] | None = None
        ended = False
        try:
            while True:
                if not ended and not self.checks:
                    # Nothing else to wait for: read straight, no task per chunk.
                    try:
                        if next_task is not None:
                            task, next_task = next_task, None
                            batch = await task
                        else:
                            batch = await events.__anext__()
                    except StopAsyncIteration:
                        ended = True
                        self._upstream_ended()
                    else:
                        ended = self._take(batch)
                else:
                    waits: set[asyncio.Future[Any]] = set(self.checks)
                    if not ended:
                        if next_task is None:
                            next_task = asyncio.ensure_future(events.__anext__())
                        waits.add(next_task)
                    if not waits:
                        break
                    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if next_task is not None and next_task in done:
                        task, next_task = next_task, None
                        try:
                            batch = task.result()
                        except StopAsyncIteration:
                            ended = True
                            self._upstream_ended()
                        else:
                            ended = self._take(batch)
                    for task in done:
                        if task in self.checks:
                            self._on_check_done(task)  # type: ignore[arg-type]
                if self.stop is not None:
                    yield self._stopped()
                    return
                released = []
                while self.queue and self._releasable(self.queue[0]):
                    released.append(self._render(self.queue.popleft()))
                if released:
                    yield Released(released)
                if self.error is not None:  # after what came before it was released
                    raise self.error
                if ended and not self.checks:
                    break
            if self.queue:  # every channel is done: the rest passed
                yield Released([self._render(held) for held in self.queue])
                self.queue.clear()
            yield Ended(self.report)
        finally:
            if next_task is not None:
                next_task.cancel()
                await asyncio.gather(next_task, return_exceptions=True)
            for task in self.checks:
                task.cancel()
            await _aclose(events)

    # -- upstream data ---------------------------------------------------------------

    def _take(self, batch: list[bytes]) -> bool:
        """Take one network read's events; True when the stream ended among them. An
        event that fails is kept in ``error`` so that the events before it are
        released first."""
        try:
            for data in batch:
                if self._on_data(data):
                    return True
        except ProxyError as exc:
            self.error = exc
        return False

    def _on_data(self, data: bytes) -> bool:
        """Take one upstream event; True when it was the end of the stream."""
        if data.strip() == DONE:
            self._upstream_ended()
            return True
        try:
            chunk = decode_chunk(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError("The upstream sent a malformed stream chunk.") from exc
        if present(chunk.error):
            raise UpstreamHTTPError(502, data, "application/json")
        if not self.report.id:
            self.ex.telemetry.first_chunk()
            self.report.id, self.report.model, self.report.created = chunk.id, chunk.model, chunk.created
        held = _Held(data, chunk, [], {})
        if present(chunk.usage):
            self.report.usage = decode_json(chunk.usage)
        for ch in chunk.choices:
            c = self._choice(ch.index)
            reasoning, answer = split_delta(ch.delta, c.splitter)
            if reasoning:
                c.reasoning.add(reasoning)
                c.report.reasoning.tokens = c.reasoning.tokens
            if answer:
                c.reasoning.finish()
                c.answer.add(answer)
                c.report.answer.tokens = c.answer.tokens
            finish = ch.finish_reason is not None
            if finish:
                c.report.finish_reason = ch.finish_reason
                c.finish()
            held.answer_pieces[ch.index] = answer
            r_end = c.reasoning.length + (c.splitter.held if c.splitter.in_reasoning else 0)
            held.needs.append((c, r_end, c.answer.length, finish))
            self._start_checks(c)
        self.queue.append(held)
        return False

    def _upstream_ended(self) -> None:
        for c in self.choices.values():
            c.finish()
            self._start_checks(c)

    # -- checks ----------------------------------------------------------------------

    def _start_checks(self, c: _Choice) -> None:
        for stage, monitor in (("reasoning", c.reasoning), ("answer", c.answer)):
            task = monitor.maybe_start()
            if task is not None:
                self.checks[task] = (c, stage, monitor)  # type: ignore[assignment]
                self.ex.telemetry.check_started(stage, task, monitor.tokens)

    def _on_check_done(self, task: asyncio.Task[tuple[Verdict, ...]]) -> None:
        c, stage, monitor = self.checks.pop(task)
        decision = _decision_of_done(task, stage, self.policy)
        self.ex.telemetry.check_done(task, decision)
        report = c.report.reasoning if stage == "reasoning" else c.report.answer
        report.checks = monitor.checks
        report.record(decision)
        if decision.stops:
            report.flagged_check_tokens = monitor.flagged_at()
            report.aborted_at_token = monitor.tokens
            self.stop = decision
            self.stop_choice = c.index
            return
        monitor.passed()
        self._start_checks(c)

    # -- release ---------------------------------------------------------------------

    def _releasable(self, held: _Held) -> bool:
        p = self.policy
        for c, r_end, a_end, finish in held.needs:
            if finish and not (c.reasoning.done and c.answer.done):
                return False
            r_gate = math.inf if p.reasoning.release == "immediate" else c.reasoning.gate
            if r_gate < r_end:
                return False
            if p.answer.release == "immediate":
                continue
            a_gate = c.answer.gate if p.answer.release == "checked" else (math.inf if c.answer.done else 0)
            if a_gate < a_end:
                return False
        return True

    def _render(self, held: _Held) -> Output:
        chunk = held.chunk
        if not chunk.choices:
            return Output(held.data, chunk, usage_only=present(chunk.usage))
        hide = self.policy.reasoning.release == "hidden" and any(
            ch.delta.reasoning is not None or ch.delta.reasoning_content is not None or ch.delta.content
            for ch in chunk.choices
        )
        finishing = [c for c, _, _, finish in held.needs if finish]
        if not hide and not finishing:
            return Output(held.data, chunk)
        doc = decode_json(held.data)
        for ch in doc.get("choices", []):
            delta = ch.get("delta") or {}
            if hide:
                delta.pop("reasoning", None)
                delta.pop("reasoning_content", None)
                if isinstance(delta.get("content"), str):
                    delta["content"] = held.answer_pieces.get(ch.get("index", 0), "")
            if ch.get("finish_reason") is not None:
                ch["content_filter_results"] = filter_results(self.report.choices[ch.get("index", 0)].stages())
        data = encode(doc)
        return Output(data, decode_chunk(data))

    def _stopped(self) -> Stopped:
        assert self.stop is not None
        self.report.stop, self.report.stop_choice = self.stop, self.stop_choice
        unfinished = tuple(i for i, c in self.report.choices.items() if c.finish_reason is None or i == self.stop_choice)
        return Stopped(self.stop, unfinished or (self.stop_choice or 0,), self.report)


def _decision_of_done(task: asyncio.Task[tuple[Verdict, ...]], stage: Stage, policy: PolicyConfig) -> Decision:
    try:
        verdicts = task.result()
    except GuardError as exc:
        return _guard_error(stage, exc, policy)
    except Exception as exc:
        logger.error("unexpected error in a %s check: %r", stage, exc)
        return _guard_error(stage, GuardError(type(exc).__name__), policy)
    return decide(stage, verdicts, policy)


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except (RuntimeError, UpstreamError):
            pass
