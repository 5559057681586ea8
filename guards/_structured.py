"""Regexes for vLLM structured outputs (``GuardModelConfig.structured_output``).

The trade-off: constrained decoding guarantees an answer that parses (no
VerdictParseError from a model that drifted out of format), but it overrides the model's
own wording wherever that wording leaves the format, and the grammar forces the verdict
lines to follow the think block. With ``max_thinking_tokens`` the think block
(FlexGuard), with ``max_analysis_tokens`` the analysis (ReasoningShield), is capped:
the grammar then forces ``</think>`` (or the ``"Judgment":`` line) once the cap is reached, so the model must decide on a shortened
reasoning, and a capped think may change the verdict. Leave both off to get the verdicts
the guard models were evaluated with.

The cap is counted in characters (a regex cannot count tokens), at
``CHARS_PER_TOKEN`` characters a token, about right for English text in these tokenizers.

With a guard server started with ``--reasoning-parser``, vLLM applies the regex only
after the reasoning ends; these regexes include the think block, so use structured
outputs with servers started without a reasoning parser, or with in-process vLLM.
"""

from __future__ import annotations

from ._categories import FLEXGUARD_CATEGORIES

__all__ = ["CHARS_PER_TOKEN", "flexguard_regex", "reasoningshield_regex"]

CHARS_PER_TOKEN = 4

_CODE = "(?:" + "|".join(FLEXGUARD_CATEGORIES) + ")"


def _bounded_any(max_tokens: int | None) -> str:
    return r"[\s\S]*" if max_tokens is None else rf"[\s\S]{{0,{max_tokens * CHARS_PER_TOKEN}}}"


def flexguard_regex(max_thinking_tokens: int | None = None) -> str:
    """Think block, then ``SAFE`` or a comma list of codes, then a score of 0-100.

    After ``</think>`` one or two line breaks: Qwen3 writes ``"\\n\\n"`` there on its own,
    as one token, and a grammar that allowed only ``"\\n"`` would force a token the model
    does not pick. A comma may be followed by a space (``VIO, ILG``), as the parser reads.
    """
    return "<think>" + _bounded_any(max_thinking_tokens) + rf"</think>\n\n?(?:SAFE|{_CODE}(?:, ?{_CODE})*)\n(?:100|[1-9]?[0-9])"


def reasoningshield_regex(max_analysis_tokens: int | None = None) -> str:
    """``"Analysis": …`` then ``"Judgment": 0``, ``0.5`` or ``1``."""
    return '"Analysis": ' + _bounded_any(max_analysis_tokens) + r'\n"Judgment": (?:0|0\.5|1)'
