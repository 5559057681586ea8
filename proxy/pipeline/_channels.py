"""Where the reasoning ends and the answer begins, for every upstream format.

Upstreams deliver reasoning in a field of its own (``delta.reasoning`` from vLLM since
late 2025, ``delta.reasoning_content`` from earlier vLLM and DeepSeek, and the other
names in ``REASONING_FIELDS``), or inline as ``<think>…</think>`` at the start of
``delta.content``, where a tag may be split across chunks. Everything else a delta says
in words is the answer's: content, refusal, tool-call and legacy function-call names and
arguments, audio transcripts (the adapters read them into an ``OutputDelta``).
``split_output`` turns one output's delta into (reasoning, answer).
"""

from __future__ import annotations

from ..protocols._base import OutputDelta
from ..protocols._chat_delta import delta_output
from ..protocols._wire import Delta

__all__ = ["ThinkSplitter", "partial_suffix", "split_delta", "split_output"]

_OPEN = "<think>"
_CLOSE = "</think>"


class ThinkSplitter:
    """Splits inline ``<think>…</think>`` content, one choice's stream at a time.

    Reasoning is recognised only when the content opens with ``<think>`` (leading
    whitespace allowed); otherwise all content is answer. Text that may be the start
    of a tag is held back until the next piece decides it.
    """

    __slots__ = ("_state", "_held", "inline")

    CLOSE = _CLOSE  # what a stop sends first where the client saw the block open

    def __init__(self, *, in_reasoning: bool = False) -> None:
        # start -> reasoning -> answer, or start -> answer; a continuation of a steered
        # generation starts inside the reasoning, its opening tag already written.
        self._state = "reasoning" if in_reasoning else "start"
        self._held = ""
        self.inline = False  # the content opened with <think>: its reasoning is inline

    def resume_reasoning(self) -> None:
        """A steered generation goes on inside the reasoning: inline reasoning is open
        again; otherwise the content has not started."""
        self._state = "reasoning" if self.inline else "start"
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
                self.inline = True
                text = stripped[len(_OPEN) :]
            elif _OPEN.startswith(stripped):  # whitespace or a partial "<think>"
                self._held = text
                return "", ""
            else:
                self._state = "answer"
        if self._state == "reasoning":
            end = text.find(_CLOSE)
            if end < 0:
                keep = partial_suffix(text, _CLOSE)
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


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


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
