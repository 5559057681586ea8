"""The decisions of one guarded request, whatever its API: prompt check, upstream relay, release gate.

``run_exchange`` yields events that the two writers (SSE stream, JSON completion) turn
into bytes; it never formats a response itself. The flow:

1. The prompt check starts; the upstream call starts beside it ("parallel") or after
   it ("before"). Nothing is released before the prompt verdict.
2. Upstream chunks are split into reasoning and answer text per choice; each channel
   has a ChannelMonitor that checks it every N tokens, at most one check in flight.
   The upstream reader and the checks run in one TaskGroup and hand what they got to
   the relay loop through one queue; the reader reads one network read ahead at most.
   While no check runs there is nothing to wait for beside the upstream, and the loop
   reads it itself (no task, no hand-over per network read).
3. A chunk is released once every channel it carries text for has passed far enough
   (per the release modes); a choice's finish chunk waits for all of its checks, so a
   stream never says "stop" before the verdict is in.
4. A flag whose action is block or rewrite stops everything: the upstream response is
   closed (vLLM aborts the generation), pending checks are cancelled, unreleased text
   is discarded, and the writers end with ``finish_reason: "content_filter"``.
5. A reasoning flag whose action is steer closes the upstream response the same way,
   releases what had passed, rolls the reasoning back to its last passing check and
   reads on from a continuation (``_steer``) as if the upstream had streamed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal, cast

import msgspec

from guards import GuardError, Stage, Verdict

from .._config import PolicyConfig
from .._errors import guard_error_class
from ..exceptions import (
    ContentPolicyViolation,
    GuardUnavailable,
    ProxyError,
    UpstreamError,
    UpstreamTruncated,
)
from ..protocols._base import Adapter, ApiRequest, CountedUsage, ResponseWriter, UpstreamEvent
from ..protocols._continued import Piece
from ..protocols._ids import ResponseIds
from ..protocols._sse import DONE
from ..upstream._client import UpstreamClient, UpstreamStream
from ._channels import ThinkSplitter, split_output
from ._guardset import GuardSet
from ._monitor import ChannelMonitor, CheckFn
from ._observer import NO_TELEMETRY, RequestObserver
from ._policy import decide, decide_error, flagged, releases, steer_or_fallback
from ._report import ChoiceReport, Decision, RequestReport, StageReport, SteerRecord
from ._steer import (
    ChatChunkReader,
    ChatSource,
    Prefill,
    RawTextReader,
    TextSource,
    continued_events,
    mechanism_of,
    open_continuation,
)

__all__ = [
    "Ended",
    "Event",
    "Exchange",
    "Output",
    "Released",
    "Started",
    "Stopped",
    "answer_usage",
    "ending",
    "request_outcome",
    "run_exchange",
    "stop_error",
]

logger = logging.getLogger("guardproxy")


class Exchange(msgspec.Struct, kw_only=True):
    """One request: everything it needs, resolved before the pipeline starts, and its
    report, which the pipeline fills in and the writers and telemetry read."""

    request: ApiRequest
    policy: PolicyConfig
    guards: GuardSet
    upstream: UpstreamClient
    adapter: Adapter
    authorization: str | None = None
    # Spans, metrics and the request log; the default observes nothing.
    telemetry: RequestObserver = NO_TELEMETRY
    report: RequestReport = msgspec.field(default_factory=RequestReport)
    # Keep each channel's screened text in the report (the audit log captures content).
    capture: bool = False


class Started(msgspec.Struct):
    """The prompt passed (or is rewritten) and the upstream's first chunks arrived: the
    response can start."""


class Output(msgspec.Struct):
    """An upstream event for the client: the bytes to send (its own unless the adapter
    re-rendered it; empty: nothing to send), and the event as the client sees it."""

    data: bytes
    event: UpstreamEvent


class Released(msgspec.Struct):
    """Chunks that became releasable together (one write to the client)."""

    outputs: list[Output]


class Stopped(msgspec.Struct, kw_only=True):
    """How a stopped request ends, decided once (``ending``); the writers only format it.

    ``how``: "content_filter": the named choices end with finish_reason content_filter,
    ``refusal`` (a rewrite) their last text; "refuse": the request is answered with
    ``error``, a policy violation; "fail": a check could not run under fail-closed, and
    ``error`` says so, an outage. An error goes out as the HTTP answer where the response
    has not started, else as the API's error event."""

    decision: Decision
    choices: tuple[int, ...]
    how: Literal["content_filter", "refuse", "fail"] = "content_filter"
    refusal: str | None = None
    error: ProxyError | None = None
    # Text each named choice's ending starts with: "</think>" where the client was sent
    # an inline <think> and no </think>, so that the refusal is not inside the block.
    closing: dict[int, str] = msgspec.field(default_factory=dict)


