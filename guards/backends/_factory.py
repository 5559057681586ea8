"""``open_backend``: the one place that turns a GuardModelConfig into a backend."""

from __future__ import annotations

import httpx

from .._config import GuardModelConfig
from ._base import GuardBackend

__all__ = ["open_backend"]


async def open_backend(config: GuardModelConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> GuardBackend:
    """Create (and for in-process backends, load) the backend ``config`` names.

    vllm and transformers are imported here, lazily; a missing package raises
    ImportError with the install hint. The caller owns the backend: ``await
    backend.aclose()`` in a ``finally``. ``transport`` (openai backend only) is the HTTP
    transport the guard's requests go over: the proxy passes the one it chose for the
    upstream, balancing over the guard's replicas.
    """
    if config.backend == "openai":
        from ._openai import OpenAIBackend

        return OpenAIBackend(config, transport=transport)
    if config.backend == "transformers":
        if config.structured_output:
            raise ValueError("`structured_output` needs the openai (vLLM server) or vllm backend")
        from ._transformers import load_transformers_backend

        return await load_transformers_backend(config)
    if config.backend == "vllm":
        from ._vllm import load_vllm_backend

        return await load_vllm_backend(config)
    raise ValueError(f"unknown guard backend {config.backend!r}")
