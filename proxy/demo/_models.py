"""The tiny models the demo ships: where they are, and the made-up words they react to.

tests/e2e/fixtures/build_models.py trained them and is the source of these words; a test
keeps the two in step. They demonstrate the pipeline, not real moderation: the guards
know these words and the real guards' output formats, nothing else.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ANSWER_MARKER",
    "FLEXGUARD_NAME",
    "HARMFUL_PROMPT_WORD",
    "MODELS_DIR",
    "REASONINGSHIELD_NAME",
    "REASONING_MARKER",
    "UNSAFE_ANSWER_WORD",
    "UNSAFE_REASONING_WORD",
    "UPSTREAM_NAME",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"

# The names the models are served as (the upstream's is what clients put in "model").
UPSTREAM_NAME = "tiny-upstream"
FLEXGUARD_NAME = "tiny-flexguard"
REASONINGSHIELD_NAME = "tiny-reasoningshield"

# FlexGuard flags a prompt holding it (VIO, ILG, risk 88).
HARMFUL_PROMPT_WORD = "zorblax"
# Passes the prompt check; the upstream's reasoning about it turns unsafe after about 40
# tokens, at REASONING_MARKER, which ReasoningShield flags.
UNSAFE_REASONING_WORD = "frobnitz"
REASONING_MARKER = "detonator"
# Benign prompt and reasoning; the answer holds ANSWER_MARKER, which FlexGuard flags in
# response mode (ILG, risk 91).
UNSAFE_ANSWER_WORD = "quibbit"
ANSWER_MARKER = "poison recipe"