def ending(ex: Exchange, decision: Decision, choices: tuple[int, ...], closing: dict[int, str] | None = None) -> Stopped:
    """The one place where a stopping decision becomes how the request ends. A failed
    check is an outage; a block is a refusal where no content_filter ending can carry
    it (a blocked prompt: nothing was generated; a JSON answer); a rewrite, and a block
    mid-stream, end the choices with content_filter."""
    if decision.action == "fail":
        return Stopped(decision=decision, choices=choices, how="fail", error=stop_error(decision))
    if decision.action == "block" and (decision.stage == "prompt" or not ex.request.stream):
        return Stopped(decision=decision, choices=choices, how="refuse", error=stop_error(decision))
    refusal = ex.policy.refusal_message if decision.action == "rewrite" else None
    return Stopped(decision=decision, choices=choices, refusal=refusal, closing=closing or {})


class Ended(msgspec.Struct):
    """Every choice finished and passed its checks."""


Event = Started | Released | Stopped | Ended


async def run_exchange(ex: Exchange, writer: ResponseWriter) -> AsyncGenerator[Event, None]:
    """The request's events, or a ProxyError: ContentPolicyViolation for a blocked
    prompt, GuardUnavailable for a check that could not run under fail-closed,
    UpstreamError for an upstream that failed or stopped short. ``writer`` renders the
    released events (the response's own writer)."""
    report = ex.report
    policy = ex.policy
    body = ex.request.upstream_body()
    prompt_task: asyncio.Task[tuple[Verdict, ...]] | None = None
    open_task: asyncio.Task[_Opened] | None = None
    opened: _Opened | None = None
    try:
        if policy.prompt.enabled and ex.guards.flexguard is not None:
            turns = ex.request.conversation(policy.prompt.screen_system) if policy.prompt.screen != "last_user" else []
            check = (
                ex.guards.check_conversation(turns) if turns else ex.guards.check_prompt(ex.request.screened_prompt("last_user"))
            )
            prompt_task = asyncio.create_task(check, name="guardproxy-check-prompt")
            ex.telemetry.check_started("prompt", prompt_task)
            if policy.prompt.mode == "parallel" or not policy.enforce:  # shadow mode: the call never waits for the check
                open_task = asyncio.create_task(_open(ex, body), name="guardproxy-upstream-open")
            outcome: tuple[Verdict, ...] | Exception
            try:
                outcome = await prompt_task
            except Exception as exc:  # a failed check is a decision (fail closed), not an error
                outcome = exc
            decision = _decision_of(outcome, "prompt", policy)
            if turns and decision.flagged:  # the worst verdict decides; name its message
                where = tuple(t.label for t, v in zip(turns, decision.verdicts, strict=True) if flagged(v, policy))
                decision = msgspec.structs.replace(decision, where=where)
            ex.telemetry.check_done(prompt_task, decision)
            report.prompt.checks = 1
            report.prompt.record(decision)
            if decision.stops:
                report.stop = decision
                stopped = ending(ex, decision, tuple(range(ex.request.n)))
                if stopped.how == "content_filter":  # a rewritten prompt: the response starts
                    yield Started()
                yield stopped
                return
        if open_task is None:
            open_task = asyncio.create_task(_open(ex, body), name="guardproxy-upstream-open")
        opened = await open_task
        yield Started()
        async with contextlib.aclosing(_Relay(ex, opened, writer).run()) as relay:
            async for event in relay:
                yield event
    finally:
        await _cancel_and_wait(prompt_task, open_task)
        if opened is None and open_task is not None and open_task.done() and not open_task.cancelled():
            if open_task.exception() is None:
                opened = open_task.result()
        if opened is not None:
            await opened.aclose()
        ex.telemetry.upstream_done(report)


