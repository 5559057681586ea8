"""Steer against rewrite: what answering a flagged request costs, against refusing it.

    python -m bench.steer [--requests 200] [--concurrency 16] [--unsafe-share 0.5] \\
        [--unsafe-at 20] [--guard-latency 0.05] [--actions rewrite,steer]

A script you run on purpose, not part of the test suite. One simulated upstream
(bench/sim.py: 100 reasoning and 50 answer tokens, 10 ms apart, 50 ms to the first
token) and one ReasoningShield simulator, shared by two proxies started with the real
CLI that differ in one thing: ``[policy.reasoning] action = "rewrite"`` (stop the model
and answer with the refusal) against ``action = "steer"`` (stop the model, roll its
reasoning back to the last passing check and let it go on after the steering text;
``[upstream] continuation = "completions"``, ``max_steers = 2``, ``steer_fallback =
"rewrite"``). The reasoning stage only (release ``checked``, the default growing
schedule); the prompt and answer stages are off so that guard calls are the reasoning
checks alone.

The same requests go to both arms, one arm after the other: a share ``--unsafe-share``
of them (spread evenly) turns unsafe at reasoning token ``--unsafe-at`` of the first
generation (the simulator's per-request ``x_sim``); a continuation the simulator
writes is always safe and runs for the reasoning tokens the first generation still had
to go, then ``</think>`` and the answer. The simulator gives a continuation the same
time to first token as a fresh request (no prefix cache saving), so the steer arm's
added time is an upper bound on that count.

Per arm: answered share (``finish_reason: "stop"`` with non-empty content), overall and
among flagged requests; time to last token (the last chunk carrying reasoning or
content text), flagged and clean; the added time of a steered request over a clean one
(means); upstream tokens per steered request spent on continuations (generated plus
prompt tokens, from the simulator's ``/stats``); guard calls per request (the guard
simulator's ``/stats``). A request counts as steered where its response's ``guardproxy``
annotation carries ``steering`` with ``steers`` >= 1.

Output: a markdown table on stdout and in bench/results/steer.md, per-request records
in bench/results/logs/steer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import httpx

from .run import (
    API_KEY,
    LOGS,
    MODEL,
    PROXY_KEYS_ENV,
    RESULTS,
    Proc,
    control,
    fmt,
    free_port,
    http_json,
    ms,
    serve_proxy,
    start_guard,
    start_upstream,
    table,
    write_config,
    write_results,
)
from .sim import UNSAFE_MARKER

OUT_MD = RESULTS / "steer.md"
OUT_JSON = LOGS / "steer.json"
SHAPE: dict[str, Any] = {"ttft": 0.05, "itl": 0.01, "reasoning_tokens": 100, "answer_tokens": 50, "unsafe_at": None}
ACTIONS = ("rewrite", "steer")
_STEER = """max_steers = 2
steer_fallback = "rewrite"
"""


def _config(name: str, port: int, upstream: Proc, guard: Proc, action: str) -> str:
    steer = action == "steer"
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_s = 1.0
api_keys_env = "{PROXY_KEYS_ENV}"

[upstream]
base_url = "{upstream.base}/v1"
max_connections = 1000
unscreened_fields = ["x_sim"]
{'continuation = "completions"' if steer else ""}

[policy.prompt]
enabled = false

[policy.reasoning]
enabled = true
release = "checked"
action = "{action}"
{_STEER if steer else ""}
[policy.answer]
enabled = false

[guards.flexguard]
enabled = false

[guards.reasoningshield]
model = "ReasoningShield-3B"
base_url = "{guard.base}/v1"
timeout_s = 30.0
max_retries = 0
"""
    return str(write_config(name, text))


def _start(name: str, upstream: Proc, guard: Proc, action: str) -> Proc:
    port = free_port()
    config = _config(name, port, upstream, guard, action)
    return serve_proxy(name, config, port)


