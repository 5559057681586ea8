"""What the pipeline reports about a request: the types every side reads.

A guard's verdict becomes a ``Decision`` (``_policy`` decides it); each stage of each
output keeps its decisions and what its checks cost in a ``StageReport``; a request's
``RequestReport`` holds them all. The pipeline fills the report in; the writers,
telemetry, metrics, the request log and the console read it. This module imports only
``guards`` and msgspec, so that every reader can import it without importing the pipeline.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from guards import Stage, Verdict

__all__ = [
    "ChoiceReport",
    "Decision",
    "GuardUsage",
    "RequestReport",
    "StageReport",
    "SteerRecord",
    "TokenUsage",
    "Would",
    "verdict_usage",
]

# What an enforcing policy would have done with content that shadow mode let through.
Would = Literal["block", "rewrite", "steer", "fail"]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    flagged: bool
    # What happens: "pass" (not flagged), the stage's action when flagged, or "fail"
    # when a guard could not answer under on_guard_error = "block" (an outage: the
    # request is refused as unavailable, never reported as a policy violation).
    # "steer" (reasoning only): the flagged generation is rolled back and continued.
    action: Literal["pass", "block", "rewrite", "flag", "steer", "fail"]
    threshold: int
    verdicts: tuple[Verdict, ...] = ()
    # A guard error's kind (the exception class name): never its text, which may
    # quote a server's response.
    error: str | None = None
    # The messages whose verdicts flagged, when a conversation was screened message by
    # message (for example "messages[2] (tool)").
    where: tuple[str, ...] = ()
    # Decided under shadow mode ([policy] enforce = false), and what enforcing would
    # have done instead of ``action``: "block" or "rewrite" (a flag that stops; on the
    # reasoning stage it would also have aborted the upstream), "fail" (a failed check
    # under on_guard_error = "block"). None: enforcing would have done the same.
    shadow: bool = False
    would: Would | None = None

    @property
    def stops(self) -> bool:
        """The content must not reach the client (block, rewrite, or a failed check)."""
        return self.action in ("block", "rewrite", "fail")

    @property
    def risk_score(self) -> int | None:
        return max((v.risk_score for v in self.verdicts), default=None)

    @property
    def categories(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for v in self.verdicts:
            seen.update(dict.fromkeys(v.categories))
        return tuple(seen)


class GuardUsage(msgspec.Struct, kw_only=True):
    """What the guard calls of one stage cost, from the guards' own usage figures: what
    protection costs is guard tokens per upstream token (README, "What protection costs")."""

    calls: int = 0  # guard calls that answered (a check may call two guards)
    prompt_tokens: int = 0  # computed: the prompt tokens the guard's prefix cache did not serve
    cached_tokens: int = 0
    output_tokens: int = 0
    unreported: int = 0  # calls whose guard reported no usage (counted above as 0)
    # The verdict cache: verdicts it served (no guard call, no tokens: not in `calls`),
    # and the calls above that it looked up first and then kept.
    cache_hits: int = 0
    cache_misses: int = 0

    def add(self, other: GuardUsage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.output_tokens += other.output_tokens
        self.unreported += other.unreported
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses

    @property
    def verdicts(self) -> int:
        """Verdicts behind the stage: guard calls and cache hits."""
        return self.calls + self.cache_hits

    def summary(self) -> dict[str, int]:
        out = {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.unreported:
            out["unreported"] = self.unreported
        if self.cache_hits or self.cache_misses:
            out["cache_hits"] = self.cache_hits
            out["cache_misses"] = self.cache_misses
        return out


def verdict_usage(decision: Decision) -> GuardUsage:
    """The usage of the guard calls behind one decision (none for a failed check)."""
    usage = GuardUsage()
    for v in decision.verdicts:
        if v.cache == "hit":
            usage.cache_hits += 1
            continue
        # A text longer than the guard's context was checked in windows, a call each (a
        # window the cache served counts too, when others were not).
        usage.calls += v.windows
        if v.cache == "miss":
            usage.cache_misses += 1
        if v.prompt_tokens is None and v.completion_tokens is None:
            usage.unreported += 1
        cached = v.cached_tokens or 0
        usage.prompt_tokens += max(0, (v.prompt_tokens or 0) - cached)
        usage.cached_tokens += cached
        usage.output_tokens += v.completion_tokens or 0
    return usage


class SteerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One steer of one choice's reasoning: where the flag came, what was kept, why."""

    at_token: int  # reasoning tokens received when the flagging check came back
    flagged_check_tokens: int  # reasoning tokens the flagging check covered
    kept_tokens: int  # reasoning tokens kept: those the last passing check covered
    risk_score: int | None = None
    categories: tuple[str, ...] = ()
    mechanism: str = ""  # how the upstream was asked to go on ("completions", "chat")


