"""Scenario 6: what protection costs: guard compute per protected token, and the abort
delay, for the fixed and the growing check schedules.

Per schedule, its own simulated upstream, guard (bench/sim.py with its latency model on:
batched decode steps, prefill of uncached prompt tokens, a prefix cache, ~120 output
tokens per ReasoningShield check and ~300 per FlexGuard check) and proxy (every stage
on, reasoning and answer `checked`, action `rewrite`); the schedules run side by side.

- Cost runs: reasoning traces of 500, 2,000 and 8,000 tokens (answer 100), a few
  concurrent requests each. Reported: checks per request (guard calls, from the guard
  simulator), guard prompt tokens computed and guard output tokens per upstream token
  (from the proxy's own /metrics counters), time to the first released token (client
  side, checked mode), proxy CPU per request (psutil).
- Abort runs: an 8,000-token trace that turns unsafe at token 100, 1,000 or 5,000;
  reported: tokens the upstream generated from the unsafe token on before the proxy
  stopped it (the simulator's `after_unsafe`).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .load import Client, chat_body, run_load
from .run import (
    MODEL,
    PROXY_KEYS_ENV,
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

ITL = 0.005  # 200 tokens/s per stream
ANSWER_TOKENS = 100
LENGTHS = (500, 2000, 8000)
UNSAFE_AT = (100, 1000, 5000)

SCHEDULES: dict[str, dict[str, Any]] = {
    "fixed 32 / 64": {
        "reasoning": {"schedule": "fixed", "check_every_tokens": 32},
        "answer": {"schedule": "fixed", "check_every_tokens": 64},
    },
    "growing 8, x1.25, max 256": {
        "reasoning": {"schedule": "growing", "first_check_tokens": 8, "growth": 1.25, "max_interval_tokens": 256},
        "answer": {"schedule": "growing", "first_check_tokens": 8, "growth": 1.25, "max_interval_tokens": 256},
    },
    "growing 16, x1.5, max 512": {
        "reasoning": {"schedule": "growing", "first_check_tokens": 16, "growth": 1.5, "max_interval_tokens": 512},
        "answer": {"schedule": "growing", "first_check_tokens": 16, "growth": 1.5, "max_interval_tokens": 512},
    },
}


def _toml(table_: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in table_.items())


def _config(name: str, port: int, upstream: Proc, guard: Proc, schedule: dict[str, Any], prompt: bool) -> Path:
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_s = 1.0
api_keys_env = "{PROXY_KEYS_ENV}"

[upstream]
base_url = "{upstream.base}/v1"

[policy.prompt]
enabled = {str(prompt).lower()}
mode = "parallel"

[policy.reasoning]
release = "checked"
action = "rewrite"
{_toml(schedule["reasoning"])}

[policy.answer]
release = "checked"
{_toml(schedule["answer"])}

[guards.flexguard]
model = "FlexGuard-Qwen3-8B"
base_url = "{guard.base}/v1"
timeout_s = 60.0
max_retries = 0

[guards.reasoningshield]
model = "ReasoningShield-3B"
base_url = "{guard.base}/v1"
timeout_s = 60.0
max_retries = 0
"""
    return write_config(name, text)


