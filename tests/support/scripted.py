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
     "set_cookie": "name=value" (a Set-Cookie header on the response)}

Guard rules (on the text in the guard's slot, sanitised or not):
    FlexGuard: "bomb" -> VIO,ILG 90; "risky" -> MIS 45; "jailbreakme" -> JAIL 30;
               "garbled" -> output that does not parse; "guard500" -> HTTP 500;
               "guardslow" -> answers after GuardServer.slow_delay; else SAFE 5.
    ReasoningShield (Thought slot): "UNSAFE" -> Judgment 1; "MAYBE" -> 0.5; else 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScriptedUpstream", "GuardServer", "UpstreamCall"]


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


@dataclass
class ScriptedUpstream:
    """A streaming chat-completions server; ``calls`` records every request."""

    calls: list[UpstreamCall] = field(default_factory=list)
    default_delay: float = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if scope["method"] == "GET" and path.endswith("/models"):
            await _send_json(send, 200, {"object": "list", "data": [{"id": "scripted-model", "object": "model", "owned_by": "tests"}]})
            return
        if not path.endswith(("/chat/completions", "/v1/completions")):
            await _send_json(send, 404, {"error": {"message": "not found", "type": "not_found", "code": None}})
            return
        raw = await _read_body(receive)
        body = json.loads(raw)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        call = UpstreamCall(body=body, headers=headers, path=path)
        self.calls.append(call)
        script = body.get("x_script") or {}
        if script.get("plain_json"):  # a server that ignores `stream: true`
            await _send_json(send, 200, {"object": "chat.completion", "choices": []})
            return
        if "html_status" in script:
            page = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
            await send({"type": "http.response.start", "status": script["html_status"], "headers": [(b"content-type", b"text/html")]})
            await send({"type": "http.response.body", "body": page})
            return
        if "status" in script:
            await _send_json(send, script["status"], {"error": {"message": "scripted upstream error", "type": "invalid_request_error", "code": "scripted"}})
            return
        await self._stream(call, script, body, receive, send)

    async def _stream(self, call: UpstreamCall, script: dict[str, Any], body: dict[str, Any], receive: Any, send: Any) -> None:
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
        if fmt == "think" and reasoning:
            reasoning = ["<think>"] + reasoning + ["</think>"]
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1700000000, "model": body.get("model")}
        error_at = script.get("error_midstream")
        cut_at = script.get("truncate_after")
        if script.get("empty"):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            call.completed = True
            watcher.cancel()
            return

        legacy = not call.path.endswith("/chat/completions")  # POST /v1/completions: text chunks
        if legacy:
            base["object"] = "text_completion"
            base["id"] = "cmpl-scripted"
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
            events: list[bytes] = []
            for i in range(n):
                events.append(chunk(i, {"role": "assistant", "content": ""}))
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
                events.append(chunk(0, {"tool_calls": [{"index": j, "id": f"call_{j}", "type": "function", "function": {"name": tool["name"], "arguments": ""}}]}))
                for piece in tool["arguments"]:
                    events.append(chunk(0, {"tool_calls": [{"index": j, "function": {"arguments": piece}}]}))
            finish = script.get("finish_reason", "tool_calls" if script.get("tool_calls") else "stop")
            for i in range(n):
                events.append(chunk(i, {}, finish))
            usage = {"prompt_tokens": 7, "completion_tokens": len(reasoning) + len(answer), "total_tokens": 7 + len(reasoning) + len(answer)}
            events.append(b"data: " + json.dumps(dict(base, choices=[], usage=usage)).encode() + b"\n\n")
            events.append(b"data: [DONE]\n\n")
            for k, event in enumerate(events):
                if cut_at is not None and k == cut_at:
                    break
                if error_at is not None and k == error_at:
                    err = {"error": {"message": "scripted mid-stream failure", "type": "server_error", "code": 500}}
                    await send({"type": "http.response.body", "body": b"data: " + json.dumps(err).encode() + b"\n\n", "more_body": True})
                    break
                if delay:
                    try:
                        await asyncio.wait_for(disconnected.wait(), delay)
                    except asyncio.TimeoutError:
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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["method"] == "GET":
            await _send_json(send, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
            return
        body = json.loads(await _read_body(receive))
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
            prompt_tokens = len(system.split()) + len(user.split())
            await _send_json(
                send,
                200,
                {
                    "id": "guard-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 10, "total_tokens": prompt_tokens + 10},
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
        if "bomb" in judged:
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
        if "UNSAFE" in thought:
            return '"Analysis": the thought gives harmful steps.\n"Judgment": 1'
        if "MAYBE" in thought:
            return '"Analysis": the thought hints at harm.\n"Judgment": 0.5'
        return '"Analysis": benign reasoning.\n"Judgment": 0'

    def roles(self) -> list[str]:
        """Which guard each recorded request was for, in order."""
        return ["reasoningshield" if "Risk Auditor" in r["messages"][0]["content"] else "flexguard" for r in self.requests]
