"""OpenAI moderations backed by FlexGuard: request parsing and the result mapping.

FlexGuard's categories appear under the keys of ``_categories`` (the annotations use the
same): OpenAI's where one fits, INF, MIS and JAIL under their own (privacy,
misinformation, jailbreak). A named category scores risk_score / 100, the others 0; a
verdict that names none puts its score under ``unsafe``, which is what a flag without a
category sets. ``flagged`` follows the caller's policy, per-category rules included.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from guards import Verdict

from .._config import PolicyConfig
from ..exceptions import InvalidRequest
from ..pipeline._policy import flagged
from ._categories import CATEGORY_KEYS, UNCATEGORISED_KEY, keys_of
from ._inventory import MODERATIONS_FIELDS, check_fields, part_text
from ._request import MAX_JSON_DEPTH, decode_body

__all__ = ["parse_moderation_inputs", "moderation_result", "moderation_response", "OPENAI_KEYS"]

OPENAI_KEYS = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_ALL_KEYS = tuple(dict.fromkeys([*OPENAI_KEYS, *(k for keys in CATEGORY_KEYS.values() for k in keys), UNCATEGORISED_KEY]))


def parse_moderation_inputs(raw: bytes, max_inputs: int = 64, max_depth: int = MAX_JSON_DEPTH) -> tuple[list[str], str]:
    """The texts to classify and the model name to report; at most ``max_inputs``."""
    body = decode_body(raw, max_depth)
    check_fields(body, MODERATIONS_FIELDS)
    model = body.get("model", "flexguard")
    if not isinstance(model, str):
        raise InvalidRequest("`model` must be a string.", param="model")
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    if value is None or not items:
        raise InvalidRequest("`input` must be a string or a non-empty array.", param="input")
    if len(items) > max_inputs:
        raise InvalidRequest(
            f"`input` has {len(items)} items; this proxy checks at most {max_inputs} per request (server.max_moderation_inputs).",
            param="input",
        )
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and isinstance(item.get("type"), str) and (text := part_text(item)) is not None:
            texts.append(text)
        else:
            raise InvalidRequest(f"`input[{i}]` must be a string or a text part; FlexGuard reads text only.", param=f"input[{i}]")
    return texts, model


def moderation_result(verdict: Verdict, policy: PolicyConfig) -> dict[str, Any]:
    categories = dict.fromkeys(_ALL_KEYS, False)
    scores = dict.fromkeys(_ALL_KEYS, 0.0)
    for code in verdict.categories:
        alone = msgspec.structs.replace(verdict, categories=(code,))
        for key in keys_of(code):
            categories[key] = categories.get(key, False) or flagged(alone, policy)
            scores[key] = max(scores.get(key, 0.0), verdict.risk_score / 100)
    is_flagged = flagged(verdict, policy)
    if not verdict.categories:
        categories[UNCATEGORISED_KEY] = is_flagged
        scores[UNCATEGORISED_KEY] = verdict.risk_score / 100
    return {
        "flagged": is_flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {key: ["text"] for key in categories},
        "guardproxy": {
            "risk_score": verdict.risk_score,
            "categories": list(verdict.categories),
            "threshold": policy.threshold,
        },
    }


def moderation_response(model: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}
