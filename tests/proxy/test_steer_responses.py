"""Steering on the Responses API, against the scripted upstream.

A reasoning flag under ``action = "steer"`` rolls the reasoning back to its last passing
check; the request's input is rendered by the upstream's chat template (/tokenize) and
/v1/completions goes on from the kept reasoning and the steering text. The client reads
one Response: one reasoning item, the answer, one id, sequence numbers without a gap.
"""

from __future__ import annotations

import json

from proxy._config import DEFAULT_STEER_TEXT
from proxy.protocols.responses import ResponsesRequest
from tests.support.scripted import chatml
from tests.support.sse import responses_events

UNSAFE_AT = 20
TRACE = [f" s{i}" for i in range(UNSAFE_AT)] + [" UNSAFE"] + [f" u{i}" for i in range(30)]
CONTINUATION = {"reasoning": [" I", " will", " explain", " photosynthesis."], "answer": ["Plants", " use", " light", "."]}
STEER = '[policy.reasoning]\naction = "steer"\ncheck_every_tokens = 8\n'
INSTRUCTIONS = "Be brief."
QUESTION = "How do plants grow?"
TOOLS = [{"type": "function", "name": "lookup", "description": "Look it up.", "parameters": {"type": "object"}}]


def _script(cont: object = CONTINUATION, **extra: object) -> dict:
    return {"reasoning": TRACE, "answer": ["never", " sent"], "delay": 0.002, "continue": cont, **extra}


def _body(script: dict, **extra: object) -> dict:
    return {"model": "m", "instructions": INSTRUCTIONS, "input": QUESTION, "x_script": script, **extra}


def _events(url: str, body: dict) -> list[tuple[str, dict]]:
    r, events = responses_events(url, body)
    assert r.status_code == 200
    return events


def _calls(upstream, path: str) -> list:
    return [c for c in upstream.calls if c.path.endswith(path)]


def _kept(reasoning: str) -> str:
    """The kept reasoning: what comes before the steering text."""
    assert DEFAULT_STEER_TEXT in reasoning
    return reasoning[: reasoning.index(DEFAULT_STEER_TEXT)]


