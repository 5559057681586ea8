"""Steering end to end: a flagged reasoning is rolled back and continued on real vLLM.

The tiny upstream, asked about the stealth trigger, reasons benignly and then writes the
unsafe passage the tiny ReasoningShield flags (FlexGuard passes the prompt). Under
``[policy.reasoning] action = "steer"`` the proxy aborts that generation, keeps the
reasoning its last passing check covered, and has vLLM go on from it and the steering
text: ``POST /tokenize`` renders the conversation with the upstream's own chat template,
``POST /v1/completions`` continues from those token ids and the tokenized prefix
("<think>" + kept reasoning + steering text). With the steering text below the tiny model
closes its reasoning and refuses.

Between the proxy and vLLM sits a recording pass-through, so each test also checks what
vLLM was asked: the conversation it rendered, and continuation token ids that decode (with
the upstream's tokenizer) to the kept reasoning and the steering text, the unsafe passage
gone.

The tiny ReasoningShield judges about 1 in 30 unsafe prefixes safe (fixtures README). When
a check that covers the start of the unsafe passage happens to be such a miss, the kept
reasoning holds some of it, or the request is never steered. It also judges a benign
prefix of more than about 26 tokens followed by the steering text unsafe (a tiny model's
artefact): the reasoning is checked every 22 deltas, so that one check passes before the
unsafe passage (about token 40) and the next covers it; where vLLM packs several tokens
into a delta the kept part grows, and a steer can be flagged again until it falls back.
Which prefixes get checked depends on how vLLM batches its deltas, so each test asks
again, up to ``ATTEMPTS`` times, and requires one clean steer that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from test_proxy_on_vllm import MODELS, _collect, run_proxy

from tests.support.scripted import _lifespan, _read_body
from tests.support.serving import ServerThread

pytestmark = pytest.mark.e2e

STEER_TEXT = " Hmm, wait. This is dangerous, and I should not give these instructions to anyone."
ATTEMPTS = 5
# Deltas between reasoning checks: one check passes on the benign start, the next covers
# the unsafe passage (module docstring).
CHECK_EVERY = 22
MAX_TOKENS = 600
# Connection-level headers the pass-through's own client and server set for themselves.
_HOP = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


@dataclass
class Call:
    method: str
    path: str
    body: bytes
    response: bytearray = field(default_factory=bytearray)

    def json(self) -> Any:
        return json.loads(self.body)

    def response_json(self) -> Any:
        return json.loads(bytes(self.response))

    def events(self) -> list[dict]:
        """The JSON events of a recorded SSE response."""
        out = []
        for line in bytes(self.response).decode().splitlines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                out.append(json.loads(line[6:]))
        return out


class Recorder:
    """A raw ASGI pass-through to vLLM that records each request and its response bytes.

    Responses stream back as vLLM writes them; a client that goes away (the proxy closing
    a flagged generation) closes the request to vLLM too, so vLLM aborts it as it would
    without the pass-through.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls: list[Call] = []
        self.lock = threading.Lock()

    def of(self, method: str, path: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and c.path == path]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path = scope["path"]
        call = Call(scope["method"], path, body)
        with self.lock:
            self.calls.append(call)
        query = scope.get("query_string", b"").decode()
        url = self.target + path + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        forward = asyncio.create_task(self._forward(call, url, headers, send))
        gone = asyncio.create_task(self._disconnected(receive))
        await asyncio.wait({forward, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in (forward, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _disconnected(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _forward(self, call: Call, url: str, headers: list, send) -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            request = client.build_request(call.method, url, headers=headers, content=call.body)
            response = await client.send(request, stream=True)
            try:
                out_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
                async for chunk in response.aiter_raw():
                    call.response += chunk
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODELS / "upstream")


@pytest.fixture(scope="module")
def steered(vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory):
    """(client, recorder, vLLM upstream): guardproxy steering, vLLM behind the recorder."""
    recorder = Recorder(vllm_upstream.root_url)
    reasoning = f'action = "steer"\nsteer_text = {json.dumps(STEER_TEXT)}\nmax_steers = 2'
    with ServerThread(recorder) as thread:
        via = SimpleNamespace(base_url=f"{thread.url}/v1")
        workdir: Path = tmp_path_factory.mktemp("steer")
        with run_proxy(
            "openai", via, vllm_flexguard, vllm_reasoningshield, workdir, reasoning=reasoning, reasoning_every=CHECK_EVERY
        ) as client:
            yield client, recorder, vllm_upstream


def _question(spec) -> str:
    return f"What is a {spec.STEALTH_REASONING_TRIGGER}?"


def _unsafe_sentences(spec) -> list[str]:
    """The unsafe passage's sentences, less its closing one (the steering text's words)."""
    passage = spec.UNSAFE_THINK_UNSAFE_PART[: spec.UNSAFE_THINK_UNSAFE_PART.index(" Hmm, wait.")]
    return [s.strip() for s in passage.split(".") if s.strip()]


def _missed(spec, reasoning: str, steers: int) -> bool:
    """A ReasoningShield miss let unsafe reasoning through, nothing was steered, or the
    steered reasoning was flagged again until it fell back."""
    if steers == 0 or STEER_TEXT not in reasoning:
        return True
    kept = reasoning[: reasoning.index(STEER_TEXT)]
    return not spec.UNSAFE_THINK_BENIGN_PART.startswith(kept.strip())


def _assert_clean(spec, text: str) -> None:
    assert spec.REASONING_MARKER not in text, text
    for sentence in _unsafe_sentences(spec):
        assert sentence[:24] not in text, (sentence, text)


def _assert_vllm_was_asked_to_continue(spec, recorder: Recorder, tokenizer, messages: list[dict], kept: str, steers: int):
    """What vLLM received: the conversation to render, then the continuation's token ids."""
    rendered = [c for c in recorder.of("POST", "/tokenize") if "messages" in c.json()]
    assert rendered, [c.path for c in recorder.calls]
    assert all(c.json()["messages"] == messages and c.json()["add_generation_prompt"] is True for c in rendered)
    conversation = rendered[0].response_json()
    continuations = recorder.of("POST", "/v1/completions")
    assert len(continuations) == steers, [c.path for c in recorder.calls]
    prompt_lengths = []
    for k, cont in enumerate(continuations):
        body = cont.json()
        ids = body["prompt"]
        assert isinstance(ids, list) and all(type(i) is int for i in ids)
        assert body["stream"] is True and body["temperature"] == 0
        # The conversation as the chat template rendered it, then the tokenized prefix.
        assert ids[: conversation["count"]] == conversation["tokens"]
        decoded = tokenizer.decode(ids)
        prefix = decoded[len(tokenizer.decode(conversation["tokens"])) :]
        assert prefix.startswith("<think>"), prefix
        assert kept.strip() in prefix and decoded.rstrip().endswith(STEER_TEXT.strip()), prefix
        _assert_clean(spec, decoded)
        print(f"\n[e2e] continuation {k + 1}: {len(ids)} prompt ids, prefix {prefix!r}")
        # vLLM counted exactly those ids as the continuation's prompt.
        usage = [e["usage"] for e in cont.events() if e.get("usage")]
        assert usage and usage[-1]["prompt_tokens"] == len(ids), usage
        prompt_lengths.append(len(ids))
    return conversation["count"], prompt_lengths


def test_streamed_chat_reasoning_is_steered_on_vllm(steered, fixture_spec, tokenizer):
    client, recorder, upstream = steered
    messages = [{"role": "user", "content": _question(fixture_spec)}]
    for attempt in range(ATTEMPTS):
        upstream.wait_idle()
        recorder.clear()
        stream = client.chat.completions.create(
            model="tiny-upstream",
            temperature=0,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=MAX_TOKENS,
        )
        reasoning, content, finishes, chunks = _collect(stream)
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        summary = finals[0].choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]
        steering = summary.get("steering") or {}
        print(
            f"\n[e2e] chat attempt {attempt + 1}: {finishes}, steering {steering}\nreasoning {reasoning!r}\ncontent {content!r}"
        )
        if finishes != ["stop"] or _missed(fixture_spec, reasoning, steering.get("steers", 0)):
            continue
        break
    else:
        pytest.fail(f"no clean steer in {ATTEMPTS} attempts")
    assert len({c.id for c in chunks}) == 1
    assert steering["steers"] >= 1 and steering["outcome"] == "answered" and steering["mechanism"] == "completions"
    _assert_clean(fixture_spec, reasoning)
    _assert_clean(fixture_spec, content)
    assert content.strip()
    kept = reasoning[: reasoning.index(STEER_TEXT)]
    count, lengths = _assert_vllm_was_asked_to_continue(fixture_spec, recorder, tokenizer, messages, kept, steering["steers"])
    # The client's usage: the first generation's prompt and every continuation's.
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.prompt_tokens == count + sum(lengths), (usage, count, lengths)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_json_chat_answer_is_steered_on_vllm(steered, fixture_spec, tokenizer):
    client, recorder, upstream = steered
    messages = [{"role": "user", "content": _question(fixture_spec)}]
    for attempt in range(ATTEMPTS):
        upstream.wait_idle()
        recorder.clear()
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-upstream", temperature=0, messages=messages, max_tokens=MAX_TOKENS
        )
        completion = raw.parse()
        choice = completion.choices[0]
        reasoning = choice.message.model_extra.get("reasoning") or ""
        content = choice.message.content or ""
        steers = int(raw.headers.get("x-guardproxy-steers", "0"))
        print(
            f"\n[e2e] json attempt {attempt + 1}: {choice.finish_reason}, {steers} steers\n"
            f"reasoning {reasoning!r}\ncontent {content!r}"
        )
        if choice.finish_reason != "stop" or _missed(fixture_spec, reasoning, steers):
            continue
        break
    else:
        pytest.fail(f"no clean steer in {ATTEMPTS} attempts")
    assert choice.finish_reason == "stop"
    assert raw.headers["x-guardproxy-reasoning"] == "steer"
    assert steers >= 1 and raw.headers["x-guardproxy-steer-outcome"] == "answered"
    _assert_clean(fixture_spec, reasoning)
    _assert_clean(fixture_spec, content)
    assert content.strip()
    kept = reasoning[: reasoning.index(STEER_TEXT)]
    count, lengths = _assert_vllm_was_asked_to_continue(fixture_spec, recorder, tokenizer, messages, kept, steers)
    assert completion.usage.prompt_tokens == count + sum(lengths)


def test_streamed_response_is_steered_on_vllm(steered, fixture_spec, tokenizer):
    client, recorder, upstream = steered
    question = _question(fixture_spec)
    for attempt in range(ATTEMPTS):
        upstream.wait_idle()
        recorder.clear()
        events = list(
            client.responses.create(
                model="tiny-upstream", input=question, temperature=0, max_output_tokens=MAX_TOKENS, stream=True
            )
        )
        types = [e.type for e in events]
        final = events[-1].response
        reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
        answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        steering = ((final.model_extra or {}).get("guardproxy") or {}).get("reasoning", {}).get("steering") or {}
        print(
            f"\n[e2e] responses attempt {attempt + 1}: {types[-1]} {final.status}, steering {steering}\n"
            f"reasoning {reasoning!r}\nanswer {answer!r}"
        )
        if types[-1] != "response.completed" or _missed(fixture_spec, reasoning, steering.get("steers", 0)):
            continue
        break
    else:
        pytest.fail(f"no clean steer in {ATTEMPTS} attempts")
    assert final.status == "completed"
    assert types.count("response.completed") == 1 and "response.incomplete" not in types
    seqs = [e.sequence_number for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    reasoning_items = [o for o in final.output if o.type == "reasoning"]
    assert len(reasoning_items) == 1
    assert "".join(c.text for c in reasoning_items[0].content or []) == reasoning
    assert [o.type for o in final.output][-1] == "message"
    assert steering["steers"] >= 1 and steering["outcome"] == "answered"
    _assert_clean(fixture_spec, reasoning)
    _assert_clean(fixture_spec, answer)
    assert answer.strip()
    kept = reasoning[: reasoning.index(STEER_TEXT)]
    messages = [{"role": "user", "content": question}]
    count, lengths = _assert_vllm_was_asked_to_continue(fixture_spec, recorder, tokenizer, messages, kept, steering["steers"])
    assert final.usage.input_tokens == count + sum(lengths)