def flagged_plan(n: int, share: float) -> list[bool]:
    """Which requests turn unsafe: ``share`` of ``n``, spread evenly."""
    return [int((i + 1) * share) > int(i * share) for i in range(n)]


def _steering(doc: Any) -> dict[str, Any] | None:
    """The ``steering`` annotation wherever the proxy put it (under ``guardproxy``, in
    the finish chunk's ``content_filter_results`` or beside the choices, per stage or
    not); None where absent."""
    if isinstance(doc, dict):
        steering = doc.get("steering")
        if isinstance(steering, dict):
            return steering
        values: Any = doc.values()
    elif isinstance(doc, list):
        values = doc
    else:
        return None
    for v in values:
        if isinstance(v, dict | list):
            found = _steering(v)
            if found is not None:
                return found
    return None


def _has_text(delta: dict[str, Any]) -> bool:
    return any(isinstance(delta.get(k), str) and delta[k] for k in ("content", "reasoning", "reasoning_content"))


async def _one(client: httpx.AsyncClient, url: str, index: int, unsafe_at: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Question {index}: plan a weekend trip to the mountains, step by step."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1024,
        "x_sim": {"unsafe_at": unsafe_at},
    }
    rec: dict[str, Any] = {
        "index": index,
        "flagged": unsafe_at is not None,
        "finish_reason": None,
        "content": "",
        "leaked": False,
    }
    steering: dict[str, Any] | None = None
    t0 = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {API_KEY}"}) as r:
            if r.status_code != 200:
                rec["error"] = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                doc = json.loads(line[6:])
                steering = _steering(doc) or steering
                for ch in doc.get("choices") or []:
                    delta = ch.get("delta") or {}
                    if _has_text(delta):
                        last = time.perf_counter()
                    if isinstance(delta.get("content"), str):
                        rec["content"] += delta["content"]
                    for k in ("reasoning", "reasoning_content", "content"):
                        if isinstance(delta.get(k), str) and UNSAFE_MARKER in delta[k]:
                            rec["leaked"] = True
                    if ch.get("finish_reason"):
                        rec["finish_reason"] = ch["finish_reason"]
                if doc.get("error"):
                    rec["error"] = str(doc["error"])[:200]
    except httpx.HTTPError as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["ttlt"] = None if last is None else last - t0
    rec["steering"] = steering
    rec["steers"] = int(steering.get("steers") or 0) if steering else 0
    rec["answered"] = rec["finish_reason"] == "stop" and bool(rec["content"].strip())
    return rec


async def _batch(url: str, plan: list[bool], unsafe_at: int, concurrency: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> dict[str, Any]:
        async with sem:
            return await _one(client, url, i, unsafe_at if plan[i] else None)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(len(plan)))))


