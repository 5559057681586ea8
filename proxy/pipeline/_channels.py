"""Where the reasoning ends and the answer begins, for every upstream format.

Upstreams deliver reasoning three ways: ``delta.reasoning`` (vLLM since late 2025),
``delta.reasoning_content`` (earlier vLLM, DeepSeek), or inline as
``<think>…</think>`` at the start of ``delta.content``, where a tag may be split
across chunks. ``split_delta`` turns one delta into (reasoning, answer) text.
"""

from __future__ import annotations

from ..protocols._base import OutputDelta
from ..protocols._wire import Delta

__all__ = ["ThinkSplitter", "delta_output", "split_delta", "split_output", "tool_call_text"]

_OPEN = "<think>"
_CLOSE = "</think>"


class ThinkSplitter:
    """Splits inline ``<think>…</think>`` content, one choice's stream at a time.

    Reasoning is recognised only when the content opens with ``<think>`` (leading
    whitespace allowed); otherwise all content is answer. Text that may be the start
    of a tag is held back until the next piece decides it.
    """

    __slots__ = ("_state", "_held")

    def __init__(self) -> None:
        self._state = "start"  # start -> reasoning -> answer, or start -> answer
        self._held = ""

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning"

    @property
    def held(self) -> int:
        """Characters held back, pending the next piece."""
        return len(self._held)

    def feed(self, text: str) -> tuple[str, str]:
        text = self._held + text
        self._held = ""
        reasoning = answer = ""
        if self._state == "start":
            stripped = text.lstrip()
            if stripped.startswith(_OPEN):
                self._state = "reasoning"
                text = stripped[len(_OPEN) :]
            elif _OPEN.startswith(stripped):  # whitespace or a partial "<think>"
                self._held = text
                return "", ""
            else:
                self._state = "answer"
        if self._state == "reasoning":
            end = text.find(_CLOSE)
            if end < 0:
                keep = _partial_suffix(text, _CLOSE)
                reasoning, self._held = text[: len(text) - keep], text[len(text) - keep :]
                return reasoning, ""
            reasoning, text = text[:end], text[end + len(_CLOSE) :]
            self._state = "answer"
        answer = text
        return reasoning, answer

    def flush(self) -> tuple[str, str]:
        """The stream ended: held text is what it seemed to be."""
        held, self._held = self._held, ""
        if self._state == "reasoning":
            return held, ""
        return "", held


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def tool_call_text(delta: Delta) -> str:
    """Tool-call names and arguments, screened as part of the answer."""
    if not delta.tool_calls:
        return ""
    parts = []
    for call in delta.tool_calls:
        if call.function is not None:
            if call.function.name:
                parts.append(f"\n[tool call {call.function.name}] ")
            if call.function.arguments:
                parts.append(call.function.arguments)
    return "".join(parts)


def delta_output(index: int, delta: Delta, finish: str | None = None) -> OutputDelta:
    """What one chat delta adds to its choice, before any inline <think> is split."""
    return OutputDelta(index, delta.reasoning or delta.reasoning_content or "", delta.content or "", tool_call_text(delta), finish)


def split_output(out: OutputDelta, splitter: ThinkSplitter) -> tuple[str, str]:
    """(reasoning, answer) text one event adds to one output, whatever its API."""
    reasoning, answer = out.reasoning, ""
    if out.content:
        r, answer = splitter.feed(out.content)
        reasoning += r
    return reasoning, answer + out.tools


def split_delta(delta: Delta, splitter: ThinkSplitter) -> tuple[str, str]:
    """(reasoning, answer) text carried by one chat delta."""
    return split_output(delta_output(0, delta), splitter)
