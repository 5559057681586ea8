"""What decision records and the audit log cost: the proxy with them on against off,
side by side in one run (target: CPU per request and req/s within 5% at c = 256).

    python -m bench.console [--quick]

A script you run on purpose, not part of the test suite. One simulated upstream
streaming 80 reasoning and 20 answer tokens 10 ms apart, one guard simulator answering
at once (bench/sim.py), and three proxies of this tree started with the real CLI, every
guard stage on (prompt `parallel`, reasoning `checked` every 32 tokens, answer `checked`
every 64):

- off: no console, no audit log (nothing recorded);
- records+audit: `[console] enabled` (the in-memory ring) and `[audit] path` (a JSONL
  file in a temporary folder, rotated at 100 MiB);
- +capture all: the same with `[audit] capture = "all"` (every record keeps its texts).

The three take turns in rounds, the order changing every round. CPU is the proxy
process's user+system time per request (psutil), the audit writer's thread included.

Output: a markdown table on stdout and in bench/results/console.md, raw summaries in
bench/results/logs/console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .compare import loadavg, rotations, rounds, wait_for_quiet, warm_up
from .load import Client
from .run import (
    LOGS,
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
    write_results,
)

OUT_MD = RESULTS / "console.md"
OUT_JSON = LOGS / "console.json"
SHAPE = {"ttft": 0.05, "itl": 0.01, "reasoning_tokens": 80, "answer_tokens": 20}
ADMIN_ENV = "GUARDPROXY_BENCH_ADMIN_KEY"
VARIANTS = {
    "off": "",
    "records+audit": '[console]\nenabled = true\nadmin_key_env = "{admin}"\n\n[audit]\npath = "{audit}"\n',
    "+capture all": '[console]\nenabled = true\nadmin_key_env = "{admin}"\n\n[audit]\npath = "{audit}"\ncapture = "all"\n',
}


def settings(quick: bool) -> list[tuple[int, int, float]]:
    """(concurrency, rounds, seconds per round)."""
    return [(256, 2, 6.0)] if quick else [(64, 3, 8.0), (256, 4, 8.0)]


def start(name: str, extra: str, upstream: Proc, guard: Proc, folder: Path) -> Proc:
    port = free_port()
    cfg = proxy_config(name, port, upstream, guard, prompt=True, reasoning=True, answer=True, auth=True)
    audit = folder / f"{name.replace('+', '').replace(' ', '-')}.jsonl"
    cfg.write_text(cfg.read_text() + "\n" + extra.format(admin=ADMIN_ENV, audit=audit))
    return serve_proxy(name, cfg, port, env={ADMIN_ENV: "bench-admin-key"})


async def amain(levels: list[tuple[int, int, float]], folder: Path) -> dict[str, Any]:
    upstream = start_upstream("console-upstream")
    control(upstream, **SHAPE)
    guard = start_guard("console-guard", latency=0.0)
    procs = {name: start(f"console-{name}", extra, upstream, guard, folder) for name, extra in VARIANTS.items()}
    targets = [Target(name, p.base, p) for name, p in procs.items()]
    out: dict[str, Any] = {}
    try:
        async with Client("aiohttp", pool=2048) as client:
            for c, n_rounds, dur in levels:
                print(f"  c={c}: {n_rounds} rounds x {dur:g} s per target (load {loadavg()})", flush=True)
                await warm_up(targets, c, client)
                la0 = loadavg()
                res = await rounds(targets, c, n_rounds, dur, client, rotations(len(targets)))
                out[str(c)] = {"rounds": n_rounds, "duration": dur, "loadavg": [la0, loadavg()], "results": res}
    finally:
        for p in [*procs.values(), guard, upstream]:
            p.stop()
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


def report(res: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Decision records and the audit log, on against off\n",
        f"{meta['date']} · {meta['cpus']} CPUs · Python {meta['python']} · run took {meta['elapsed_s']:.0f} s\n",
        f"- load average at start: {'; then '.join(meta['loadavg_start'])}; at end {meta['loadavg_end']}",
        f"- reproduce: `{meta['command']}`\n",
        "Stream: 80 reasoning + 20 answer tokens, 10 ms apart; guard simulator at latency 0; every guard stage "
        "on. off = no console, no audit log; records+audit = `[console] enabled` and `[audit] path`; +capture "
        'all = also `capture = "all"`. CPU = user+system of the proxy process per request (psutil), the '
        "audit writer's thread included. The three proxies take turns in rounds in an order that changes "
        "every round. Target: within 5% of off at c = 256.\n",
    ]
    headers = ["c", "variant", "CPU ms/req", "CPU vs off", "req/s", "req/s vs off", "TTFT p50 (ms)", "TTFT p99 (ms)", "errors"]
    rows = []
    for c, lv in res.items():
        if not c.isdigit():
            continue
        r = lv["results"]
        off = r["off"]
        for name in VARIANTS:
            x = r[name]
            rows.append([c, name, fmt(x.get("cpu_ms_per_req"), 2), _ratio(x.get("cpu_ms_per_req"), off.get("cpu_ms_per_req")),
                         fmt(x["rps"]), _ratio(x["rps"], off["rps"]), ms(x["ttft_p50"], 0), ms(x["ttft_p99"], 0),
                         str(x["errors"])])  # fmt: skip
    lines.append(table(headers, rows))
    lines.append("")
    for c, lv in res.items():
        if c.isdigit():
            per_round = {n: [f"{v:.0f}" for v in lv["results"][n]["round_rps"]] for n in VARIANTS}
            lines.append(
                f"- c={c}: {lv['rounds']} rounds x {lv['duration']:g} s, load {lv['loadavg'][0]} -> "
                f"{lv['loadavg'][1]}; req/s per round: " + "; ".join(f"{n} {', '.join(v)}" for n, v in per_round.items())
            )
    sizes = res.get("audit_bytes", {})
    if sizes:
        lines.append("- audit log written: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items())))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="c = 256 only, 2 shorter rounds")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": wait_for_quiet(),
        "command": "python -m bench.console " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    folder = Path(tempfile.mkdtemp(prefix="guardproxy-bench-audit-"))
    try:
        res = asyncio.run(amain(settings(args.quick), folder))
        res["audit_bytes"] = {p.name: p.stat().st_size for p in folder.iterdir()}
    finally:
        Proc.stop_all()
        shutil.rmtree(folder, ignore_errors=True)
    meta["elapsed_s"] = time.monotonic() - t0
    meta["loadavg_end"] = loadavg()
    write_results(OUT_MD, report(res, meta), OUT_JSON, {"meta": meta, "levels": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
