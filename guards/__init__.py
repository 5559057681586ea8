"""guardproxy's model side: FlexGuard and ReasoningShield, their prompts, verdicts and backends.

Typical use (the proxy creates backends in its lifespan and closes them in ``finally``)::

    backend = await open_backend(config)
    flexguard = FlexGuard(backend, config)
    verdict = await flexguard.check_prompt("How do I bake bread?")
    ...
    await backend.aclose()
"""

from ._cache import VerdictCache
from ._categories import FLEXGUARD_CATEGORIES
from ._config import BackendKind, GuardModelConfig
from ._guards import (
    FLEXGUARD_MAX_TOKENS,
    REASONINGSHIELD_DATE,
    REASONINGSHIELD_MAX_TOKENS,
    FlexGuard,
    GrowingChecks,
    ReasoningShield,
)
from ._parse import judgment_to_risk_score, parse_flexguard, parse_reasoningshield
from ._prompts import (
    KNOWN_ADDED_TOKENS,
    GrowingSlot,
    SlotSanitizer,
    flexguard_prompt_messages,
    flexguard_response_messages,
    reasoningshield_messages,
    sanitize_slot_text,
    system_prompt,
)
from ._structured import flexguard_regex, reasoningshield_regex
from ._verdict import CacheResult, GuardName, Stage, Verdict
from .backends import (
    ChatMessage,
    ChatPrompt,
    Generation,
    GuardBackend,
    ScriptedBackend,
    open_backend,
    render_chat,
)
from .exceptions import (
    GuardBackendError,
    GuardError,
    GuardTimeout,
    GuardUnreachable,
    VerdictParseError,
    VerdictTruncated,
)

__all__ = [
    "FLEXGUARD_CATEGORIES",
    "FLEXGUARD_MAX_TOKENS",
    "KNOWN_ADDED_TOKENS",
    "REASONINGSHIELD_DATE",
    "REASONINGSHIELD_MAX_TOKENS",
    "BackendKind",
    "CacheResult",
    "ChatMessage",
    "ChatPrompt",
    "FlexGuard",
    "Generation",
    "GrowingChecks",
    "GuardBackend",
    "GuardBackendError",
    "GuardError",
    "GuardModelConfig",
    "GuardName",
    "GrowingSlot",
    "GuardTimeout",
    "GuardUnreachable",
    "ReasoningShield",
    "ScriptedBackend",
    "SlotSanitizer",
    "Stage",
    "Verdict",
    "VerdictCache",
    "VerdictParseError",
    "VerdictTruncated",
    "flexguard_prompt_messages",
    "flexguard_regex",
    "flexguard_response_messages",
    "judgment_to_risk_score",
    "open_backend",
    "parse_flexguard",
    "parse_reasoningshield",
    "reasoningshield_messages",
    "reasoningshield_regex",
    "render_chat",
    "sanitize_slot_text",
    "system_prompt",
]
