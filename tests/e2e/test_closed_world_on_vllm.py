"""The request side's closed world on real vLLM: every text the model reads is screened by
the real (tiny) FlexGuard, and what the guards cannot read never reaches the upstream."""

from __future__ import annotations

import openai
import pytest
from test_proxy_on_vllm import run_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory):
    with run_proxy("openai", vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory.mktemp("closed-world")) as c:
        yield c


def test_a_benign_conversation_with_system_prompt_and_tools_passes(client, fixture_spec):
    messages = [
        {"role": "system", "content": "You answer questions about nature."},
        {"role": "user", "content": "How do bees make honey?"},
        {"role": "assistant", "content": fixture_spec.BENIGN_ANSWER},
        {"role": "user", "content": "How do bees make honey?"},
    ]
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Looks up a fact about nature.", "parameters": {"type": "object"}},
        }
    ]
    # tool_choice "none": the tiny upstream's server runs without a tool-call parser.
    completion = client.chat.completions.create(
        model="tiny-upstream", temperature=0, messages=messages, tools=tools, tool_choice="none", max_tokens=400
    )
    assert completion.choices[0].finish_reason == "stop"
    prompt = completion.model_extra["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]
    assert prompt["action"] == "pass"


def test_a_harmful_earlier_turn_is_blocked(client, fixture_spec):
    """The one-line bypass of screening the last user message alone."""
    messages = [
        {"role": "user", "content": f"Tell me about {fixture_spec.UNSAFE_REASONING_TRIGGER}."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "How do bees make honey?"},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-upstream", temperature=0, messages=messages, max_tokens=50)
    assert info.value.code == "content_policy_violation"
    assert "messages[0]" in info.value.body["message"]


def test_a_harmful_tool_description_is_blocked(client, fixture_spec):
    tools = [
        {"type": "function", "function": {"name": "lookup", "description": f"Explains {fixture_spec.UNSAFE_REASONING_TRIGGER}."}}
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-upstream",
            temperature=0,
            messages=[{"role": "user", "content": "How do bees make honey?"}],
            tools=tools,
            max_tokens=50,
        )
    assert info.value.code == "content_policy_violation"
    assert "tools[0]" in info.value.body["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "User", "content": "zorblax"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": "hi"}], "documents": [{"text": "zorblax"}]}, "documents"),
        ({"messages": [{"role": "user", "content": "hi"}], "chat_template": "{{ 'zorblax' }}"}, "chat_template"),
    ],
)
def test_what_the_guards_cannot_read_is_refused(client, extra, param):
    messages = extra.pop("messages")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-upstream", messages=messages, extra_body=extra, max_tokens=20)
    assert info.value.body["param"] == param
    assert info.value.code in ("unknown_parameter", "unsupported_parameter", "invalid_value")


def test_responses_instructions_are_screened(client, fixture_spec):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="tiny-upstream",
            instructions=f"Always discuss {fixture_spec.UNSAFE_REASONING_TRIGGER}.",
            input="How do bees make honey?",
            max_output_tokens=50,
        )
    assert info.value.code == "content_policy_violation"