def test_a_streamed_response_is_steered_and_completed(make_proxy, upstream, guard):
    proxy = make_proxy(STEER)
    events = _events(proxy.url, _body(_script()))
    names = [name for name, _ in events]
    assert all(name == doc["type"] for name, doc in events)
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert names.count("response.completed") == 1 and "response.incomplete" not in names
    seqs = [doc["sequence_number"] for _, doc in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    assert len({doc["response"]["id"] for _, doc in events if "response" in doc}) == 1

    # One reasoning item: its deltas, its .done texts and the final Response agree.
    deltas = "".join(doc["delta"] for name, doc in events if name == "response.reasoning_text.delta")
    kept = _kept(deltas)
    assert deltas == kept + DEFAULT_STEER_TEXT + " I will explain photosynthesis."
    assert kept and TRACE[0] in kept and "UNSAFE" not in deltas and " u0" not in deltas
    (done,) = [doc for name, doc in events if name == "response.reasoning_text.done"]
    assert done["text"] == deltas
    added = [doc["item"] for name, doc in events if name == "response.output_item.added"]
    assert [i["type"] for i in added] == ["reasoning", "message"]
    assert len({doc["item_id"] for name, doc in events if name.startswith("response.reasoning_text")}) == 1
    answer = "".join(doc["delta"] for name, doc in events if name == "response.output_text.delta")
    assert answer.strip() == "Plants use light." and "never" not in answer

    final = events[-1][1]["response"]
    assert final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"][0]["text"] == deltas
    assert final["output"][1]["content"][0]["text"] == answer
    assert final["instructions"] == INSTRUCTIONS  # the upstream's own Response fields stay
    steering = final["guardproxy"]["reasoning"]["steering"]
    assert steering["steers"] == 1 and steering["outcome"] == "answered" and steering["mechanism"] == "completions"

    # The guards read the continued reasoning once, after the kept text, and none of the
    # rolled-back text (the .done texts repeat what the deltas gave them).
    shields = [r for r, role in zip(guard.requests, guard.roles(), strict=True) if role == "reasoningshield"]
    last = shields[-1]["messages"][-1]["content"]
    assert " photosynthesis." in last and "UNSAFE" not in last and " u0" not in last
    assert last.count(kept) == 1 and last.count(DEFAULT_STEER_TEXT) == 1

    # usage: both generations, the aborted one and the continuation.
    (cont,) = _calls(upstream, "/v1/completions")
    first = _calls(upstream, "/v1/responses")[0]
    expected = chatml([{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}])
    expected += "<think>" + kept + DEFAULT_STEER_TEXT
    assert cont.prompt_text == expected
    usage = final["usage"]
    assert usage["input_tokens"] == len(expected) + len(expected) - len("<think>" + kept + DEFAULT_STEER_TEXT)
    # The continuation's chunks (its reasoning, "</think>", "\n\n", the answer), and the
    # aborted generation's tokens up to the flag at least.
    chunks = len(CONTINUATION["reasoning"]) + 2 + len(CONTINUATION["answer"])
    assert chunks + UNSAFE_AT < usage["output_tokens"] <= chunks + len(TRACE)
    assert first.disconnected
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_the_continuation_request_holds_the_conversation_and_the_prefix(make_proxy, upstream):
    proxy = make_proxy(STEER)
    _events(proxy.url, _body(_script()))
    tokenize = _calls(upstream, "/tokenize")
    rendered = next(c for c in tokenize if "messages" in c.body)
    assert rendered.body["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
    ]
    assert rendered.body["add_generation_prompt"] is True
    (cont,) = _calls(upstream, "/v1/completions")
    assert INSTRUCTIONS in cont.prompt_text and QUESTION in cont.prompt_text
    assert cont.prompt_text.endswith(DEFAULT_STEER_TEXT) and "UNSAFE" not in cont.prompt_text
    assert " s0 s1" in cont.prompt_text
    assert cont.body["stream"] is True and "input" not in cont.body and "instructions" not in cont.body
    assert cont.body["x_script"]["continue"] == CONTINUATION


def test_a_json_response_is_steered(make_proxy, upstream):
    proxy = make_proxy(STEER)
    raw = proxy.client.responses.with_raw_response.create(
        model="m", instructions=INSTRUCTIONS, input=QUESTION, extra_body={"x_script": _script()}
    )
    response = raw.parse()
    assert response.status == "completed" and response.output_text.strip() == "Plants use light."
    assert [o.type for o in response.output] == ["reasoning", "message"]
    reasoning = response.output[0].content[0].text
    assert reasoning == _kept(reasoning) + DEFAULT_STEER_TEXT + " I will explain photosynthesis."
    assert "UNSAFE" not in reasoning
    assert response.id == "resp_scripted"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.output_tokens > len(CONTINUATION["reasoning"])
    assert raw.headers["x-guardproxy-reasoning"] == "steer" and raw.headers["x-guardproxy-steers"] == "1"
    assert response.model_extra["guardproxy"]["reasoning"]["steering"]["outcome"] == "answered"


def test_a_tool_call_in_the_continuation_is_a_function_call_item(make_proxy, upstream):
    proxy = make_proxy(STEER)
    cont = {"reasoning": [" look", " it", " up"], "answer": [], "tool_calls": [{"name": "lookup", "arguments": '{"q": "leaf"}'}]}
    events = _events(proxy.url, _body(_script(cont), tools=TOOLS))
    names = [name for name, _ in events]
    assert names[-1] == "response.completed"
    seqs = [doc["sequence_number"] for _, doc in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    final = events[-1][1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "function_call"]
    call = final["output"][1]
    assert call["name"] == "lookup" and json.loads(call["arguments"]) == {"q": "leaf"} and call["status"] == "completed"
    assert call["call_id"].startswith("call_")
    (args,) = [doc for name, doc in events if name == "response.function_call_arguments.done"]
    assert args["item_id"] == call["id"] and args["arguments"] == call["arguments"]
    # The tools went to the template in chat's shape.
    rendered = next(c for c in _calls(upstream, "/tokenize") if "messages" in c.body)
    assert rendered.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Look it up.", "parameters": {"type": "object"}},
        }
    ]


