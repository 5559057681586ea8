"""The one place where a guard's verdict becomes an action.

A FlexGuard verdict is flagged when its risk score reaches the threshold of the configured
strictness. ReasoningShield has its own cut, ``[policy.reasoning] flag_at``: its Judgment
0 / 0.5 / 1 arrives as risk 0 / 50 / 100 and flags from ``flag_at`` (0.5 or 1) up. Unset,
the named strictness decides it (strict and moderate 0.5, as the authors count it; loose
1); a numeric or calibrated strictness is FlexGuard's and leaves ReasoningShield at 0.5.

A guard error is not a verdict: under ``on_guard_error = "block"`` (fail-closed, the
default) the stage fails (HTTP 503 ``guard_unavailable``, or that error event
mid-stream), under ``"allow"`` it passes; either way it is reported.

Shadow mode (``[policy] enforce = false``) is decided here too: a decision that would
block or rewrite becomes a flag, a failed check passes, and ``would`` keeps what
enforcing would have done; ``releases`` makes every stage release at once.
"""

from __future__ import annotations

from typing import Literal, cast

import msgspec

from guards import GuardError, Stage, Verdict
from guards._parse import judgment_to_risk_score

from .._config import PolicyConfig, ReasoningAction
from ._report import Decision, Would

__all__ = ["decide", "decide_error", "flagged", "releases", "stage_action", "steer_or_fallback", "threshold_for"]


def stage_action(stage: Stage, policy: PolicyConfig) -> ReasoningAction:
    if stage == "prompt":
        return policy.prompt.action
    return policy.reasoning.action if stage == "reasoning" else policy.answer.action


def threshold_for(guard: str, policy: PolicyConfig) -> int:
    """The lowest risk score that flags this guard's verdicts (ReasoningShield's judgment
    cut on the 0-100 scale of its verdicts)."""
    if guard == "reasoningshield":
        return judgment_to_risk_score(policy.reasoning_flag_at)
    return policy.threshold


def flagged(verdict: Verdict, policy: PolicyConfig) -> bool:
    """Does this verdict flag its text under ``policy``?

    FlexGuard's categories refine the strictness: an always-blocked category flags at
    any score, an always-allowed one never flags on its own, and a category with its
    own threshold is compared with that instead of the strictness's.
    """
    threshold = threshold_for(verdict.guard, policy)
    if verdict.guard != "flexguard" or not verdict.categories:
        return verdict.risk_score >= threshold
    rules = policy.categories
    named = [c for c in verdict.categories if c not in rules.always_allow]
    if any(c in rules.always_block for c in named):
        return True
    return any(verdict.risk_score >= rules.thresholds.get(c, threshold) for c in named)


def decide(stage: Stage, verdicts: tuple[Verdict, ...], policy: PolicyConfig) -> Decision:
    flagged_ = any(flagged(v, policy) for v in verdicts)
    guard = "reasoningshield" if stage == "reasoning" else "flexguard"
    action: Literal["pass", "block", "rewrite", "flag", "steer"] = stage_action(stage, policy) if flagged_ else "pass"
    would: Would | None = None
    if not policy.enforce and action in ("block", "rewrite", "steer"):
        action, would = "flag", cast(Would, action)
    return Decision(
        stage=stage,
        flagged=flagged_,
        action=action,
        threshold=threshold_for(guard, policy),
        verdicts=verdicts,
        shadow=not policy.enforce,
        would=would,
    )


def steer_or_fallback(decision: Decision, steers: int, policy: PolicyConfig, cannot: str | None) -> tuple[Decision, str | None]:
    """A steering decision stands while the choice has steers left and its upstream can
    go on (``cannot``: why it cannot); otherwise ``steer_fallback`` ends the request as
    block or rewrite would, and the second value says why."""
    if decision.action != "steer":
        return decision, None
    limit = policy.reasoning.max_steers
    why = cannot or (f"max_steers ({limit}) reached" if steers >= limit else None)
    if why is None:
        return decision, None
    return msgspec.structs.replace(decision, action=policy.reasoning.steer_fallback), why


def decide_error(stage: Stage, error: GuardError, policy: PolicyConfig) -> Decision:
    """A check that gave no verdict: under fail-closed the stage fails whatever its
    action (what could not be screened is never forwarded, and "flag" would forward it);
    under "allow" it passes. Either way the error is reported, never as a flag."""
    fail_closed = policy.on_guard_error == "block"
    return Decision(
        stage=stage,
        flagged=False,
        action="fail" if fail_closed and policy.enforce else "pass",
        threshold=threshold_for("reasoningshield" if stage == "reasoning" else "flexguard", policy),
        error=type(error).__name__,
        shadow=not policy.enforce,
        would="fail" if fail_closed and not policy.enforce else None,
    )


def releases(policy: PolicyConfig) -> tuple[Literal["immediate", "checked", "hidden"], Literal["final", "checked", "immediate"]]:
    """How the reasoning and the answer are released: as configured, or at once (reasoning
    shown) in shadow mode, where the checks run alongside and nothing is held back. A
    choice's finish still waits for its checks, so that its annotation has their verdicts."""
    if not policy.enforce:
        return "immediate", "immediate"
    return policy.reasoning.release, policy.answer.release
