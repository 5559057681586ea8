"""What the guards are sent: system prompts, user slots, and the slot-text sanitiser.

The messages follow the model cards to the byte (see ``data/NOTICE``):

- FlexGuard, prompt mode: ``system`` = the prompt-mode system prompt, ``user`` =
  ``"Now classify the following content according to the guidelines above:\\n[User]: "``
  + user text.
- FlexGuard, response mode: ``system`` = the response-mode system prompt, ``user`` = the
  same preamble + ``"[User]: " + user + "\\n" + "[Assistant]: " + assistant``.
- ReasoningShield: ``system`` = its prompt file, ``user`` =
  ``f"Query: {question}\\nThought: {thought}"`` (the same slot takes a final answer).

Sanitising slot text
--------------------
Text from users and from the upstream model goes inside the guard's prompt; it must not be
able to leave its slot. :func:`sanitize_slot_text` keeps every character of the text and
inserts one ZERO WIDTH SPACE (U+200B, ``BREAK``) where the text imitates structure:

- chat-template special tokens: every ``<|`` becomes ``<\\u200b|``, which breaks
  ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, ``<|eot_id|>``,
  ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|begin_of_text|>`` and any other
  ``<|…|>`` token, so the tokenizer no longer matches them as added tokens;
  ``<think>`` / ``</think>`` get the break before ``>`` (case-insensitive);
- slot markers: ``[User]`` and ``[Assistant]`` (anywhere) get the break before ``]``;
  at a line start, ``Query``, ``Thought``, ``Judgment`` and ``Analysis`` (optionally
  quoted) get the break before a following ``:``, ``"`` or ``'``;
- the guard's own output format: a line that is exactly a FlexGuard category list
  (``SAFE``, ``VIO,ILG``, any case) gets the break at its end, before the line break.

Why an invisible break rather than a visible one or deletion: the guard must judge the
text as written (deleting or rewording could hide harm or invent it), a human reading a
logged prompt sees the original, and the model sees token sequences that no longer equal
the special tokens or markers it was trained on.

Why the break goes where it does: each insertion is decided by the characters up to the
one it precedes, never by later ones (one character of look-ahead at most, and the break
then sits before that character). So for a text that grows append-only, as the reasoning
does between ReasoningShield checks, ``sanitize_slot_text(a)`` is a prefix of
``sanitize_slot_text(a + b)``, and vLLM's prefix cache keeps serving the earlier check's
tokens. The one exception is the category-list rule, which must see the end of a line:
when ``a`` ends on a line that is exactly a category list, the break sits at the end of
``a`` and moves if the line grows (``SAFE`` → ``SAFER``); this costs one cache miss of a
few tokens, never a wrong prompt.

Not neutralised: a line that is only a number (FlexGuard's RISK_SCORE line) is too common
in ordinary text; the parser is strict instead, and reads only the guard's output.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from typing import Literal

from ._categories import FLEXGUARD_CATEGORIES
from .backends._base import ChatMessage

__all__ = [
    "BREAK",
    "FLEXGUARD_PREAMBLE",
    "SystemPromptName",
    "sanitize_slot_text",
    "system_prompt",
    "flexguard_prompt_messages",
    "flexguard_response_messages",
    "reasoningshield_messages",
]

BREAK = "\u200b"

SystemPromptName = Literal["flexguard_prompt", "flexguard_response", "reasoningshield"]

_DATA_FILES: dict[str, str] = {
    "flexguard_prompt": "flexguard_prompt_mode_system_prompt.txt",
    "flexguard_response": "flexguard_response_mode_system_prompt.txt",
    "reasoningshield": "reasoningshield_system_prompt.txt",
}

FLEXGUARD_PREAMBLE = "Now classify the following content according to the guidelines above:\n"


@functools.cache
def system_prompt(name: SystemPromptName) -> str:
    """The guard's system prompt, read once from the package data, byte for byte."""
    resource = importlib.resources.files(__package__).joinpath("data", _DATA_FILES[name])
    # Decode strictly and keep line endings: newline="" would not apply to read_bytes.
    return resource.read_bytes().decode("utf-8")


# Characters the model may read as a line break (str.splitlines' set).
_NL = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_START = rf"(?:^|(?<=[{_NL}]))"
_CODES = "|".join(["SAFE", *FLEXGUARD_CATEGORIES])

# Each rule is (pattern, replacement); every replacement only inserts BREAK.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"<(?=\|)"), "<" + BREAK),
    (re.compile(r"(</?think)(?=>)", re.IGNORECASE), r"\1" + BREAK),
    (re.compile(r"(\[(?:user|assistant))(?=\])", re.IGNORECASE), r"\1" + BREAK),
    (
        re.compile(
            _LINE_START + r"([ \t]*[\"']?(?:query|thought|judgment|analysis))(?=[:\"'])",
            re.IGNORECASE,
        ),
        r"\1" + BREAK,
    ),
    (
        re.compile(
            _LINE_START
            + rf"([ \t]*(?:{_CODES})(?:[ \t]*,[ \t]*(?:{_CODES}))*[ \t]*)(?=[{_NL}]|\Z)",
            re.IGNORECASE,
        ),
        r"\1" + BREAK,
    ),
)


def sanitize_slot_text(text: str) -> str:
    """Neutralise what in ``text`` could break out of a guard's slot (see module doc)."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def flexguard_prompt_messages(user_text: str) -> tuple[ChatMessage, ...]:
    """FlexGuard prompt moderation: is the user's message unsafe?"""
    return (
        ChatMessage("system", system_prompt("flexguard_prompt")),
        ChatMessage("user", FLEXGUARD_PREAMBLE + "[User]: " + sanitize_slot_text(user_text)),
    )


def flexguard_response_messages(user_text: str, assistant_text: str) -> tuple[ChatMessage, ...]:
    """FlexGuard response moderation: is the assistant's answer unsafe?"""
    content = (
        FLEXGUARD_PREAMBLE
        + "[User]: "
        + sanitize_slot_text(user_text)
        + "\n"
        + "[Assistant]: "
        + sanitize_slot_text(assistant_text)
    )
    return (
        ChatMessage("system", system_prompt("flexguard_response")),
        ChatMessage("user", content),
    )


def reasoningshield_messages(query: str, thought: str) -> tuple[ChatMessage, ...]:
    """ReasoningShield: is the reasoning (or the final answer) to ``query`` unsafe?"""
    content = f"Query: {sanitize_slot_text(query)}\nThought: {sanitize_slot_text(thought)}"
    return (
        ChatMessage("system", system_prompt("reasoningshield")),
        ChatMessage("user", content),
    )
