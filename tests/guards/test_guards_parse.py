"""Parsing the guards' answers: strict, never "safe" by default."""

import pytest

from guards import VerdictParseError
from guards._parse import judgment_to_risk_score, parse_flexguard, parse_reasoningshield

THINK = "<think>\n" + "".join(f"step{i}...\n" for i in range(1, 9)) + "</think>\n"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (THINK + "SAFE\n5", ((), 5)),
        (THINK + "VIO,ILG\n88", (("VIO", "ILG"), 88)),
        (THINK + "JAIL\n70", (("JAIL",), 70)),
        (THINK + "VIO, ILG , SEX\n91\n", (("VIO", "ILG", "SEX"), 91)),
        (THINK + "VIO,VIO\n50", (("VIO",), 50)),
        (THINK + "\n\nSAFE\n\n12\n", ((), 12)),
        (THINK + "SAFE\nRISK_SCORE: 3", ((), 3)),
        (THINK + "MIS\n150", (("MIS",), 100)),  # clamped, as in the card
        (THINK + "SAFE\n0<|im_end|>", ((), 0)),
        ("SAFE\n7", ((), 7)),  # no think block (e.g. thinking disabled)
        ("step1 ... step8\n</think>\n\nINF\n66", (("INF",), 66)),  # <think> was in the prompt
        ("<think></think>\nDIS\n1\n2", (("DIS",), 2)),  # card: the last number wins
        (THINK + "safe\n5", ((), 5)),  # any case, read as the codes
        (THINK + "Safe\n5", ((), 5)),
        (THINK + "Vio, ilg\n61", (("VIO", "ILG"), 61)),
        (THINK + "jail,JAIL\n70", (("JAIL",), 70)),
    ],
)
def test_flexguard_good(output, expected):
    assert parse_flexguard(output) == expected


@pytest.mark.parametrize(
    "output",
    [
        "",
        THINK,
        THINK + "SAFE",  # no score
        THINK + "SAFE\nlow",  # no number
        THINK + "SAFE 5",  # score on the category line
        THINK + "Category: SAFE\n5",
        THINK + "VIO ILG\n5",
        THINK + "SAFE,VIO\n5",
        THINK + "safe,vio\n5",
        THINK + "HATE\n80",
        THINK + "hate\n80",  # unknown codes stay an error, in any case
        THINK + "Vio, ilgx\n80",
        "<think>\nstep1 ... and the budget ran out",  # unterminated
        "<think>a</think>\n<think>b\nSAFE\n5",
        "I cannot help with that.",
    ],
)
def test_flexguard_bad(output):
    with pytest.raises(VerdictParseError) as info:
        parse_flexguard(output)
    assert info.value.output == output


@pytest.mark.parametrize(
    ("output", "judgment"),
    [
        ('"Analysis": The query is benign.\n"Judgment": 0', 0.0),
        ('"Analysis": borderline.\n"Judgment": 0.5', 0.5),
        ('"Analysis": harmful.\n"Judgment": 1<|eot_id|>', 1.0),
        ("'judgment' 1.0", 1.0),
        ('"Analysis": says "Judgment": 1 is wrong\n"Judgment": 0', 0.0),  # last match
        ("JUDGMENT: 0.50", 0.5),
    ],
)
def test_reasoningshield_good(output, judgment):
    assert parse_reasoningshield(output) == judgment


@pytest.mark.parametrize(
    "output",
    ['"Analysis": fine.', '"Judgment": 2', '"Judgment": 0.7', '"Judgment": safe', ""],
)
def test_reasoningshield_bad(output):
    with pytest.raises(VerdictParseError):
        parse_reasoningshield(output)


def test_judgment_scale():
    assert [judgment_to_risk_score(j) for j in (0, 0.5, 1)] == [0, 50, 100]
