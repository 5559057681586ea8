"""The verdict: what one guard check says about one piece of text."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["CacheResult", "GuardName", "Stage", "Verdict"]

Stage = Literal["prompt", "reasoning", "answer"]
GuardName = Literal["flexguard", "reasoningshield"]
CacheResult = Literal["hit", "miss"]


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """One guard's judgment on one text.

    ``risk_score`` is on FlexGuard's 0-100 scale for both guards, so that decisions,
    reports and severities read one scale: ReasoningShield's Judgment 0 / 0.5 / 1 becomes
    0 / 50 / 100 (``judgment`` keeps the original). Each guard still has its own cut
    (the proxy's policy: a threshold for FlexGuard, a judgment level for ReasoningShield).
    """

    guard: GuardName
    stage: Stage
    risk_score: int
    categories: tuple[str, ...] = ()
    judgment: float | None = None
    output: str = ""
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    # The checks behind this verdict: a text longer than the guard's context is checked
    # in overlapping windows, and its verdict is the worst window's, with every window's
    # tokens added up (guards/_context.py).
    windows: int = 1
    # The verdict cache: "hit" (no guard call: served from the cache, or shared with an
    # identical check in flight; tokens 0), "miss" (this check called the guard), None
    # (not looked up: a growing text's check, or no cache).
    cache: CacheResult | None = None

    @property
    def cached(self) -> bool:
        """Served without a guard call of its own."""
        return self.cache == "hit"

    @property
    def safe_label(self) -> bool:
        """The guard's own label (SAFE / Judgment 0), independent of any threshold."""
        return not self.categories and (self.judgment is None or self.judgment == 0)