async def run_arm(proxy: Proc, upstream: Proc, guard: Proc, plan: list[bool], args: argparse.Namespace) -> dict[str, Any]:
    url = f"{proxy.base}/v1/chat/completions"
    await _batch(url, [False] * args.concurrency, args.unsafe_at, args.concurrency)  # warm the connections
    http_json("POST", upstream.base + "/stats/reset", {})
    http_json("POST", guard.base + "/stats/reset", {})
    t0 = time.monotonic()
    records = await _batch(url, plan, args.unsafe_at, args.concurrency)
    elapsed = time.monotonic() - t0
    up = http_json("GET", upstream.base + "/stats")
    gd = http_json("GET", guard.base + "/stats")
    return {"records": records, "elapsed_s": elapsed, "upstream": up, "guard": gd}


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarize(arm: dict[str, Any]) -> dict[str, Any]:
    recs = arm["records"]
    flagged = [r for r in recs if r["flagged"]]
    clean = [r for r in recs if not r["flagged"]]
    steered = [r for r in recs if r["steers"] >= 1]
    up, gd = arm["upstream"], arm["guard"]

    def times(rs: list[dict[str, Any]]) -> list[float]:
        return [r["ttlt"] for r in rs if r["ttlt"] is not None]

    def share(rs: list[dict[str, Any]]) -> float | None:
        return sum(r["answered"] for r in rs) / len(rs) if rs else None

    t_flag, t_clean, t_steer = times(flagged), times(clean), times(steered)
    m_clean, m_steer, m_flag = _mean(t_clean), _mean(t_steer), _mean(t_flag)
    # A steered request over a clean one; where nothing was steered (rewrite), the flagged
    # requests stand in (a refusal ends early, so the figure is negative).
    m_base = m_steer if steered else m_flag
    continuations = int(up.get("continuations", 0))
    extra_tokens = int(up.get("continuation_tokens", 0)) + int(up.get("continuation_prompt_tokens", 0))
    outcomes: dict[str, int] = {}
    for r in steered:
        o = str((r["steering"] or {}).get("outcome", "?"))
        outcomes[o] = outcomes.get(o, 0) + 1
    return {
        "requests": len(recs),
        "flagged": len(flagged),
        "errors": sum(1 for r in recs if r.get("error")),
        "leaked": sum(r["leaked"] for r in recs),
        "answered": share(recs),
        "answered_flagged": share(flagged),
        "ttlt_flagged": (m_flag, _pct(t_flag, 0.5), _pct(t_flag, 0.95)),
        "ttlt_clean": (m_clean, _pct(t_clean, 0.5), _pct(t_clean, 0.95)),
        "steered": len(steered),
        "steers": sum(r["steers"] for r in recs),
        "outcomes": outcomes,
        "added_ttlt": None if m_base is None or m_clean is None else m_base - m_clean,
        "continuations": continuations,
        "extra_tokens_per_steered": extra_tokens / len(steered) if steered else None,
        "extra_tokens_per_continuation": extra_tokens / continuations if continuations else None,
        "upstream_tokens": int(up.get("tokens_generated", 0)),
        "tokenize": int(up.get("tokenize", 0)),
        "guard_calls_per_req": sum(gd["requests"].values()) / len(recs) if recs else None,
        "elapsed_s": arm["elapsed_s"],
    }


