"""Decision records: what one guarded request decided, as one JSON-able document.

A record is built once, when the request has finished, from its report (the pipeline's
own account: nothing is decided again here) and kept as a plain dict, so that the ring,
the audit log and the console's JSON are the same document:

    {"type": "decision", "request_id", "time", "tenant", "model", "api", "upstream",
     "stream", "outcome", "latency_s",
     "policy": {"strictness", "threshold", "reasoning_flag_at", "actions", "categories"},
     "stages": {"prompt": {"checks": [CHECK]}},
     "choices": {"0": {"finish_reason", "reasoning": STAGE, "answer": STAGE}},
     "stop": {"stage", "action", "choice", "at_token", "flagged_check_tokens"},
     "client": {"finish_reasons", "released_tokens", "error"},
     "content": {"prompt", "choices": {"0": {"reasoning", "answer"}}},  (captured only)
     "labels": {"prompt": "right" | "wrong", ...}}
    STAGE = {"checks": [CHECK], "tokens", "aborted_at_token"}
    CHECK = {"at_token", "action", "flagged", "threshold", "risk_score", "categories",
             "latency_s", "error", "verdicts": [{"guard", "risk_score", "categories",
             "judgment", "latency_s", "prompt_tokens", "cached_tokens",
             "completion_tokens", ...}]}

A check's fields are the Decision's and each verdict's own (whatever they carry, for
example a cache flag), less the guard's raw output. Texts are kept only under
``[audit] capture``, after the ``redact`` patterns; never a header, so never a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .._config import AuditConfig, PolicyConfig

if TYPE_CHECKING:
    from ..pipeline._report import Decision, RequestReport, StageReport

__all__ = [
    "Capture",
    "PolicySnapshots",
    "Record",
    "all_checks",
    "build_record",
    "check_entry",
    "flagged_stages",
    "policy_snapshot",
]

Record = dict[str, Any]


class RecordedRequest(Protocol):
    """What a record reads of a request (every API's request has it, and a moderation's)."""

    model: str
    stream: bool
    n: int

    def screened_prompt(self, scope: str) -> str: ...


_STOP_FINISH = "content_filter"


class Capture:
    """Which records keep their texts, and what is cut out of them first."""

    def __init__(self, config: AuditConfig) -> None:
        self.mode = config.capture
        self._redact = [re.compile(p) for p in config.redact]

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def wants(self, record: Record) -> bool:
        return self.mode == "all" or (self.mode == "flagged" and bool(flagged_stages(record)))

    def redact(self, text: str | None) -> str | None:
        if text is None:
            return None
        for pattern in self._redact:
            text = pattern.sub("[REDACTED]", text)
        return text


class PolicySnapshots:
    """``policy_snapshot`` made once per policy object (a tenant's policy serves all of
    its requests; one made per request, for a strictness header, is not kept long)."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[PolicyConfig, dict[str, Any]]] = {}

    def of(self, policy: PolicyConfig) -> dict[str, Any]:
        made = self._made.get(id(policy))
        if made is not None and made[0] is policy:
            return made[1]
        if len(self._made) >= 256:
            self._made.clear()
        snap = policy_snapshot(policy)
        self._made[id(policy)] = (policy, snap)
        return snap


def policy_snapshot(policy: PolicyConfig) -> dict[str, Any]:
    """What the what-if needs to decide the stored verdicts again under other cuts."""
    return {
        "strictness": policy.strictness,
        "threshold": policy.threshold,
        "reasoning_flag_at": policy.reasoning_flag_at,
        "on_guard_error": policy.on_guard_error,
        "enforce": getattr(policy, "enforce", True),
        "actions": {"prompt": policy.prompt.action, "reasoning": policy.reasoning.action, "answer": policy.answer.action},
        "categories": msgspec.to_builtins(policy.categories),
    }


def check_entry(at_token: int | None, d: Decision) -> dict[str, Any]:
    # Every field of the Decision and of its Verdicts (shallow: their values are plain),
    # whatever fields they grow, less the stage (the record's key) and the guard's raw
    # output (its analysis may quote the screened text).
    entry = msgspec.structs.asdict(d)
    del entry["verdicts"], entry["stage"]
    entry["at_token"] = at_token
    entry["risk_score"] = d.risk_score
    entry["categories"] = d.categories
    entry["latency_s"] = round(max((v.latency_s for v in d.verdicts), default=0.0), 4)
    verdicts = []
    for v in d.verdicts:
        doc = msgspec.structs.asdict(v)
        del doc["output"], doc["stage"]
        doc["latency_s"] = round(v.latency_s, 4)
        verdicts.append(doc)
    entry["verdicts"] = verdicts
    return entry