class StageReport(msgspec.Struct, kw_only=True):
    """One stage of one choice: its most severe decision so far, how it was checked, and
    what the checks cost."""

    decision: Decision | None = None
    checks: int = 0
    tokens: int = 0
    aborted_at_token: int | None = None
    flagged_check_tokens: int | None = None
    usage: GuardUsage = msgspec.field(default_factory=GuardUsage)
    # Every check in order, with the tokens it covered (None for the prompt): the
    # decision record's timeline (proxy/console).
    history: list[tuple[int | None, Decision]] = msgspec.field(default_factory=list)
    # The screened text, kept only when the audit log captures content.
    text: str | None = None
    # Reasoning only: each steer, and how steering ended ("answered": the continuation
    # finished; "fell_back": steer_fallback ended the request, ``steer_note`` says why).
    steers: list[SteerRecord] = msgspec.field(default_factory=list)
    steer_outcome: str | None = None
    steer_note: str | None = None

    def record(self, decision: Decision, at_token: int | None = None) -> None:
        """One check's decision: it counts in the usage, and stands if it is the most severe."""
        self.usage.add(verdict_usage(decision))
        self.history.append((at_token, decision))
        self.pick(decision)

    def pick(self, decision: Decision) -> None:
        if self.decision is None or _severity(decision) >= _severity(self.decision):
            self.decision = decision


def _severity(d: Decision) -> tuple[bool, bool, int]:
    # A failed check outranks any verdict: nothing after it was screened (in shadow
    # mode too, where it passed but enforcing would have failed).
    return ((d.would or d.action) == "fail", d.flagged, d.risk_score or 0)


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """The upstream's token counts, read from its usage whatever the API calls them
    (``prompt_tokens`` or ``input_tokens``...); None where it gave none."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class ChoiceReport(msgspec.Struct, kw_only=True):
    reasoning: StageReport = msgspec.field(default_factory=StageReport)
    answer: StageReport = msgspec.field(default_factory=StageReport)
    finish_reason: str | None = None
    # Upstream tokens (deltas) of each channel in the chunks released to the client.
    released_reasoning_tokens: int = 0
    released_answer_tokens: int = 0
    # Tokens its channels had received before the current generation began: the kept
    # reasoning and the steering text of a steered choice, counted with the generations
    # thrown away (RequestReport.steer_spent).
    carried_tokens: int = 0

    def stages(self) -> dict[str, StageReport]:
        return {"reasoning": self.reasoning, "answer": self.answer}


class RequestReport(msgspec.Struct, kw_only=True):
    prompt: StageReport = msgspec.field(default_factory=StageReport)
    choices: dict[int, ChoiceReport] = msgspec.field(default_factory=dict)
    id: str = ""
    model: str = ""
    created: int = 0
    usage: Any = None  # the upstream's own usage object, as it sent it
    tokens: TokenUsage | None = None  # its token counts (logs, metrics, spans)
    stop: Decision | None = None
    stop_choice: int | None = None
    # The proxy's id of the request (x-request-id, the log line, the span, the record).
    request_id: str = ""
    # Upstream tokens spent on generations a steer threw away and on continuations'
    # prompts: (prompt tokens, completion tokens), added into the usage the client gets.
    steer_spent: tuple[int, int] = (0, 0)
    # Prompt tokens of the continuations the proxy asked for, where it counted them.
    continuation_prompt_tokens: int = 0

    def worst(self, stage: str) -> StageReport:
        """One report per stage over all choices, for headers and logs."""
        merged = StageReport()
        for c in self.choices.values():
            r = getattr(c, stage)
            merged.checks += r.checks
            merged.tokens += r.tokens
            merged.usage.add(r.usage)
            if r.decision is not None:
                merged.pick(r.decision)
            if r.aborted_at_token is not None:
                merged.aborted_at_token = r.aborted_at_token
                merged.flagged_check_tokens = r.flagged_check_tokens
            merged.steers += r.steers
            merged.steer_outcome = r.steer_outcome or merged.steer_outcome
            merged.steer_note = r.steer_note or merged.steer_note
        return merged

    def stop_entry(self, at_key: str = "aborted_at_token") -> dict[str, Any] | None:
        """How the request was stopped, for logs and records: the stage and action and,
        where an output's stage stopped, the choice, the token it stopped at (under
        ``at_key``) and the tokens the flagging check covered. None: not stopped."""
        stop = self.stop
        if stop is None:
            return None
        entry: dict[str, Any] = {"stage": stop.stage, "action": stop.action}
        choice = self.choices.get(self.stop_choice) if self.stop_choice is not None else None
        if choice is not None and stop.stage != "prompt":
            stage = getattr(choice, stop.stage)
            entry.update(
                {"choice": self.stop_choice, at_key: stage.aborted_at_token, "flagged_check_tokens": stage.flagged_check_tokens}
            )
        return entry

    @property
    def steers(self) -> int:
        """Steers over all choices."""
        return sum(len(c.reasoning.steers) for c in self.choices.values())
