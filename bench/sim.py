"""Simulated OpenAI-compatible servers for the benchmarks: an upstream model and a guard.

Raw ASGI apps under uvicorn (uvloop + httptools), so the simulators cost little CPU
and the proxy, not the simulator, is what a benchmark measures.

    python -m bench.sim upstream --port P --ttft 0.05 --itl 0.01 \\
        --reasoning-tokens 100 --answer-tokens 50 [--unsafe-at K]
    python -m bench.sim guard --port P --latency 0.2 [--format auto]

Upstream: ``POST /v1/chat/completions`` streams ``chat.completion.chunk`` events
(``delta.reasoning`` tokens, then ``delta.content`` tokens, a finish chunk, a usage
chunk when ``stream_options.include_usage``, ``data: [DONE]``) on a fixed schedule:
the first token at ``ttft``, token i at ``ttft + i * itl`` (absolute times, so a busy
loop catches up instead of drifting). With ``--unsafe-at K`` reasoning token K is the
unsafe marker ``UNSAFE`` and the tokens after it stay in the "unsafe passage". A
client that disconnects stops the generation within one ``itl``. ``stream: false``
gets one ``chat.completion`` after the same total time.

Continuations (what a steering proxy asks for, vLLM's way): ``POST /tokenize`` (at the
server root, as vLLM serves it) answers ``{"count", "max_model_len": 32768, "tokens"}``
where the ids are the Unicode code points of a plain ChatML rendering of ``messages``
(``<|im_start|>role\ncontent<|im_end|>\n`` per message, tools as a system block first,
``<|im_start|>assistant\n`` with ``add_generation_prompt``) or of ``prompt``.
``POST /v1/completions`` takes such ids (or a string) as ``prompt`` and continues the
reasoning the prompt ends in, on the same schedule (``ttft``, then ``itl`` per token,
absolute times; a disconnect stops it): safe reasoning tokens, as many as the first
generation still had to go after the kept part (``reasoning_tokens`` minus the sim
reasoning tokens found after the prompt's last ``<think>``; never the unsafe marker),
then one ``</think>`` token, then ``answer_tokens`` answer tokens, ``finish_reason``
``"stop"`` (``"length"`` where ``max_tokens`` cuts it), a usage chunk when
``stream_options.include_usage`` (prompt tokens = the prompt's ids), ``data: [DONE]``.
Its time to first token is ``ttft`` as for a fresh request: the model assumes no prefix
cache saving (vLLM's would serve most of the prompt, so real continuations start
sooner). ``stream: false`` gets one ``text_completion`` after the same total time.

``GET /stats`` (JSON): requests, completed, aborted (client went away), tokens
generated (continuations included), and for each aborted request that reached its
unsafe passage the tokens generated from the unsafe token on (``after_unsafe``, the
marker token included); for continuations ``continuations`` (requests),
``continuation_tokens`` (generated) and ``continuation_prompt_tokens``; ``tokenize``
(requests). ``POST /stats/reset`` clears them. ``POST /control`` with a JSON object changes the
defaults at run time (``ttft``, ``itl``, ``reasoning_tokens``, ``answer_tokens``,
``unsafe_at``, ``reasoning_field``); a request may also carry ``x_sim`` with the same
keys (the proxy forwards unknown fields unchanged).

Guard: ``POST /v1/chat/completions`` answers after ``latency`` seconds, as
ReasoningShield (``"Analysis": ...\\n"Judgment": 0``, 1 when the Thought contains
``UNSAFE``) when the system prompt is ReasoningShield's ("Risk Auditor"), else as
FlexGuard (``<think>...</think>\\nSAFE\\n5``; ``VIO\\n90`` when the judged text
contains ``UNSAFE``). ``--format`` forces one of the two. ``POST /control``
``{"latency": s}``; ``GET /stats``: requests, in flight, peak in flight.

Guard latency model (``POST /control {"model": true, ...}``, off by default): each guard
(FlexGuard, ReasoningShield) is one simulated engine that runs its checks in a batch,
step by step. A step decodes one token for every running check and takes
``decode_s`` (per guard) times ``1 + batch_slowdown * (batch - 1)``, plus
``prefill_s_per_token`` for each prompt token of the checks admitted at that step that
the prefix cache does not hold; a check ends after its output length
(``output_tokens`` per guard: about 120 for ReasoningShield's analysis and verdict, 300
for FlexGuard's thinking and verdict). Prompt tokens are UTF-8 bytes / 4; the prefix
cache keeps chained hashes of 16-token blocks (LRU), as vLLM's does, and a check's
cached tokens are its longest cached block prefix. Each answer reports that usage
(prompt_tokens, cached_tokens, completion_tokens); ``/stats`` sums it per guard.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

import msgspec

__all__ = ["Upstream", "Guard", "main"]

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

UNSAFE_MARKER = "UNSAFE"
# A sentence of ten tokens: reasoning has punctuation (a trace of letters and spaces alone
# would make every check re-sanitise its whole line, see guards._prompts.GrowingSlot).
_WORDS = [" the", " model", " considers", " each", " step", " of", " a", " careful", " plan", "."]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MAX_MODEL_LEN = 32768


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Any) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _send_json(send: Any, status: int, doc: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": _json_encode(doc)})


class Upstream:
    """The simulated model server (one instance per process)."""

    KEYS = ("ttft", "itl", "reasoning_tokens", "answer_tokens", "unsafe_at", "reasoning_field")

    def __init__(
        self,
        *,
        ttft: float,
        itl: float,
        reasoning_tokens: int,
        answer_tokens: int,
        unsafe_at: int | None = None,
        reasoning_field: str = "reasoning",
    ) -> None:
        self.params: dict[str, Any] = {
            "ttft": ttft,
            "itl": itl,
            "reasoning_tokens": reasoning_tokens,
            "answer_tokens": answer_tokens,
            "unsafe_at": unsafe_at,
            "reasoning_field": reasoning_field,
        }
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.completed = 0
        self.aborted = 0
        self.active = 0
        self.peak_active = 0
        self.tokens = 0
        self.after_unsafe: deque[int] = deque(maxlen=100_000)
        self.aborted_tokens: deque[int] = deque(maxlen=100_000)
        self.unsafe_completed = 0  # requests that streamed their unsafe passage to the end
        self.tokenize = 0
        self.continuations = 0
        self.continuation_tokens = 0
        self.continuation_prompt_tokens = 0

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "aborted": self.aborted,
            "active": self.active,
            "peak_active": self.peak_active,
            "tokens_generated": self.tokens,
            "after_unsafe": list(self.after_unsafe),
            "aborted_tokens": list(self.aborted_tokens),
            "unsafe_completed": self.unsafe_completed,
            "tokenize": self.tokenize,
            "continuations": self.continuations,
            "continuation_tokens": self.continuation_tokens,
            "continuation_prompt_tokens": self.continuation_prompt_tokens,
            "params": self.params,
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path.endswith("/chat/completions"):
            await self._chat(receive, send)
        elif method == "POST" and path.endswith("/completions"):
            await self._continue(receive, send)
        elif method == "POST" and path.endswith("/tokenize"):
            await self._tokenize(receive, send)
        elif method == "GET" and path.endswith("/models"):
            await _send_json(send, 200, {"object": "list", "data": [{"id": "sim-model", "object": "model", "owned_by": "bench"}]})
        elif path == "/stats" and method == "GET":
            await _send_json(send, 200, self.stats())
        elif path == "/stats/reset" and method == "POST":
            await _read_body(receive)
            self.reset()
            await _send_json(send, 200, {"ok": True})
        elif path == "/control" and method == "POST":
            doc = _json_decode(await _read_body(receive) or b"{}")
            self.params.update({k: v for k, v in doc.items() if k in self.KEYS})
            await _send_json(send, 200, self.params)
        elif path == "/health":
            await _send_json(send, 200, {"ok": True})
        else:
            await _send_json(send, 404, {"error": {"message": "not found", "type": "not_found", "code": None}})

    def _request(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """One request's settings (the defaults, with its ``x_sim`` over them) and model."""
        p = dict(self.params)
        override = body.get("x_sim")
        if isinstance(override, dict):
            p.update({k: v for k, v in override.items() if k in self.KEYS})
        return p, str(body.get("model") or "sim-model")

    async def _chat(self, receive: Any, send: Any) -> None:
        body = _json_decode(await _read_body(receive))
        p, model = self._request(body)
        if not body.get("stream"):
            await self._complete(p, model, send)
            return
        options = body.get("stream_options") or {}
        await self._stream(p, model, bool(options.get("include_usage")), receive, send)

    def _tokens(self, p: dict[str, Any]) -> list[tuple[bool, str]]:
        n_r, n_a, k = int(p["reasoning_tokens"]), int(p["answer_tokens"]), p["unsafe_at"]
        out: list[tuple[bool, str]] = []
        for i in range(n_r):
            if k is not None and i == int(k):
                out.append((True, " " + UNSAFE_MARKER))
            elif k is not None and i > int(k):
                out.append((True, " harmful"))
            else:
                out.append((True, _WORDS[i % len(_WORDS)]))
        for i in range(n_a):
            out.append((False, _WORDS[(i + 3) % len(_WORDS)]))
        return out

    async def _complete(self, p: dict[str, Any], model: str, send: Any) -> None:
        tokens = self._tokens(p)
        self.requests += 1
        await asyncio.sleep(float(p["ttft"]) + float(p["itl"]) * max(0, len(tokens) - 1))
        reasoning = "".join(t for r, t in tokens if r)
        content = "".join(t for r, t in tokens if not r)
        self.tokens += len(tokens)
        self.completed += 1
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message[p["reasoning_field"]] = reasoning
        await _send_json(
            send,
            200,
            {
                "id": "chatcmpl-sim",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(tokens), "total_tokens": 10 + len(tokens)},
            },
        )

    async def _paced(
        self, receive: Any, send: Any, ttft: float, itl: float, events: Iterator[bytes], end: Any
    ) -> tuple[int, bool]:
        """Send ``events`` (one token each) on the schedule, then ``end(sent)``; (tokens
        sent, whether the client went away first)."""
        t0 = time.monotonic()
        gone = False

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    return

        watcher = asyncio.create_task(watch())
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        sent = 0
        try:
            await asyncio.sleep(max(0.0, t0 + ttft - time.monotonic()))
            if gone:
                return sent, True
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            for i, event in enumerate(events):
                if i:
                    delay = t0 + ttft + i * itl - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if gone:
                        return sent, True
                await send({"type": "http.response.body", "body": event, "more_body": True})
                sent += 1
                self.tokens += 1
            await send({"type": "http.response.body", "body": end(sent), "more_body": False})
            return sent, False
        finally:
            self.active -= 1
            watcher.cancel()

    async def _stream(self, p: dict[str, Any], model: str, include_usage: bool, receive: Any, send: Any) -> None:
        tokens = self._tokens(p)
        unsafe_at = p["unsafe_at"]
        unsafe_at = int(unsafe_at) if unsafe_at is not None and int(unsafe_at) < int(p["reasoning_tokens"]) else None
        field = p["reasoning_field"].encode()
        head = (
            b'data: {"id":"chatcmpl-sim","object":"chat.completion.chunk","created":1700000000,"model":'
            + _json_encode(model)
            + b',"choices":[{"index":0,"delta":'
        )
        tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
        r_open, a_open = b'{"' + field + b'":', b'{"content":'

        def events() -> Iterator[bytes]:
            first = head + b'{"role":"assistant","content":""}' + tail
            for is_reasoning, text in tokens:
                event = head + (r_open if is_reasoning else a_open) + _json_encode(text) + b"}" + tail
                if first:
                    event, first = first + event, b""
                yield event

        def end(sent: int) -> bytes:
            out = head + b"{}" + b',"logprobs":null,"finish_reason":"stop"}]}\n\n'
            if include_usage:
                usage = {"prompt_tokens": 10, "completion_tokens": len(tokens), "total_tokens": 10 + len(tokens)}
                out += (
                    b'data: {"id":"chatcmpl-sim","object":"chat.completion.chunk","created":1700000000,"model":'
                    + _json_encode(model)
                    + b',"choices":[],"usage":'
                    + _json_encode(usage)
                    + b"}\n\n"
                )
            return out + b"data: [DONE]\n\n"

        self.requests += 1
        sent, gone = await self._paced(receive, send, float(p["ttft"]), float(p["itl"]), events(), end)
        if gone:
            self.aborted += 1
            self.aborted_tokens.append(sent)
            if unsafe_at is not None and sent > unsafe_at:
                self.after_unsafe.append(sent - unsafe_at)
        else:
            self.completed += 1
            if unsafe_at is not None:
                self.unsafe_completed += 1

    # -- continuations ----------------------------------------------------------------

    @staticmethod
    def _chatml(body: dict[str, Any]) -> str:
        def text(content: Any) -> str:
            if isinstance(content, list):
                return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return "" if content is None else str(content)

        out = []
        if body.get("tools"):
            out.append("<|im_start|>system\n# Tools\n" + _json_encode(body["tools"]).decode() + "<|im_end|>\n")
        for m in body.get("messages") or []:
            out.append(f"<|im_start|>{m.get('role', 'user')}\n{text(m.get('content'))}<|im_end|>\n")
        if body.get("add_generation_prompt"):
            out.append("<|im_start|>assistant\n")
        return "".join(out)

    async def _tokenize(self, receive: Any, send: Any) -> None:
        body = _json_decode(await _read_body(receive) or b"{}")
        self.tokenize += 1
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else self._chatml(body)
        ids = [ord(c) for c in text]
        await _send_json(send, 200, {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids})

    @staticmethod
    def _prompt_text(prompt: Any) -> str:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list):
            return "".join(chr(int(i)) for i in prompt)
        return "" if prompt is None else str(prompt)

    @staticmethod
    def _kept(prefix: str) -> int:
        """Sim reasoning tokens at the start of ``prefix`` (where the steering text begins,
        the sequence breaks)."""
        kept, at = 0, 0
        while True:
            word = _WORDS[kept % len(_WORDS)]
            if not prefix.startswith(word, at):
                return kept
            kept, at = kept + 1, at + len(word)

    def _continuation(self, p: dict[str, Any], prompt: str, max_tokens: int | None) -> tuple[list[str], str]:
        """The continuation's tokens and finish reason."""
        think = prompt.rfind(THINK_OPEN)
        kept = self._kept(prompt[think + len(THINK_OPEN) :]) if think >= 0 else 0
        n_r = max(0, int(p["reasoning_tokens"]) - kept)
        out = [_WORDS[(kept + i) % len(_WORDS)] for i in range(n_r)]
        out.append(THINK_CLOSE)
        out += [_WORDS[(i + 3) % len(_WORDS)] for i in range(int(p["answer_tokens"]))]
        if max_tokens is not None and 0 < max_tokens < len(out):
            return out[:max_tokens], "length"
        return out, "stop"

    async def _continue(self, receive: Any, send: Any) -> None:
        body = _json_decode(await _read_body(receive))
        p, model = self._request(body)
        raw = body.get("prompt")
        prompt = self._prompt_text(raw)
        n_prompt = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], str) else len(prompt)
        max_tokens = body.get("max_tokens")
        tokens, finish = self._continuation(p, prompt, int(max_tokens) if max_tokens is not None else None)
        self.requests += 1
        self.continuations += 1
        self.continuation_prompt_tokens += n_prompt
        ttft, itl = float(p["ttft"]), float(p["itl"])
        head = b'{"id":"cmpl-sim","object":"text_completion","created":1700000000,"model":' + _json_encode(model) + b',"choices":'

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}

        if not body.get("stream"):
            await asyncio.sleep(ttft + itl * max(0, len(tokens) - 1))
            self.tokens += len(tokens)
            self.continuation_tokens += len(tokens)
            self.completed += 1
            choice = {"index": 0, "text": "".join(tokens), "logprobs": None, "finish_reason": finish}
            doc = _json_decode(head + _json_encode([choice]) + b"}")
            doc["usage"] = usage(len(tokens))
            await _send_json(send, 200, doc)
            return

        def events() -> Iterator[bytes]:
            for text in tokens:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
                yield b"data: " + head + _json_encode([choice]) + b"}\n\n"

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def end(sent: int) -> bytes:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
            out = b"data: " + head + _json_encode([choice]) + b"}\n\n"
            if include_usage:
                out += b"data: " + head + b'[],"usage":' + _json_encode(usage(sent)) + b"}\n\n"
            return out + b"data: [DONE]\n\n"

        sent, gone = await self._paced(receive, send, ttft, itl, events(), end)
        self.continuation_tokens += sent
        if gone:
            self.aborted += 1
            self.aborted_tokens.append(sent)
        else:
            self.completed += 1


