"""proxy.protocols.moderations: FlexGuard's verdict as an OpenAI moderation result."""

from __future__ import annotations

import pytest

from guards import Verdict
from proxy._config import PolicyConfig
from proxy.protocols.moderations import OPENAI_KEYS, moderation_result


def v(score: int, *categories: str) -> Verdict:
    return Verdict(guard="flexguard", stage="prompt", risk_score=score, categories=categories)


def test_every_key_is_present_and_ilg_is_illicit() -> None:
    result = moderation_result(v(80, "ILG"), PolicyConfig())
    assert set(OPENAI_KEYS) | {"privacy", "misinformation", "jailbreak", "unsafe"} == set(result["categories"])
    assert [k for k, on in result["categories"].items() if on] == ["illicit"]
    assert result["category_scores"]["illicit"] == pytest.approx(0.8)
    assert set(result["category_applied_input_types"]) == set(result["categories"])


@pytest.mark.parametrize(("score", "flagged"), [(39, False), (40, True), (95, True)])
def test_safe_over_the_threshold_flags_unsafe(score: int, flagged: bool) -> None:
    # FlexGuard said SAFE: a flag by its score alone still names a key.
    result = moderation_result(v(score), PolicyConfig())
    assert result["flagged"] is flagged
    assert result["categories"]["unsafe"] is flagged
    assert [k for k, on in result["categories"].items() if on] == (["unsafe"] if flagged else [])
    assert result["category_scores"]["unsafe"] == pytest.approx(score / 100)


def test_named_categories_leave_unsafe_alone() -> None:
    result = moderation_result(v(90, "DIS"), PolicyConfig())
    assert [k for k, on in result["categories"].items() if on] == ["harassment", "hate"]
    assert result["categories"]["unsafe"] is False and result["category_scores"]["unsafe"] == 0
