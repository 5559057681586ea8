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

from .._config import STRICTNESS_THRESHOLDS
from ..pipeline._report import Decision, StageReport
from ._categories import UNCATEGORISED_KEY, keys_of

__all__ = ["decision_headers", "filter_results", "severity", "stage_summary", "steering_summary"]

_SEVERITIES = ("safe", "low", "medium", "high")
_SEVERITY_FLOORS = (
    (STRICTNESS_THRESHOLDS["loose"], "high"),
    (STRICTNESS_THRESHOLDS["moderate"], "medium"),
    (STRICTNESS_THRESHOLDS["strict"], "low"),
)


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
    if report.steers or report.steer_outcome:
        out["steering"] = steering_summary(report)
    return out


def steering_summary(report: StageReport) -> dict[str, Any]:
    """How a choice's reasoning was steered: each steer's position and cause, the outcome."""
    out: dict[str, Any] = {
        "steers": len(report.steers),
        "outcome": report.steer_outcome,
        "at_tokens": [s.at_token for s in report.steers],
        "flagged_check_tokens": [s.flagged_check_tokens for s in report.steers],
        "kept_tokens": [s.kept_tokens for s in report.steers],
        "risk_scores": [s.risk_score for s in report.steers],
        "categories": sorted({c for s in report.steers for c in s.categories}),
    }
    if report.steers:
        out["mechanism"] = report.steers[-1].mechanism
    if report.steer_note:
        out["fallback_reason"] = report.steer_note
    return out


def severity(risk_score: int) -> str:
    """Azure's severity for a 0-100 risk score (bands in the module docstring)."""
    return next((name for floor, name in _SEVERITY_FLOORS if risk_score >= floor), "safe")


def filter_results(stages: dict[str, StageReport]) -> dict[str, Any]:
    """``content_filter_results`` for the given stages (prompt, or reasoning and answer)."""
    results: dict[str, Any] = {}

    def detected(key: str, d: Decision, risk_score: int) -> None:
        entry = results.setdefault(key, {"filtered": False, "detected": True, "severity": "safe"})
        entry["filtered"] = entry["filtered"] or d.stops or d.action == "steer"  # a steer rolls the text back
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
        if report.steers or report.steer_outcome:
            headers.append((b"x-guardproxy-steers", str(len(report.steers)).encode()))
            headers.append((b"x-guardproxy-steer-outcome", (report.steer_outcome or "").encode()))
            headers.append((b"x-guardproxy-steer-at-tokens", ",".join(str(s.at_token) for s in report.steers).encode()))
    return headers
