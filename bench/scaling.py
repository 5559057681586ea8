"""The constants of the sizing rule (docs/deploy.md, "Sizing"): proxy CPU per request, checks per request
and guard latency, for one request shape (2,000 reasoning tokens, 300 answer tokens),
guards off against the default config, side by side in one run.

    python -m bench.scaling [--quick]

A script you run on purpose. One simulated upstream; one guard simulator with its
latency model on (bench/sim.py: batched decode steps, prefill, prefix cache; a model of
GPU guards, not a measurement of them); two proxies started with the real CLI: every
guard off, and the product's defaults (every stage on, the default check schedules).
They take turns in rounds. CPU is user + system of the proxy process per request; checks
per request and guard latency come from the proxy's own /metrics. Output: a markdown
table on stdout and in bench/results/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from proxy._config import ProxyConfig
from proxy.pipeline._monitor import check_positions

from .compare import loadavg, rotations, rounds, warm_up
from .load import Client
from .run import (
    PROXY_KEYS_ENV,
    RESULTS,
    Proc,
    Target,
    control,
    fmt,
    free_port,
    ms,
    proxy_config,
    serve_proxy,
    start_guard,
    start_upstream,
    table,
    write_config,
)

OUT_MD = RESULTS / "scaling.md"
SHAPE = {"ttft": 0.05, "itl": 0.005, "reasoning_tokens": 2000, "answer_tokens": 300, "unsafe_at": None}
CONCURRENCY = 64


def _defaults_config(name: str, port: int, upstream: Proc, guard: Proc) -> str:
    """The product's defaults: only where the servers are, and the bench's key."""
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_s = 1.0
api_keys_env = "{PROXY_KEYS_ENV}"

[upstream]
base_url = "{upstream.base}/v1"

[guards.flexguard]
model = "FlexGuard-Qwen3-8B"
base_url = "{guard.base}/v1"

[guards.reasoningshield]
model = "ReasoningShield-3B"
base_url = "{guard.base}/v1"
"""
    return str(write_config(name, text))


def _metrics(proc: Proc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{proc.base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in m.items() if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))


async def amain(n_rounds: int, duration: float) -> dict[str, Any]:
    upstream = start_upstream("scaling-upstream")
    control(upstream, **SHAPE)
    guard = start_guard("scaling-guard")
    control(guard, model=True)
    off_port, on_port = free_port(), free_port()
    off = serve_proxy("scaling-off", str(proxy_config("scaling-off", off_port, upstream, auth=True)), off_port)
    on = serve_proxy("scaling-on", _defaults_config("scaling-on", on_port, upstream, guard), on_port)
    targets = [Target("guards off", off.base, off), Target("defaults", on.base, on)]
    try:
        async with Client("aiohttp", pool=256) as client:
            await warm_up(targets, CONCURRENCY, client)
            m0 = _metrics(on)
            la0 = loadavg()
            res = await rounds(targets, CONCURRENCY, n_rounds, duration, client, rotations(len(targets)))
            await asyncio.sleep(0.5)
            m1 = _metrics(on)
    finally:
        for p in (on, off, guard, upstream):
            p.stop()

    def d(name: str, **labels: str) -> float:
        return _total(m1, name, **labels) - _total(m0, name, **labels)

    requests = d("guardproxy_requests_total")
    checks = {stage: d("guardproxy_guard_checks_total", stage=stage) / requests for stage in ("prompt", "reasoning", "answer")}
    latency = {
        guard_name: d("guardproxy_guard_check_duration_seconds_sum", guard=guard_name)
        / max(1.0, d("guardproxy_guard_check_duration_seconds_count", guard=guard_name))
        for guard_name in ("flexguard", "reasoningshield")
    }
    return {"results": res, "loadavg": [la0, loadavg()], "requests_on": requests, "checks": checks, "latency": latency}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n_rounds, duration = (2, 10.0) if args.quick else (3, 20.0)
    t0 = time.monotonic()
    try:
        out = asyncio.run(amain(n_rounds, duration))
    finally:
        Proc.stop_all()
    res = out["results"]
    defaults = ProxyConfig().policy
    bound = {
        "prompt": 1,
        "reasoning": len(check_positions(defaults.reasoning, SHAPE["reasoning_tokens"])),
        "answer": len(check_positions(defaults.answer, SHAPE["answer_tokens"])),
    }
    rows = [
        [name, fmt(s["rps"]), fmt(s.get("cpu_ms_per_req"), 1), ms(s["ttft_p50"]), str(s["errors"])] for name, s in res.items()
    ]
    off_cpu, on_cpu = res["guards off"].get("cpu_ms_per_req"), res["defaults"].get("cpu_ms_per_req")
    checks, latency = out["checks"], out["latency"]
    check_rows = [
        ["FlexGuard, prompt", fmt(checks["prompt"], 2), str(bound["prompt"]), fmt(latency["flexguard"], 2)],
        ["ReasoningShield, reasoning", fmt(checks["reasoning"], 2), str(bound["reasoning"]), fmt(latency["reasoningshield"], 2)],
        ["FlexGuard, answer", fmt(checks["answer"], 2), str(bound["answer"]), fmt(latency["flexguard"], 2)],
    ]
    md = "\n".join(
        [
            "# The sizing rule's constants: one request shape, guards off against the defaults\n",
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]} · "
            f"run took {time.monotonic() - t0:.0f} s · load average {out['loadavg'][0]} -> {out['loadavg'][1]} · "
            f"`python -m bench.scaling{' --quick' if args.quick else ''}`\n",
            table(["proxy", "req/s", "CPU ms/req", "TTFT p50 (ms)", "errors"], rows),
            "",
            f"CPU per request, defaults over guards off: {fmt(on_cpu / off_cpu if on_cpu and off_cpu else None, 2)}.\n",
            table(
                ["guard, stage", "checks/req (measured)", "checks/req (instant guard)", "guard latency s (simulated)"], check_rows
            ),
            f"\nStream: {SHAPE['reasoning_tokens']} reasoning + {SHAPE['answer_tokens']} answer tokens, "
            f"{SHAPE['itl'] * 1000:g} ms apart; concurrency {CONCURRENCY}; {n_rounds} rounds x {duration:g} s per proxy, "
            "in an order that changes every round. 'defaults': the product's default policy and schedules (reasoning "
            "growing 8 / x1.25 / max 256, answer every 64). Checks per request measured from the proxy's "
            "guardproxy_guard_checks_total over its requests; 'instant guard' is check_positions() for this length, "
            "the most a guard that answers at once would get (a slower one makes the growing schedule sparser). "
            "Guard latency is the mean of guardproxy_guard_check_duration_seconds against the guard simulator's latency "
            "model (bench/sim.py: an assumption, not a GPU measurement). The simulators share the machine's 2 cores "
            "with the proxies.\n",
        ]
    )
    OUT_MD.write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
