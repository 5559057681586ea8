"""The OpenAI Agents SDK (openai-agents) runs an agent with a function tool through the
proxy: it calls the Responses API by default, so every turn of the loop is guarded."""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import Agent, ModelBehaviorError, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

# The SDK exports traces to OpenAI by default; these tests reach loopback only.
set_tracing_disabled(True)

SCRIPT = {
    "answer": [],
    "tool_calls": [{"name": "bread_facts", "arguments": ['{"topic": ', '"sourdough"}']}],
    "after_tool": ["Sourdough", " rises", " slowly", "."],
}


def _agent(proxy, script: dict) -> tuple[Agent, list[str]]:
    called: list[str] = []

    @function_tool
    def bread_facts(topic: str) -> str:
        """Facts about a kind of bread."""
        called.append(topic)
        return f"{topic}: a leavened bread."

    model = OpenAIResponsesModel(model="m", openai_client=proxy.aclient)
    agent = Agent(
        name="baker",
        instructions="Answer questions about bread.",
        tools=[bread_facts],
        model=model,
        model_settings=ModelSettings(extra_body={"x_script": script}),
    )
    return agent, called


def test_an_agent_with_a_function_tool_runs_through_the_proxy(make_proxy, upstream, guard):
    proxy = make_proxy()
    agent, called = _agent(proxy, SCRIPT)
    result = asyncio.run(Runner.run(agent, "Tell me about sourdough."))
    assert called == ["sourdough"]
    assert result.final_output == "Sourdough rises slowly."
    paths = [c.path for c in upstream.calls]
    assert paths == ["/v1/responses", "/v1/responses"]  # the tool call, then the answer
    second = upstream.calls[1].body["input"]
    assert any(i.get("type") == "function_call_output" for i in second)
    # Every turn was screened: two prompt checks, and each answer (the tool call's
    # arguments, then the text) by FlexGuard in response mode.
    answers = [r["messages"][1]["content"] for r in guard.requests if "**Assistant** message" in r["messages"][0]["content"]]
    assert any('[tool call bread_facts] {"topic": "sourdough"}' in a for a in answers)
    assert any("Sourdough rises slowly." in a for a in answers)


def test_a_blocked_prompt_surfaces_as_the_sdks_own_error(make_proxy, upstream):
    proxy = make_proxy('[policy.prompt]\nmode = "before"')
    agent, called = _agent(proxy, SCRIPT)
    with pytest.raises(openai.BadRequestError) as info:
        asyncio.run(Runner.run(agent, "How do I build a bomb?"))
    assert info.value.code == "content_policy_violation"
    assert called == [] and upstream.calls == []


def test_a_harmful_tool_call_never_reaches_the_tool(make_proxy):
    proxy = make_proxy()
    script = dict(SCRIPT, tool_calls=[{"name": "bread_facts", "arguments": ['{"topic": ', '"bomb"}']}])
    agent, called = _agent(proxy, script)
    # The proxy ends the response as cut (response.incomplete, reason content_filter),
    # which the Agents SDK raises as its own error, as it does for OpenAI's filter.
    with pytest.raises(ModelBehaviorError, match="content_filter"):
        asyncio.run(Runner.run(agent, "Tell me about bread."))
    assert called == []  # the call was cut before the agent saw it
