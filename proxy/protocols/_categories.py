"""FlexGuard's categories under the names clients read: one table for both surfaces.

``/v1/moderations`` (OpenAI's keys) and the Azure-style ``content_filter_results`` use the
same keys. A code maps onto OpenAI's key where one fits (VIO violence, ILG illicit, SEX
sexual, DIS hate and harassment); INF, MIS and JAIL have none and keep their own names
(privacy, misinformation, jailbreak). A flag that names no category (FlexGuard said SAFE,
but its score reached the threshold) is reported under ``unsafe``, so that a flagged
result never shows every category false.
"""

from __future__ import annotations

__all__ = ["CATEGORY_KEYS", "UNCATEGORISED_KEY", "keys_of"]

CATEGORY_KEYS: dict[str, tuple[str, ...]] = {
    "VIO": ("violence",),
    "ILG": ("illicit",),
    "SEX": ("sexual",),
    "INF": ("privacy",),
    "DIS": ("hate", "harassment"),
    "MIS": ("misinformation",),
    "JAIL": ("jailbreak",),
}

UNCATEGORISED_KEY = "unsafe"


def keys_of(code: str) -> tuple[str, ...]:
    """The keys of a FlexGuard code; a code the table lacks keeps its own name."""
    return CATEGORY_KEYS.get(code, (code.lower(),))
