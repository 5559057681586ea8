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
Text from users, tools and the upstream model goes inside the guard's prompt; it must not
be able to leave its slot. A :class:`SlotSanitizer` keeps every character of the text and
inserts one ZERO WIDTH SPACE (U+200B, ``BREAK``) where the text imitates structure:

- added tokens of the guard's tokenizer (which it would match as single tokens, special
  or not): every ``<|`` becomes ``<\\u200b|``, which breaks every ``<|…|>`` token
  whatever its name (``<|im_end|>``, ``<|eot_id|>``, ``<|python_tag|>``,
  ``<|reserved_special_token_7|>``, …); any other added token gets the break before its
  last character (``<tool_call\\u200b>``, ``</think\\u200b>``; case-insensitive).
  The tokens come from the backend's tokenizer where it has one (transformers, vllm),
  always on top of ``KNOWN_ADDED_TOKENS``, which with the ``<|`` rule covers every added
  token of Qwen3's and Llama-3.2's tokenizers (the openai backend has no tokenizer, and
  :func:`sanitize_slot_text` uses this static list). A token text then never occurs
  whole: each occurrence holds a break, and a break cannot complete a new one. Tokens
  shorter than two characters or made of whitespace alone are left alone (they cannot be
  split, or carry no structure).
- slot markers: ``[User]`` and ``[Assistant]`` (anywhere) get the break before ``]``;
  at a line start, ``Query``, ``Thought``, ``Judgment`` and ``Analysis`` (optionally
  quoted, optionally followed by spaces) get the break before a following ``:``, ``"``
  or ``'``;
- the guard's own output format: a line that is exactly a FlexGuard category list
  (``SAFE``, ``VIO,ILG``, any case) gets the break at its end, before the line break.

Markers and category lines are matched on a folded view of the text, so that look-alikes
are caught too: each character is folded on its own by NFKC (fullwidth ``［User］``,
``Ｔｈｏｕｇｈｔ：``), space separators become a space (``[User\\u00a0]``), format
characters and other invisible ones are dropped (``[Us\\u200ber]``, a soft hyphen, a
variation selector), and typographic quotes count as ``"`` and ``'``. The break goes
into the original text, before the original character that completes the match.
Letters of other scripts that merely look Latin (Cyrillic ``Т``) are not folded: NFKC
keeps them apart, and so does the guard's tokenizer.

Why an invisible break rather than a visible one or deletion: the guard must judge the
text as written (deleting or rewording could hide harm or invent it), a human reading a
logged prompt sees the original, and the model sees token sequences that no longer equal
the special tokens or markers it was trained on. A look-alike gets the same break as the
marker it imitates, so that no variant is left exactly as its author placed it.

Why the break goes where it does: each insertion is decided by the characters up to the
one it precedes, never by later ones (one character of look-ahead at most, and the break
then sits before that character; folding is per character, so it changes nothing here).
So for a text that grows append-only, as the reasoning does between ReasoningShield
checks, ``sanitize(a)`` is a prefix of ``sanitize(a + b)``. The one exception is the
category-list rule, which must see the end of a line: when ``a`` ends on a line that is
exactly a category list (invisible characters after it included), the break sits at the
end of ``a`` and moves if the line grows (``SAFE`` → ``SAFER``).

What that buys: the slot text of a check extends the previous check's slot text, but the
rendered prompt does not extend the previous prompt, because the chat template closes the
user turn after the slot (``<|eot_id|>`` and the assistant header). Successive checks of
one request therefore share every token but the tail: the closing tokens, and the last
few tokens of the slot text, which the tokenizer may merge differently once more text
follows (or which the category-list exception moves). vLLM's prefix cache serves the
shared part.