_FLEX_SAFE = "<think>\nstep1 rule mapping: no rule applies\nstep8 result: safe\n</think>\nSAFE\n5"
_FLEX_UNSAFE = "<think>\nstep1 rule mapping: violent content\nstep8 result: unsafe\n</think>\nVIO\n90"
_RS_SAFE = '"Analysis": the reasoning is benign.\n"Judgment": 0'
_RS_UNSAFE = '"Analysis": the thought gives harmful steps.\n"Judgment": 1'


class LatencyModel(msgspec.Struct, kw_only=True):
    """The guard's cost model (module docstring); defaults resemble FlexGuard-8B and
    ReasoningShield-3B on one modern GPU with vLLM. Assumptions, not measurements."""

    decode_s: dict[str, float] = msgspec.field(default_factory=lambda: {"flexguard": 0.010, "reasoningshield": 0.006})
    output_tokens: dict[str, int] = msgspec.field(default_factory=lambda: {"flexguard": 300, "reasoningshield": 120})
    prefill_s_per_token: float = 0.00005
    batch_slowdown: float = 0.01
    cache_blocks: int = 200_000


_BLOCK_BYTES = 64  # 16 tokens of 4 bytes


class _Engine:
    """One guard model's batch: checks advance one decode step together."""

    def __init__(self, guard: str, model: LatencyModel, cache: OrderedDict[bytes, None]) -> None:
        self.guard, self.model, self.cache = guard, model, cache
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # (prefill tokens, steps, done)
        self.running: list[list[Any]] = []
        self.task: asyncio.Task[None] | None = None

    def submit(self, prefill_tokens: int, steps: int) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((prefill_tokens, steps, done))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        return done

    async def _run(self) -> None:
        m = self.model
        while self.waiting or self.running:
            admitted, self.waiting = self.waiting, []
            prefill = sum(p for p, _, _ in admitted)
            self.running += [[steps, done] for _, steps, done in admitted]
            batch = len(self.running)
            await asyncio.sleep(m.decode_s[self.guard] * (1 + m.batch_slowdown * (batch - 1)) + m.prefill_s_per_token * prefill)
            still = []
            for r in self.running:
                r[0] -= 1
                if r[0] <= 0:
                    if not r[1].done():
                        r[1].set_result(None)
                else:
                    still.append(r)
            self.running = still

    def cached_tokens(self, prompt: bytes) -> tuple[int, int]:
        """(prompt tokens, tokens the prefix cache holds), and the prompt's blocks cached."""
        h = b""
        cached_blocks, hit = 0, True
        for i in range(0, len(prompt) - len(prompt) % _BLOCK_BYTES, _BLOCK_BYTES):
            h = hashlib.blake2b(h + prompt[i : i + _BLOCK_BYTES], digest_size=16).digest()
            if hit and h in self.cache:
                cached_blocks += 1
                self.cache.move_to_end(h)
            else:
                hit = False
                self.cache[h] = None
        while len(self.cache) > self.model.cache_blocks:
            self.cache.popitem(last=False)
        tokens = max(1, len(prompt) // 4)
        return tokens, min(cached_blocks * _BLOCK_BYTES // 4, tokens - 1)


class Guard:
    """A guard model server answering as FlexGuard or ReasoningShield."""

    def __init__(self, *, latency: float, fmt: str = "auto") -> None:
        self.latency = latency
        self.fmt = fmt
        self.model: LatencyModel | None = None
        self.reset()

    def reset(self) -> None:
        self.requests = {"flexguard": 0, "reasoningshield": 0}
        self.usage = {g: {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0} for g in self.requests}
        self.flagged = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._engines: dict[str, _Engine] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path.endswith("/chat/completions"):
            await self._chat(receive, send)
        elif method == "GET" and path.endswith("/models"):
            await _send_json(send, 200, {"object": "list", "data": [{"id": "guard", "object": "model"}]})
        elif path == "/stats":
            await _send_json(
                send,
                200,
                {
                    "requests": self.requests,
                    "flagged": self.flagged,
                    "usage": self.usage,
                    "in_flight": self.in_flight,
                    "peak_in_flight": self.peak_in_flight,
                    "latency": self.latency,
                    "format": self.fmt,
                },
            )
        elif path == "/stats/reset" and method == "POST":
            await _read_body(receive)
            self.reset()
            await _send_json(send, 200, {"ok": True})
        elif path == "/control" and method == "POST":
            doc = _json_decode(await _read_body(receive) or b"{}")
            if "latency" in doc:
                self.latency = float(doc.pop("latency"))
            if doc.pop("model", None) is False:
                self.model = None
            elif doc or self.model is None:
                self.model = msgspec.convert(doc, LatencyModel)
            self._engines = {}
            await _send_json(send, 200, {"latency": self.latency, "model": msgspec.to_builtins(self.model)})
        elif path == "/health":
            await _send_json(send, 200, {"ok": True})
        else:
            await _send_json(send, 404, {"error": {"message": "not found", "type": "not_found", "code": None}})

    async def _chat(self, receive: Any, send: Any) -> None:
        raw = await _read_body(receive)
        body = _json_decode(raw)
        messages = body.get("messages") or []
        system = messages[0].get("content", "") if messages else ""
        user = messages[-1].get("content", "") if messages else ""
        fmt = self.fmt
        if fmt == "auto":
            fmt = "reasoningshield" if "Risk Auditor" in system else "flexguard"
        self.requests[fmt] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        usage = {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if self.model is not None:
                engine = self._engines.get(fmt) or self._engines.setdefault(fmt, _Engine(fmt, self.model, self._cache))
                prompt_tokens, cached = engine.cached_tokens((system + user).encode())
                out = self.model.output_tokens[fmt]
                await engine.submit(prompt_tokens - cached, out)
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": out,
                    "total_tokens": prompt_tokens + out,
                    "prompt_tokens_details": {"cached_tokens": cached},
                }
                u = self.usage[fmt]
                u["prompt_tokens"] += prompt_tokens
                u["cached_tokens"] += cached
                u["completion_tokens"] += out
            if fmt == "reasoningshield":
                thought = user.split("\nThought: ", 1)[1] if "\nThought: " in user else user
                unsafe = UNSAFE_MARKER in thought
                text = _RS_UNSAFE if unsafe else _RS_SAFE
            else:
                judged = user.rsplit("[Assistant]: ", 1)[1] if "[Assistant]: " in user else user
                unsafe = UNSAFE_MARKER in judged
                text = _FLEX_UNSAFE if unsafe else _FLEX_SAFE
            self.flagged += unsafe
            await _send_json(
                send,
                200,
                {
                    "id": "guard-sim",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": usage,
                },
            )
        finally:
            self.in_flight -= 1


def serve(app: Any, port: int, host: str = "127.0.0.1") -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=60,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    up = sub.add_parser("upstream", help="a streaming model server")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--ttft", type=float, default=0.05, help="seconds to the first token")
    up.add_argument("--itl", type=float, default=0.01, help="seconds between tokens")
    up.add_argument("--reasoning-tokens", type=int, default=100)
    up.add_argument("--answer-tokens", type=int, default=50)
    up.add_argument("--unsafe-at", type=int, default=None, help="reasoning token where the unsafe passage begins")
    up.add_argument("--reasoning-field", default="reasoning", choices=["reasoning", "reasoning_content"])
    g = sub.add_parser("guard", help="a FlexGuard / ReasoningShield server")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--latency", type=float, default=0.2, help="seconds before each answer")
    g.add_argument("--format", dest="fmt", default="auto", choices=["auto", "flexguard", "reasoningshield"])
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the simulators listen on loopback only")
    if args.kind == "upstream":
        app: Any = Upstream(
            ttft=args.ttft,
            itl=args.itl,
            reasoning_tokens=args.reasoning_tokens,
            answer_tokens=args.answer_tokens,
            unsafe_at=args.unsafe_at,
            reasoning_field=args.reasoning_field,
        )
    else:
        app = Guard(latency=args.latency, fmt=args.fmt)
    serve(app, args.port, args.host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
