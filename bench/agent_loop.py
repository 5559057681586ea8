"""What the verdict cache saves an agent: guard calls per request over a 10-turn agent loop,
with the cache on and off, side by side in one run.

    python -m bench.agent_loop [--agents 8] [--turns 10] [--instant]

A script you run on purpose, not part of the test suite. One simulated upstream and one
guard simulator per proxy (bench/sim.py; its latency model on unless ``--instant``:
batched decode steps, prefill of uncached prompt tokens, a prefix cache), and two proxies
started with the real CLI that screen every message of the conversation, the system
prompt included (``[policy.prompt] screen = "conversation"``, ``screen_system = true``);
the reasoning and answer stages are off, because their checks read new text by nature
and the cache does not serve them. One proxy keeps the default cache, the other has
``[guards] cache_entries = 0``.

Each agent runs the loop an agent framework runs: a system prompt and tool definitions
shared by all agents, a task, then per turn the whole history plus one new message (a
tool result or a user follow-up, in turn) after the assistant turn the proxy returned.
All agents send turn k together; guard calls per request are the guard simulator's
requests in that round over the agents. The two proxies run the same loop in turns.

Output: a markdown table on stdout and in bench/results/agent_loop.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import httpx

from .run import (
    API_KEY,
    LOGS,
    PROXY_KEYS_ENV,
    RESULTS,
    Proc,
    control,
    fmt,
    free_port,
    http_json,
    serve_proxy,
    start_guard,
    start_upstream,
    table,
    write_config,
)

OUT_MD = RESULTS / "agent_loop.md"
SHAPE = {"ttft": 0.02, "itl": 0.001, "reasoning_tokens": 0, "answer_tokens": 30, "unsafe_at": None}
SYSTEM = (
    "You are a travel assistant for a rail operator. Plan trips with the tools: look up trains, check seats and "
    "prices, and book only when the traveller confirms. Answer briefly, state times in 24-hour format, and never "
    "invent a connection that a tool did not return."
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "what to look up"}},
                "required": ["query"],
            },
        },
    }
    for name, desc in (
        ("find_trains", "Trains between two stations on a day, with departure and arrival times."),
        ("check_seats", "Free seats and prices on one train."),
        ("book", "Book seats on a train for the traveller; returns a booking reference."),
    )
]
CITIES = ["Lyon", "Turin", "Milan", "Geneva", "Zurich", "Munich", "Vienna", "Prague", "Berlin", "Paris", "Basel", "Bern"]


def _config(name: str, port: int, upstream: Proc, guard: Proc, cache_entries: int | None) -> str:
    cache = f"[guards]\ncache_entries = {cache_entries}\n" if cache_entries is not None else ""
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_s = 1.0
api_keys_env = "{PROXY_KEYS_ENV}"

[upstream]
base_url = "{upstream.base}/v1"

[policy.prompt]
screen = "conversation"
screen_system = true

[policy.reasoning]
enabled = false

[policy.answer]
enabled = false

{cache}
[guards.flexguard]
model = "FlexGuard-Qwen3-8B"
base_url = "{guard.base}/v1"
max_retries = 0

[guards.reasoningshield]
enabled = false
"""
    return str(write_config(name, text))


def _start(name: str, upstream: Proc, guard: Proc, cache_entries: int | None) -> Proc:
    port = free_port()
    config = _config(name, port, upstream, guard, cache_entries)
    return serve_proxy(name, config, port)


