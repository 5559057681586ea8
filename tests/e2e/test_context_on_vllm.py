"""Texts longer than the guard's context against a real vLLM guard server (the tiny
FlexGuard, served with --max-model-len 4096): the proxy reads the context from GET
/v1/models and counts the fixed prompt with POST /tokenize, and every window of a prompt
three times the context is a prompt the server takes whole, where the prompt in one piece
is refused."""

from __future__ import annotations

import asyncio

import pytest

from guards import FlexGuard, GuardBackendError, GuardModelConfig
from guards._context import MARGIN_TOKENS
from guards.backends._openai import OpenAIBackend

pytestmark = pytest.mark.e2e

CONTEXT = 4096  # tests/e2e/_servers.py serves every model with it
MAX_TOKENS = 96


def _text(words: int) -> str:
    return " ".join(f"Bees{i} visit flowers and carry nectar home." for i in range(words))


def test_every_window_fits_the_served_context(vllm_flexguard):
    config = GuardModelConfig(model=vllm_flexguard.model, base_url=vllm_flexguard.base_url, max_tokens=MAX_TOKENS, timeout_s=300)

    async def go():
        backend = OpenAIBackend(config)
        try:
            guard = FlexGuard(backend, config)
            fit = await guard.fit_context()
            empty = await backend.count_prompt_tokens(guard.prompt_check(""))
            text = _text(1000)
            whole = await backend.count_prompt_tokens(guard.prompt_check(text))
            try:
                await backend.generate(guard.prompt_check(text))
                refused = None
            except GuardBackendError as exc:
                refused = str(exc)
            _, spans = fit.plan("prompt", text)
            # The server's own count of each window's prompt, and a generation of each
            # (the tiny model's verdict on filler text does not matter here).
            windows = [guard.prompt_check(text[a:b]) for a, b in spans]
            counts = [await backend.count_prompt_tokens(p) for p in windows]
            generations = [await backend.generate(p) for p in windows]
            return fit, empty, whole, refused, spans, counts, generations
        finally:
            await backend.aclose()

    fit, empty, whole, refused, spans, counts, generations = asyncio.run(go())
    assert (fit.max_model_len, fit.source, fit.counted) == (CONTEXT, "served", True)
    assert fit.budget("prompt") == CONTEXT - empty - MAX_TOKENS - MARGIN_TOKENS
    assert whole > 3 * CONTEXT
    assert refused is not None and "HTTP 400" in refused  # one piece: refused by vLLM
    assert len(spans) > 3
    for count, generation in zip(counts, generations, strict=True):
        assert count + MAX_TOKENS <= CONTEXT
        assert generation.prompt_tokens == count