def _stage(report: StageReport, with_tokens: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"checks": [check_entry(at, d) for at, d in report.history]}
    if with_tokens:
        out["tokens"] = report.tokens
        if report.aborted_at_token is not None:
            out["aborted_at_token"] = report.aborted_at_token
            out["flagged_check_tokens"] = report.flagged_check_tokens
    return out


def build_record(
    *,
    request_id: str,
    started: float,
    latency_s: float,
    tenant: str,
    api: str,
    upstream: str,
    request: RecordedRequest,
    policy: PolicyConfig,
    report: RequestReport | None,
    outcome: str,
    error: BaseException | None,
    capture: Capture | None = None,
    policy_doc: dict[str, Any] | None = None,
) -> Record:
    record: Record = {
        "type": "decision",
        "request_id": request_id,
        "time": round(started, 3),
        "tenant": tenant,
        "model": request.model,
        "api": api,
        "upstream": upstream,
        "stream": request.stream,
        "outcome": outcome,
        "latency_s": round(latency_s, 4),
        "policy": policy_doc if policy_doc is not None else policy_snapshot(policy),
        "stages": {},
        "choices": {},
        "client": {},
    }
    client: dict[str, Any] = record["client"]
    if error is not None:
        client["error"] = {
            "status": getattr(error, "status_code", 500),
            "code": getattr(error, "code", None) or "internal_error",
            "message": getattr(error, "message", None) or type(error).__name__,
        }
    if report is None:
        return record
    if report.prompt.history:
        record["stages"]["prompt"] = _stage(report.prompt, with_tokens=False)
    stopped = _stopped_choices(report, error)
    hidden = policy.reasoning.release == "hidden"
    finish_reasons: dict[str, str | None] = {}
    released: dict[str, dict[str, int]] = {}
    for i, c in sorted(report.choices.items()):
        key = str(i)
        record["choices"][key] = {
            "finish_reason": c.finish_reason,
            "reasoning": _stage(c.reasoning),
            "answer": _stage(c.answer),
        }
        finish_reasons[key] = _STOP_FINISH if i in stopped else (c.finish_reason if error is None else None)
        released[key] = {"reasoning": 0 if hidden else c.released_reasoning_tokens, "answer": c.released_answer_tokens}
    if report.stop is not None and report.stop.stage == "prompt" and error is None:
        finish_reasons = {str(i): _STOP_FINISH for i in range(request.n)}  # a rewritten prompt: the refusal
    client["finish_reasons"] = finish_reasons
    client["released_tokens"] = released
    stop = report.stop_entry("at_token")
    if stop is not None:
        record["stop"] = stop
    if capture is not None and capture.wants(record):
        record["content"] = _content(request, policy, report, capture)
    return record


def _stopped_choices(report: RequestReport, error: BaseException | None) -> set[int]:
    if report.stop is None or report.stop.action not in ("block", "rewrite") or error is not None:
        return set()
    if report.stop.stage == "prompt":
        return set(report.choices)
    # One upstream request cannot be stopped for one choice only: every unfinished one ended.
    return {i for i, c in report.choices.items() if c.finish_reason is None or i == report.stop_choice}


def _content(request: RecordedRequest, policy: PolicyConfig, report: RequestReport, capture: Capture) -> dict[str, Any]:
    try:
        prompt: str | None = request.screened_prompt(policy.prompt.screen)
    except Exception:  # a request shape the adapter cannot render so: keep what there is
        prompt = None
    return {
        "prompt": capture.redact(prompt),
        "choices": {
            str(i): {"reasoning": capture.redact(c.reasoning.text), "answer": capture.redact(c.answer.text)}
            for i, c in sorted(report.choices.items())
        },
    }


def all_checks(record: Record) -> Iterable[tuple[str, dict[str, Any]]]:
    """(stage, check) for every check of the record, prompt first, then per choice."""
    for check in record.get("stages", {}).get("prompt", {}).get("checks", ()):
        yield "prompt", check
    for choice in record.get("choices", {}).values():
        for stage in ("reasoning", "answer"):
            for check in choice.get(stage, {}).get("checks", ()):
                yield stage, check


def flagged_stages(record: Record) -> set[str]:
    """The stages where a check flagged or failed, and the stage that stopped it."""
    out = {stage for stage, c in all_checks(record) if c.get("flagged") or c.get("error")}
    stop = record.get("stop")
    if stop:
        out.add(stop["stage"])
    return out
