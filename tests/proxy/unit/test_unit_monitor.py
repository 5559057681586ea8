"""proxy.pipeline._monitor.ChannelMonitor: incremental screening of one growing text."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest

from guards import Verdict
from proxy._config import CheckSchedule, ReasoningStage
from proxy.pipeline._monitor import ChannelMonitor, check_positions, next_check_at

VERDICT = (Verdict(guard="flexguard", stage="answer", risk_score=0),)


class ManualCheck:
    """A check function whose calls finish only when the test says so."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.futures: list[asyncio.Future[tuple[Verdict, ...]]] = []

    async def __call__(self, text: str) -> tuple[Verdict, ...]:
        self.texts.append(text)
        future: asyncio.Future[tuple[Verdict, ...]] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return await future

    async def complete(self, monitor: ChannelMonitor) -> None:
        """Let the in-flight check pass and tell the monitor."""
        task = monitor.task
        assert task is not None
        await asyncio.sleep(0)  # let the task start and call us
        self.futures[-1].set_result(VERDICT)
        assert await task == VERDICT
        monitor.passed()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def add_tokens(monitor: ChannelMonitor, *tokens: str) -> None:
    for token in tokens:
        monitor.add(token)


def test_no_check_before_every_tokens_arrived() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=3))
        assert m.maybe_start() is None  # nothing yet
        add_tokens(m, "a", "b")
        assert m.maybe_start() is None
        assert m.checks == 0
        assert m.gate == 0
        m.add("c")
        task = m.maybe_start()
        assert task is not None and m.task is task
        assert m.checks == 1
        await check.complete(m)
        assert check.texts == ["abc"]

    run(test)


def test_empty_text_is_not_a_token() -> None:
    m = ChannelMonitor(ManualCheck(), CheckSchedule(check_every_tokens=2))
    add_tokens(m, "", "a", "")
    assert (m.tokens, m.length) == (1, 1)
    assert m.maybe_start() is None


def test_at_most_one_check_in_flight_and_next_covers_everything_since() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=2))
        add_tokens(m, "ab", "cd")
        first = m.maybe_start()
        assert first is not None
        add_tokens(m, "ef", "gh", "ij", "kl")
        assert m.maybe_start() is None  # one in flight: no second check
        assert m.checks == 1
        assert m.gate == 0  # nothing released while the check runs
        await check.complete(m)
        assert check.texts == ["abcd"]
        assert (m.covered, m.covered_tokens) == (4, 2)
        assert m.gate == 4
        second = m.maybe_start()
        assert second is not None and second is not first
        await check.complete(m)
        assert check.texts == ["abcd", "abcdefghijkl"]
        assert (m.covered, m.covered_tokens) == (12, 6)
        assert m.gate == 12
        assert not m.done  # not finished: more text may come

    run(test)


def test_next_check_waits_for_every_new_tokens_after_covered() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=3))
        add_tokens(m, "a", "b", "c")
        m.maybe_start()
        await check.complete(m)
        add_tokens(m, "d", "e")
        assert m.maybe_start() is None
        m.add("f")
        assert m.maybe_start() is not None
        await check.complete(m)
        assert check.texts == ["abc", "abcdef"]

    run(test)


def test_passed_covers_only_what_the_check_saw() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=1))
        m.add("abc")
        m.maybe_start()
        m.add("def")
        await check.complete(m)
        assert m.gate == 3
        assert m.length == 6
        assert m.text == "abcdef"

    run(test)


def test_finish_with_uncovered_text_makes_a_final_check_due() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=100))
        add_tokens(m, "short", " answer")
        assert m.maybe_start() is None
        m.finish()
        assert not m.done
        assert m.gate == 0
        assert m.maybe_start() is not None
        await check.complete(m)
        assert check.texts == ["short answer"]
        assert m.done
        assert m.gate == math.inf
        assert m.maybe_start() is None

    run(test)


def test_finish_while_a_check_is_in_flight_then_final_check() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=2))
        add_tokens(m, "a", "b")
        m.maybe_start()
        m.add("c")
        m.finish()
        assert not m.done  # a check is still running and "c" is uncovered
        await check.complete(m)
        assert not m.done
        assert m.gate == 2
        assert m.maybe_start() is not None  # due although fewer than `every` new tokens
        await check.complete(m)
        assert check.texts == ["ab", "abc"]
        assert m.done and m.gate == math.inf
        assert m.checks == 2

    run(test)


def test_finish_while_the_in_flight_check_covers_everything() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=2))
        add_tokens(m, "a", "b")
        m.maybe_start()
        m.finish()
        assert not m.done
        await check.complete(m)
        assert m.done and m.gate == math.inf
        assert m.maybe_start() is None
        assert m.checks == 1

    run(test)


