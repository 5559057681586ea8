"""Reading the guards' answers: pure functions, strict.

What does not follow a guard's output format raises :class:`VerdictParseError`; it is
never read as "safe".

FlexGuard (model card's ``parse_output``, made strict)::

    <think>…</think>
    CATEGORY        SAFE, or one or more of VIO ILG SEX INF DIS MIS JAIL, comma-separated
    RISK_SCORE      the last 1-3 digit number in the lines after CATEGORY, clamped to 0..100

The card takes whatever the first line is as the category and allows a missing score; here
the category line must be SAFE or a list of the seven codes (in any case: ``safe``,
``Vio, ilg``; read as the upper-case codes), the score must be present, and a ``<think>``
that is never closed (the model ran out of tokens while thinking) is an error.
A ``</think>`` without an opening tag counts everything before it as thinking: some
servers put ``<think>`` in the generation prompt and return only what follows.

ReasoningShield (the authors' evaluation)::

    "Analysis": …
    "Judgment": 0 | 0.5 | 1

The last match of ``["']?Judgment["']?:?\\s*(\\d+(?:\\.\\d+)?)`` (case-insensitive) is the
judgment; it must be 0, 0.5 or 1.
"""

from __future__ import annotations

import re

from ._categories import FLEXGUARD_CATEGORIES, SAFE
from .exceptions import VerdictParseError

__all__ = ["judgment_to_risk_score", "parse_flexguard", "parse_reasoningshield"]

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_CATEGORY_LINE = re.compile(
    rf"(?:{'|'.join(FLEXGUARD_CATEGORIES)})(?:\s*,\s*(?:{'|'.join(FLEXGUARD_CATEGORIES)}))*",
    re.IGNORECASE,
)
_SCORE = re.compile(r"\b(\d{1,3})\b")
# End-of-turn tokens a backend may leave in the text when special tokens are kept.
_TRAILING_EOS = re.compile(r"(?:\s*(?:<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>))+\s*\Z")
_JUDGMENT = re.compile(r"[\"']?Judgment[\"']?:?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_JUDGMENT_RISK = {0.0: 0, 0.5: 50, 1.0: 100}


def _strip_think(text: str) -> str:
    if "<think>" not in text and "</think>" in text:
        text = "<think>" + text
    rest = _THINK_BLOCK.sub("", text)
    if "<think>" in rest:
        raise VerdictParseError("unterminated <think> block (max_tokens too small?)", text)
    if "</think>" in rest:
        raise VerdictParseError("stray </think> after the verdict", text)
    return rest


def parse_flexguard(output: str) -> tuple[tuple[str, ...], int]:
    """``(categories, risk_score)`` from FlexGuard's output; ``()`` means SAFE."""
    body = _TRAILING_EOS.sub("", _strip_think(output)).strip()
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if not lines:
        raise VerdictParseError("no CATEGORY line after the think block", output)
    category = lines[0]
    if category.upper() == SAFE:
        categories: tuple[str, ...] = ()
    elif _CATEGORY_LINE.fullmatch(category):
        # dict.fromkeys: drop repeats, keep the model's order.
        categories = tuple(dict.fromkeys(c.strip().upper() for c in category.split(",")))
    else:
        raise VerdictParseError(f"not a CATEGORY line: {category[:80]!r}", output)
    scores = _SCORE.findall("\n".join(lines[1:]))
    if not scores:
        raise VerdictParseError("no RISK_SCORE after the CATEGORY line", output)
    return categories, max(0, min(100, int(scores[-1])))


def parse_reasoningshield(output: str) -> float:
    """The judgment 0, 0.5 or 1 from ReasoningShield's output."""
    matches = _JUDGMENT.findall(output)
    if not matches:
        raise VerdictParseError('no "Judgment" in the output', output)
    value = float(matches[-1])
    if value not in _JUDGMENT_RISK:
        raise VerdictParseError(f"Judgment {matches[-1]} is not 0, 0.5 or 1", output)
    return value


def judgment_to_risk_score(judgment: float) -> int:
    """ReasoningShield's 0 / 0.5 / 1 on FlexGuard's 0-100 scale: 0 / 50 / 100."""
    return _JUDGMENT_RISK[judgment]
