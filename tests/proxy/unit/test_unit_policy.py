"""proxy.pipeline._policy: where a verdict becomes an action."""

from __future__ import annotations

import pytest

from guards import GuardBackendError, GuardTimeout, Verdict, VerdictParseError
from proxy._auth import Principal, request_policy
from proxy._config import AnswerStage, PolicyConfig, PromptStage, ReasoningStage
from proxy.pipeline._policy import decide, decide_error, stage_action, threshold_for
from proxy.pipeline._report import Decision


def v(score: int, *categories: str, guard: str = "flexguard", stage: str = "answer") -> Verdict:
    return Verdict(guard=guard, stage=stage, risk_score=score, categories=categories)


@pytest.mark.parametrize(
    ("strictness", "score", "flagged"),
    [
        ("strict", 19, False),
        ("strict", 20, True),
        ("moderate", 39, False),
        ("moderate", 40, True),
        ("moderate", 100, True),
        ("loose", 59, False),
        ("loose", 60, True),
        (55, 54, False),
        (55, 55, True),
        (0, 0, True),
        (100, 99, False),
        (100, 100, True),
    ],
)
def test_flagged_when_score_reaches_threshold(strictness: str | int, score: int, flagged: bool) -> None:
    policy = PolicyConfig(strictness=strictness)
    d = decide("answer", (v(score),), policy)
    assert d.flagged is flagged
    assert d.action == ("rewrite" if flagged else "pass")
    assert d.threshold == policy.threshold


def _judgments_flagged(policy: PolicyConfig, stage: str = "reasoning") -> list[float]:
    return [
        judgment
        for judgment, risk in ((0, 0), (0.5, 50), (1, 100))
        if decide(stage, (v(risk, guard="reasoningshield", stage=stage),), policy).flagged
    ]


@pytest.mark.parametrize(
    ("strictness", "judgments_flagged"),
    [
        # The authors count 0.5 as harmful: strict and moderate flag it, loose only 1.
        ("strict", [0.5, 1]),
        ("moderate", [0.5, 1]),
        ("loose", [1]),
        # A number (calibrated, say) is FlexGuard's threshold: ReasoningShield stays at 0.5.
        (0, [0.5, 1]),
        (40, [0.5, 1]),
        (60, [0.5, 1]),
        (100, [0.5, 1]),
    ],
)
def test_reasoningshield_judgment_levels(strictness: str | int, judgments_flagged: list[float]) -> None:
    assert _judgments_flagged(PolicyConfig(strictness=strictness)) == judgments_flagged


@pytest.mark.parametrize("strictness", ["strict", "moderate", "loose", 0, 35, 100])
@pytest.mark.parametrize(("flag_at", "judgments_flagged"), [(0.5, [0.5, 1]), (1.0, [1])])
def test_reasoningshield_flag_at_overrides_the_strictness(
    strictness: str | int, flag_at: float, judgments_flagged: list[float]
) -> None:
    policy = PolicyConfig(strictness=strictness, reasoning=ReasoningStage(flag_at=flag_at))
    assert _judgments_flagged(policy) == judgments_flagged
    assert _judgments_flagged(policy, stage="answer") == judgments_flagged  # screen_answer
    assert threshold_for("flexguard", policy) == policy.threshold  # FlexGuard unmoved


@pytest.mark.parametrize(
    ("strictness", "flexguard", "reasoningshield"),
    [("strict", 20, 50), ("moderate", 40, 50), ("loose", 60, 100), (35, 35, 50), (80, 80, 50)],
)
def test_threshold_for_each_guard(strictness: str | int, flexguard: int, reasoningshield: int) -> None:
    policy = PolicyConfig(strictness=strictness)
    assert threshold_for("flexguard", policy) == flexguard
    assert threshold_for("reasoningshield", policy) == reasoningshield
    assert decide("prompt", (), policy).threshold == flexguard
    assert decide("answer", (), policy).threshold == flexguard
    assert decide("reasoning", (), policy).threshold == reasoningshield


def test_answer_stage_applies_each_guards_threshold() -> None:
    # With reasoning.screen_answer, the answer has FlexGuard and ReasoningShield verdicts.
    policy = PolicyConfig(strictness="loose")
    rs_half = v(50, guard="reasoningshield")
    assert not decide("answer", (v(59), rs_half), policy).flagged
    assert decide("answer", (v(60), rs_half), policy).flagged
    assert decide("answer", (v(0), v(100, guard="reasoningshield")), policy).flagged
    assert decide("answer", (v(0), rs_half), PolicyConfig(strictness="moderate")).flagged


