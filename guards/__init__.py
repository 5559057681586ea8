"""guardproxy's model side: FlexGuard and ReasoningShield, their verdicts and backends.

Typical use (the proxy creates backends in its lifespan and closes them in ``finally``)::

    backend = await open_backend(config)
    flexguard = FlexGuard(backend, config)
    verdict = await flexguard.check_prompt("How do I bake bread?")
    ...
    await backend.aclose()

This module names the public surface. How a guard is prompted (``_prompts``), its output
parsed (``_parse``, ``_structured``) and its context fitted (``_context``) are internals:
import them from their modules.
"""

from ._cache import VerdictCache
from ._categories import FLEXGUARD_CATEGORIES
from ._config import BackendKind, GuardModelConfig
from ._guards import FlexGuard, GrowingChecks, ReasoningShield
from ._verdict import CacheResult, GuardName, Stage, Verdict
from .backends import ChatMessage, ChatPrompt, Generation, GuardBackend, ScriptedBackend, open_backend
from .exceptions import (
    GuardBackendError,
    GuardError,
    GuardTimeout,
    GuardUnreachable,
    VerdictParseError,
    VerdictTruncated,
)

__all__ = [
    # the guards
    "FlexGuard",
    "ReasoningShield",
    "GrowingChecks",
    "GuardModelConfig",
    "BackendKind",
    # what they answer
    "Verdict",
    "Stage",
    "GuardName",
    "CacheResult",
    "FLEXGUARD_CATEGORIES",
    "VerdictCache",
    # the backends that run them
    "GuardBackend",
    "ChatPrompt",
    "ChatMessage",
    "Generation",
    "open_backend",
    "ScriptedBackend",
    # what can go wrong
    "GuardError",
    "GuardBackendError",
    "GuardTimeout",
    "GuardUnreachable",
    "VerdictParseError",
    "VerdictTruncated",
]
