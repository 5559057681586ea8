"""One way to turn a ChatPrompt into the model's prompt text, shared by in-process backends.

The transformers and vLLM backends render with this function so that they send the
model the same tokens as a ``vllm serve`` guard server does for a chat request: the
tokenizer's own chat template, ``add_generation_prompt=True``, the prompt's
``chat_template_kwargs``, and no extra special tokens when tokenising the result (the
template already contains BOS where the model wants one).
"""

from __future__ import annotations

from typing import Any

from ._base import ChatPrompt

__all__ = ["added_tokens_of", "render_chat", "tokenize_rendered"]


def render_chat(tokenizer: Any, prompt: ChatPrompt) -> str:
    """The prompt text as the model's chat template renders it."""
    text: str = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in prompt.messages],
        tokenize=False,
        add_generation_prompt=True,
        **(prompt.chat_template_kwargs or {}),
    )
    return text


def added_tokens_of(tokenizer: Any) -> frozenset[str]:
    """Every added token of the tokenizer, special or not: the tokenizer matches each of
    them whole in any text, a user's included."""
    return frozenset(tokenizer.get_added_vocab())


def tokenize_rendered(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text, as vLLM's chat endpoint tokenises it."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