def test_finish_after_everything_passed_is_done_without_another_check() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=1))
        m.add("x")
        m.maybe_start()
        await check.complete(m)
        assert not m.done
        m.finish()
        assert m.done and m.gate == math.inf
        assert m.maybe_start() is None
        assert m.checks == 1

    run(test)


def test_unscreened_channel_is_done_at_once() -> None:
    m = ChannelMonitor(None, CheckSchedule(check_every_tokens=1))
    assert m.done and m.gate == math.inf
    add_tokens(m, "a", "b", "c")
    assert m.maybe_start() is None
    m.finish()
    assert m.done and m.checks == 0


def test_empty_channel_finish_is_done_without_a_check() -> None:
    m = ChannelMonitor(ManualCheck(), CheckSchedule(check_every_tokens=4))
    assert not m.done
    m.finish()
    assert m.done and m.gate == math.inf
    assert m.maybe_start() is None
    assert m.checks == 0


def test_flagged_at_reports_the_tokens_the_check_covered() -> None:
    async def test() -> None:
        check = ManualCheck()
        m = ChannelMonitor(check, CheckSchedule(check_every_tokens=2))
        add_tokens(m, "a", "b", "c")
        task = m.maybe_start()
        m.add("d")
        assert m.flagged_at() == 3
        assert m.task is None
        assert m.gate == 0
        task.cancel()

    run(test)


# -- where checks fall ---------------------------------------------------------------------

GROWING = CheckSchedule(schedule="growing", first_check_tokens=8, growth=1.25, max_interval_tokens=256)


def test_fixed_positions_are_every_n_tokens_and_the_end():
    assert check_positions(CheckSchedule(check_every_tokens=32), 100) == [32, 64, 96, 100]
    assert check_positions(CheckSchedule(check_every_tokens=32), 96) == [32, 64, 96]
    assert check_positions(CheckSchedule(check_every_tokens=32), 5) == [5]


def test_growing_positions_start_early_then_grow_by_the_factor():
    # Every 8 tokens while a quarter of the text checked is under 8, then a quarter more.
    assert check_positions(GROWING, 100) == [8, 16, 24, 32, 40, 50, 63, 79, 99, 100]


def test_growing_intervals_are_capped_and_then_constant():
    positions = check_positions(GROWING, 8000)
    gaps = [b - a for a, b in zip(positions, positions[1:], strict=False)][:-1]
    assert max(gaps) == 256
    first_capped = gaps.index(256)
    assert all(g == 256 for g in gaps[first_capped:])
    assert all(a <= b for a, b in zip(gaps, gaps[1:], strict=False))  # never shrinking
    # Below the cap the positions grow geometrically: each at most growth times the last.
    below = positions[4:first_capped]
    assert all(b <= math.ceil(a * 1.25) for a, b in zip(below, below[1:], strict=False))


@pytest.mark.parametrize(("length", "fixed", "most"), [(500, 16, 17), (2000, 63, 24), (8000, 250, 48)])
def test_growing_checks_grow_with_the_log_of_the_length_up_to_the_cap(length, fixed, most):
    assert len(check_positions(CheckSchedule(check_every_tokens=32), length)) == fixed
    assert len(check_positions(GROWING, length)) <= most
    added = len(check_positions(GROWING, 2 * length)) - len(check_positions(GROWING, length))
    if 2 * length <= 1024:  # below the cap (reached at 256 / 0.25): doubling adds log(2) / log(1.25)
        assert added <= math.ceil(math.log(2) / math.log(1.25))
    else:  # past it, one check per max_interval_tokens: linear with a 256-token period
        assert added <= length // 256 + 1


def test_a_slow_check_makes_the_next_interval_grow_from_what_it_covered():
    # The check due at 8 covered 40 tokens (the guard was slow): the next is due a
    # quarter of 40 later, at least 8, not at the schedule's 16.
    assert next_check_at(GROWING, 40) == 50
    assert next_check_at(GROWING, 10_000) == 10_256
    assert next_check_at(CheckSchedule(check_every_tokens=32), 40) == 72


def test_growing_schedule_drives_the_monitor():
    async def main():
        checked = []

        async def check(text):
            checked.append(len(text))
            return ()

        m = ChannelMonitor(check, GROWING)
        for _ in range(60):
            m.add("x")
            task = m.maybe_start()
            if task is not None:
                await task
                m.passed()
        m.finish()
        task = m.maybe_start()
        await task
        m.passed()
        return checked, m

    checked, m = asyncio.run(main())
    assert checked == [8, 16, 24, 32, 40, 50, 60] and m.done


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"growth": 1.0}, "growth"),
        ({"first_check_tokens": 0}, "first_check_tokens"),
        ({"first_check_tokens": 64, "max_interval_tokens": 32}, "max_interval_tokens"),
        ({"check_every_tokens": 0}, "check_every"),
    ],
)
def test_a_schedule_is_validated_when_loaded(fields, message):
    with pytest.raises(ValueError, match=message):
        ReasoningStage(schedule="growing", **fields)