Not neutralised: a line that is only a number (FlexGuard's RISK_SCORE line) is too common
in ordinary text; the parser is strict instead, and reads only the guard's output.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Literal

import msgspec

from ._categories import FLEXGUARD_CATEGORIES
from .backends._base import ChatMessage

__all__ = [
    "BREAK",
    "GrowingSlot",
    "FLEXGUARD_PREAMBLE",
    "KNOWN_ADDED_TOKENS",
    "Sanitize",
    "SlotSanitizer",
    "SystemPromptName",
    "flexguard_prompt_messages",
    "flexguard_response_messages",
    "reasoningshield_messages",
    "sanitize_slot_text",
    "system_prompt",
]

BREAK = "\u200b"

SystemPromptName = Literal["flexguard_prompt", "flexguard_response", "reasoningshield"]
Sanitize = Callable[[str], str]

_DATA_FILES: dict[str, str] = {
    "flexguard_prompt": "flexguard_prompt_mode_system_prompt.txt",
    "flexguard_response": "flexguard_response_mode_system_prompt.txt",
    "reasoningshield": "reasoningshield_system_prompt.txt",
}

FLEXGUARD_PREAMBLE = "Now classify the following content according to the guidelines above:\n"

# The added tokens of Qwen3's tokenizer (FlexGuard) that do not start with "<|"; the
# "<|" rule covers all the others, and all of Llama-3.2's (ReasoningShield). The tests
# check this against both real tokenizers.
KNOWN_ADDED_TOKENS: frozenset[str] = frozenset(
    {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"}
)


@functools.cache
def system_prompt(name: SystemPromptName) -> str:
    """The guard's system prompt, read once from the package data, byte for byte."""
    resource = importlib.resources.files(__package__).joinpath("data", _DATA_FILES[name])
    # Decode strictly and keep line endings: newline="" would not apply to read_bytes.
    return resource.read_bytes().decode("utf-8")


# Characters the model may read as a line break (str.splitlines' set).
_NL = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_START = rf"(?:^|(?<=[{_NL}]))"
_LINE_BREAK = re.compile(f"[{_NL}]")
_CODES = "|".join(["SAFE", *FLEXGUARD_CATEGORIES])

_PIPE_TOKEN = re.compile(r"<(?=\|)")
# Candidates for SlotSanitizer.hard_chars: ASCII that markers, category lines and the
# pipe rule never match (no letter, space, bracket, quote, colon, comma, < | >).
_HARD = "0123456789.;!?()=+-*/%&#@$^~{}_"
# ASCII that no rule matches (and that keeps an ASCII text on the fast path, where no
# folding table is consulted): in no token, no marker.
_NOT_A_LINE_START = "\x00"

# Matched on the folded view; a match ends where the break goes.
_MARKERS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\[[ \t]*(?:user|assistant)[ \t]*(?=\])", re.IGNORECASE),
    re.compile(
        _LINE_START + r"[ \t]*[\"']?(?:query|thought|judgment|analysis)[ \t]*(?=[:\"'])",
        re.IGNORECASE,
    ),
    re.compile(
        _LINE_START + rf"[ \t]*(?:{_CODES})(?:[ \t]*,[ \t]*(?:{_CODES}))*[ \t]*(?=[{_NL}]|\Z)",
        re.IGNORECASE,
    ),
)

# Invisible characters outside the format category (Cf): combining grapheme joiner,
# Hangul fillers, Khmer inherent vowels, variation selectors.
_INVISIBLE = frozenset(
    itertools.chain(
        (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0),
        range(0xFE00, 0xFE10),
        range(0xE0100, 0xE01F0),
    )
)
_QUOTES = {
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
}


@functools.cache
def _fold_table() -> dict[int, str]:
    """Code point -> its folded text, for every character that folding changes.

    Built on first use: the BMP, the SMP (mathematical alphanumerics) and
    plane 14 (tags, variation selectors) hold every character that folds to ASCII or to
    nothing.
    """
    table: dict[int, str] = {}
    for cp in itertools.chain(range(0x80, 0x20000), range(0xE0000, 0xE1000)):
        ch = chr(cp)
        category = unicodedata.category(ch)
        if category == "Cs":
            continue
        if category == "Cf" or cp in _INVISIBLE:
            folded = ""
        elif category == "Zs":
            folded = " "
        else:
            folded = _QUOTES.get(ch) or unicodedata.normalize("NFKC", ch)
        if folded != ch:
            table[cp] = folded
    return table


@functools.cache
def _flag_table() -> dict[int, str]:
    # Every character that folding changes becomes BREAK, itself one of them: so the
    # BREAKs of the translated text are where the original needs folding.
    return dict.fromkeys(_fold_table(), BREAK)


def _folded_view(text: str) -> tuple[str, list[int] | None]:
    """The folded text, and for each of its characters the index of the original one
    (``None`` when folding changed nothing: then the indices are the same)."""
    if text.isascii():
        return text, None
    flags = text.translate(_flag_table())
    i = flags.find(BREAK)
    if i == -1:
        return text, None
    table = _fold_table()
    parts: list[str] = []
    owner: list[int] = []
    done = 0
    while i != -1:
        folded = table[ord(text[i])]
        parts += (text[done:i], folded)
        owner.extend(range(done, i))
        owner.extend([i] * len(folded))
        done = i + 1
        i = flags.find(BREAK, done)
    parts.append(text[done:])
    owner.extend(range(done, len(text)))
    return "".join(parts), owner


def _token_pattern(tokens: Iterable[str]) -> re.Pattern[str] | None:
    """Everything but each token's last character, with the last one as look-ahead.

    Shortest first: where tokens start at one position the shortest one is found, and
    its break lies inside every longer one too.
    """
    alternatives = [re.escape(t[:-1]) + "(?=" + re.escape(t[-1]) + ")" for t in sorted(tokens, key=lambda t: (len(t), t))]
    return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


class SlotSanitizer:
    """Neutralises slot text for one guard (see the module docstring).

    ``added_tokens``: the guard tokenizer's added tokens, neutralised on top of
    ``KNOWN_ADDED_TOKENS``.
    """

    def __init__(self, added_tokens: Iterable[str] = ()) -> None:
        self.added_tokens = frozenset(
            t
            for t in itertools.chain(KNOWN_ADDED_TOKENS, added_tokens)
            if len(t) >= 2 and not t.isspace() and not t.startswith("<|") and BREAK not in t
        )
        self._tokens = _token_pattern(self.added_tokens)
        # Built here, once, not inside the first check of a non-ASCII text: on a busy CPU
        # building it is slow, and a reasoning check waiting on it stops nothing.
        _flag_table()
        # ASCII characters that no marker, category line, pipe token or added token can
        # hold: no match spans one, so sanitising stops and restarts there exactly
        # (GrowingSlot cuts long lines at them).
        used = set("".join(self.added_tokens).lower()) | set("".join(self.added_tokens).upper())
        self.hard_chars = frozenset(c for c in _HARD if c not in used)

    def __call__(self, text: str, *, line_start: bool = True) -> str:
        """The sanitised ``text``; ``line_start=False``: the text continues a line (its
        first character follows a hard character, see ``hard_chars``)."""
        if not line_start:
            # A leading character that no rule matches keeps ^ off the first position.
            return self(_NOT_A_LINE_START + text)[1:]
        cuts = {m.end() for m in _PIPE_TOKEN.finditer(text)}
        if self._tokens is not None:
            pos = 0
            # One search per start position: occurrences of two tokens may overlap.
            while (m := self._tokens.search(text, pos)) is not None:
                cuts.add(m.end())
                pos = m.start() + 1
        view, owner = _folded_view(text)
        for marker in _MARKERS:
            for m in marker.finditer(view):
                end = m.end()
                if owner is not None:
                    end = owner[end] if end < len(owner) else len(text)
                cuts.add(end)
        if not cuts:
            return text
        bounds = [0, *sorted(cuts), len(text)]
        return BREAK.join(text[a:b] for a, b in itertools.pairwise(bounds))


_STATIC = SlotSanitizer()
_ENCODE = msgspec.json.Encoder().encode


def json_string(text: str) -> bytes:
    """``text`` as a JSON string literal. Escaping is per character, so the literal of a
    concatenation is the concatenation of the literals' insides."""
    return _ENCODE(text)


class GrowingSlot:
    """The sanitised slot text, and its JSON form, of a text that only grows: the
    reasoning between ReasoningShield checks, an answer between FlexGuard checks.

    Each :meth:`update` sanitises and escapes only the new text and the end of the line
    it continues, never what came before: no match of :class:`SlotSanitizer` spans a
    line break (markers, category lines and the added tokens hold none) or a hard
    character (``SlotSanitizer.hard_chars``: digits and punctuation that no rule
    matches), so the sanitised form of the text before the last of either is final. The
    work of a check is the new text and what follows the last break or hard character;
    the text already seen is only copied when the check is sent.
    """

    __slots__ = ("_sanitize", "_seen", "_settled", "_settled_json", "_open", "_line_start", "_exact")

    def __init__(self, sanitize: SlotSanitizer) -> None:
        self._sanitize = sanitize
        self._seen = 0  # characters of the raw text received
        self._settled: list[str] = []  # sanitised whole lines
        self._settled_json = bytearray()  # their JSON-escaped form, without quotes
        self._open = ""  # the raw text not settled yet: the end of the current line
        self._line_start = True  # whether _open starts a line (or follows a hard character)
        # A tokenizer whose added tokens span lines would break the per-line rule:
        # then every update sanitises the whole text again.
        self._exact = not any(_LINE_BREAK.search(t) for t in sanitize.added_tokens)

    def reset(self) -> None:
        """Forget the text: the next :meth:`update` starts a new one."""
        self._seen = 0
        self._settled, self._settled_json, self._open, self._line_start = [], bytearray(), "", True

    def update(self, text: str) -> None:
        """``text``: the whole raw text so far, an extension of the previous one."""
        if len(text) < self._seen or not self._exact:
            self._settled, self._settled_json, self._open, self._line_start = [], bytearray(), text, True
        else:
            self._open += text[self._seen :]
        self._seen = len(text)
        if not self._exact:
            return
        breaks = [i for i in map(self._open.rfind, _NL) if i >= 0]
        if breaks:
            self._settle(max(breaks) + 1)
            self._line_start = True
        # A long line: settle up to its last hard character, which no match spans.
        hard = [i for i in map(self._open.rfind, self._sanitize.hard_chars) if i >= 0]
        if hard:
            self._settle(max(hard) + 1)
            self._line_start = False

    def _settle(self, cut: int) -> None:
        done = self._sanitize(self._open[:cut], line_start=self._line_start)
        self._settled.append(done)
        self._settled_json += json_string(done)[1:-1]
        self._open = self._open[cut:]

    def render(self) -> tuple[str, bytes]:
        """The sanitised slot text, ``sanitize(text)``, and its JSON string literal's
        inside (``json_string(...)[1:-1]``), from the kept lines and escapes."""
        if len(self._settled) > 1:
            self._settled = ["".join(self._settled)]
        tail = self._sanitize(self._open, line_start=self._line_start)
        return "".join((*self._settled, tail)), bytes(self._settled_json) + json_string(tail)[1:-1]


def sanitize_slot_text(text: str) -> str:
    """Neutralise what in ``text`` could break out of a guard's slot (see module doc),
    with the static list of added tokens."""
    return _STATIC(text)


def flexguard_prompt_messages(user_text: str, *, sanitize: Sanitize = sanitize_slot_text) -> tuple[ChatMessage, ...]:
    """FlexGuard prompt moderation: is the user's message unsafe?"""
    return (
        ChatMessage("system", system_prompt("flexguard_prompt")),
        ChatMessage("user", FLEXGUARD_PREAMBLE + "[User]: " + sanitize(user_text)),
    )


def flexguard_response_messages(
    user_text: str, assistant_text: str, *, sanitize: Sanitize = sanitize_slot_text
) -> tuple[ChatMessage, ...]:
    """FlexGuard response moderation: is the assistant's answer unsafe?"""
    content = FLEXGUARD_PREAMBLE + "[User]: " + sanitize(user_text) + "\n" + "[Assistant]: " + sanitize(assistant_text)
    return (
        ChatMessage("system", system_prompt("flexguard_response")),
        ChatMessage("user", content),
    )


def reasoningshield_messages(query: str, thought: str, *, sanitize: Sanitize = sanitize_slot_text) -> tuple[ChatMessage, ...]:
    """ReasoningShield: is the reasoning (or the final answer) to ``query`` unsafe?"""
    content = f"Query: {sanitize(query)}\nThought: {sanitize(thought)}"
    return (
        ChatMessage("system", system_prompt("reasoningshield")),
        ChatMessage("user", content),
    )