class _Opened:
    """The upstream stream, its event iterator, and its first network read (read while
    the prompt check runs, so that the upstream's own time to first chunk is measured)."""

    __slots__ = ("stream", "events", "first")

    def __init__(self, stream: UpstreamStream, events: AsyncIterator[list[bytes]], first: list[bytes] | None) -> None:
        self.stream = stream
        self.events = events
        self.first = first

    async def aclose(self) -> None:
        try:
            await _aclose(self.events)
        finally:
            await self.stream.aclose()


async def _open(ex: Exchange, body: bytes) -> _Opened:
    ex.telemetry.upstream_started()
    stream = await ex.upstream.open_stream(ex.adapter.path, body, ex.authorization)
    events = stream.events()
    try:
        first: list[bytes] | None = await anext(events, None)
        if first is None or all(data.strip() in (DONE, b"") for data in first):
            # Found here, before the response starts, so that the client gets a 502.
            raise UpstreamTruncated("The upstream's stream ended early: no chunk at all.")
    except BaseException:
        await _Opened(stream, events, None).aclose()
        raise
    ex.telemetry.first_chunk()
    return _Opened(stream, events, first)


async def _cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel what still runs and wait for it: cleanup happens when the request ends."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)


def stop_error(decision: Decision) -> ProxyError:
    """The error a stop becomes where no content_filter ending can carry it: a failed
    check is an outage (503), a block a policy violation (400)."""
    if decision.action == "fail":
        guard = "ReasoningShield" if decision.stage == "reasoning" else "FlexGuard"
        cls = guard_error_class(decision.error)
        return cls(
            f"{guard} could not check the {_STAGE_NAMES[decision.stage]} ({decision.error}); "
            "nothing unchecked was forwarded. Retry the request."
        )
    cats = ", ".join(decision.categories) or "none"
    where = f"; flagged: {', '.join(decision.where)}" if decision.where else ""
    return ContentPolicyViolation(
        f"The {_STAGE_NAMES[decision.stage]} was blocked by the content policy "
        f"(risk score {decision.risk_score} >= threshold {decision.threshold}; categories: {cats}{where})."
    )


_STAGE_NAMES = {"prompt": "prompt", "reasoning": "model's reasoning", "answer": "model's answer"}


def request_outcome(
    report: RequestReport, error: BaseException | None, *, disconnected: bool = False, shutdown: bool = False
) -> str:
    """The one place that names how a request ended (metrics, logs, traces): stopped by
    the shutdown deadline, left by its client, failed (``error``), or as the report says."""
    if shutdown:
        return "shutdown"
    if disconnected:
        return "client_disconnected"
    if isinstance(error, GuardUnavailable):
        return "guard_error"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    if error is not None and not isinstance(error, ContentPolicyViolation):
        return "error"
    stop = report.stop
    if stop is not None:
        if stop.action == "fail":
            return "guard_error"
        if stop.stage == "reasoning":
            return "aborted"
        return "blocked" if stop.action == "block" else "rewritten"
    if report.steers:
        return "steered"
    # Shadow mode: what enforcing would have done, from the stage that would have
    # stopped first (prompt, then reasoning, then answer).
    stages = [report.prompt] + [c.reasoning for c in report.choices.values()] + [c.answer for c in report.choices.values()]
    would = next((r.decision for r in stages if r.decision is not None and r.decision.would in _WOULD_STOP), None)
    if would is not None:
        if would.would == "steer":
            return "would_steer"
        return "would_abort" if would.stage == "reasoning" else f"would_{would.would}"
    decisions = [report.prompt.decision] + [s.decision for c in report.choices.values() for s in (c.reasoning, c.answer)]
    if any(d is not None and d.error for d in decisions):
        return "passed_unscreened"  # on_guard_error = "allow": passed, but a check failed
    if any(d is not None and d.flagged for d in decisions):
        return "flagged"
    return "passed"


_WOULD_STOP = ("block", "rewrite", "steer")