def _pct_str(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _t(v: tuple[float | None, float | None, float | None]) -> str:
    return " / ".join(ms(x, 0) for x in v)


def report(res: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    headers = [
        "action",
        "requests",
        "answered",
        "answered (flagged)",
        "TTLT flagged mean/p50/p95 (ms)",
        "TTLT clean mean/p50/p95 (ms)",
        "added TTLT, steered - clean (ms)",
        "steered (steers)",
        "extra upstream tokens / steered",
        "guard calls / req",
        "unsafe released",
        "errors",
    ]
    rows = []
    for action, s in res.items():
        rows.append(
            [
                action,
                f"{s['requests']} ({s['flagged']} flagged)",
                _pct_str(s["answered"]),
                _pct_str(s["answered_flagged"]),
                _t(s["ttlt_flagged"]),
                _t(s["ttlt_clean"]),
                ms(s["added_ttlt"], 0)
                + ("" if s["steered"] else " (refused)" if action == "rewrite" else " (flagged, none steered)"),
                f"{s['steered']} ({s['steers']})",
                fmt(s["extra_tokens_per_steered"], 0),
                fmt(s["guard_calls_per_req"], 2),
                str(s["leaked"]),
                str(s["errors"]),
            ]
        )
    a = meta["args"]
    lines = [
        "# Steer against rewrite\n",
        f"{meta['date']} · {meta['cpus']} CPUs · Python {meta['python']} · run took {meta['elapsed_s']:.0f} s\n",
        f"- reproduce: `{meta['command']}`\n",
        table(headers, rows),
        "",
        f"Upstream (bench/sim.py): {SHAPE['reasoning_tokens']} reasoning + {SHAPE['answer_tokens']} answer tokens, "
        f"{SHAPE['itl'] * 1000:g} ms apart, {SHAPE['ttft'] * 1000:g} ms to the first token; a share "
        f"{a['unsafe_share']:g} of the requests (spread evenly) turns unsafe at reasoning token {a['unsafe_at']} of the "
        "first generation. ReasoningShield simulator answering after "
        f"{a['guard_latency'] * 1000:g} ms; reasoning stage only (release `checked`, default growing schedule), "
        f"{a['requests']} requests at concurrency {a['concurrency']}, one arm after the other. Steer: "
        '`continuation = "completions"`, `max_steers = 2`, `steer_fallback = "rewrite"`.\n',
        'Answered = `finish_reason: "stop"` with non-empty content. TTLT = time to the last chunk carrying '
        "reasoning or content text. Added TTLT = mean TTLT of the steered requests minus that of the clean ones "
        "(for rewrite: of the flagged ones, which end early with the refusal). Extra upstream tokens = the "
        "continuations' generated plus prompt tokens (simulator `/stats`) over the steered requests; the "
        "simulator's continuation starts after the same time to first token as a fresh request and its prompt "
        "tokens count in full (no prefix cache), so both are upper bounds. Guard calls = ReasoningShield "
        "checks (guard simulator `/stats`) over the requests. Unsafe released = responses whose reasoning or "
        f"content carried the `{UNSAFE_MARKER}` marker to the client (0 expected: release `checked`).\n",
    ]
    for action, s in res.items():
        extra = ""
        if s["continuations"]:
            extra = (
                f", {s['continuations']} continuations, {fmt(s['extra_tokens_per_continuation'], 0)} upstream "
                f"tokens each, {s['tokenize']} `/tokenize` calls"
            )
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(s["outcomes"].items())) or "none"
        lines.append(
            f"- {action}: {s['elapsed_s']:.1f} s, upstream generated {s['upstream_tokens']} tokens{extra}; "
            f"steering outcomes: {outcomes}"
        )
    if "steer" in res and not res["steer"]["steered"]:
        lines.append(
            "\nNo request of the steer arm carried `guardproxy.steering`: the proxy under test did not steer "
            "(steering not implemented there, or the annotation is missing)."
        )
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    upstream = start_upstream("steer-upstream")
    control(upstream, **SHAPE)
    guard = start_guard("steer-guard", latency=args.guard_latency)
    plan = flagged_plan(args.requests, args.unsafe_share)
    raw: dict[str, Any] = {}
    try:
        for action in args.actions:
            proxy = _start(f"steer-proxy-{action}", upstream, guard, action)
            try:
                print(f"  {action}: {args.requests} requests at c={args.concurrency}", flush=True)
                raw[action] = await run_arm(proxy, upstream, guard, plan, args)
            finally:
                proxy.stop()
    finally:
        guard.stop()
        upstream.stop()
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--unsafe-share", type=float, default=0.5, help="share of requests whose reasoning turns unsafe")
    parser.add_argument("--unsafe-at", type=int, default=20, help="reasoning token where the unsafe passage begins")
    parser.add_argument("--guard-latency", type=float, default=0.05, help="seconds per ReasoningShield check")
    parser.add_argument("--actions", default=",".join(ACTIONS), help="comma-separated: rewrite,steer")
    args = parser.parse_args(argv)
    args.actions = [a.strip() for a in args.actions.split(",") if a.strip()]
    if not args.actions or any(a not in ACTIONS for a in args.actions):
        parser.error(f"--actions: a comma-separated subset of {','.join(ACTIONS)}")
    if not 0.0 <= args.unsafe_share <= 1.0:
        parser.error("--unsafe-share must be within [0, 1]")
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be >= 1")
    command = "python -m bench.steer " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.monotonic()
    try:
        raw = asyncio.run(amain(args))
    finally:
        Proc.stop_all()
    res = {action: summarize(arm) for action, arm in raw.items()}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "elapsed_s": time.monotonic() - t0,
        "command": command.strip(),
        "args": {k: v for k, v in vars(args).items()},
    }
    write_results(OUT_MD, report(res, meta), OUT_JSON, {"meta": meta, "summary": res, "arms": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
