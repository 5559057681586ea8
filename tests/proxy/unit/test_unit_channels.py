"""proxy.pipeline._channels: separating reasoning from answer text, for every upstream format."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from proxy.pipeline._channels import ThinkSplitter, split_delta
from proxy.protocols._chat_delta import tool_call_text
from proxy.protocols._wire import Delta, FunctionDelta, ToolCallDelta, decode_chunk


def run_splitter(pieces: Iterable[str]) -> tuple[str, str]:
    splitter = ThinkSplitter()
    reasoning = answer = ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning += r
        answer += a
    r, a = splitter.flush()
    assert splitter.held == 0
    return reasoning + r, answer + a


# (content, expected reasoning, expected answer)
SAMPLES = [
    ("<think>plan the answer</think>The answer.", "plan the answer", "The answer."),
    ("\n \t<think>r</think>\n\nA", "r", "\n\nA"),
    ("<think>a < b, </th and </thinker</think>ans", "a < b, </th and </thinker", "ans"),
    ("<think>x</think></think>", "x", "</think>"),
    ("<think></think>", "", ""),
    ("<think>\nonly reasoning, never closed </thi", "\nonly reasoning, never closed </thi", ""),
    ("<think>ends with <", "ends with <", ""),
    ("plain answer <think>not reasoning</think>", "", "plain answer <think>not reasoning</think>"),
    ("  leading space, no think", "", "  leading space, no think"),
    ("<thinking>not the tag</thinking>", "", "<thinking>not the tag</thinking>"),
    ("<th is not a tag", "", "<th is not a tag"),
    ("<", "", "<"),
    ("  <th", "", "  <th"),
    ("   ", "", "   "),
    ("", "", ""),
]


@pytest.mark.parametrize(("content", "reasoning", "answer"), SAMPLES)
def test_whole_content_in_one_piece(content: str, reasoning: str, answer: str) -> None:
    assert run_splitter([content]) == (reasoning, answer)


@pytest.mark.parametrize(("content", "reasoning", "answer"), SAMPLES)
def test_content_split_at_every_pair_of_positions(content: str, reasoning: str, answer: str) -> None:
    n = len(content)
    for i in range(n + 1):
        for j in range(i, n + 1):
            got = run_splitter([content[:i], content[i:j], content[j:]])
            assert got == (reasoning, answer), f"split at {i}, {j}"


@pytest.mark.parametrize(("content", "reasoning", "answer"), SAMPLES)
def test_content_one_character_at_a_time(content: str, reasoning: str, answer: str) -> None:
    assert run_splitter(list(content)) == (reasoning, answer)


def test_reasoning_is_released_as_it_arrives() -> None:
    s = ThinkSplitter()
    assert s.feed("<think>") == ("", "")
    assert s.in_reasoning
    assert s.feed("step one ") == ("step one ", "")
    assert s.feed("step two") == ("step two", "")
    assert s.feed("</think>Answer") == ("", "Answer")
    assert not s.in_reasoning
    assert s.feed(" more") == ("", " more")


def test_partial_close_tag_is_held_then_released_as_reasoning() -> None:
    s = ThinkSplitter()
    assert s.feed("<think>abc</th") == ("abc", "")
    assert s.held == len("</th")
    assert s.feed("ose") == ("</those", "")
    assert s.held == 0


def test_lone_angle_bracket_at_start_is_held_until_decided() -> None:
    s = ThinkSplitter()
    assert s.feed("<") == ("", "")
    assert s.held == 1
    assert s.feed("b>bold") == ("", "<b>bold")
    assert not s.in_reasoning


def test_partial_open_tag_that_is_not_a_tag_becomes_answer() -> None:
    s = ThinkSplitter()
    assert s.feed("<th") == ("", "")
    assert s.feed("at") == ("", "<that")


def test_content_without_think_is_all_answer_at_once() -> None:
    s = ThinkSplitter()
    assert s.feed("Hello") == ("", "Hello")
    assert s.held == 0
    # Once the answer started, a later <think> is answer text too.
    assert s.feed("<think>x</think>") == ("", "<think>x</think>")


def test_flush_in_start_state_returns_held_text_as_answer() -> None:
    s = ThinkSplitter()
    s.feed("  <thi")
    assert s.flush() == ("", "  <thi")


def test_flush_in_reasoning_state_returns_held_text_as_reasoning() -> None:
    s = ThinkSplitter()
    assert s.feed("<think>r</thi") == ("r", "")
    assert s.flush() == ("</thi", "")


def test_flush_in_answer_state_has_nothing_held() -> None:
    s = ThinkSplitter()
    s.feed("<think>r</think>a")
    assert s.flush() == ("", "")
    assert s.flush() == ("", "")


# --- split_delta and tool_call_text ---


def test_split_delta_reads_delta_reasoning() -> None:
    assert split_delta(Delta(reasoning="because"), ThinkSplitter()) == ("because", "")


def test_split_delta_reads_delta_reasoning_content() -> None:
    assert split_delta(Delta(reasoning_content="because"), ThinkSplitter()) == ("because", "")


def test_split_delta_with_reasoning_and_content_in_one_delta() -> None:
    assert split_delta(Delta(reasoning="r", content="A"), ThinkSplitter()) == ("r", "A")


def test_split_delta_inline_think_across_deltas() -> None:
    s = ThinkSplitter()
    out = [split_delta(Delta(content=c), s) for c in ["<thi", "nk>why", "</think>", "so"]]
    assert out == [("", ""), ("why", ""), ("", ""), ("", "so")]


def test_split_delta_from_decoded_vllm_chunks() -> None:
    s = ThinkSplitter()
    chunks = [
        b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        b'{"choices":[{"index":0,"delta":{"reasoning":"think"}}]}',
        b'{"choices":[{"index":0,"delta":{"reasoning_content":"ing"}}]}',
        b'{"choices":[{"index":0,"delta":{"content":"Hi"}}]}',
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    ]
    parts = [split_delta(decode_chunk(c).choices[0].delta, s) for c in chunks]
    assert "".join(r for r, _ in parts) == "thinking"
    assert "".join(a for _, a in parts) == "Hi"


def test_split_delta_includes_tool_call_text_in_answer() -> None:
    delta = Delta(
        content="Let me check.",
        tool_calls=[
            ToolCallDelta(index=0, id="c1", type="function", function=FunctionDelta(name="get_weather", arguments='{"city"'))
        ],
    )
    assert split_delta(delta, ThinkSplitter()) == ("", 'Let me check.\n[tool call get_weather] {"city"')


def test_split_delta_of_empty_delta() -> None:
    assert split_delta(Delta(), ThinkSplitter()) == ("", "")


@pytest.mark.parametrize(
    ("tool_calls", "text"),
    [
        (None, ""),
        ([], ""),
        ([ToolCallDelta(index=0, id="c1")], ""),
        ([ToolCallDelta(function=FunctionDelta(name="f"))], "\n[tool call f] "),
        ([ToolCallDelta(function=FunctionDelta(arguments=': "Paris"}'))], ': "Paris"}'),
        ([ToolCallDelta(function=FunctionDelta(name="", arguments=""))], ""),
        (
            [
                ToolCallDelta(index=0, function=FunctionDelta(name="a", arguments="{}")),
                ToolCallDelta(index=1, function=FunctionDelta(name="b", arguments='{"x":1}')),
            ],
            '\n[tool call a] {}\n[tool call b] {"x":1}',
        ),
    ],
)
def test_tool_call_text(tool_calls: list[ToolCallDelta] | None, text: str) -> None:
    assert tool_call_text(Delta(tool_calls=tool_calls)) == text
