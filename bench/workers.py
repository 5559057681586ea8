"""``serve --workers``: req/s and CPU per request at c = 256 for 1 and 2 workers, beside
the direct upstream, guards off, side by side in one run.

    python -m bench.workers [--quick]

A script you run on purpose. One simulated upstream (100 reasoning + 50 answer tokens,
10 ms apart: scenario 1's shape), two proxies started with the real CLI (``python -m
proxy serve --workers 1`` and ``--workers 2``); the three targets take turns in rounds.
CPU is user + system of the whole process tree (supervisor, workers, multiprocessing's
resource tracker) per request. Output: a markdown table on stdout and in
bench/results/workers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from .compare import loadavg, rotations, rounds, warm_up
from .load import Client
from .run import (
    DEFAULT,
    RESULTS,
    Proc,
    Target,
    control,
    fmt,
    free_port,
    ms,
    proxy_config,
    serve_proxy,
    start_upstream,
    table,
)

OUT_MD = RESULTS / "workers.md"


def start_workers(name: str, upstream: Proc, workers: int) -> Proc:
    port = free_port()
    cfg = proxy_config(name, port, upstream, auth=True)
    p = serve_proxy(name, cfg, port, "--workers", str(workers))
    time.sleep(2.0)  # every worker up, not only the first to answer
    return p


async def amain(n_rounds: int, duration: float) -> dict[str, Any]:
    upstream = start_upstream("workers-upstream")
    control(upstream, **DEFAULT)
    procs = {f"{n} worker{'s' if n > 1 else ''}": start_workers(f"workers-{n}", upstream, n) for n in (1, 2)}
    targets = [Target("direct", upstream.base)] + [Target(k, p.base, p) for k, p in procs.items()]
    try:
        async with Client("aiohttp", pool=2048) as client:
            await warm_up(targets, 256, client)
            la0 = loadavg()
            res = await rounds(targets, 256, n_rounds, duration, client, rotations(len(targets)))
            return {"results": res, "loadavg": [la0, loadavg()], "rss": {k: p.peak_rss_mb() for k, p in procs.items()}}
    finally:
        for p in [*procs.values(), upstream]:
            p.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n_rounds, duration = (2, 5.0) if args.quick else (4, 8.0)
    t0 = time.monotonic()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        out = asyncio.run(amain(n_rounds, duration))
    finally:
        Proc.stop_all()
    res = out["results"]
    rows = [
        [
            name,
            fmt(s["rps"]),
            fmt(s["rps"] / res["direct"]["rps"], 2),
            ms(s["ttft_p50"]),
            ms(s["ttft_p99"]),
            ms(s["itl_p99"]),
            str(s["errors"]),
            fmt(s.get("cpu_ms_per_req"), 2),
            fmt(out["rss"].get(name)),
        ]
        for name, s in res.items()
    ]
    md = "\n".join(
        [
            "# `serve --workers`: 1 and 2 workers against the direct upstream, c = 256, guards off\n",
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]} · "
            f"run took {time.monotonic() - t0:.0f} s · load average {out['loadavg'][0]} -> {out['loadavg'][1]} · "
            f"`python -m bench.workers{' --quick' if args.quick else ''}`\n",
            table(
                [
                    "target",
                    "req/s",
                    "of direct",
                    "TTFT p50 (ms)",
                    "TTFT p99 (ms)",
                    "ITL p99 (ms)",
                    "errors",
                    "CPU ms/req (process tree)",
                    "peak RSS MB",
                ],
                rows,
            ),
            f"\nStream: 100 reasoning + 50 answer tokens, 10 ms apart; {n_rounds} rounds x {duration:g} s per target, "
            "in an order that changes every round. The upstream simulator shares the machine's cores with the proxy.\n",
        ]
    )
    OUT_MD.write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
