"""``ending``: the one place where a stopping decision becomes how the request ends."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from proxy._config import PolicyConfig
from proxy.exceptions import ContentPolicyViolation, GuardUnavailable
from proxy.pipeline._relay import Exchange, ending, request_outcome
from proxy.pipeline._report import Decision, RequestReport


def _exchange(stream: bool) -> Exchange:
    none: Any = None  # the parts ending never reads
    return Exchange(request=SimpleNamespace(stream=stream), policy=PolicyConfig(), guards=none, upstream=none, adapter=none)


def _decision(stage: str, action: str) -> Decision:
    return Decision(
        stage=stage, flagged=action != "fail", action=action, threshold=40, error="GuardError" if action == "fail" else None
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("stage", ["prompt", "reasoning", "answer"])
def test_a_failed_check_ends_as_an_outage(stream, stage):
    stopped = ending(_exchange(stream), _decision(stage, "fail"), (0,))
    assert stopped.how == "fail" and isinstance(stopped.error, GuardUnavailable) and stopped.refusal is None


@pytest.mark.parametrize(
    ("stage", "stream", "how"),
    [
        ("prompt", True, "refuse"),  # nothing was generated: an HTTP 400 for streaming clients too
        ("prompt", False, "refuse"),
        ("reasoning", False, "refuse"),  # a JSON answer has no content_filter stream
        ("answer", False, "refuse"),
        ("reasoning", True, "content_filter"),
        ("answer", True, "content_filter"),
    ],
)
def test_a_block_refuses_where_no_content_filter_ending_can_carry_it(stage, stream, how):
    stopped = ending(_exchange(stream), _decision(stage, "block"), (0, 1), {1: "</think>"})
    assert stopped.how == how and stopped.refusal is None
    if how == "refuse":
        assert isinstance(stopped.error, ContentPolicyViolation)
    else:
        assert stopped.error is None and stopped.choices == (0, 1) and stopped.closing == {1: "</think>"}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("stage", ["prompt", "reasoning", "answer"])
def test_a_rewrite_ends_the_choices_with_the_refusal(stream, stage):
    ex = _exchange(stream)
    stopped = ending(ex, _decision(stage, "rewrite"), (0,))
    assert stopped.how == "content_filter" and stopped.error is None and stopped.refusal == ex.policy.refusal_message


def test_the_one_outcome_function_names_disconnects_and_shutdowns_first():
    report = RequestReport(stop=_decision("answer", "rewrite"))
    assert request_outcome(report, None) == "rewritten"
    assert request_outcome(report, None, disconnected=True) == "client_disconnected"
    assert request_outcome(report, None, disconnected=True, shutdown=True) == "shutdown"
