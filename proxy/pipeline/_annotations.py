"""How verdicts reach the client: Azure-style filter results in the body, and headers.

Azure OpenAI annotates ``prompt_filter_results`` and ``choices[].content_filter_results``;
clients that know Azure read them, and the OpenAI SDK keeps them as extra fields. Each
FlexGuard category appears under the key ``/v1/moderations`` uses for it (``_categories``:
VIO violence, ILG illicit, SEX sexual, INF privacy, DIS hate and harassment, MIS
misinformation, JAIL jailbreak), ReasoningShield's verdict under ``harmful_reasoning``,
and a flag that names no category under ``unsafe``; each entry is
``{"filtered", "detected", "severity"}``. A ``guardproxy`` entry carries the full decision
per stage. The README documents the shape.

Severity, Azure's safe / low / medium / high, comes from the risk score, cut where the
named strictnesses cut:

    risk score   0-19    20-39   40-59    60-100
    severity     safe    low     medium   high

so a severity says which strictnesses flag the text (low: strict only; medium: strict
and moderate; high: all three), as Azure's says which filter levels block it (a filter
set to "low" blocks low and above). ReasoningShield's Judgment 0.5 and 1 (risk 50 and
100) read medium and high. An entry's severity is the highest among the verdicts that
named its key.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._config import STRICTNESS_THRESHOLDS
from ._categories import UNCATEGORISED_KEY, keys_of
from ._policy import Decision

__all__ = [
    "GuardUsage",
    "StageReport",
    "decision_headers",
    "filter_results",
    "severity",
    "stage_summary",
    "verdict_usage",
]

_SEVERITIES = ("safe", "low", "medium", "high")
_SEVERITY_FLOORS = (
    (STRICTNESS_THRESHOLDS["loose"], "high"),
    (STRICTNESS_THRESHOLDS["moderate"], "medium"),
    (STRICTNESS_THRESHOLDS["strict"], "low"),
)


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


def stage_summary(report: StageReport) -> dict[str, Any]:
    d = report.decision
    out: dict[str, Any] = {"checks": report.checks}
    if d is not None:
        out.update(
            action=d.action,
            flagged=d.flagged,
            risk_score=d.risk_score,
            categories=list(d.categories),
            threshold=d.threshold,
            guards=sorted({v.guard for v in d.verdicts}),
        )
        if d.shadow:
            out["shadow"] = True
            if d.would:
                out["would"] = d.would
        if d.error:
            out["guard_error"] = d.error
        if d.where:
            out["flagged_messages"] = list(d.where)
    if report.tokens:
        out["tokens"] = report.tokens
    if report.usage.verdicts:
        out["guard_usage"] = report.usage.summary()
    if report.aborted_at_token is not None:
        # In shadow mode: where enforcing would have stopped the stage (nothing stopped).
        out["would_abort_at_token" if d is not None and d.shadow else "aborted_at_token"] = report.aborted_at_token
        out["flagged_check_tokens"] = report.flagged_check_tokens
    return out


def severity(risk_score: int) -> str:
    """Azure's severity for a 0-100 risk score (bands in the module docstring)."""
    return next((name for floor, name in _SEVERITY_FLOORS if risk_score >= floor), "safe")


def filter_results(stages: dict[str, StageReport]) -> dict[str, Any]:
    """``content_filter_results`` for the given stages (prompt, or reasoning and answer)."""
    results: dict[str, Any] = {}

    def detected(key: str, d: Decision, risk_score: int) -> None:
        entry = results.setdefault(key, {"filtered": False, "detected": True, "severity": "safe"})
        entry["filtered"] = entry["filtered"] or d.stops
        entry["severity"] = max(entry["severity"], severity(risk_score), key=_SEVERITIES.index)

    for report in stages.values():
        d = report.decision
        if d is None:
            continue
        for v in d.verdicts:
            if v.guard == "reasoningshield":
                if v.risk_score > 0:
                    detected("harmful_reasoning", d, v.risk_score)
            elif v.categories:
                for key in dict.fromkeys(k for code in v.categories for k in keys_of(code)):
                    detected(key, d, v.risk_score)
            elif d.flagged and v.risk_score >= d.threshold:
                # SAFE, but scored at or over the threshold: the flag still needs a key.
                detected(UNCATEGORISED_KEY, d, v.risk_score)
    results["guardproxy"] = {stage: stage_summary(r) for stage, r in stages.items()}
    return results


def decision_headers(stages: dict[str, StageReport]) -> list[tuple[bytes, bytes]]:
    """``x-guardproxy-<stage>``: the action; ``-risk-score`` and ``-categories`` beside it,
    and in shadow mode ``-would``: what enforcing would have done (block, rewrite, fail)."""
    headers: list[tuple[bytes, bytes]] = []
    for stage, report in stages.items():
        d = report.decision
        if d is None:
            continue
        prefix = f"x-guardproxy-{stage}"
        headers.append((prefix.encode(), d.action.encode()))
        if d.risk_score is not None:
            headers.append((f"{prefix}-risk-score".encode(), str(d.risk_score).encode()))
        headers.append((f"{prefix}-categories".encode(), ",".join(d.categories).encode()))
        if d.error:
            headers.append((f"{prefix}-guard-error".encode(), d.error.encode()))
        if d.would:
            headers.append((f"{prefix}-would".encode(), d.would.encode()))
    return headers
