"""The proxy's own cost with its guards on, against its guards off: before and after,
side by side in one run (target: CPU per request with the guards on at most 1.5x the
guards-off figure at c = 64 and 256, throughput at c = 256 at least 0.6).

    git worktree add /tmp/gp-before 3ff2197      # the old code, outside the repo
    python -m bench.guard_path --before /tmp/gp-before [--quick]
    git worktree remove --force /tmp/gp-before

A script you run on purpose, not part of the test suite. One simulated upstream
streaming 80 reasoning and 20 answer tokens 10 ms apart (a short reasoning request),
one guard simulator per proxy answering at once (bench/sim.py, latency 0: the guard's
own time is not what this measures), and four proxies started with the real CLI: the
old and the new code, each with its guards off and on (every stage: prompt check
`parallel`, reasoning `checked` every 32 tokens, answer `checked` every 64). At each
concurrency the four take turns in rounds, the order changing every round.

Output: a markdown table on stdout and in bench/results/guard-path.md, raw summaries in
bench/results/logs/guard-path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .compare import STARTED, loadavg, rotations, rounds, start_tree_proxy, tree_info, wait_for_quiet, warm_up
from .load import Client
from .run import LOGS, RESULTS, Proc, Target, control, fmt, http_json, ms, start_guard, start_upstream, table, write_results

OUT_MD = RESULTS / "guard-path.md"
OUT_JSON = LOGS / "guard-path.json"
SHAPE = {"ttft": 0.05, "itl": 0.01, "reasoning_tokens": 80, "answer_tokens": 20}
STAGES = {"prompt": True, "reasoning": True, "answer": True}


def settings(quick: bool) -> list[tuple[int, int, float]]:
    """(concurrency, rounds, seconds per round)."""
    return [(64, 2, 5.0), (256, 2, 6.0)] if quick else [(64, 4, 8.0), (256, 4, 8.0)]


async def amain(levels: list[tuple[int, int, float]], trees: dict[str, Path]) -> dict[str, Any]:
    upstream = start_upstream("gp-upstream")
    control(upstream, **SHAPE)
    guards = {v: start_guard(f"gp-guard-{v}", latency=0.0) for v in trees}
    procs: dict[str, Proc] = {}
    for v, tree in trees.items():
        procs[f"{v}-off"] = start_tree_proxy(f"gp-{v}-off", tree, upstream)
        procs[f"{v}-on"] = start_tree_proxy(f"gp-{v}-on", tree, upstream, guards[v], **STAGES)
    targets = [Target(name, p.base, p) for name, p in procs.items()]
    out: dict[str, Any] = {}
    try:
        async with Client("aiohttp", pool=2048) as client:
            for c, n_rounds, dur in levels:
                print(f"  c={c}: {n_rounds} rounds x {dur:g} s per target (load {loadavg()})", flush=True)
                await warm_up(targets, c, client)
                for g in guards.values():
                    http_json("POST", g.base + "/stats/reset", {})
                n0 = {t.name: t.cpu_requests for t in targets}
                la0 = loadavg()
                res = await rounds(targets, c, n_rounds, dur, client, rotations(len(targets)))
                for v, g in guards.items():
                    n = targets[[t.name for t in targets].index(f"{v}-on")].cpu_requests - n0[f"{v}-on"]
                    st = http_json("GET", g.base + "/stats")
                    res[f"{v}-on"]["guard_calls_per_req"] = sum(st["requests"].values()) / n if n else None
                out[str(c)] = {"rounds": n_rounds, "duration": dur, "loadavg": [la0, loadavg()], "results": res}
    finally:
        for p in [*procs.values(), *guards.values(), upstream]:
            p.stop()
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def report(res: dict[str, Any], meta: dict[str, Any]) -> str:
    b, a = meta["trees"]["before"], meta["trees"]["after"]
    lines = [
        f"# Guards on against guards off, before ({b['commit'][:7]}) and after ({a['commit'][:7]})\n",
        f"{meta['date']} · {meta['cpus']} CPUs · Python {meta['python']} · run took {meta['elapsed_s']:.0f} s\n",
        f"- before: `{b['commit']}` ({b['subject'][:80]})",
        f"- after: `{a['commit']}` ({a['subject'][:80]}){' (proxy/ has uncommitted changes)' if a['dirty'] else ''}",
        f"- load average at start: {'; then '.join(meta['loadavg_start'])}; at end {meta['loadavg_end']}",
        f"- reproduce: `{meta['command']}`\n",
        "Stream: 80 reasoning + 20 answer tokens, 10 ms apart; guard simulator at latency 0; 'on' = every "
        "stage (prompt `parallel`, reasoning `checked` every 32 tokens, answer `checked` every 64). CPU = "
        "user+system of the proxy process per request (psutil). The four proxies take turns in rounds in an "
        "order that changes every round. Targets: CPU on/off <= 1.5 at both levels, req/s on/off >= 0.6 at "
        "c = 256.\n",
    ]
    headers = [
        "c",
        "code",
        "CPU ms/req off",
        "CPU ms/req on",
        "CPU on/off",
        "req/s off",
        "req/s on",
        "req/s on/off",
        "TTFT p50 on (ms)",
        "TTFT p99 on (ms)",
        "guard calls/req",
        "errors off/on",
    ]
    rows = []
    for c, lv in res.items():
        r = lv["results"]
        for v in ("before", "after"):
            off, on = r[f"{v}-off"], r[f"{v}-on"]
            rows.append(
                [
                    c,
                    v,
                    fmt(off.get("cpu_ms_per_req"), 2),
                    fmt(on.get("cpu_ms_per_req"), 2),
                    _ratio(on.get("cpu_ms_per_req"), off.get("cpu_ms_per_req")),
                    fmt(off["rps"]),
                    fmt(on["rps"]),
                    _ratio(on["rps"], off["rps"]),
                    ms(on["ttft_p50"], 0),
                    ms(on["ttft_p99"], 0),
                    fmt(on.get("guard_calls_per_req"), 2),
                    f"{off['errors']}/{on['errors']}",
                ]
            )
    lines.append(table(headers, rows))
    lines.append(
        "\nTTFT is the first reasoning or content token the client receives: with reasoning `checked`, "
        "the first reasoning is released once the first check (at 32 tokens, about 0.37 s into the stream) "
        "passed, so about 0.4 s is the floor here.\n"
    )
    for c, lv in res.items():
        lines.append(f"- c={c}: {lv['rounds']} rounds x {lv['duration']:g} s, load {lv['loadavg'][0]} -> {lv['loadavg'][1]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the old code (git worktree add DIR COMMIT)")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1]), help="the new code")
    parser.add_argument("--quick", action="store_true", help="2 shorter rounds per level")
    args = parser.parse_args(argv)
    trees = {v: Path(getattr(args, v)).resolve() for v in ("before", "after")}
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "trees": {v: tree_info(t) for v, t in trees.items()},
        "loadavg_start": wait_for_quiet(),
        "command": "python -m bench.guard_path " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        res = asyncio.run(amain(settings(args.quick), trees))
    finally:
        Proc.stop_all()
    meta["started"] = STARTED
    meta["elapsed_s"] = time.monotonic() - t0
    meta["loadavg_end"] = loadavg()
    write_results(OUT_MD, report(res, meta), OUT_JSON, {"meta": meta, "levels": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