class Agent:
    """One agent's conversation: what it sends, and what it appends after each answer."""

    def __init__(self, index: int) -> None:
        a, b = CITIES[index % len(CITIES)], CITIES[(index * 5 + 3) % len(CITIES)]
        self.index = index
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Agent {index}: find me a morning train from {a} to {b} next Friday."},
        ]

    def body(self) -> dict[str, Any]:
        return {"model": "sim-model", "messages": self.messages, "tools": TOOLS}

    def answered(self, turn: int, answer: str) -> None:
        if turn % 2 == 0:  # the model called a tool; the agent runs it and sends the result
            call_id = f"call_{self.index}_{turn}"
            arguments = json.dumps({"query": f"leg {turn} of trip {self.index}"})
            self.messages.append(
                {
                    "role": "assistant",
                    "content": answer,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": TOOLS[turn % 3]["function"]["name"], "arguments": arguments},
                        }
                    ],
                }
            )
            self.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": f"Trip {self.index}, leg {turn}: IC {700 + 10 * self.index + turn} leaves 08:{turn:02d}, 2 seats free.",
                }
            )
        else:  # the traveller answers
            self.messages.append({"role": "assistant", "content": answer})
            self.messages.append({"role": "user", "content": f"Agent {self.index}: fine, and what comes after leg {turn}?"})


async def _request(client: httpx.AsyncClient, url: str, agent: Agent) -> tuple[str, dict[str, Any], float]:
    t0 = time.perf_counter()
    r = await client.post(url, json=agent.body(), headers={"authorization": f"Bearer {API_KEY}"})
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
    doc = r.json()
    prompt = doc["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]
    return doc["choices"][0]["message"]["content"] or "", prompt.get("guard_usage", {}), elapsed


async def _loop(proxy: Proc, guard: Proc, agents: int, turns: int) -> list[dict[str, Any]]:
    """Per turn: guard calls per request (the guard's count), the annotation's figures, latency."""
    url = f"{proxy.base}/v1/chat/completions"
    team = [Agent(i) for i in range(agents)]
    http_json("POST", guard.base + "/stats/reset", {})
    cpu0 = proxy.cpu_seconds()
    rows = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=agents)) as client:
        for turn in range(turns):
            before = http_json("GET", guard.base + "/stats")
            screened = len(team[0].messages)
            results = await asyncio.gather(*(_request(client, url, a) for a in team))
            after = http_json("GET", guard.base + "/stats")
            for agent, (answer, _, _) in zip(team, results, strict=True):
                agent.answered(turn, answer)
            calls = after["requests"]["flexguard"] - before["requests"]["flexguard"]
            rows.append(
                {
                    "turn": turn + 1,
                    "messages": screened,
                    "guard_calls": calls / agents,
                    "annotated_calls": sum(u.get("calls", 0) for _, u, _ in results) / agents,
                    "cache_hits": sum(u.get("cache_hits", 0) for _, u, _ in results) / agents,
                    "prompt_tokens": sum(u.get("prompt_tokens", 0) for _, u, _ in results) / agents,
                    "latency_p50": statistics.median(e for _, _, e in results),
                }
            )
    rows[-1]["cpu_ms_per_req"] = (proxy.cpu_seconds() - cpu0) * 1000 / (agents * turns)
    return rows


async def amain(agents: int, turns: int, instant: bool) -> dict[str, Any]:
    upstream = start_upstream("agent-upstream")
    control(upstream, **SHAPE)
    procs: dict[str, tuple[Proc, Proc]] = {}
    try:
        for label, entries in (("cache on", None), ("cache off", 0)):
            guard = start_guard(f"agent-guard-{entries}")
            if not instant:
                control(guard, model=True)
            procs[label] = (_start(f"agent-proxy-{entries}", upstream, guard, entries), guard)
        out = {}
        for label, (proxy, guard) in procs.items():
            print(f"  {label}: {agents} agents x {turns} turns", flush=True)
            out[label] = await _loop(proxy, guard, agents, turns)
        return out
    finally:
        for proxy, guard in procs.values():
            proxy.stop()
            guard.stop()
        upstream.stop()


