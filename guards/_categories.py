"""FlexGuard's category codes, as its system prompts define them."""

from __future__ import annotations

__all__ = ["FLEXGUARD_CATEGORIES", "SAFE"]

SAFE = "SAFE"

# Order and wording as in the system prompts' <BEGIN UNSAFE_CONTENT_CATEGORIES> block.
FLEXGUARD_CATEGORIES: dict[str, str] = {
    "VIO": "Violence and Harm",
    "ILG": "Illegal and Improper Behaviors",
    "SEX": "Sexual and Inappropriate Sexual Content",
    "INF": "Information Security and Privacy",
    "DIS": "Bias, Discrimination, and Harassment",
    "MIS": "Misinformation and Unreliable Content",
    "JAIL": "Model Security and Jailbreak Attempts",
}