def answer_usage(report: RequestReport) -> Any:
    """The usage a JSON answer reports: the upstream's own, the last it sent; where a
    stop closed the upstream before it sent any, what the proxy counted of the output
    (``CountedUsage``: never a guessed prompt size). A finished upstream that sent no
    usage is reported as it was: null."""
    if report.usage is not None or report.stop is None:
        return report.usage
    output = sum(c.reasoning.tokens + c.answer.tokens - c.carried_tokens for c in report.choices.values())
    return CountedUsage(output + report.steer_spent[1])


def _guard_error(stage: Stage, exc: GuardError, policy: PolicyConfig) -> Decision:
    decision = decide_error(stage, exc, policy)
    # The message names the guard server and the cause; backends keep secrets out of it.
    logger.warning(
        "guard error in the %s check: %s: %s (on_guard_error=%s)",
        stage,
        type(exc).__name__,
        exc,
        policy.on_guard_error,
    )
    return decision


class _Choice:
    __slots__ = (
        "index",
        "splitter",
        "reasoning",
        "answer",
        "report",
        "think_open",
        "sent_chars",
        "reasoning_event",
        "_ex",
    )

    def __init__(self, ex: Exchange, index: int, report: ChoiceReport) -> None:
        self.index = index
        self.think_open = False  # the released content opened an inline <think> and did not close it
        self._ex = ex
        self.splitter = ThinkSplitter()
        self.reasoning = ChannelMonitor(self._reasoning_check(), ex.policy.reasoning, name="guardproxy-check-reasoning")
        self.answer = self._answer_monitor()
        self.report = report
        self.sent_chars = 0  # reasoning characters in the chunks released to the client
        self.reasoning_event: UpstreamEvent | None = None  # the last event that carried its reasoning

    def _reasoning_check(self) -> CheckFn | None:
        ex = self._ex
        return ex.guards.reasoning_check(ex.request.query(self.index)) if ex.policy.reasoning.enabled else None

    def _answer_monitor(self) -> ChannelMonitor:
        ex, p = self._ex, self._ex.policy
        check = ex.guards.answer_check(ex.request.query(self.index), p.reasoning.screen_answer) if p.answer.enabled else None
        return ChannelMonitor(check, p.answer, name="guardproxy-check-answer")

    def roll_back(self) -> tuple[str, int]:
        """Forget everything past the reasoning's last passing check; returns the kept
        reasoning and its tokens. The reasoning monitor keeps only what the client was
        sent (the rest of the kept text comes back with the continuation's first
        event), the answer starts afresh."""
        kept = self.reasoning.text[: self.reasoning.covered]
        kept_tokens = self.reasoning.covered_tokens
        sent_chars = min(self.sent_chars, len(kept))
        sent_tokens = min(self.report.released_reasoning_tokens, kept_tokens)
        # The guards' growing checks build on what they read before: start them afresh.
        self.reasoning.roll_back(sent_chars, sent_tokens, self._reasoning_check())
        self.answer = self._answer_monitor()
        self.splitter.resume_reasoning()
        self.report.finish_reason = None
        return kept, kept_tokens

    def finish(self) -> None:
        r, a = self.splitter.flush()
        self.reasoning.add(r)
        self.reasoning.finish()
        self.answer.add(a)
        self.answer.finish()


class _Held(msgspec.Struct):
    event: UpstreamEvent
    # (choice, reasoning chars needed, answer chars needed, is its finish, reasoning
    # and answer tokens received up to this event)
    needs: list[tuple[_Choice, float, float, bool, int, int]]
    answer_pieces: dict[int, str]
    # Choices whose inline <think> block is open once this event's content is out.
    think_open: set[int] = msgspec.field(default_factory=set)