@pytest.mark.parametrize(
    ("key", "header", "allow_loosen", "flag_at"),
    [
        (70, "loose", False, 0.5),  # stricter for FlexGuard (60), not looser for ReasoningShield
        (70, "loose", True, 1.0),  # the key may loosen
        ("loose", "strict", False, 0.5),  # stricter on both scales
        ("loose", "30", False, 0.5),  # a number means the authors' 0.5, as in the config
        ("moderate", "strict", False, 0.5),
    ],
)
def test_strictness_header_never_loosens_reasoningshield(key: str | int, header: str, allow_loosen: bool, flag_at: float) -> None:
    policy = request_policy(Principal("t", PolicyConfig(strictness=key), allow_loosen), header)
    assert policy.reasoning_flag_at == flag_at


def test_strictness_header_leaves_an_explicit_flag_at() -> None:
    key = PolicyConfig(strictness="loose", reasoning=ReasoningStage(flag_at=1))
    assert request_policy(Principal("t", key), "strict").reasoning_flag_at == 1


def test_any_verdict_over_threshold_flags() -> None:
    d = decide("answer", (v(0), v(80, "VIO"), v(10)), PolicyConfig())
    assert d.flagged and d.risk_score == 80


def test_no_verdicts_pass() -> None:
    d = decide("prompt", (), PolicyConfig())
    assert not d.flagged and d.action == "pass"
    assert d.risk_score is None and d.categories == ()


def _policy(prompt: str, reasoning: str, answer: str, **kw: object) -> PolicyConfig:
    return PolicyConfig(
        prompt=PromptStage(action=prompt), reasoning=ReasoningStage(action=reasoning), answer=AnswerStage(action=answer), **kw
    )


@pytest.mark.parametrize(("stage", "expected"), [("prompt", "flag"), ("reasoning", "block"), ("answer", "rewrite")])
def test_flagged_action_is_the_stage_action(stage: str, expected: str) -> None:
    policy = _policy("flag", "block", "rewrite")
    assert stage_action(stage, policy) == expected
    assert decide(stage, (v(90),), policy).action == expected
    assert decide(stage, (v(1),), policy).action == "pass"


def test_default_stage_actions() -> None:
    policy = PolicyConfig()
    assert [stage_action(s, policy) for s in ("prompt", "reasoning", "answer")] == ["block", "rewrite", "rewrite"]


@pytest.mark.parametrize(("action", "stops"), [("block", True), ("rewrite", True), ("flag", False), ("pass", False)])
def test_decision_stops(action: str, stops: bool) -> None:
    d = Decision(stage="answer", flagged=action != "pass", action=action, threshold=40)
    assert d.stops is stops


@pytest.mark.parametrize("error", [GuardTimeout("slow"), GuardBackendError("HTTP 500"), VerdictParseError("bad", "out")])
def test_guard_error_fails_the_stage_when_fail_closed(error: Exception) -> None:
    """Whatever the stage's action (flag would forward the text): an error is not a flag."""
    policy = _policy("block", "rewrite", "flag", on_guard_error="block", strictness="strict")
    for stage in ("prompt", "reasoning", "answer"):
        d = decide_error(stage, error, policy)
        assert not d.flagged
        assert d.action == "fail" and d.stops
        assert d.error == type(error).__name__
        assert d.threshold == threshold_for("reasoningshield" if stage == "reasoning" else "flexguard", policy)
        assert d.verdicts == ()
        assert d.risk_score is None


def test_guard_error_passes_when_allowed_but_is_reported() -> None:
    policy = PolicyConfig(on_guard_error="allow")
    d = decide_error("answer", GuardTimeout("server said: secret"), policy)
    assert not d.flagged
    assert d.action == "pass"
    assert not d.stops
    assert d.error == "GuardTimeout"  # the class name, never the message text


def test_decision_risk_score_is_the_maximum() -> None:
    d = decide("answer", (v(10), v(70), v(30)), PolicyConfig())
    assert d.risk_score == 70


def test_decision_categories_are_deduplicated_in_order() -> None:
    d = decide("answer", (v(90, "VIO", "ILG"), v(50, "ILG", "SEX"), v(0)), PolicyConfig())
    assert d.categories == ("VIO", "ILG", "SEX")


@pytest.mark.parametrize("header", ["²", "¹³", "٣", "12x", ""])
def test_a_strictness_header_that_is_no_ascii_number_is_a_400(header: str) -> None:
    from proxy._auth import Principal, request_policy
    from proxy.exceptions import InvalidRequest

    with pytest.raises(InvalidRequest):
        request_policy(Principal("default", PolicyConfig()), header)
