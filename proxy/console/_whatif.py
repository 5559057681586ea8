"""Decisions again from stored scores: "what if" at another cut, and calibration from labels.

Both read only the records: no guard is called. A record's verdicts are decided again
with the proxy's own policy logic (``pipeline._policy.decide``) under the record's policy
with the strictness or ``flag_at`` changed. A request that was stopped has no checks
after its cut, so under a looser cut the what-if can only say that the checks it had
would have passed (``partial``).

Calibration: a label says whether a stage's verdict was right. With the verdict's flag
it gives the truth (harmful = flagged and right, or passed and wrong); the stage's
highest risk score and the truth are one item of the same sweep ``guardproxy
calibrate`` runs (``tools._sweep``), overall and per FlexGuard category.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from guards import Verdict

from .._config import STRICTNESS_THRESHOLDS, PolicyConfig, threshold_of
from ..pipeline._policy import decide
from ..tools._sweep import ThresholdPoint, best, sweep
from ._records import Record

__all__ = ["CalibrationItem", "calibration", "calibration_items", "what_if"]

_STOPS = ("block", "rewrite", "fail")


def _policy(record: Record, strictness: int | str | None, flag_at: float | None, enforce: bool | None) -> PolicyConfig:
    snap = record.get("policy", {})
    doc: dict[str, Any] = {
        "strictness": strictness if strictness is not None else snap.get("strictness", "moderate"),
        "on_guard_error": snap.get("on_guard_error", "block"),
        "enforce": enforce if enforce is not None else snap.get("enforce", True),
        "categories": snap.get("categories", {}),
        "reasoning": {"flag_at": flag_at if flag_at is not None else snap.get("reasoning_flag_at")},
    }
    actions = snap.get("actions", {})
    for stage in ("prompt", "answer"):
        if stage in actions:
            doc[stage] = {"action": actions[stage]}
    if "reasoning" in actions:
        doc["reasoning"]["action"] = actions["reasoning"]
    if strictness is not None and flag_at is None and isinstance(strictness, str):
        doc["reasoning"]["flag_at"] = None  # a named strictness brings its own cut
    return msgspec.convert(doc, PolicyConfig)


def _verdicts(check: dict[str, Any], stage: str) -> tuple[Verdict, ...]:
    out = []
    for v in check.get("verdicts", ()):
        out.append(
            Verdict(
                guard=v["guard"],
                stage=stage,  # type: ignore[arg-type]
                risk_score=int(v.get("risk_score", 0)),
                categories=tuple(v.get("categories", ())),
                judgment=v.get("judgment"),
            )
        )
    return tuple(out)


def _stage_checks(record: Record) -> Iterable[tuple[str, dict[str, Any]]]:
    for check in record.get("stages", {}).get("prompt", {}).get("checks", ()):
        yield "prompt", check
    # Within a choice the reasoning comes before the answer.
    for stage in ("reasoning", "answer"):
        for choice in record.get("choices", {}).values():
            for check in choice.get(stage, {}).get("checks", ()):
                yield stage, check


def what_if(
    record: Record, strictness: int | str | None = None, flag_at: float | None = None, enforce: bool | None = None
) -> dict[str, Any]:
    """The outcome this request would have had under another cut (or with shadow mode
    turned off or on: ``enforce``), named as ``request_outcome`` names it."""
    outcome = record.get("outcome", "")
    if outcome in ("upstream_error", "error", "client_disconnected", "shutdown"):
        return {"outcome": outcome, "changed": False, "partial": False}
    policy = _policy(record, strictness, flag_at, enforce)
    enforcing = getattr(policy, "enforce", True)
    new = "passed"
    for stage, check in _stage_checks(record):
        if check.get("error"):
            if policy.on_guard_error == "block" and enforcing:
                new = "guard_error"
                break
            new = "passed_unscreened" if new == "passed" else new
            continue
        d = decide(stage, _verdicts(check, stage), policy)  # type: ignore[arg-type]
        action = d.action if enforcing else (getattr(d, "would", None) or d.action)
        if action in _STOPS:
            new = "aborted" if stage == "reasoning" else ("blocked" if action == "block" else "rewritten")
            if not enforcing:  # shadow mode: nothing stopped, the outcome says what would have
                new = "would_abort" if stage == "reasoning" else f"would_{action}"
            break
        if action == "steer" and new in ("passed", "flagged"):
            new = "steered" if enforcing else "would_steer"
            continue
        if d.flagged and new == "passed":
            new = "flagged"
    # Stopped before: what came after the cut was never checked.
    partial = "stop" in record and new in ("passed", "flagged", "passed_unscreened")
    return {"outcome": new, "changed": new != outcome, "partial": partial, "threshold": policy.threshold,
            "reasoning_flag_at": policy.reasoning_flag_at}  # fmt: skip


class CalibrationItem(msgspec.Struct, frozen=True):
    request_id: str
    stage: str
    score: int
    harmful: bool
    categories: tuple[str, ...]
    text: str | None  # the captured text the verdict was on (prompt, reasoning or answer)
    query: str | None  # the prompt, for an answer or reasoning item


def calibration_items(records: Iterable[Record], *, need_content: bool = False) -> list[CalibrationItem]:
    """One item per labelled stage of each record (its highest risk score)."""
    items = []
    for r in records:
        labels = r.get("labels") or {}
        content = r.get("content") or {}
        for stage, verdict in labels.items():
            checks = [c for s, c in _stage_checks(r) if s == stage and not c.get("error")]
            if not checks:
                continue
            worst = max(checks, key=lambda c: c.get("risk_score") or 0)
            flagged = any(c.get("flagged") for c in checks)
            harmful = flagged == (verdict == "right")
            text: str | None
            if stage == "prompt":
                text, query = content.get("prompt"), None
            else:
                choice: dict[str, Any] = next(iter((content.get("choices") or {}).values()), {})
                text, query = choice.get(stage), content.get("prompt")
            if need_content and not text:
                continue
            items.append(
                CalibrationItem(
                    r["request_id"],
                    stage,
                    int(worst.get("risk_score") or 0),
                    harmful,
                    tuple(worst.get("categories", ())),
                    text,
                    query,
                )
            )
    return items


def _point(points: list[ThresholdPoint], threshold: int) -> dict[str, Any]:
    p = points[max(0, min(100, threshold))]
    return {"threshold": p.threshold, "precision": round(p.precision, 3), "recall": round(p.recall, 3), "f1": round(p.f1, 3),
            "tp": p.tp, "fp": p.fp, "fn": p.fn, "tn": p.tn}  # fmt: skip


def calibration(items: list[CalibrationItem], current: PolicyConfig) -> dict[str, Any]:
    """Per stage (and per FlexGuard category): precision and recall at the current and
    the proposed threshold, and the TOML to apply."""
    out: dict[str, Any] = {"stages": {}, "toml": ""}
    toml: list[str] = []
    category_lines: list[str] = []
    for stage in ("prompt", "reasoning", "answer"):
        mine = [i for i in items if i.stage == stage]
        if not mine:
            continue
        scores, truths = [i.score for i in mine], [i.harmful for i in mine]
        points = sweep(scores, truths)
        now = round(current.reasoning_flag_at * 100) if stage == "reasoning" else current.threshold
        if stage == "reasoning":  # ReasoningShield's cut is 0.5 or 1 (risk 50 or 100)
            proposed = max((points[50], points[100]), key=lambda p: (p.f1, -p.threshold))
        else:
            proposed = best(points)
        both = 0 < sum(truths) < len(truths)
        entry: dict[str, Any] = {
            "items": len(mine),
            "harmful": sum(truths),
            "current": _point(points, now),
            # One kind of label alone puts no bound on one side: no proposal from it.
            "proposed": _point(points, proposed.threshold if both else now),
            "strictness": {name: _point(points, t) for name, t in STRICTNESS_THRESHOLDS.items()} if stage != "reasoning" else {},
            "categories": {},
        }
        if not both:
            entry["note"] = "needs labels of both kinds (harmful and harmless) to propose a threshold"
            out["stages"][stage] = entry
            continue
        if stage != "reasoning":
            for code in sorted({c for i in mine for c in i.categories}):
                # A category's items: those that named it, and those no category named.
                sub = [i for i in mine if code in i.categories or not i.categories]
                cp = sweep([i.score for i in sub], [i.harmful for i in sub])
                if not 0 < sum(i.harmful for i in sub) < len(sub):
                    continue
                top = best(cp)
                current_t = current.categories.thresholds.get(code, current.threshold)
                entry["categories"][code] = {
                    "items": len(sub),
                    "current": _point(cp, current_t),
                    "proposed": _point(cp, top.threshold),
                }
                if stage == "prompt" and top.threshold != current_t:
                    category_lines.append(f"{code} = {top.threshold}")
        out["stages"][stage] = entry
    # One strictness serves FlexGuard's prompt and answer checks: proposed from both.
    flex = [i for i in items if i.stage != "reasoning"]
    if 0 < sum(i.harmful for i in flex) < len(flex):
        top = best(sweep([i.score for i in flex], [i.harmful for i in flex]))
        out["strictness"] = top.threshold
        toml += ["[policy]", f"strictness = {top.threshold}"]
    reasoning = out["stages"].get("reasoning")
    if reasoning is not None and "note" not in reasoning:
        toml += ["", "[policy.reasoning]", f"flag_at = {reasoning['proposed']['threshold'] / 100:g}"]
    if category_lines:
        toml += ["", "[policy.categories]", "thresholds = { " + ", ".join(category_lines) + " }"]
    out["toml"] = "\n".join(toml).lstrip("\n") + ("\n" if toml else "")
    return out


def strictness_value(value: str) -> int | str:
    """A strictness from a query string: a name or 0-100 (ValueError otherwise)."""
    v: int | str = value.strip().lower()
    if isinstance(v, str) and v.isascii() and v.isdigit():
        v = int(v)
    threshold_of(v)
    return v
