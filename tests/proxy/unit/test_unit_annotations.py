"""proxy.pipeline._annotations and proxy.protocols._chat_chunks: filter results, headers, and the assembled completion."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from guards import GuardTimeout, Verdict
from proxy._config import PolicyConfig
from proxy.pipeline._policy import decide, decide_error
from proxy.pipeline._report import Decision, StageReport
from proxy.protocols._annotations import decision_headers, filter_results, severity, stage_summary
from proxy.protocols._categories import CATEGORY_KEYS
from proxy.protocols._chat_chunks import (
    CompletionBuilder,
    content_filter_chunks,
    guardproxy_summary,
    prompt_annotation_chunk,
)
from proxy.protocols._ids import ResponseIds
from proxy.protocols._wire import decode_chunk
from proxy.protocols.chat import ChatAdapter


def v(score: int, *categories: str, guard: str = "flexguard", stage: str = "answer") -> Verdict:
    return Verdict(guard=guard, stage=stage, risk_score=score, categories=categories)


def decision(action: str, *verdicts: Verdict, stage: str = "answer", threshold: int = 40) -> Decision:
    return Decision(stage=stage, flagged=action != "pass", action=action, threshold=threshold, verdicts=verdicts)


def report(d: Decision | None, **kw: Any) -> StageReport:
    return StageReport(decision=d, **kw)


# --- filter_results ---


HIT = {"filtered": True, "detected": True, "severity": "high"}


@pytest.mark.parametrize(
    ("code", "keys"),
    [
        ("VIO", ("violence",)),
        ("ILG", ("illicit",)),  # OpenAI's key, as /v1/moderations says it
        ("SEX", ("sexual",)),
        ("INF", ("privacy",)),
        ("DIS", ("hate", "harassment")),
        ("MIS", ("misinformation",)),
        ("JAIL", ("jailbreak",)),
    ],
)
def test_flexguard_codes_map_to_documented_keys(code: str, keys: tuple[str, ...]) -> None:
    assert CATEGORY_KEYS[code] == keys
    results = filter_results({"answer": report(decision("rewrite", v(90, code)))})
    assert set(results) == {*keys, "guardproxy"}
    for key in keys:
        assert results[key] == HIT


def test_category_keys_are_exactly_the_documented_ones() -> None:
    assert set(CATEGORY_KEYS) == {"VIO", "ILG", "SEX", "INF", "DIS", "MIS", "JAIL"}


def test_one_naming_for_annotations_and_moderations() -> None:
    from proxy.protocols.moderations import moderation_result

    for code, keys in CATEGORY_KEYS.items():
        verdict = v(90, code, stage="prompt")
        moderation = moderation_result(verdict, PolicyConfig())["categories"]
        annotated = filter_results({"prompt": report(decision("block", verdict, stage="prompt"))})
        assert {k for k, on in moderation.items() if on} == set(keys) == set(annotated) - {"guardproxy"}


def test_unknown_code_is_lowercased() -> None:
    results = filter_results({"answer": report(decision("block", v(90, "XYZ")))})
    assert results["xyz"] == HIT


@pytest.mark.parametrize(
    ("risk", "expected"),
    [(0, "safe"), (19, "safe"), (20, "low"), (39, "low"), (40, "medium"), (59, "medium"), (60, "high"), (100, "high")],
)
def test_severity_bands_follow_the_strictness_thresholds(risk: int, expected: str) -> None:
    assert severity(risk) == expected
    results = filter_results({"answer": report(decision("flag", v(risk, "VIO")))})
    assert results["violence"]["severity"] == expected


def test_severity_is_the_highest_that_named_the_key() -> None:
    stages = {
        "reasoning": report(decision("pass", v(25, "VIO", stage="reasoning"), stage="reasoning")),
        "answer": report(decision("rewrite", v(45, "VIO", "SEX"), v(70, "SEX"))),
    }
    results = filter_results(stages)
    assert (results["violence"]["severity"], results["sexual"]["severity"]) == ("medium", "high")


@pytest.mark.parametrize(("judgment_risk", "expected"), [(50, "medium"), (100, "high")])
def test_reasoningshield_severity(judgment_risk: int, expected: str) -> None:
    rs = v(judgment_risk, guard="reasoningshield", stage="reasoning")
    results = filter_results({"reasoning": report(decision("rewrite", rs, stage="reasoning", threshold=50))})
    assert results["harmful_reasoning"]["severity"] == expected


@pytest.mark.parametrize("action", ["block", "rewrite", "flag"])
def test_flag_without_a_category_sets_unsafe(action: str) -> None:
    # FlexGuard said SAFE, but its score reached the threshold.
    results = filter_results({"answer": report(decision(action, v(45), threshold=40))})
    assert results["unsafe"] == {"filtered": action != "flag", "detected": True, "severity": "medium"}
    assert set(results) == {"unsafe", "guardproxy"}
    # Below the threshold (not flagged), nothing is set.
    assert set(filter_results({"answer": report(decision("pass", v(39), threshold=40))})) == {"guardproxy"}


def test_a_flag_with_a_category_sets_no_unsafe() -> None:
    results = filter_results({"answer": report(decision("rewrite", v(45, "MIS"), threshold=40))})
    assert set(results) == {"misinformation", "guardproxy"}


@pytest.mark.parametrize(("action", "filtered"), [("block", True), ("rewrite", True), ("flag", False), ("pass", False)])
def test_filtered_only_when_the_decision_stops_content(action: str, filtered: bool) -> None:
    risk = 90 if action != "pass" else 10
    results = filter_results({"answer": report(decision(action, v(risk, "VIO", "ILG")))})
    expected = {"filtered": filtered, "detected": True, "severity": severity(risk)}
    assert results["violence"] == expected
    assert results["illicit"] == expected


def test_filtered_if_any_stage_stopped_the_category() -> None:
    stages = {
        "reasoning": report(decision("flag", v(90, "VIO", stage="reasoning"), stage="reasoning")),
        "answer": report(decision("rewrite", v(90, "VIO", "SEX"))),
    }
    results = filter_results(stages)
    assert results["violence"] == HIT
    assert results["sexual"] == HIT


def test_filtered_stays_true_when_a_later_stage_only_flags() -> None:
    stages = {
        "reasoning": report(decision("rewrite", v(90, "VIO", stage="reasoning"), stage="reasoning")),
        "answer": report(decision("flag", v(90, "VIO"))),
    }
    assert filter_results(stages)["violence"]["filtered"] is True


def test_reasoningshield_risk_is_reported_as_harmful_reasoning() -> None:
    rs = v(100, guard="reasoningshield", stage="reasoning")
    results = filter_results({"reasoning": report(decision("rewrite", rs, stage="reasoning"))})
    assert results["harmful_reasoning"] == HIT
    safe = v(0, guard="reasoningshield", stage="reasoning")
    assert "harmful_reasoning" not in filter_results({"reasoning": report(decision("pass", safe, stage="reasoning"))})


def test_clean_decision_has_only_the_guardproxy_entry() -> None:
    results = filter_results({"answer": report(decision("pass", v(0)))})
    assert set(results) == {"guardproxy"}


def test_guardproxy_entry_per_stage() -> None:
    d = decide("answer", (v(85, "VIO", "ILG"), v(50, "ILG", guard="reasoningshield")), PolicyConfig())
    stages = {
        "reasoning": report(None, checks=2, tokens=40),
        "answer": report(d, checks=3, tokens=70, aborted_at_token=70, flagged_check_tokens=64),
    }
    entry = filter_results(stages)["guardproxy"]
    assert entry == {
        "reasoning": {"checks": 2, "tokens": 40},
        "answer": {
            "checks": 3,
            "action": "rewrite",
            "flagged": True,
            "risk_score": 85,
            "categories": ["VIO", "ILG"],
            "threshold": 40,
            "guards": ["flexguard", "reasoningshield"],
            "tokens": 70,
            "aborted_at_token": 70,
            "flagged_check_tokens": 64,
        },
    }
    json.dumps(filter_results(stages))  # plain JSON types only


def test_stage_summary_reports_guard_error() -> None:
    d = decide_error("prompt", GuardTimeout("x"), PolicyConfig())
    assert stage_summary(report(d, checks=1)) == {
        "checks": 1,
        "action": "fail",
        "flagged": False,
        "risk_score": None,
        "categories": [],
        "threshold": 40,
        "guards": [],
        "guard_error": "GuardTimeout",
    }


def test_stage_report_keeps_the_most_severe_decision() -> None:
    r = StageReport()
    low = decision("pass", v(10))
    high = decision("pass", v(30))
    flagged = decision("rewrite", v(45))
    r.record(low)
    assert r.decision is low
    r.record(high)
    assert r.decision is high
    r.record(flagged)
    assert r.decision is flagged
    r.record(decision("pass", v(39)))
    assert r.decision is flagged  # a later pass never hides a flag


# --- decision_headers ---


def test_decision_headers() -> None:
    stages = {
        "prompt": report(decision("pass", v(5), stage="prompt")),
        "reasoning": report(None),
        "answer": report(decision("rewrite", v(70, "VIO", "ILG"))),
    }
    assert decision_headers(stages) == [
        (b"x-guardproxy-prompt", b"pass"),
        (b"x-guardproxy-prompt-risk-score", b"5"),
        (b"x-guardproxy-prompt-categories", b""),
        (b"x-guardproxy-answer", b"rewrite"),
        (b"x-guardproxy-answer-risk-score", b"70"),
        (b"x-guardproxy-answer-categories", b"VIO,ILG"),
    ]


def test_decision_headers_for_guard_error() -> None:
    d = decide_error("prompt", GuardTimeout("x"), PolicyConfig(on_guard_error="allow"))
    assert decision_headers({"prompt": report(d)}) == [
        (b"x-guardproxy-prompt", b"pass"),
        (b"x-guardproxy-prompt-categories", b""),
        (b"x-guardproxy-prompt-guard-error", b"GuardTimeout"),
    ]


# --- CompletionBuilder ---

IDS = ResponseIds("the-model", id="chatcmpl-1", created=1700000000)


def chunk(*choices: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps(
        {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": list(choices), **extra}
    ).encode()


def build(
    chunks: list[bytes], usage: Any = None, extra: dict[str, Any] | None = None, builder: CompletionBuilder | None = None
) -> dict[str, Any]:
    builder = builder or CompletionBuilder()
    for raw in chunks:
        builder.add(decode_chunk(raw))
    return msgspec.json.decode(builder.build(IDS, usage, extra or {}))


def test_builder_assembles_content_and_finish_reason() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    doc = build(
        [
            chunk({"index": 0, "delta": {"role": "assistant", "content": ""}}, system_fingerprint="fp1"),
            chunk({"index": 0, "delta": {"content": "Hel"}}),
            chunk({"index": 0, "delta": {"content": "lo"}}),
            chunk({"index": 0, "delta": {}, "finish_reason": "stop"}),
            chunk(usage=usage),
        ],
        usage=usage,
        extra={"prompt_filter_results": []},
    )
    assert doc == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "the-model",
        "system_fingerprint": "fp1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": usage,
        "prompt_filter_results": [],
    }


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_builder_keeps_the_reasoning_field_name(field: str) -> None:
    doc = build(
        [
            chunk({"index": 0, "delta": {"role": "assistant", field: "Let me "}}),
            chunk({"index": 0, "delta": {field: "think."}}),
            chunk({"index": 0, "delta": {"content": "42"}, "finish_reason": "stop"}),
        ]
    )
    message = doc["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "42", field: "Let me think."}


def test_builder_assembles_tool_calls_by_index() -> None:
    def call(index: int, **kw: Any) -> bytes:
        return chunk({"index": 0, "delta": {"tool_calls": [{"index": index, **kw}]}})

    doc = build(
        [
            chunk({"index": 0, "delta": {"role": "assistant"}}),
            call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}),
            call(1, id="call_b", type="function", function={"name": "get_time", "arguments": '{"tz"'}),
            call(0, function={"arguments": '{"city": '}),
            call(1, function={"arguments": ': "UTC"}'}),
            call(0, function={"arguments": '"Paris"}'}),
            chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
        ]
    )
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}},
        ],
    }


def test_builder_keeps_content_beside_tool_calls() -> None:
    doc = build(
        [
            chunk({"index": 0, "delta": {"content": "Checking."}}),
            chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}}),
        ]
    )
    assert doc["choices"][0]["message"]["content"] == "Checking."


def test_builder_concatenates_logprobs_content() -> None:
    def lp(token: str) -> dict[str, Any]:
        return {"content": [{"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}]}

    doc = build(
        [
            chunk({"index": 0, "delta": {"content": "a"}, "logprobs": lp("a")}),
            chunk({"index": 0, "delta": {"content": "b"}, "logprobs": lp("b")}),
            chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}),
        ]
    )
    assert doc["choices"][0]["logprobs"] == {"content": lp("a")["content"] + lp("b")["content"]}


def test_builder_without_logprobs_reports_null() -> None:
    doc = build([chunk({"index": 0, "delta": {"content": "a"}, "logprobs": None})])
    assert doc["choices"][0]["logprobs"] is None


def test_builder_multiple_choices_sorted_by_index() -> None:
    doc = build(
        [
            chunk({"index": 1, "delta": {"role": "assistant", "content": "B"}}),
            chunk({"index": 0, "delta": {"role": "assistant", "content": "A"}}),
            chunk({"index": 1, "delta": {"content": "2"}, "finish_reason": "length"}),
            chunk({"index": 0, "delta": {"content": "1"}, "finish_reason": "stop"}),
        ]
    )
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in doc["choices"]] == [
        (0, "A1", "stop"),
        (1, "B2", "length"),
    ]


def test_builder_refusal_delta() -> None:
    doc = build([chunk({"index": 0, "delta": {"refusal": "I "}}), chunk({"index": 0, "delta": {"refusal": "won't."}})])
    assert doc["choices"][0]["message"]["refusal"] == "I won't."


def test_stop_adds_refusal_and_content_filter() -> None:
    builder = CompletionBuilder()
    builder.add(decode_chunk(chunk({"index": 0, "delta": {"role": "assistant", "content": "Sure, here is "}})))
    results = {"violence": {"filtered": True, "detected": True}}
    builder.set_filter_results(0, {"first": True})
    builder.stop(0, "I can't help with that request.", results)
    doc = build([], builder=builder)
    choice = doc["choices"][0]
    assert choice["message"]["content"] == "Sure, here is I can't help with that request."
    assert choice["finish_reason"] == "content_filter"
    assert choice["content_filter_results"] == results


def test_stop_without_message_for_block() -> None:
    builder = CompletionBuilder()
    builder.stop(2, None, {"x": 1})
    doc = build([], builder=builder)
    [choice] = doc["choices"]
    assert choice["index"] == 2
    assert not choice["message"].get("content")  # no refusal text for block
    assert choice["finish_reason"] == "content_filter"
    assert choice["content_filter_results"] == {"x": 1}


def test_set_filter_results_keeps_the_first() -> None:
    builder = CompletionBuilder()
    builder.set_filter_results(0, {"a": 1})
    builder.set_filter_results(0, {"b": 2})
    assert build([], builder=builder)["choices"][0]["content_filter_results"] == {"a": 1}


# --- chunks the proxy writes ---


def test_content_filter_chunks_rewrite_adds_refusal_per_choice() -> None:
    d = decision("rewrite", v(90, "VIO"))
    choices = {1: {"answer": report(d)}, 0: {"answer": report(d)}}
    out = [json.loads(c) for c in content_filter_chunks(IDS, d, choices, "No.")]
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in out] == [
        (0, {"content": "No."}, None),
        (0, {}, "content_filter"),
        (1, {"content": "No."}, None),
        (1, {}, "content_filter"),
    ]
    assert out[1]["choices"][0]["content_filter_results"]["violence"] == HIT
    assert all(c["id"] == "chatcmpl-1" and c["object"] == "chat.completion.chunk" for c in out)


def test_content_filter_chunks_block_has_no_refusal() -> None:
    d = decision("block", v(90, "VIO"))
    out = [json.loads(c) for c in content_filter_chunks(IDS, d, {0: {"answer": report(d)}}, "No.")]
    assert len(out) == 1
    assert out[0]["choices"][0]["finish_reason"] == "content_filter"


def test_prompt_annotation_chunk() -> None:
    d = decision("flag", v(50, "JAIL", stage="prompt"), stage="prompt")
    doc = json.loads(prompt_annotation_chunk(IDS, report(d, checks=1)))
    assert doc["choices"] == []
    [entry] = doc["prompt_filter_results"]
    assert entry["prompt_index"] == 0
    assert entry["content_filter_results"]["jailbreak"] == {"filtered": False, "detected": True, "severity": "medium"}
    assert entry["content_filter_results"]["guardproxy"]["prompt"]["action"] == "flag"


def test_guardproxy_summary_orders_choices() -> None:
    summary = guardproxy_summary(report(None), {1: {"answer": report(None, checks=2)}, 0: {"answer": report(None)}})
    assert summary == {"prompt": {"checks": 0}, "choices": {"0": {"answer": {"checks": 0}}, "1": {"answer": {"checks": 2}}}}
    assert list(summary["choices"]) == ["0", "1"]


def test_response_ids_generated_when_unknown() -> None:
    ids = ResponseIds("m")
    assert ids.id.startswith("guardproxy-") and ids.created > 0  # no API's prefix unless asked
    assert ResponseIds("m").id != ids.id
    assert ResponseIds("m", prefix=ChatAdapter.id_prefix).id.startswith("chatcmpl-guardproxy-")
    assert ResponseIds("m", id="resp_1", created=5).id == "resp_1"


# --- guard usage and the verdict cache ---


def test_a_cache_hit_is_no_guard_call_and_costs_no_tokens() -> None:
    called = msgspec.structs.replace(
        v(5, stage="prompt"), cache="miss", prompt_tokens=700, cached_tokens=600, completion_tokens=9
    )
    hit = msgspec.structs.replace(v(5, stage="prompt"), cache="hit", prompt_tokens=0, cached_tokens=0, completion_tokens=0)
    uncached = msgspec.structs.replace(v(5, stage="prompt"), prompt_tokens=50, completion_tokens=3)
    r = StageReport()
    r.record(decision("pass", called, hit, hit, uncached, stage="prompt"))
    assert stage_summary(r)["guard_usage"] == {
        "calls": 2,
        "prompt_tokens": 150,
        "cached_tokens": 600,
        "output_tokens": 12,
        "cache_hits": 2,
        "cache_misses": 1,
    }
    only_hits = StageReport()
    only_hits.record(decision("pass", hit, stage="prompt"))
    assert stage_summary(only_hits)["guard_usage"] == {
        "calls": 0,
        "prompt_tokens": 0,
        "cached_tokens": 0,
        "output_tokens": 0,
        "cache_hits": 1,
        "cache_misses": 0,
    }
    no_cache = StageReport()
    no_cache.record(decision("pass", uncached, stage="prompt"))
    assert "cache_hits" not in stage_summary(no_cache)["guard_usage"]
