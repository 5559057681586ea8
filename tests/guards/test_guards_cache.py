"""The verdict cache: LRU bound, time to live, errors never kept, one call per input in flight."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from guards import (
    FlexGuard,
    Generation,
    GuardBackendError,
    GuardModelConfig,
    ReasoningShield,
    ScriptedBackend,
    Verdict,
    VerdictCache,
)

CFG = GuardModelConfig(model="m", timeout_s=2.0)
SAFE = "<think>x</think>\nSAFE\n5"


def run(coro):
    return asyncio.run(coro)


def _verdict(score: int) -> Verdict:
    return Verdict(guard="flexguard", stage="prompt", risk_score=score)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _flexguard(cache: VerdictCache | None) -> tuple[FlexGuard, ScriptedBackend]:
    backend = ScriptedBackend(lambda p: Generation(text=SAFE, prompt_tokens=700, cached_tokens=600, completion_tokens=9))
    return FlexGuard(backend, CFG, cache), backend


def test_the_least_recently_used_entry_leaves_first():
    cache = VerdictCache(2, 60)
    a, b, c = (bytes([i]) * 32 for i in range(3))
    cache.put(a, _verdict(1))
    cache.put(b, _verdict(2))
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(c, _verdict(3))
    assert len(cache) == 2
    assert cache.get(b) is None
    assert cache.get(a).risk_score == 1 and cache.get(c).risk_score == 3


def test_an_entry_expires_after_its_time_to_live_from_when_it_was_stored():
    clock = Clock()
    cache = VerdictCache(10, 600, clock=clock)
    key = b"k" * 32
    cache.put(key, _verdict(1))
    clock.now += 599.9
    assert cache.get(key) is not None  # a hit does not extend its life
    clock.now += 0.1
    assert cache.get(key) is None and len(cache) == 0


def test_expiry_through_a_guard_calls_the_guard_again():
    clock = Clock()
    flex, backend = _flexguard(VerdictCache(10, 5, clock=clock))
    run(flex.check_prompt("hello"))
    clock.now += 4
    assert run(flex.check_prompt("hello")).cache == "hit"
    clock.now += 1
    assert run(flex.check_prompt("hello")).cache == "miss"
    assert len(backend.prompts) == 2


@pytest.mark.parametrize(("entries", "ttl"), [(0, 60), (-1, 60), (1, 0), (1, -5)])
def test_a_cache_without_room_or_life_is_refused(entries, ttl):
    with pytest.raises(ValueError):
        VerdictCache(entries, ttl)


def test_a_hit_is_marked_and_costs_no_tokens():
    cache = VerdictCache(100, 60)
    flex, backend = _flexguard(cache)
    first = run(flex.check_prompt("hello"))
    second = run(flex.check_prompt("hello"))
    assert len(backend.prompts) == 1
    assert (first.cache, first.cached, first.prompt_tokens, first.completion_tokens) == ("miss", False, 700, 9)
    assert (second.cache, second.cached, second.prompt_tokens, second.cached_tokens, second.completion_tokens) == (
        "hit",
        True,
        0,
        0,
        0,
    )
    assert (second.risk_score, second.categories, second.output) == (first.risk_score, first.categories, first.output)
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_key_is_the_exact_guard_input():
    cache = VerdictCache(100, 60)
    flex, backend = _flexguard(cache)
    run(flex.check_prompt("hello"))
    run(flex.check_prompt("hello "))  # another text
    run(flex.check_response("hello", "hi"))  # response mode
    run(flex.check_response("hello!", "hi"))  # the same answer to another question
    other_model = FlexGuard(backend, GuardModelConfig(model="m2", timeout_s=2.0), cache)
    run(other_model.check_prompt("hello"))
    capped = FlexGuard(backend, GuardModelConfig(model="m", timeout_s=2.0, max_tokens=64), cache)
    run(capped.check_prompt("hello"))  # other sampling, other input
    assert len(backend.prompts) == 6 and cache.hits == 0
    run(flex.check_response("hello", "hi"))
    assert cache.hits == 1


def test_a_reasoningshield_verdict_serves_the_same_input_at_another_stage():
    backend = ScriptedBackend(lambda p: '"Analysis": x\n"Judgment": 0.5')
    shield = ReasoningShield(backend, CFG, VerdictCache(10, 60))
    reasoning = run(shield.check_reasoning("q", "the text"))
    answer = run(shield.check_answer("q", "the text"))
    assert len(backend.prompts) == 1
    assert (reasoning.stage, answer.stage, answer.judgment, answer.cache) == ("reasoning", "answer", 0.5, "hit")


def test_errors_are_never_kept():
    answers = iter([RuntimeError("down"), "<think>x</think>\nVIO\n90"])

    def script(prompt):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    backend = ScriptedBackend(script)
    flex = FlexGuard(backend, CFG, VerdictCache(10, 60))
    with pytest.raises(GuardBackendError):
        run(flex.check_prompt("x"))
    verdict = run(flex.check_prompt("x"))  # asks the guard again
    assert (verdict.risk_score, verdict.cache) == (90, "miss")
    assert len(backend.prompts) == 2
    assert run(flex.check_prompt("x")).cache == "hit"


def test_an_unparseable_answer_is_not_kept():
    backend = ScriptedBackend(lambda p: "I would rather not say.")
    cache = VerdictCache(10, 60)
    flex = FlexGuard(backend, CFG, cache)
    for _ in range(2):
        with pytest.raises(Exception, match="flexguard"):
            run(flex.check_prompt("x"))
    assert len(backend.prompts) == 2 and len(cache) == 0


def test_identical_checks_in_flight_share_one_call():
    async def slow(prompt):
        await asyncio.sleep(0.05)
        return SAFE

    backend = ScriptedBackend(slow)
    cache = VerdictCache(10, 60)
    flex = FlexGuard(backend, CFG, cache)

    async def main():
        return await asyncio.gather(*(flex.check_prompt("same system prompt") for _ in range(50)))

    verdicts = run(main())
    assert len(backend.prompts) == 1
    assert sorted(v.cache for v in verdicts) == ["hit"] * 49 + ["miss"]
    assert all(v.risk_score == 5 for v in verdicts)
    assert max(v.latency_s for v in verdicts if v.cached) > 0.01  # they waited for the call
    assert (cache.hits, cache.misses) == (49, 1)


def test_checks_waiting_on_a_failed_call_get_its_error_and_nothing_is_kept():
    async def failing(prompt):
        await asyncio.sleep(0.05)
        raise RuntimeError("guard down")

    backend = ScriptedBackend(failing)
    cache = VerdictCache(10, 60)
    flex = FlexGuard(backend, CFG, cache)

    async def main():
        return await asyncio.gather(*(flex.check_prompt("x") for _ in range(5)), return_exceptions=True)

    results = run(main())
    assert len(backend.prompts) == 1
    assert all(isinstance(r, GuardBackendError) for r in results)
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)


def test_a_cancelled_caller_hands_the_call_to_a_waiting_check():
    started = []

    async def slow(prompt):
        started.append(1)
        await asyncio.sleep(0.05)
        return SAFE

    backend = ScriptedBackend(slow)
    flex = FlexGuard(backend, CFG, VerdictCache(10, 60))

    async def main():
        first = asyncio.create_task(flex.check_prompt("x"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(flex.check_prompt("x"))
        await asyncio.sleep(0.01)
        first.cancel()
        verdict = await second
        with pytest.raises(asyncio.CancelledError):
            await first
        return verdict

    verdict = run(main())
    assert (verdict.risk_score, verdict.cache) == (5, "miss")
    assert len(backend.prompts) == 2  # the cancelled call's, then the waiting check's own


def test_a_cancelled_waiting_check_leaves_the_call_running():
    async def slow(prompt):
        await asyncio.sleep(0.05)
        return SAFE

    backend = ScriptedBackend(slow)
    flex = FlexGuard(backend, CFG, VerdictCache(10, 60))

    async def main():
        first = asyncio.create_task(flex.check_prompt("x"))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(flex.check_prompt("x"))
        await asyncio.sleep(0.01)
        waiting.cancel()
        return await first

    assert run(main()).cache == "miss"
    assert len(backend.prompts) == 1


def test_growing_texts_always_call_the_guard():
    cache = VerdictCache(10, 60)
    flex, backend = _flexguard(cache)
    checks = flex.answer_checks("question")
    for _ in range(2):
        verdict = run(checks.check("the same answer so far"))
        assert verdict.cache is None
    shield_backend = ScriptedBackend(lambda p: '"Analysis": x\n"Judgment": 0')
    growing = ReasoningShield(shield_backend, CFG, cache).growing_checks("q")
    run(growing.check("t"))
    run(growing.check("t"))
    assert len(backend.prompts) == 2 and len(shield_backend.prompts) == 2 and len(cache) == 0


def test_without_a_cache_every_check_calls_the_guard():
    flex, backend = _flexguard(None)
    verdicts = [run(flex.check_prompt("hello")) for _ in range(2)]
    assert len(backend.prompts) == 2 and [v.cache for v in verdicts] == [None, None]


def test_only_guard_calls_take_a_slot_from_admit():
    """The slot that bounds a guard's calls in flight is taken around the backend call:
    a hit, or a check waiting on an identical call, neither waits for one nor holds one."""
    held = []

    @contextlib.asynccontextmanager
    async def admit():
        held.append(1)
        yield

    async def slow(prompt):
        await asyncio.sleep(0.05)
        return SAFE

    flex = FlexGuard(ScriptedBackend(slow), CFG, VerdictCache(10, 60))
    flex.admit = admit

    async def main():
        await asyncio.gather(*(flex.check_prompt("shared") for _ in range(10)))
        await flex.check_prompt("shared")
        await flex.check_prompt("new")

    run(main())
    assert len(held) == 2