def _metrics(proc: Proc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    with urllib.request.urlopen(f"{proc.base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


class Stack:
    """One schedule's upstream, guard and proxy."""

    def __init__(self, label: str, schedule: dict[str, Any], tag: str) -> None:
        self.label = label
        self.upstream = start_upstream(f"cost-upstream-{tag}")
        self.guard = start_guard(f"cost-guard-{tag}")
        control(self.guard, model=True)
        # Every stage on, for the cost; and without the prompt check, for the abort delay
        # and the first release: FlexGuard's ~300-token thinking on the prompt would hold
        # the first reasoning check back by seconds, whatever the schedule.
        self.proxy = self._proxy(f"cost-proxy-{tag}", schedule, prompt=True)
        self.reasoning_proxy = self._proxy(f"cost-proxy-noprompt-{tag}", schedule, prompt=False)

    def _proxy(self, name: str, schedule: dict[str, Any], *, prompt: bool) -> Proc:
        port = free_port()
        cfg = _config(name, port, self.upstream, self.guard, schedule, prompt)
        return serve_proxy(name, cfg, port)

    def stop(self) -> None:
        for p in (self.proxy, self.reasoning_proxy, self.guard, self.upstream):
            p.stop()

    async def first_release(self, concurrency: int, client: Client) -> float | None:
        """Time to the first released token (checked mode), prompt check off."""
        control(self.upstream, ttft=0.05, itl=ITL, reasoning_tokens=min(LENGTHS), answer_tokens=ANSWER_TOKENS, unsafe_at=None)
        res = await run_load(
            f"{self.reasoning_proxy.base}/v1/chat/completions",
            chat_body(MODEL),
            concurrency,
            requests=concurrency,
            client=client,
            timeout=600.0,
        )
        ttft: float | None = res.summary()["ttft_p50"]
        return ttft

    async def cost(self, length: int, concurrency: int, requests: int, client: Client) -> dict[str, Any]:
        control(self.upstream, ttft=0.05, itl=ITL, reasoning_tokens=length, answer_tokens=ANSWER_TOKENS, unsafe_at=None)
        http_json("POST", self.guard.base + "/stats/reset", {})
        m0, cpu0 = _metrics(self.proxy), self.proxy.cpu_seconds()
        res = await run_load(
            f"{self.proxy.base}/v1/chat/completions",
            chat_body(MODEL),
            concurrency,
            requests=requests,
            client=client,
            timeout=600.0,
        )
        cpu = self.proxy.cpu_seconds() - cpu0
        await asyncio.sleep(0.3)
        m1 = _metrics(self.proxy)
        st = http_json("GET", self.guard.base + "/stats")
        s = res.summary()
        n = s["ok"] or 1

        def d(name: str) -> float:
            return _sum(m1, name) - _sum(m0, name)

        upstream_tokens = d("guardproxy_upstream_tokens_total")
        return {
            "length": length,
            "requests": s["requests"],
            "ok": s["ok"],
            "errors": s["errors"],
            "checks_reasoningshield": st["requests"]["reasoningshield"] / n,
            "checks_flexguard": st["requests"]["flexguard"] / n,
            "upstream_tokens_per_req": upstream_tokens / n,
            "guard_prompt_per_token": d("guardproxy_guard_prompt_tokens_total") / upstream_tokens if upstream_tokens else None,
            "guard_cached_per_token": d("guardproxy_guard_cached_tokens_total") / upstream_tokens if upstream_tokens else None,
            "guard_output_per_token": d("guardproxy_guard_output_tokens_total") / upstream_tokens if upstream_tokens else None,
            "ttft_p50": s["ttft_p50"],
            "total_p50": s["total_p50"],
            "cpu_ms_per_req": cpu / n * 1000,
        }

    async def abort(self, unsafe_at: int, concurrency: int, client: Client) -> dict[str, Any]:
        control(
            self.upstream, ttft=0.05, itl=ITL, reasoning_tokens=max(LENGTHS), answer_tokens=ANSWER_TOKENS, unsafe_at=unsafe_at
        )
        http_json("POST", self.upstream.base + "/stats/reset", {})
        res = await run_load(
            f"{self.reasoning_proxy.base}/v1/chat/completions",
            chat_body(MODEL),
            concurrency,
            requests=concurrency,
            client=client,
            timeout=600.0,
        )
        for _ in range(50):
            st = http_json("GET", self.upstream.base + "/stats")
            if st["active"] == 0:
                break
            await asyncio.sleep(0.05)
        after = st["after_unsafe"]
        return {
            "unsafe_at": unsafe_at,
            "requests": res.summary()["requests"],
            "aborted": st["aborted"],
            "unsafe_completed": st["unsafe_completed"],
            "after_unsafe": after,
            "delay_median": statistics.median(after) if after else None,
        }


async def _one(label: str, stack: Stack, cfg: dict[str, Any], client: Client) -> dict[str, Any]:
    cost = []
    for length in LENGTHS:
        r = await stack.cost(length, cfg["cost_c"], cfg["cost_requests"], client)
        print(
            f"    {label:<28} L={length:<5} RS checks {r['checks_reasoningshield']:.1f} FG {r['checks_flexguard']:.1f} "
            f"guard prompt/out per token {fmt(r['guard_prompt_per_token'], 2)}/{fmt(r['guard_output_per_token'], 2)} "
            f"cpu {r['cpu_ms_per_req']:.0f} ms",
            flush=True,
        )
        cost.append(r)
    first = await stack.first_release(cfg["cost_abort_c"], client)
    print(f"    {label:<28} first released token p50 {fmt(first and first * 1000, 0)} ms", flush=True)
    aborts = []
    for k in UNSAFE_AT:
        a = await stack.abort(k, cfg["cost_abort_c"], client)
        print(f"    {label:<28} unsafe at {k:<5} tokens after it: {a['after_unsafe']}", flush=True)
        aborts.append(a)
    return {"cost": cost, "abort": aborts, "first_release": first}


async def scenario_cost(cfg: dict[str, Any], client: Client) -> dict[str, Any]:
    """6: guard tokens per protected token, abort delay and first release, per schedule."""
    stacks = {label: Stack(label, sched, str(i)) for i, (label, sched) in enumerate(SCHEDULES.items())}
    try:
        model = http_json("POST", next(iter(stacks.values())).guard.base + "/control", {"model": True})["model"]
        results = await asyncio.gather(*(_one(label, s, cfg, client) for label, s in stacks.items()))
    finally:
        for s in stacks.values():
            s.stop()
    return {
        "itl": ITL,
        "answer_tokens": ANSWER_TOKENS,
        "guard_model": model,
        "schedules": SCHEDULES,
        "results": dict(zip(stacks, results, strict=True)),
        "settings": cfg,
    }


def report_cost(res: dict[str, Any]) -> str:
    out = ["## 6. What protection costs: guard compute per protected token, by check schedule\n"]
    rows = []
    for label, r in res["results"].items():
        for c in r["cost"]:
            rows.append(
                [
                    label,
                    str(c["length"]),
                    fmt(c["checks_reasoningshield"], 1),
                    fmt(c["checks_flexguard"], 1),
                    fmt(c["guard_prompt_per_token"], 2),
                    fmt(c["guard_output_per_token"], 2),
                    fmt(c["cpu_ms_per_req"], 0),
                ]
            )
    out.append(
        table(
            [
                "schedule (reasoning and answer)",
                "reasoning tokens",
                "ReasoningShield checks/req",
                "FlexGuard checks/req",
                "guard prompt tokens computed / upstream token",
                "guard output tokens / upstream token",
                "proxy CPU ms/req",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        table(
            ["schedule", "abort delay (tokens) @100", "@1,000", "@5,000", "first released token p50 (ms)"],
            [
                [
                    label,
                    *(fmt({a["unsafe_at"]: a["delay_median"] for a in r["abort"]}.get(k), 0) for k in UNSAFE_AT),
                    fmt(r["first_release"] and r["first_release"] * 1000, 0),
                ]
                for label, r in res["results"].items()
            ],
        )
    )
    m = res["guard_model"]
    s = res["settings"]
    out.append(
        f"\nUpstream: reasoning of the given length then {res['answer_tokens']} answer tokens, "
        f"{res['itl'] * 1000:g} ms apart (first token at 50 ms). Guard simulator (bench/sim.py latency model; "
        f"model assumptions, not measurements): decode step {m['decode_s']['flexguard'] * 1000:g} ms FlexGuard, "
        f"{m['decode_s']['reasoningshield'] * 1000:g} ms ReasoningShield (+{m['batch_slowdown'] * 100:g}% per extra "
        f"check in the batch), prefill {m['prefill_s_per_token'] * 1e6:g} us per uncached prompt token, output "
        f"{m['output_tokens']['flexguard']} / {m['output_tokens']['reasoningshield']} tokens, prefix cache of 16-token "
        f"blocks. Checks per request are guard calls (FlexGuard: 1 prompt check + the answer checks). Guard tokens "
        f"per upstream token come from the proxy's own counters (guardproxy_guard_*_tokens_total over "
        f"guardproxy_upstream_tokens_total). 'abort delay': median tokens the upstream generated from the unsafe "
        f"token on before the proxy stopped it, for an 8,000-token trace turning unsafe at the given token "
        f"({s['cost_abort_c']} requests each); 'first released token': client time to the first token of a "
        f"500-token trace in `checked` mode (the upstream's first token at 50 ms). Both without the prompt check, "
        f"whose ~300-token FlexGuard thinking would hold the first reasoning check back whatever the schedule. {s['cost_requests']} requests per length at concurrency {s['cost_c']}.\n"
    )
    return "\n".join(out) + "\n"
