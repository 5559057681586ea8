"""Async load generator: N concurrent streaming chat-completion clients.

    python -m bench.load --url http://127.0.0.1:8080/v1/chat/completions -c 32 \\
        --requests 200 --duration 20 [--client aiohttp|httpx]

Each client sends one request after another until the request budget or the duration
is used up (requests in flight then finish, bounded by ``--timeout``). Per request:
TTFT (time to the first event carrying reasoning or content text), the gaps between
token-carrying events (inter-token latency), total latency, tokens, finish reason.
An error is a non-200 status, a broken or timed-out stream, or a stream without
``[DONE]``. The default client is aiohttp (``python -m bench.load --compare-clients``
measures both against the same server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

__all__ = ["Sample", "LoadResult", "run_load", "chat_body"]


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    error: msgspec.Raw = msgspec.Raw()


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


@dataclass
class Sample:
    start: float
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float | None = None
    total: float | None = None
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    finish_reason: str | None = None


class _StreamParser:
    """Feeds raw bytes; records token events with their arrival time."""

    __slots__ = ("sample", "buf", "last", "done")

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.buf = b""
        self.last: float | None = None
        self.done = False

    def feed(self, piece: bytes, now: float) -> None:
        buf = self.buf + piece
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event = buf[start:end]
            start = end + 2
            self._event(event.strip(b"\r"), now)
        self.buf = buf[start:]

    def _event(self, event: bytes, now: float) -> None:
        if not event.startswith(b"data:"):
            return
        data = event[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError:
            self.sample.error = "bad chunk"
            return
        if len(chunk.error) and bytes(chunk.error) != b"null":
            self.sample.error = "error event: " + bytes(chunk.error)[:120].decode(errors="replace")
        s = self.sample
        has_text = False
        for ch in chunk.choices:
            d = ch.delta
            if d is not None and (d.content or d.reasoning or d.reasoning_content):
                has_text = True
            if ch.finish_reason is not None:
                s.finish_reason = ch.finish_reason
        if has_text:
            s.tokens += 1
            if self.last is None:
                s.ttft = now - s.start
            else:
                s.gaps.append(now - self.last)
            self.last = now


def chat_body(model: str = "sim-model", stream: bool = True, extra: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Plan a weekend trip to the mountains, step by step."}],
        "stream": stream,
        "max_tokens": 1024,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(extra or {})
    return json.dumps(body).encode()


# run.py sets the key that the proxies under test accept (guardproxy api_keys_env, LiteLLM master key).
_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-local-0123456789abcdef"}


async def _one_aiohttp(session: Any, url: str, body: bytes, timeout: float) -> Sample:
    import aiohttp

    s = Sample(start=time.perf_counter())
    p = _StreamParser(s)
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, data=body, headers=_HEADERS) as resp:
                s.status = resp.status
                if resp.status != 200:
                    s.error = f"HTTP {resp.status}: {(await resp.read())[:160]!r}"
                    return s
                async for piece in resp.content.iter_any():
                    p.feed(piece, time.perf_counter())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"[:200]
    return _finished(s, p)


def _finished(s: Sample, p: _StreamParser) -> Sample:
    """Close a sample: total time, and an error when the stream did not end with [DONE]."""
    s.total = time.perf_counter() - s.start
    s.ok = p.done and not s.error
    if not p.done and not s.error:
        s.error = "stream ended without [DONE]"
    return s


async def _one_httpx(client: Any, url: str, body: bytes, timeout: float) -> Sample:
    import httpx

    s = Sample(start=time.perf_counter())
    p = _StreamParser(s)
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url, content=body, headers=_HEADERS) as resp:
                s.status = resp.status_code
                if resp.status_code != 200:
                    s.error = f"HTTP {resp.status_code}: {(await resp.aread())[:160]!r}"
                    return s
                async for piece in resp.aiter_raw():
                    p.feed(piece, time.perf_counter())
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"[:200]
    return _finished(s, p)


def _pct(values: list[float] | np.ndarray, q: float) -> float | None:
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


@dataclass
class LoadResult:
    label: str
    concurrency: int
    samples: list[Sample]
    wall: float

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        ttft = [s.ttft for s in ok if s.ttft is not None]
        total = [s.total for s in ok if s.total is not None]
        gaps = np.concatenate([np.asarray(s.gaps) for s in ok if s.gaps]) if any(s.gaps for s in ok) else np.array([])
        errors = [s.error for s in self.samples if not s.ok]
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "ok": len(ok),
            "errors": len(errors),
            "error_kinds": dict(Counter(e.split(":")[0] for e in errors).most_common(5)),
            "error_example": errors[0] if errors else None,
            "wall_s": self.wall,
            "rps": len(ok) / self.wall if self.wall > 0 else 0.0,
            "tokens_per_s": sum(s.tokens for s in ok) / self.wall if self.wall > 0 else 0.0,
            "tokens_per_req": (sum(s.tokens for s in ok) / len(ok)) if ok else 0.0,
            "ttft_p50": _pct(ttft, 50),
            "ttft_p99": _pct(ttft, 99),
            "ttft_mean": float(np.mean(ttft)) if ttft else None,
            "itl_p50": _pct(gaps, 50),
            "itl_p99": _pct(gaps, 99),
            "total_p50": _pct(total, 50),
            "total_p99": _pct(total, 99),
            "finish_reasons": dict(Counter(s.finish_reason for s in ok)),
        }


class Client:
    """One pooled HTTP client (aiohttp or httpx) shared by all simulated users."""

    def __init__(self, kind: str = "aiohttp", pool: int = 1024) -> None:
        self.kind = kind
        self.pool = pool
        self._c: Any = None

    async def __aenter__(self) -> Client:
        if self.kind == "aiohttp":
            import aiohttp

            conn = aiohttp.TCPConnector(limit=self.pool, limit_per_host=self.pool, force_close=False)
            self._c = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        else:
            import httpx

            limits = httpx.Limits(max_connections=self.pool, max_keepalive_connections=self.pool)
            self._c = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None), trust_env=False)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.kind == "aiohttp":
            await self._c.close()
        else:
            await self._c.aclose()

    async def request(self, url: str, body: bytes, timeout: float) -> Sample:
        if self.kind == "aiohttp":
            return await _one_aiohttp(self._c, url, body, timeout)
        return await _one_httpx(self._c, url, body, timeout)


async def run_load(
    url: str,
    body: bytes,
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    client: Client | None = None,
    client_kind: str = "aiohttp",
    timeout: float = 60.0,
    label: str = "",
) -> LoadResult:
    """Run ``concurrency`` clients until ``requests`` were sent or ``duration`` passed."""
    if requests is None and duration is None:
        raise ValueError("give requests, duration or both")
    budget = requests if requests is not None else 10_000_000
    deadline = float("inf")
    issued = 0
    samples: list[Sample] = []

    async def user(c: Client) -> None:
        nonlocal issued
        while issued < budget and time.perf_counter() < deadline:
            issued += 1
            samples.append(await c.request(url, body, timeout))

    async def go(c: Client) -> float:
        nonlocal deadline
        t0 = time.perf_counter()
        if duration is not None:
            deadline = t0 + duration
        await asyncio.gather(*(user(c) for _ in range(concurrency)))
        return time.perf_counter() - t0

    hard_limit = (duration or 0) + timeout * (1 + (budget if duration is None else 0) // max(1, concurrency)) + 10
    if client is None:
        async with Client(client_kind, pool=max(64, concurrency * 2)) as c:
            wall = await asyncio.wait_for(go(c), hard_limit)
    else:
        wall = await asyncio.wait_for(go(client), hard_limit)
    return LoadResult(label or url, concurrency, samples, wall)


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def print_summary(s: dict[str, Any]) -> None:
    print(
        f"{s['label']}: c={s['concurrency']} ok={s['ok']}/{s['requests']} errors={s['errors']} "
        f"rps={s['rps']:.1f} ttft p50/p99={_fmt_ms(s['ttft_p50'])}/{_fmt_ms(s['ttft_p99'])} ms "
        f"itl p50/p99={_fmt_ms(s['itl_p50'])}/{_fmt_ms(s['itl_p99'])} ms "
        f"total p50/p99={_fmt_ms(s['total_p50'])}/{_fmt_ms(s['total_p99'])} ms"
    )
    if s["error_example"]:
        print(f"  first error: {s['error_example']}")


async def _main(args: argparse.Namespace) -> None:
    body = chat_body(args.model, extra=json.loads(args.extra) if args.extra else None)
    kinds = ["aiohttp", "httpx"] if args.compare_clients else [args.client]
    for kind in kinds:
        result = await run_load(
            args.url,
            body,
            args.concurrency,
            requests=args.requests,
            duration=args.duration,
            client_kind=kind,
            timeout=args.timeout,
            label=f"{kind}",
        )
        print_summary(result.summary())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-n", "--requests", type=int, default=None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--client", default="aiohttp", choices=["aiohttp", "httpx"])
    parser.add_argument("--compare-clients", action="store_true")
    parser.add_argument("--model", default="sim-model")
    parser.add_argument("--extra", default="", help="JSON merged into the request body")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("benchmark traffic goes to 127.0.0.1 only")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
