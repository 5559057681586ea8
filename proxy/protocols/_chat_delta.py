"""What one chat delta says, channel by channel: its reasoning, content and other answer text.

The reasoning arrives in whichever field the upstream names it (``REASONING_FIELDS``);
tool-call and legacy function-call names and arguments, refusals and audio transcripts
are the answer's other text, screened with it.
"""

from __future__ import annotations

from ._base import OutputDelta
from ._wire import REASONING_FIELDS, Delta

__all__ = ["delta_output", "reasoning_of", "tool_call_text"]


def tool_call_text(delta: Delta) -> str:
    """Tool-call and legacy function-call names and arguments, screened as part of the
    answer."""
    if not delta.tool_calls and delta.function_call is None:
        return ""
    parts = []
    functions = [call.function for call in delta.tool_calls or () if call.function is not None]
    if delta.function_call is not None:
        functions.append(delta.function_call)
    for function in functions:
        if function.name:
            parts.append(f"\n[tool call {function.name}] ")
        if function.arguments:
            parts.append(function.arguments)
    return "".join(parts)


def reasoning_of(delta: Delta) -> str:
    """The delta's reasoning, whichever field carries it (a server that fills two of them
    with the same text is read once)."""
    if delta.reasoning_content is None and delta.thinking is None and delta.reasoning_text is None:
        return delta.reasoning or ""  # the common case, without the loop
    texts: list[str] = []
    for name in REASONING_FIELDS:
        text = getattr(delta, name)
        if text and text not in texts:
            texts.append(text)
    return "".join(texts)


def delta_output(index: int, delta: Delta, finish: str | None = None) -> OutputDelta:
    """What one chat delta adds to its choice, before any inline <think> is split."""
    d = delta
    if d.tool_calls is None and d.function_call is None and d.refusal is None and d.audio is None:
        other = ""  # the common case: content or reasoning only
    else:
        other = tool_call_text(d) + (d.refusal or "") + (d.audio.transcript or "" if d.audio is not None else "")
    if d.reasoning_content is None and d.thinking is None and d.reasoning_text is None:
        return OutputDelta(index, d.reasoning or "", d.content or "", other, finish)
    return OutputDelta(index, reasoning_of(d), d.content or "", other, finish)
