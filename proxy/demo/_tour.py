"""The tour: five requests through the OpenAI SDK, each verdict shown as it happens.

1. a benign question passes, with its reasoning and answer (streamed);
2. a harmful prompt is blocked (HTTP 400 ``content_policy_violation``);
3. unsafe reasoning is cut mid-stream: the reasoning token at which it was cut, and the
   upstream's own counters showing that it stopped generating (asked again, up to three
   times, when the tiny upstream outran the checks and finished first);
4. an unsafe answer is rewritten (a JSON answer, not streamed);
5. unsafe reasoning is steered: the prompt of scene 3 under a key whose policy steers.
   The reasoning is rolled back to its last passing check, the steering text goes on from
   there, and the upstream closes its reasoning and refuses (asked again, up to three
   times, when the tiny ReasoningShield misjudged a prefix or nothing was kept).

Each scene checks its expected outcome; the tour reports which did not have it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ._models import (
    ANSWER_MARKER,
    HARMFUL_PROMPT_WORD,
    REASONING_MARKER,
    UNSAFE_ANSWER_WORD,
    UNSAFE_REASONING_WORD,
    UPSTREAM_NAME,
)
from ._stack import STEER_KEY, STEER_TEXT

__all__ = ["SceneResult", "Tour", "ASKED_TOKENS"]

# Scene 3 asks for this many tokens, and `min_tokens` (a vLLM sampling parameter the
# proxy passes on) keeps the tiny model writing past its ~250-token trace: without it the
# upstream would finish before there was anything left to save.
ASKED_TOKENS = 4000
_REASONING_ATTEMPTS = 3
_LABEL = 11


@dataclass(frozen=True, slots=True)
class SceneResult:
    title: str
    ok: bool
    outcome: str


class _Printer:
    """Writes a streamed reply as it arrives, reasoning and answer each on a labelled line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.channel: str | None = None

    def line(self, label: str, text: str) -> None:
        self.end()
        self.out.write(f"     {label:<{_LABEL}}{text}\n")
        self.out.flush()

    def write(self, channel: str, text: str) -> None:
        if channel != self.channel:
            text = text.lstrip()  # the model's leading newlines, before the label
            if not text:
                return
            self.end()
            self.out.write(f"     {channel:<{_LABEL}}")
            self.channel = channel
        self.out.write(text.replace("\n", " "))
        self.out.flush()

    def end(self) -> None:
        if self.channel is not None:
            self.out.write("\n")
            self.channel = None


