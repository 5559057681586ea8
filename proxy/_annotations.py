"""How verdicts reach the client: Azure-style filter results in the body, and headers.

Azure OpenAI annotates ``prompt_filter_results`` and ``choices[].content_filter_results``;
clients that know Azure read them, and the OpenAI SDK keeps them as extra fields. Each
FlexGuard category appears under an Azure-like key, and a ``guardproxy`` entry carries
the full decision per stage. The README documents the shape.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._policy import Decision

__all__ = ["StageReport", "filter_results", "stage_summary", "decision_headers", "CATEGORY_KEYS"]

CATEGORY_KEYS: dict[str, str] = {
    "VIO": "violence",
    "ILG": "illegal",
    "SEX": "sexual",
    "INF": "privacy",
    "DIS": "hate",
    "MIS": "misinformation",
    "JAIL": "jailbreak",
}


class StageReport(msgspec.Struct, kw_only=True):
    """One stage of one choice: its most severe decision so far, and how it was checked."""

    decision: Decision | None = None
    checks: int = 0
    tokens: int = 0
    aborted_at_token: int | None = None
    flagged_check_tokens: int | None = None

    def record(self, decision: Decision) -> None:
        if self.decision is None or _severity(decision) >= _severity(self.decision):
            self.decision = decision


def _severity(d: Decision) -> tuple[bool, bool, int]:
    # A failed check outranks any verdict: nothing after it was screened.
    return (d.action == "fail", d.flagged, d.risk_score or 0)


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
        if d.error:
            out["guard_error"] = d.error
    if report.tokens:
        out["tokens"] = report.tokens
    if report.aborted_at_token is not None:
        out["aborted_at_token"] = report.aborted_at_token
        out["flagged_check_tokens"] = report.flagged_check_tokens
    return out


def filter_results(stages: dict[str, StageReport]) -> dict[str, Any]:
    """``content_filter_results`` for the given stages (prompt, or reasoning and answer)."""
    results: dict[str, Any] = {}
    for report in stages.values():
        d = report.decision
        if d is None:
            continue
        for code in d.categories:
            key = CATEGORY_KEYS.get(code, code.lower())
            entry = results.setdefault(key, {"filtered": False, "detected": True})
            entry["filtered"] = entry["filtered"] or d.stops
        if any(v.guard == "reasoningshield" and v.risk_score > 0 for v in d.verdicts):
            entry = results.setdefault("harmful_reasoning", {"filtered": False, "detected": True})
            entry["filtered"] = entry["filtered"] or d.stops
    results["guardproxy"] = {stage: stage_summary(r) for stage, r in stages.items()}
    return results


def decision_headers(stages: dict[str, StageReport]) -> list[tuple[bytes, bytes]]:
    """``x-guardproxy-<stage>``: the action; ``-risk-score`` and ``-categories`` beside it."""
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
    return headers
