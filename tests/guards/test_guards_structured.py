"""The structured-output regexes accept what the parsers accept, and nothing looser."""

import re

import pytest

from guards._parse import parse_flexguard, parse_reasoningshield
from guards._structured import flexguard_regex, reasoningshield_regex


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nok\n</think>\nSAFE\n5",
        "<think></think>\nVIO,ILG,JAIL\n100",
        # Qwen3's own "\n\n" after </think> (one token), and a space after a comma.
        "<think>\nok\n</think>\n\nSAFE\n5",
        "<think>\nok\n</think>\n\nVIO, ILG,JAIL\n88",
    ],
)
def test_flexguard_regex_matches_parsable(text):
    assert re.fullmatch(flexguard_regex(), text)
    parse_flexguard(text)


@pytest.mark.parametrize(
    "text",
    [
        "<think></think>\nSAFE\n101",
        "<think></think>\nHATE\n5",
        "SAFE\n5",
        "<think></think>\n\n\nSAFE\n5",
        "<think></think>\nVIO,  ILG\n5",
        "<think></think>\nVIO ,ILG\n5",
    ],
)
def test_flexguard_regex_rejects(text):
    assert not re.fullmatch(flexguard_regex(), text)


def test_thinking_cap():
    capped = flexguard_regex(max_thinking_tokens=2)  # 8 characters
    assert re.fullmatch(capped, "<think>12345678</think>\nSAFE\n1")
    assert not re.fullmatch(capped, "<think>123456789</think>\nSAFE\n1")


@pytest.mark.parametrize("j", ["0", "0.5", "1"])
def test_reasoningshield_regex(j):
    text = f'"Analysis": fine\n"Judgment": {j}'
    assert re.fullmatch(reasoningshield_regex(), text)
    parse_reasoningshield(text)
    assert not re.fullmatch(reasoningshield_regex(), text + "5")