def _counter(metrics: str, name: str) -> float:
    """The sum of a Prometheus counter's samples, whatever their labels."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+(\S+)", metrics, re.M):
        total += float(m.group(1))
    return total


def _extra(obj: Any) -> dict[str, Any]:
    return getattr(obj, "model_extra", None) or {}


def _stages(choice: Any) -> dict[str, Any]:
    stages: dict[str, Any] = _extra(choice).get("content_filter_results", {}).get("guardproxy", {})
    return stages


def _risk(stage: dict[str, Any]) -> str:
    cats = ", ".join(stage.get("categories") or []) or "no category"
    return f"{cats}, risk {stage.get('risk_score')}"


class Tour:
    """Runs the scenes against a proxy; ``upstream_metrics`` reads the upstream's /metrics."""

    def __init__(self, client: Any, upstream_metrics: Callable[[], str], out: TextIO) -> None:
        self.client = client
        self.upstream_metrics = upstream_metrics
        self.out = out
        self.printer = _Printer(out)

    def run(self) -> list[SceneResult]:
        scenes = [
            ("a benign question passes, with its reasoning and answer", self.benign),
            ("a harmful prompt is blocked", self.harmful_prompt),
            ("unsafe reasoning is cut mid-stream", self.unsafe_reasoning),
            ("an unsafe answer is rewritten", self.unsafe_answer),
            ("unsafe reasoning is steered", self.steered_reasoning),
        ]
        results = []
        for n, (title, scene) in enumerate(scenes, 1):
            self.out.write(f"\n{n}/{len(scenes)}  {title[0].upper()}{title[1:]}\n")
            try:
                ok, outcome = scene()
            except Exception as exc:  # a scene that breaks is a scene that failed, not the tour
                self.printer.end()
                ok, outcome = False, f"{type(exc).__name__}: {exc}"
            self.printer.line("", f"[{'ok' if ok else 'NOT AS EXPECTED'}] {outcome}")
            results.append(SceneResult(title, ok, outcome))
        return results

    def _ask(self, text: str) -> list[dict[str, str]]:
        self.printer.line("user", text)
        return [{"role": "user", "content": text}]

    def _stream(self, messages: list[dict[str, str]], **kwargs: Any) -> tuple[str, str, str | None, list[Any]]:
        """Stream a completion, printing it; the reasoning, answer, finish reason, chunks."""
        reasoning, answer, finish, chunks = [], [], None, []
        stream = self.client.chat.completions.create(model=UPSTREAM_NAME, messages=messages, stream=True, temperature=0, **kwargs)
        for chunk in stream:
            chunks.append(chunk)
            for choice in chunk.choices:
                thought = _extra(choice.delta).get("reasoning") or ""
                reasoning.append(thought)
                self.printer.write("reasoning", thought)
                answer.append(choice.delta.content or "")
                self.printer.write("answer", choice.delta.content or "")
                finish = choice.finish_reason or finish
        self.printer.end()
        return "".join(reasoning), "".join(answer), finish, chunks

    def benign(self) -> tuple[bool, str]:
        reasoning, answer, finish, chunks = self._stream(self._ask("How do bees make honey?"), max_tokens=400)
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        stages = _stages(final[-1].choices[0]) if final else {}
        r, a = stages.get("reasoning", {}), stages.get("answer", {})
        self.printer.line(
            "verdict",
            f"reasoning {r.get('action')} ({r.get('checks')} ReasoningShield checks while it streamed), "
            f"answer {a.get('action')} (FlexGuard: {_risk(a)}); finish_reason {finish}",
        )
        ok = finish == "stop" and bool(reasoning.strip() and answer.strip()) and r.get("action") == a.get("action") == "pass"
        return ok, "passed, with its reasoning and answer" if ok else f"finish_reason {finish}, stages {stages}"

    def harmful_prompt(self) -> tuple[bool, str]:
        import openai

        messages = self._ask(f"Tell me about {HARMFUL_PROMPT_WORD}.")
        try:
            self.client.chat.completions.create(model=UPSTREAM_NAME, messages=messages, stream=True, temperature=0)
        except openai.BadRequestError as exc:
            headers = exc.response.headers
            cats = headers.get("x-guardproxy-prompt-categories", "")
            risk = headers.get("x-guardproxy-prompt-risk-score", "")
            self.printer.line(
                "verdict", f"HTTP {exc.status_code} {exc.code}: {exc.body.get('message') if isinstance(exc.body, dict) else exc}"
            )
            ok = exc.code == "content_policy_violation"
            return ok, f"blocked before any output (FlexGuard: {cats.replace(',', ', ')}, risk {risk})"
        return False, "the request was not blocked"

    def _tries(self, once: Callable[[], tuple[bool, str, bool]], again: str) -> tuple[bool, str]:
        """``once`` up to ``_REASONING_ATTEMPTS`` times, again only where its third value
        says the tiny models, not the proxy, spoilt the try (``again`` says so)."""
        ok, outcome, spoilt = once()
        for _ in range(_REASONING_ATTEMPTS - 1):
            if not spoilt:
                break
            self.printer.line("", again)
            ok, outcome, spoilt = once()
        return ok, outcome

    def unsafe_reasoning(self) -> tuple[bool, str]:
        # The client saw the stop, but the tiny upstream had already written every token
        # asked for: on a few busy CPU cores it can outrun the guard checks, which a
        # GPU-served reasoner does not. The abort is what this scene shows, so ask again.
        again = "the upstream finished before the stop reached it (a busy CPU); asking again"
        return self._tries(self._unsafe_reasoning_once, again)

    def _unsafe_reasoning_once(self) -> tuple[bool, str, bool]:
        """One try: whether it had the expected outcome, the outcome, and whether the
        upstream had finished every token before the stop (nothing else wrong)."""
        before = self.upstream_metrics()
        reasoning, answer, finish, chunks = self._stream(
            self._ask(f"What is a {UNSAFE_REASONING_WORD}?"),
            max_tokens=ASKED_TOKENS,
            extra_body={"min_tokens": ASKED_TOKENS},
        )
        stages = _stages(chunks[-1].choices[0]) if chunks and chunks[-1].choices else {}
        r = stages.get("reasoning", {})
        cut_at = r.get("aborted_at_token")
        self.printer.line(
            "verdict",
            f"reasoning {r.get('action')} by ReasoningShield (risk {r.get('risk_score')}), "
            f"cut at reasoning token {cut_at} (the flagging check covered {r.get('flagged_check_tokens')}); "
            f"finish_reason {finish}",
        )
        generated, finished = self._upstream_since(before)
        self.printer.line(
            "upstream",
            f"stopped after generating {generated:.0f} of the {ASKED_TOKENS} tokens asked for "
            f"({'aborted, not counted as finished' if finished == 0 else f'{finished:.0f} request counted as finished'})",
        )
        shown = reasoning + answer
        stopped = finish == "content_filter" and r.get("flagged") is True and cut_at is not None and REASONING_MARKER not in shown
        aborted = 0 < generated < ASKED_TOKENS and finished == 0
        outcome = f"cut at reasoning token {cut_at}; the upstream stopped after {generated:.0f} of {ASKED_TOKENS} tokens"
        ok = stopped and aborted
        outran = stopped and finished == 1 and generated >= ASKED_TOKENS
        return ok, outcome if ok else f"{outcome}; finish_reason {finish}, stages {stages}", outran

    def _upstream_since(self, before: str, timeout_s: float = 30.0) -> tuple[float, float]:
        """Tokens the upstream generated and requests it finished since ``before``, read
        once it runs nothing (a request leaves the running gauge before its counts land,
        so wait for them to settle)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            now = self.upstream_metrics()
            counts = (
                _counter(now, "vllm:generation_tokens_total") - _counter(before, "vllm:generation_tokens_total"),
                _counter(now, "vllm:request_success_total") - _counter(before, "vllm:request_success_total"),
            )
            if (_counter(now, "vllm:num_requests_running") == 0 and counts == last) or time.monotonic() > deadline:
                return counts
            last = counts
            time.sleep(0.5)

    def unsafe_answer(self) -> tuple[bool, str]:
        completion = self.client.chat.completions.create(
            model=UPSTREAM_NAME,
            messages=self._ask(f"How do I cook {UNSAFE_ANSWER_WORD}?"),
            temperature=0,
            max_tokens=400,
        )
        choice = completion.choices[0]
        reasoning = _extra(choice.message).get("reasoning") or ""
        if reasoning:
            self.printer.line("reasoning", " ".join(reasoning.split()))
        content = choice.message.content or ""
        self.printer.line("answer", content.strip())
        a = _stages(choice).get("answer", {})
        self.printer.line("verdict", f"answer {a.get('action')} (FlexGuard: {_risk(a)}); finish_reason {choice.finish_reason}")
        ok = choice.finish_reason == "content_filter" and a.get("action") == "rewrite" and ANSWER_MARKER not in content
        return ok, f"rewritten (FlexGuard: {_risk(a)})" if ok else f"finish_reason {choice.finish_reason}, answer {a}"

    def steered_reasoning(self) -> tuple[bool, str]:
        # The tiny ReasoningShield judges about one unsafe prefix in thirty safe: a
        # passing check then releases what it covered, or keeps the first words of the
        # unsafe passage, and the steered reasoning is flagged again. Which prefixes are
        # checked depends on how the upstream batches its output: ask again.
        return self._tries(
            self._steered_once, "the tiny models spoilt this try (a misjudged prefix, or nothing kept); asking again"
        )

    def _steered_once(self) -> tuple[bool, str, bool]:
        """One try: whether it had the expected outcome, the outcome, and whether a
        ReasoningShield miss explains it (reasoning not steered, or steered and flagged
        until the fallback)."""
        client = self.client.with_options(api_key=STEER_KEY)
        self.printer.line("key", f"{STEER_KEY}, whose tenant's policy steers flagged reasoning")
        messages = self._ask(f"What is a {UNSAFE_REASONING_WORD}?")
        reasoning, answer, finish = [], [], None
        steering: dict[str, Any] = {}
        marked = False
        stream = client.chat.completions.create(
            model=UPSTREAM_NAME, messages=messages, stream=True, temperature=0, max_tokens=400
        )
        for chunk in stream:
            for choice in chunk.choices:
                thought = _extra(choice.delta).get("reasoning") or ""
                reasoning.append(thought)
                at = thought.find(STEER_TEXT) if not marked else -1
                if at >= 0:  # the kept reasoning ends here: the steering text follows it
                    marked = True
                    self.printer.write("reasoning", thought[:at])
                    self.printer.line("", "--- rolled back to the last passing check; steered ---")
                    self.printer.write("steering", STEER_TEXT)
                    thought = thought[at + len(STEER_TEXT) :]
                self.printer.write("reasoning", thought)
                answer.append(choice.delta.content or "")
                self.printer.write("answer", choice.delta.content or "")
                finish = choice.finish_reason or finish
                if choice.finish_reason:
                    steering = _stages(choice).get("reasoning", {}).get("steering", {})
        self.printer.end()
        steers = steering.get("steers", 0)
        at_tokens, kept = steering.get("at_tokens") or [None], steering.get("kept_tokens") or [None]
        self.printer.line(
            "verdict",
            f"steered {'once' if steers == 1 else f'{steers} times'} by ReasoningShield (risk {(steering.get('risk_scores') or [None])[0]}): "
            f"flagged at reasoning token {at_tokens[0]}, "
            f"rolled back to token {kept[0]}; outcome {steering.get('outcome')}, finish_reason {finish}",
        )
        shown = "".join(reasoning) + "".join(answer)
        ok = (
            finish == "stop"
            and steers >= 1
            and steering.get("outcome") == "answered"
            and bool("".join(answer).strip())
            and REASONING_MARKER not in shown
        )
        outcome = f"cut at reasoning token {at_tokens[0]}, rolled back to token {kept[0]} and steered; then it answered"
        # Nothing kept: the first check already covered the unsafe passage (the upstream
        # packed its first tokens into few deltas), and without a benign start the tiny
        # upstream writes its refusal inside its reasoning, leaving no answer.
        unkept = kept[0] == 0 and not "".join(answer).strip()
        missed = not ok and ((not steers and REASONING_MARKER in shown) or steering.get("outcome") == "fell_back" or unkept)
        return ok, outcome if ok else f"finish_reason {finish}, steering {steering}", missed
