"""FlexGuard and ReasoningShield checks through ScriptedBackend."""

import asyncio

import pytest

from guards import (
    FlexGuard,
    Generation,
    GuardBackendError,
    GuardModelConfig,
    GuardTimeout,
    ReasoningShield,
    ScriptedBackend,
    VerdictParseError,
    VerdictTruncated,
)

CFG = GuardModelConfig(model="m", timeout_s=0.3)


def run(coro):
    return asyncio.run(coro)


def test_flexguard_prompt_verdict():
    backend = ScriptedBackend(lambda p: Generation(text="<think>x</think>\nVIO,ILG\n88", prompt_tokens=700, cached_tokens=650))
    v = run(FlexGuard(backend, CFG).check_prompt("how to make a bomb"))
    assert (v.guard, v.stage, v.risk_score, v.categories) == (
        "flexguard",
        "prompt",
        88,
        ("VIO", "ILG"),
    )
    assert (v.prompt_tokens, v.cached_tokens) == (700, 650)
    assert v.output.endswith("88") and v.latency_s >= 0 and not v.safe_label
    assert backend.prompts[0].messages[1].content.endswith("[User]: how to make a bomb")


def test_flexguard_response_verdict_async_script():
    async def script(prompt):
        await asyncio.sleep(0)
        return "<think>x</think>\nSAFE\n3"

    backend = ScriptedBackend(script)
    v = run(FlexGuard(backend, CFG).check_response("hi", "hello"))
    assert (v.stage, v.risk_score, v.categories, v.safe_label) == ("answer", 3, (), True)
    assert "[Assistant]: hello" in backend.prompts[0].messages[1].content


@pytest.mark.parametrize(("text", "judgment", "score"), [("0", 0.0, 0), ("0.5", 0.5, 50), ("1", 1.0, 100)])
def test_reasoningshield_verdict_mapping(text, judgment, score):
    backend = ScriptedBackend(lambda p: f'"Analysis": ...\n"Judgment": {text}')
    rs = ReasoningShield(backend, CFG)
    v = run(rs.check_reasoning("q", "thinking so far"))
    assert (v.guard, v.stage, v.judgment, v.risk_score) == (
        "reasoningshield",
        "reasoning",
        judgment,
        score,
    )
    assert v.safe_label is (judgment == 0)
    a = run(rs.check_answer("q", "final answer"))
    assert a.stage == "answer" and a.risk_score == score
    assert backend.prompts[1].messages[1].content == "Query: q\nThought: final answer"


def test_timeout_becomes_guard_timeout():
    async def slow(prompt):
        await asyncio.sleep(5)
        return "SAFE\n1"

    with pytest.raises(GuardTimeout):
        run(FlexGuard(ScriptedBackend(slow), CFG).check_prompt("x"))
    with pytest.raises(GuardTimeout):
        run(ReasoningShield(ScriptedBackend(slow), CFG).check_reasoning("q", "t"))


def test_backend_bug_becomes_backend_error():
    def broken(prompt):
        raise RuntimeError("boom")

    with pytest.raises(GuardBackendError) as info:
        run(FlexGuard(ScriptedBackend(broken), CFG).check_prompt("x"))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unparsable_output_is_an_error_not_safe():
    with pytest.raises(VerdictParseError):
        run(FlexGuard(ScriptedBackend(lambda p: "<think>never ends"), CFG).check_prompt("x"))
    with pytest.raises(VerdictParseError):
        run(ReasoningShield(ScriptedBackend(lambda p: '"Analysis": hm'), CFG).check_reasoning("q", "t"))


@pytest.mark.parametrize(
    ("text", "check"),
    [
        # Parsable, yet cut: the score may have been 15, or 0.5 a 0 not yet finished.
        ("<think>x</think>\nSAFE\n1", lambda g: FlexGuard(g, CFG).check_prompt("x")),
        ("<think>x</think>\nVIO,ILG\n8", lambda g: FlexGuard(g, CFG).check_response("q", "a")),
        ('"Analysis": x\n"Judgment": 0', lambda g: ReasoningShield(g, CFG).check_reasoning("q", "t")),
    ],
)
def test_generation_cut_at_max_tokens_is_a_guard_error(text, check):
    cut = ScriptedBackend(lambda p: Generation(text=text, finish_reason="length"))
    with pytest.raises(VerdictTruncated) as info:
        run(check(cut))
    assert isinstance(info.value, VerdictParseError) and info.value.output == text
    assert run(check(ScriptedBackend(lambda p: Generation(text=text, finish_reason="stop"))))


def test_structured_output_regex_passed():
    cfg = GuardModelConfig(model="m", structured_output=True)
    backend = ScriptedBackend(lambda p: '"Analysis": x\n"Judgment": 0')
    run(ReasoningShield(backend, cfg).check_reasoning("q", "t"))
    assert backend.prompts[0].regex == '"Analysis": [\\s\\S]*\\n"Judgment": (?:0|0\\.5|1)'


def test_scripted_backend_lifecycle():
    backend = ScriptedBackend(lambda p: "")
    assert run(backend.ready())
    run(backend.aclose())
    assert not run(backend.ready())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_thinking_tokens": 100}, "max_thinking_tokens"),
        ({"max_thinking_tokens": 0, "structured_output": True}, "max_thinking_tokens"),
        ({"max_analysis_tokens": 64}, "max_analysis_tokens"),
        ({"max_analysis_tokens": 0, "structured_output": True}, "max_analysis_tokens"),
        ({"backend": "transformers", "structured_output": True}, "structured_output"),
        ({"max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_config_rejects_settings_that_would_be_ignored(kwargs, key):
    with pytest.raises(ValueError, match=key):
        GuardModelConfig(model="m", **kwargs)


def test_output_caps_bound_each_guard_s_costliest_output():
    """FlexGuard's thinking and ReasoningShield's analysis each have their cap (in the
    structured-output grammar, 4 characters a token); a capped answer still parses."""
    cfg = GuardModelConfig(model="m", structured_output=True, max_thinking_tokens=3, max_analysis_tokens=5)
    flex = FlexGuard(ScriptedBackend(lambda p: "<think>abc</think>\nSAFE\n3"), cfg)
    shield = ReasoningShield(ScriptedBackend(lambda p: '"Analysis": short\n"Judgment": 0.5'), cfg)
    assert flex.prompt_check("x").regex.startswith("<think>[\\s\\S]{0,12}</think>")
    assert shield.reasoning_check("q", "t").regex == '"Analysis": [\\s\\S]{0,20}\\n"Judgment": (?:0|0\\.5|1)'
    assert shield.growing_checks("q").request("t").regex == shield.reasoning_check("q", "t").regex
    assert run(flex.check_prompt("x")).risk_score == 3
    assert run(shield.check_reasoning("q", "t")).judgment == 0.5
    # ReasoningShield read max_thinking_tokens before max_analysis_tokens existed.
    old = GuardModelConfig(model="m", structured_output=True, max_thinking_tokens=5)
    assert (
        ReasoningShield(ScriptedBackend(lambda p: ""), old)
        .reasoning_check("q", "t")
        .regex.startswith('"Analysis": [\\s\\S]{0,20}')
    )
