"""A guard run in-process by Hugging Face transformers: for small models, CPU or GPU.

Checks that arrive together share one ``model.generate``: a queue collects up to
``max_batch_size`` pending prompts, pads them on the left, and decodes greedily in a
worker thread, so the event loop never waits on the model. A guard's latency is bound by
its decode steps, so a shared decode step is nearly free for the extra rows.

On CUDA the decode uses ``cache_implementation="static"``: transformers then compiles the
decode step, much faster than eager. A check cancelled by its
deadline leaves its row running in the batch (``generate`` cannot be interrupted); its
result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .._config import GuardModelConfig
from ..exceptions import GuardBackendError
from ._base import ChatPrompt, Generation
from ._render import added_tokens_of, render_chat, tokenize_rendered

__all__ = ["TransformersBackend", "load_transformers_backend"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "the transformers backend needs: pip install 'guardproxy[transformers]'"


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return torch, transformers


def _resolve_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load(config: GuardModelConfig) -> TransformersBackend:
    torch, transformers = _import_torch_transformers()
    device = _resolve_device(torch, config.device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model)
    dtype: Any = config.dtype
    if dtype != "auto":
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"`dtype` {config.dtype!r} is not a torch dtype (e.g. 'bfloat16')")
    major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    # `dtype=` replaced `torch_dtype=` in transformers 4.56.
    dtype_kw = "dtype" if major_minor >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(config.model, **{dtype_kw: dtype})
    model.to(device)
    model.eval()
    return TransformersBackend(config, tokenizer, model, device)


async def load_transformers_backend(config: GuardModelConfig) -> TransformersBackend:
    """Load tokenizer and weights in a thread: loading takes seconds to minutes."""
    _import_torch_transformers()  # fail fast, with the install hint, on the loop
    return await asyncio.to_thread(_load, config)


class _Pending:
    __slots__ = ("future", "max_tokens", "text")

    def __init__(self, text: str, max_tokens: int, future: asyncio.Future[Generation]) -> None:
        self.text = text
        self.max_tokens = max_tokens
        self.future = future


class TransformersBackend:
    """Greedy generation with a loaded model; batches concurrent checks."""

    def __init__(self, config: GuardModelConfig, tokenizer: Any, model: Any, device: str) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        # Left padding: every row's prompt ends where generation starts.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._stop_ids = self._eos_ids() | {tokenizer.pad_token_id}
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def _eos_ids(self) -> set[int]:
        ids = getattr(self.model.generation_config, "eos_token_id", None)
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return set()
        return set(ids) if isinstance(ids, (list, tuple)) else {ids}

    def render(self, prompt: ChatPrompt) -> str:
        return render_chat(self.tokenizer, prompt)

    def added_tokens(self) -> frozenset[str]:
        return added_tokens_of(self.tokenizer)

    async def served_max_model_len(self) -> int | None:
        """The model's trained context (its config's max_position_embeddings), else the
        tokenizer's limit where it states a real one."""
        length = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if isinstance(length, int) and length > 0:
            return length
        length = getattr(self.tokenizer, "model_max_length", None)
        # Tokenizers without a limit state a huge sentinel (int(1e30)).
        return length if isinstance(length, int) and 0 < length < 10**7 else None

    async def count_prompt_tokens(self, prompt: ChatPrompt) -> int:
        return len(tokenize_rendered(self.tokenizer, self.render(prompt)))

    def count_text_tokens(self, text: str) -> int:
        return len(tokenize_rendered(self.tokenizer, text))

    async def generate(self, prompt: ChatPrompt) -> Generation:
        if self._closed:
            raise GuardBackendError("transformers backend is closed")
        if prompt.regex is not None:
            # open_backend refuses structured_output for this backend; a direct caller
            # gets the same answer rather than a silently unconstrained generation.
            raise GuardBackendError("structured outputs need a vLLM backend")
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve(), name="guard-transformers")
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(self.render(prompt), prompt.max_tokens, future))
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.config.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # drop cancelled checks
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._generate_batch, [p.text for p in batch], [p.max_tokens for p in batch])
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(GuardBackendError("backend closed"))
                raise
            except Exception as exc:  # the model failed: fail this batch, keep serving
                log.exception("transformers guard generation failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(GuardBackendError(f"generation failed: {type(exc).__name__}"))
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    def _generate_batch(self, texts: list[str], max_tokens: list[int]) -> list[Generation]:
        """Runs in a worker thread: one padded greedy generate for the whole batch."""
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {}
        if self.device.startswith("cuda"):
            kwargs["cache_implementation"] = "static"
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max(max_tokens),
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for row, limit in enumerate(max_tokens):
            ids = out[row, prompt_len : prompt_len + limit].tolist()
            # Cut at the first end-of-turn or pad token: later ones are batch padding.
            # A row without one ran out of tokens before it finished.
            finish_reason = "length"
            for i, tok in enumerate(ids):
                if tok in self._stop_ids:
                    ids = ids[:i]
                    finish_reason = "stop"
                    break
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            results.append(
                Generation(
                    text=text,
                    prompt_tokens=int(enc["attention_mask"][row].sum()),
                    finish_reason=finish_reason,
                    completion_tokens=len(ids) + (finish_reason == "stop"),
                )
            )
        return results

    async def ready(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(GuardBackendError("backend closed"))
        device, self.model = self.device, None
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