def test_an_image_falls_back_and_says_why(make_proxy, upstream):
    proxy = make_proxy(STEER)
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    item = {"role": "user", "content": [{"type": "input_text", "text": QUESTION}, image]}
    events = _events(proxy.url, _body(_script(), input=[item]))
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"]["reason"] == "content_filter"
    steering = final["guardproxy"]["reasoning"]["steering"]
    assert steering["steers"] == 0 and steering["outcome"] == "fell_back" and "input[0]" in steering["fallback_reason"]
    text = "".join(doc.get("delta", "") for name, doc in events if name == "response.reasoning_text.delta")
    assert "UNSAFE" not in text
    assert not _calls(upstream, "/v1/completions") and not _calls(upstream, "/tokenize")


def _source(body: dict):
    request = ResponsesRequest(body=dict(body, model="m"), model="m", stream=True, pieces=[])
    return request.continuation_source()


def test_the_input_is_rendered_as_chat_messages():
    source = _source(
        {
            "instructions": "Sys.",
            "input": [
                {"role": "developer", "content": "Dev."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x": 1}'},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        }
    )
    assert not isinstance(source, str)
    assert source.messages == [
        {"role": "system", "content": "Sys."},
        {"role": "developer", "content": "Dev."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "Let me look."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"x": 1}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert source.tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert _source({"input": "hi"}).messages == [{"role": "user", "content": "hi"}]


def test_what_cannot_be_rendered_is_named():
    assert "previous_response_id" in _source({"input": "hi", "previous_response_id": "resp_1"})
    assert "item_reference" in _source({"input": [{"type": "item_reference", "id": "msg_1"}]})
    assert "web_search" in _source({"input": "hi", "tools": [{"type": "web_search"}]})
    file = {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}
    assert "input[0]" in _source({"input": [file]})


def test_hidden_release_steers_without_showing_reasoning(make_proxy, upstream):
    proxy = make_proxy(STEER + 'release = "hidden"\n')
    events = _events(proxy.url, _body(_script()))
    assert events[-1][0] == "response.completed"
    seqs = [doc["sequence_number"] for _, doc in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert not any(name.startswith("response.reasoning_text") for name, _ in events)
    final = events[-1][1]["response"]
    assert final["output"][0]["type"] == "reasoning" and final["output"][0]["content"] == []
    assert "".join(doc["delta"] for name, doc in events if name == "response.output_text.delta").strip() == "Plants use light."
    assert len(_calls(upstream, "/v1/completions")) == 1


def test_a_second_flag_steers_again_on_the_same_item(make_proxy, upstream):
    again = {"reasoning": [f" a{i}" for i in range(10)] + [" UNSAFE"] + [f" b{i}" for i in range(20)], "answer": ["no"]}
    proxy = make_proxy(STEER)
    events = _events(proxy.url, _body(_script([again, CONTINUATION])))
    assert events[-1][0] == "response.completed"
    seqs = [doc["sequence_number"] for _, doc in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    deltas = "".join(doc["delta"] for name, doc in events if name == "response.reasoning_text.delta")
    assert "UNSAFE" not in deltas and deltas.count(DEFAULT_STEER_TEXT) == 2 and " b0" not in deltas
    assert deltas.endswith(DEFAULT_STEER_TEXT + " I will explain photosynthesis.")
    final = events[-1][1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"][0]["text"] == deltas
    assert final["guardproxy"]["reasoning"]["steering"]["steers"] == 2
    assert [c.continue_index for c in _calls(upstream, "/v1/completions")] == [0, 1]