class _Relay:
    """The per-request state of the relay loop (one instance per request)."""

    def __init__(self, ex: Exchange, opened: _Opened, writer: ResponseWriter) -> None:
        self.ex = ex
        self.writer = writer
        self.policy = ex.policy
        self.report = ex.report
        self.opened = opened
        self.read = ex.adapter.stream_reader()  # this request's reading of its upstream stream
        self.choices: dict[int, _Choice] = {}
        self.queue: deque[_Held] = deque()
        self.checks: dict[asyncio.Task[Any], tuple[_Choice, Stage, ChannelMonitor]] = {}
        # What the reader and the checks hand the loop: ("data", a network read's events),
        # ("end", None), ("error", the read's exception), ("check", (task, outcome)).
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.taken = asyncio.Event()  # the loop took the last read: the reader reads on
        self.tg: asyncio.TaskGroup | None = None
        self.reader: asyncio.Task[None] | None = None
        self.parked = False  # the reader handed its read over and waits for ``taken``
        self.error: Exception | None = None  # raised once what came before it is released
        self.done_marker = False  # the upstream sent [DONE]
        self.ended: set[int] = set()  # choices whose finish the client was sent
        # A steer decided and not yet carried out: (choice, decision, tokens the flagged
        # check covered, tokens received when it came back).
        self.steering: tuple[_Choice, Decision, int, int] | None = None
        self.continued: _Opened | None = None  # the current continuation's stream
        self.source: ChatSource | TextSource | str | None = None  # what a continuation renders
        self.prompt_tokens: int | None = None  # of the generation now running, where counted

    def _choice(self, index: int) -> _Choice:
        c = self.choices.get(index)
        if c is None:
            c = self.choices[index] = _Choice(self.ex, index, self.report.choices.setdefault(index, ChoiceReport()))
        return c

    async def run(self) -> AsyncGenerator[Event, None]:
        # A close at a yield inside the group ends the loop, so that the group exits
        # without an error (it would wrap GeneratorExit in an exception group).
        stopped = closed = False
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                first = self.opened.first
                ended = True if first is None else self._take(first)
                if first is None:
                    self._upstream_ended()
                while True:
                    if self.steering is not None:
                        passed = await self._roll_back()
                        if passed:
                            try:
                                yield Released(passed)
                            except GeneratorExit:
                                closed = True
                                break
                        ended = await self._continue()
                        continue
                    # What is decided and releasable goes out before the next read: the first
                    # network read (taken while the prompt check ran) must not wait for a second.
                    if self.report.stop is not None:
                        stopped = True
                        with contextlib.suppress(GeneratorExit):
                            yield self._stopped(self.report.stop)
                        break
                    released = []
                    while self.queue and self._releasable(self.queue[0]):
                        released.append(self._render(self.queue.popleft()))
                    if released:
                        try:
                            yield Released(released)
                        except GeneratorExit:
                            closed = True
                            break
                    if self.error is not None or (ended and not self.checks):
                        break  # an error goes out after what came before it was released
                    if self.reader is not None and self.parked and not self.checks and self.inbox.empty():
                        # The checks are over and the reader's last read was taken: the loop
                        # reads again (a read still in the inbox goes first, in order).
                        self.reader.cancel()
                        await asyncio.wait((self.reader,))
                        self.reader = None
                    if self.reader is None and not self.checks:
                        # Nothing else to wait for: read straight, no task per network read.
                        ended = self._on_item(await self._read_once())
                        continue
                    if self.reader is None and not ended:  # from the first check on, the reader reads
                        self.reader = tg.create_task(self._read_upstream(), name="guardproxy-upstream-read")
                    ended = self._on_item(await self.inbox.get()) or ended
                self._cancel_tasks()  # the group waits for them
            if closed or stopped:
                return
            if self.error is not None:
                raise self.error
            if self.queue:  # every channel is done: the rest passed
                yield Released([self._render(held) for held in self.queue])
                self.queue.clear()
            yield Ended()
        finally:
            self.checks.clear()
            if self.continued is not None:
                await self.continued.aclose()
            if self.ex.capture:
                for c in self.choices.values():
                    c.report.reasoning.text, c.report.answer.text = c.reasoning.text, c.answer.text

    def _cancel_tasks(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        for task in self.checks:
            task.cancel()

    def _on_item(self, item: tuple[str, Any]) -> bool:
        """Take what the reader or a check handed over; True when the stream ended (its
        end, or a failure kept in ``error``)."""
        kind, value = item
        if kind == "data":
            ended = self._take(value)
            if not ended:
                self.taken.set()
            return ended
        if kind == "end":
            self._upstream_ended()
            return True
        if kind == "error":
            self.error = value
            return True
        task, outcome = value
        self._on_check_done(task, outcome)
        return False

    # -- upstream data ---------------------------------------------------------------

    async def _read_once(self) -> tuple[str, Any]:
        """One network read, where nothing else runs (no reader task yet)."""
        try:
            return "data", await anext(self.opened.events)
        except StopAsyncIteration:
            return "end", None
        except Exception as exc:
            return "error", exc

    async def _read_upstream(self) -> None:
        """The reader: one network read at a time, each handed to the loop, which asks
        for the next once it has taken it. It never raises: a failed read is handed
        over too, so that the loop releases what came before it first."""
        events = self.opened.events
        try:
            while True:
                self.parked = False
                batch = await anext(events)
                self.taken.clear()
                self.inbox.put_nowait(("data", batch))
                self.parked = True
                await self.taken.wait()
        except StopAsyncIteration:
            self.inbox.put_nowait(("end", None))
        except Exception as exc:
            self.inbox.put_nowait(("error", exc))

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
            return True
        return False

    def _on_data(self, data: bytes) -> bool:
        """Take one upstream event; True when it was the end of the stream."""
        event = self.read(data)
        if event.dropped:
            self.ex.telemetry.upstream_dropped(self.ex.adapter.name, event.dropped)
        if event.done:
            self.done_marker = True
            self._upstream_ended()
            return True
        report = self.report
        if not report.id and event.id:
            report.id, report.model, report.created = event.id, event.model, event.created
        if event.usage is not None:
            report.usage = event.usage
            report.tokens = event.tokens
        held = _Held(event, [], {})
        for out in event.outputs:
            c = self._choice(out.index)
            reasoning, answer = split_output(out, c.splitter)
            if reasoning:
                c.reasoning_event = event
                c.reasoning.add(reasoning)
                c.report.reasoning.tokens = c.reasoning.tokens
            if answer:
                c.reasoning.finish()
                c.answer.add(answer)
                c.report.answer.tokens = c.answer.tokens
            finish = out.finish is not None
            if finish:
                c.report.finish_reason = out.finish
                c.finish()
            # Hidden reasoning leaves a chunk's content only its answer part (the answer's
            # other text, out.tools, stays in its own fields).
            shown = answer[: len(answer) - len(out.tools)]
            held.answer_pieces[out.index] = held.answer_pieces.get(out.index, "") + shown
            r_end = c.reasoning.length + (c.splitter.held if c.splitter.in_reasoning else 0)
            held.needs.append((c, r_end, c.answer.length, finish, c.reasoning.tokens, c.answer.tokens))
            if c.splitter.in_reasoning:
                held.think_open.add(out.index)
            self._start_checks(c)
        self.queue.append(held)
        return False

    def _upstream_ended(self) -> None:
        """The stream ended. Every choice must have finished: an upstream that closes
        mid-answer (no finish_reason) or sends no chunk at all failed, and is never
        reported as a success."""
        unfinished = sorted(i for i, c in self.choices.items() if c.report.finish_reason is None)
        if not self.choices or unfinished:
            what = "no chunk at all" if not self.choices else f"no finish_reason for choice {unfinished[0]}"
            end = "[DONE]" if self.done_marker else "the connection closed without [DONE]"
            self.error = UpstreamTruncated(f"The upstream's stream ended early: {what}; {end}.")
            return
        for c in self.choices.values():
            c.finish()
            self._start_checks(c)

    # -- checks ----------------------------------------------------------------------

    def _start_checks(self, c: _Choice) -> None:
        for stage, monitor in (("reasoning", c.reasoning), ("answer", c.answer)):
            task = monitor.maybe_start(self._spawn_check)
            if task is not None:
                self.checks[task] = (c, cast(Stage, stage), monitor)
                self.ex.telemetry.check_started(stage, task, monitor.tokens)

    def _spawn_check(self, check_fn: CheckFn, text: str, name: str) -> asyncio.Task[Any]:
        assert self.tg is not None
        return self.tg.create_task(self._settle(check_fn, text), name=name)

    async def _settle(self, check_fn: CheckFn, text: str) -> None:
        """One check, its outcome handed to the loop: a failed check is a decision, never
        an error of the group."""
        outcome: tuple[Verdict, ...] | Exception
        try:
            outcome = await check_fn(text)
        except Exception as exc:
            outcome = exc
        self.inbox.put_nowait(("check", (asyncio.current_task(), outcome)))

    def _on_check_done(self, task: asyncio.Task[Any], outcome: tuple[Verdict, ...] | Exception) -> None:
        c, stage, monitor = self.checks.pop(task)
        decision = _decision_of(outcome, stage, self.policy)
        report = c.report.reasoning if stage == "reasoning" else c.report.answer
        if decision.action == "steer":
            decision, why = steer_or_fallback(decision, len(report.steers), self.policy, self._cannot_steer())
            if why is not None:
                report.steer_outcome, report.steer_note = "fell_back", why
        self.ex.telemetry.check_done(task, decision)
        report.checks = monitor.checks
        report.record(decision, monitor.checking_tokens)
        if decision.action == "steer":
            self.steering = (c, decision, monitor.flagged_at(), monitor.tokens)
            return
        if decision.would in _WOULD_STOP and report.aborted_at_token is None:
            # Shadow mode: where enforcing would have stopped (the checks go on).
            report.flagged_check_tokens, report.aborted_at_token = monitor.checking_tokens, monitor.tokens
        if decision.stops:
            report.flagged_check_tokens = monitor.flagged_at()
            report.aborted_at_token = monitor.tokens
            if self.report.stop is None:
                self.report.stop, self.report.stop_choice = decision, c.index
            return
        monitor.passed()
        self._start_checks(c)

    # -- steering --------------------------------------------------------------------

    def _cannot_steer(self) -> str | None:
        """Why this request's reasoning cannot be continued, if it cannot."""
        request = self.ex.request
        if request.n != 1:
            return "steering needs a single output (n = 1)"
        if self.ex.upstream.continuation == "none":
            return 'the upstream cannot continue a generation ([upstream] continuation = "none")'
        if self.source is None:
            self.source = request.continuation_source()
        return self.source if isinstance(self.source, str) else None

    async def _roll_back(self) -> list[Output]:
        """The first half of a steer: stop the flagged generation (its reader, its checks,
        its upstream response) and release what had passed; nothing after it goes out."""
        await _cancel_and_wait(self.reader, *self.checks)
        self.reader, self.parked = None, False
        self.checks.clear()
        self.inbox, self.taken = asyncio.Queue(), asyncio.Event()
        await self.opened.aclose()  # vLLM aborts the generation
        passed = []
        while self.queue and self._releasable(self.queue[0]):
            passed.append(self._render(self.queue.popleft()))
        self.queue.clear()
        return passed

    async def _continue(self) -> bool:
        """The second half: ask the upstream to go on from the kept reasoning and the
        steering text, and read on from its continuation. True when that failed (the
        error is kept in ``error``, and the request ends with it)."""
        assert self.steering is not None and not isinstance(self.source, str) and self.source is not None
        c, decision, flagged_tokens, at_token = self.steering
        self.steering = None
        ex, report, settings = self.ex, self.report, self.policy.reasoning
        generated = c.reasoning.tokens + c.answer.tokens - c.report.carried_tokens
        sent = c.sent_chars
        kept, kept_tokens = c.roll_back()
        mechanism = mechanism_of(self.source, ex.adapter.name, ex.upstream.continuation)
        record = SteerRecord(
            at_token=at_token,
            flagged_check_tokens=flagged_tokens,
            kept_tokens=kept_tokens,
            risk_score=decision.risk_score,
            categories=decision.categories,
            mechanism=mechanism,
        )
        c.report.reasoning.steers.append(record)
        ex.telemetry.steered(report, record)
        budget = _max_tokens(ex.request.body)
        prefill = Prefill(
            kept=kept,
            steer_text=settings.steer_text,
            budget=None if budget is None else budget - kept_tokens,
        )
        try:
            stream, chat, counted = await open_continuation(
                ex.upstream, mechanism, self.source, ex.request.body, prefill, ex.authorization, self.opened.stream.replica
            )
        except ProxyError as exc:
            self.error = exc
            return True
        spent_prompt, spent_completion = report.steer_spent
        if counted is not None and self.prompt_tokens is None:  # the first generation's prompt
            self.prompt_tokens = counted[0]
        report.steer_spent = (spent_prompt + (self.prompt_tokens or 0), spent_completion + generated)
        self.prompt_tokens = None if counted is None else counted[1]
        report.continuation_prompt_tokens += self.prompt_tokens or 0
        read: RawTextReader | ChatChunkReader = (
            ChatChunkReader(report.steer_spent)
            if chat
            else RawTextReader(report.steer_spent, isinstance(self.source, ChatSource) and bool(self.source.tools))
        )
        ids = ResponseIds(report.model or ex.request.model, report.id, report.created, ex.adapter.id_prefix)
        writer = ex.adapter.continued_writer(ids, c.index, c.splitter.inline, c.reasoning_event, kept)
        ex.adapter.rolled_back(self.read, writer, kept[:sent])
        # The kept text the client has not been sent yet goes first, with the steering text.
        opening = kept[sent:] + (settings.steer_text if settings.show_steer_text else "")
        first = [Piece(reasoning=opening)] if opening else []
        self.opened = self.continued = _Opened(stream, continued_events(stream, read, writer, first), None)
        self.done_marker = False
        c.report.carried_tokens = c.reasoning.tokens + c.answer.tokens + len(first)
        return False

    # -- release ---------------------------------------------------------------------

    def _releasable(self, held: _Held) -> bool:
        r_release, a_release = releases(self.policy)
        for c, r_end, a_end, finish, _, _ in held.needs:
            if finish and not (c.reasoning.done and c.answer.done):
                return False
            r_gate = math.inf if r_release == "immediate" else c.reasoning.gate
            if r_gate < r_end:
                return False
            if a_release == "immediate":
                continue
            a_gate = c.answer.gate if a_release == "checked" else (math.inf if c.answer.done else 0)
            if a_gate < a_end:
                return False
        return True

    def _render(self, held: _Held) -> Output:
        event = held.event
        hide = held.answer_pieces if releases(self.policy)[0] == "hidden" else None
        finished: dict[int, dict[str, StageReport]] = {}
        for c, r_end, _, finish, r_tokens, a_tokens in held.needs:
            c.report.released_reasoning_tokens, c.report.released_answer_tokens = r_tokens, a_tokens
            c.sent_chars = int(min(r_end, c.reasoning.length))
            if hide is None:  # hidden reasoning: the client sees no tag at all
                c.think_open = c.index in held.think_open
            if finish:
                steered = c.report.reasoning
                if steered.steers and steered.steer_outcome is None:
                    steered.steer_outcome = "answered"
                finished[c.index] = c.report.stages()
        self.ended.update(finished)
        data = self.writer.render(event, hide, finished)
        return Output(data, self.writer.decode_rendered(event, data))

    def _stopped(self, decision: Decision) -> Stopped:
        # Every choice whose finish the client has not seen ends now: one upstream request
        # cannot be stopped for one choice only.
        unfinished = tuple(i for i in sorted(self.report.choices) if i not in self.ended)
        closing = {i: ThinkSplitter.CLOSE for i in unfinished if i in self.choices and self.choices[i].think_open}
        return ending(self.ex, decision, unfinished or (self.report.stop_choice or 0,), closing)


def _max_tokens(body: dict[str, Any]) -> int | None:
    """The output budget the client set, under any API's name for it."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if type(value) is int:
            return value
    return None


def _decision_of(outcome: tuple[Verdict, ...] | Exception, stage: Stage, policy: PolicyConfig) -> Decision:
    """The decision on a finished check: its verdicts, or its failure (a bug in a
    backend fails closed too, never passes)."""
    if isinstance(outcome, GuardError):
        return _guard_error(stage, outcome, policy)
    if isinstance(outcome, Exception):
        logger.error("unexpected error in the %s check", stage, exc_info=outcome)
        return _guard_error(stage, GuardError(type(outcome).__name__), policy)
    return decide(stage, outcome, policy)


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except UpstreamError:  # the connection broke while closing: it is closed
            pass