def report(res: dict[str, list[dict[str, Any]]], agents: int, turns: int, instant: bool, elapsed: float, command: str) -> str:
    on, off = res["cache on"], res["cache off"]
    headers = [
        "turn",
        "messages (+ 3 tools)",
        "guard calls/req, cache off",
        "guard calls/req, cache on",
        "cache hits/req",
        "guard prompt tokens/req, off",
        "guard prompt tokens/req, on",
        "p50 latency off (s)",
        "p50 latency on (s)",
    ]
    rows = [
        [
            str(a["turn"]),
            str(a["messages"]),
            fmt(b["guard_calls"], 1),
            fmt(a["guard_calls"], 1),
            fmt(a["cache_hits"], 1),
            fmt(b["prompt_tokens"], 0),
            fmt(a["prompt_tokens"], 0),
            fmt(b["latency_p50"], 2),
            fmt(a["latency_p50"], 2),
        ]
        for a, b in zip(on, off, strict=True)
    ]

    def mean(rs: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rs) / len(rs)

    rows.append(
        [
            "mean",
            fmt(mean(on, "messages"), 1),
            fmt(mean(off, "guard_calls"), 1),
            fmt(mean(on, "guard_calls"), 1),
            fmt(mean(on, "cache_hits"), 1),
            fmt(mean(off, "prompt_tokens"), 0),
            fmt(mean(on, "prompt_tokens"), 0),
            fmt(mean(off, "latency_p50"), 2),
            fmt(mean(on, "latency_p50"), 2),
        ]
    )
    agree = all(abs(r["guard_calls"] - r["annotated_calls"]) < 1e-9 for r in on + off)
    guard_model = (
        "guard simulator answering at once"
        if instant
        else (
            "guard simulator with its latency model (bench/sim.py: 300 output tokens per FlexGuard check, batched decode, "
            "prefill of uncached tokens, prefix cache; an assumption, not a GPU measurement)"
        )
    )
    return (
        "\n".join(
            [
                "# The verdict cache in a 10-turn agent loop: guard calls per request, cache on and off\n",
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]} · "
                f"run took {elapsed:.0f} s · `{command}`\n",
                table(headers, rows),
                "",
                f"Over the {turns} turns: {fmt(mean(off, 'guard_calls'), 1)} guard calls per request without the cache, "
                f"{fmt(mean(on, 'guard_calls'), 1)} with it ({fmt(mean(off, 'guard_calls') / mean(on, 'guard_calls'), 1)}x fewer). "
                f"Proxy CPU per request: {fmt(off[-1]['cpu_ms_per_req'], 2)} ms off, {fmt(on[-1]['cpu_ms_per_req'], 2)} ms on.\n",
                f"{agents} agents run the loop together (all send turn k at once); each request carries the shared system "
                "prompt and three tool definitions, the history, and one new message: a tool result after the assistant's tool "
                'call and a user follow-up in turn. Policy: `[policy.prompt] screen = "conversation"`, '
                "`screen_system = true`; reasoning and answer stages off (their checks read new text as it streams and never "
                "use the cache). The system prompt, every message and each tool definition is one check. Guard calls per request are the guard "
                "simulator's requests in the turn over the agents"
                + (
                    " (the proxies' annotations report the same)"
                    if agree
                    else " (the proxies' annotations DISAGREE: see the JSON)"
                )
                + "; prompt tokens are those the guard's own prefix cache did not serve. "
                f"Guard: {guard_model}. Upstream: {SHAPE['answer_tokens']} answer tokens, {SHAPE['itl'] * 1000:g} ms apart.\n",
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8, help="agents running the loop together")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--instant", action="store_true", help="a guard that answers at once (counts only)")
    args = parser.parse_args(argv)
    command = "python -m bench.agent_loop " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.monotonic()
    try:
        res = asyncio.run(amain(args.agents, args.turns, args.instant))
    finally:
        Proc.stop_all()
    md = report(res, args.agents, args.turns, args.instant, time.monotonic() - t0, command.strip())
    OUT_MD.write_text(md)
    (LOGS / "agent_loop.json").write_text(json.dumps(res, indent=2))
    print()
    print(md)
    print(f"wrote {OUT_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
