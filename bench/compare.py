"""Before/after comparison of scenario 1 (overhead, guards off), side by side in one run.

    git worktree add /tmp/gp-before 824d595      # the old code, outside the repo
    python -m bench.compare --before /tmp/gp-before [--quick]
    git worktree remove --force /tmp/gp-before

A script you run on purpose, not part of the test suite. One simulated upstream, two
proxies started with the real CLI (``python -m proxy serve``), each with its own tree as
working directory and ``PYTHONPATH`` (``--before`` and ``--after``, default this
checkout; the same Python), and the load generator of bench/load.py. For each
concurrency of scenario 1 (1, 32, 256; the stream shapes of bench/run.py) the three
targets (direct upstream, proxy-before, proxy-after) take turns in rounds, the order
changing every round so that drift on a shared machine hits them alike. A second table
runs POST /v1/chat/completions with all three policy stages on against bench/sim.py's
guard at zero latency (c = 64; one guard simulator per proxy, so each proxy's guard calls
are counted).

Output: markdown tables on stdout and in bench/results/compare-scenario1.md (the commits,
the load average and the settings recorded with them), the raw summaries in
bench/results/logs/compare.json. Read the after/before ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .load import Client, LoadResult
from .run import (
    API_KEY,
    DEFAULT,
    LOGS,
    PROXY_KEYS_ENV,
    PY,
    RESULTS,
    ROOT,
    SHORT,
    Proc,
    Target,
    control,
    fmt,
    free_port,
    http_json,
    measure,
    merge,
    ms,
    proxy_config,
    ratio,
    start_guard,
    start_upstream,
    table,
    write_results,
)

OUT_MD = RESULTS / "compare-scenario1.md"
OUT_JSON = LOGS / "compare.json"
LOAD_LIMIT = 1.5  # 1-minute load average above which the run waits once before starting

# Orders of (direct, before, after) for successive rounds: every target takes every
# position, and over any even number of rounds "before" precedes "after" as often as not.
ORDERS = [(0, 1, 2), (2, 1, 0), (1, 2, 0), (0, 2, 1), (2, 0, 1), (1, 0, 2)]

# Regression thresholds (after / before).
RPS_FLOOR = 0.9
CPU_CEIL = 1.1


def settings(quick: bool) -> dict[str, Any]:
    """(concurrency, stream shape, rounds, seconds per round) for scenario 1, and the guards-on level."""
    if quick:
        return {"levels": [(1, SHORT, 3, 2.0), (32, DEFAULT, 3, 4.0), (256, DEFAULT, 3, 5.0)], "guards": (64, DEFAULT, 3, 5.0)}
    return {"levels": [(1, SHORT, 6, 3.0), (32, DEFAULT, 4, 6.0), (256, DEFAULT, 4, 8.0)], "guards": (64, DEFAULT, 4, 8.0)}


# -- trees and processes ------------------------------------------------------------------


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True).stdout.strip()


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def tree_info(tree: Path) -> dict[str, Any]:
    """The commit a tree is at, whether its proxy/ differs from it, and where ``import proxy`` resolves there."""
    loaded = subprocess.run(
        [PY, "-c", "import proxy; print(proxy.__file__)"],
        cwd=tree,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(tree)),
        check=True,
    ).stdout.strip()
    expected = tree / "proxy" / "__init__.py"
    if Path(loaded).resolve() != expected.resolve():
        raise SystemExit(f"in {tree}, `import proxy` loads {loaded}, not {expected}")
    return {
        "tree": str(tree),
        "commit": git(tree, "rev-parse", "HEAD"),
        "subject": git(tree, "log", "-1", "--format=%s"),
        "dirty": bool(git(tree, "status", "--porcelain", "--", "proxy")),
        "proxy_file": loaded,
    }


# Proxy name -> (commit, proxy/ modified) of its tree when it started: a shared checkout
# can move during a run, and the report says so.
STARTED: dict[str, tuple[str, bool]] = {}


def start_tree_proxy(name: str, tree: Path, upstream: Proc, guard: Proc | None = None, **policy: Any) -> Proc:
    """``python -m proxy serve`` run from ``tree`` (cwd and PYTHONPATH), with bench/run.py's config.

    ``env -C`` sets the working directory and execs, so the process Proc meters is the proxy.
    """
    port = free_port()
    cfg = proxy_config(name, port, upstream, guard, auth=True, **policy)
    cmd = [
        "env",
        "-C",
        str(tree),
        f"PYTHONPATH={tree}",
        PY,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(cfg),
        "--log-level",
        "warning",
    ]
    code = (git(tree, "rev-parse", "HEAD"), bool(git(tree, "status", "--porcelain", "--", "proxy")))
    p = Proc(name, cmd, port, "/healthz", env={PROXY_KEYS_ENV: API_KEY})
    p.wait_ready(60)
    STARTED[name] = code  # what the tree held when this proxy imported it
    # The live process: the interpreter we meant, started in its tree with its tree first on the path.
    cwd, environ, exe = p.ps.cwd(), p.ps.environ(), p.ps.exe()
    if Path(cwd).resolve() != tree.resolve() or environ.get("PYTHONPATH") != str(tree):
        raise SystemExit(f"{name}: runs in {cwd} with PYTHONPATH={environ.get('PYTHONPATH')}, meant {tree}")
    if Path(exe).resolve() != Path(PY).resolve():
        raise SystemExit(f"{name}: process is {exe}, not {Path(PY).resolve()}")
    return p


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_for_quiet() -> list[str]:
    """Load average at start; above LOAD_LIMIT, wait a minute and look once more (recorded either way)."""
    seen = [f"{time.strftime('%H:%M:%S')} {loadavg()}"]
    if os.getloadavg()[0] > LOAD_LIMIT:
        print(f"load average {loadavg()} > {LOAD_LIMIT}: waiting 60 s and retrying once", flush=True)
        time.sleep(60)
        seen.append(f"{time.strftime('%H:%M:%S')} {loadavg()}")
        if os.getloadavg()[0] > LOAD_LIMIT:
            print(f"load average still {loadavg()}: running anyway (recorded in the output)", flush=True)
    return seen


# -- measuring ------------------------------------------------------------------------------


def rotations(n: int) -> list[tuple[int, ...]]:
    """Orders for n targets: each rotation, forwards then backwards, so that every target
    takes every position and precedes each other one as often as it follows it."""
    forward = [tuple((i + k) % n for i in range(n)) for k in range(n)]
    return [o for pair in zip(forward, [tuple(reversed(o)) for o in forward], strict=True) for o in pair]


async def rounds(
    targets: list[Target],
    concurrency: int,
    n_rounds: int,
    duration: float,
    client: Client,
    orders: list[tuple[int, ...]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The targets take turns ``n_rounds`` times (order from ``orders``, default ORDERS);
    merged summary per target.

    Besides the merged numbers, each proxy's summary keeps its per-round req/s, so the
    after/before ratio can be given per round (its spread shows the noise).
    """
    per: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    round_cpu: dict[str, list[float]] = {t.name: [] for t in targets}
    cpu0 = {t.name: (t.cpu_s, t.cpu_requests) for t in targets}
    for r in range(n_rounds):
        order = orders or ORDERS
        for i in order[r % len(order)]:
            t = targets[i]
            c, n = t.cpu_s, t.cpu_requests
            per[t.name].append(await measure(t, concurrency, duration=duration, client=client))
            if t.proc and t.cpu_requests > n:
                round_cpu[t.name].append((t.cpu_s - c) / (t.cpu_requests - n) * 1000)
            await asyncio.sleep(0.3)
    out = {}
    for t in targets:
        s = merge(per[t.name]).summary()
        s["round_rps"] = [x.summary()["rps"] for x in per[t.name]]
        s["round_cpu_ms_per_req"] = round_cpu[t.name]
        if t.proc:
            c0, n0 = cpu0[t.name]
            n = t.cpu_requests - n0
            s["cpu_ms_per_req"] = (t.cpu_s - c0) / n * 1000 if n else None
        out[t.name] = s
        print(
            f"    {t.name:<8} c={concurrency:<4} ok={s['ok']}/{s['requests']} err={s['errors']} "
            f"rps={s['rps']:.1f} ttft50={ms(s['ttft_p50'])} itl99={ms(s['itl_p99'])}"
            + (f" cpu/req={s['cpu_ms_per_req']:.2f}ms" if s.get("cpu_ms_per_req") else ""),
            flush=True,
        )
        if s["error_example"]:
            print(f"      first error: {s['error_example']}", flush=True)
    return out


async def warm_up(targets: list[Target], concurrency: int, client: Client) -> None:
    for t in targets:
        await measure(t, concurrency, requests=max(2, concurrency), client=client)


async def overhead(cfg: dict[str, Any], upstream: Proc, trees: dict[str, Path], client: Client) -> dict[str, Any]:
    procs = {v: start_tree_proxy(f"compare-{v}-off", tree, upstream) for v, tree in trees.items()}
    targets = [Target("direct", upstream.base)] + [Target(v, p.base, p) for v, p in procs.items()]
    levels: dict[str, Any] = {}
    try:
        for c, shape, n_rounds, dur in cfg["levels"]:
            print(
                f"  c={c}: stream {shape['reasoning_tokens']}+{shape['answer_tokens']} tokens, "
                f"itl {shape['itl'] * 1000:g} ms; {n_rounds} rounds x {dur:g} s per target (load {loadavg()})",
                flush=True,
            )
            control(upstream, **shape)
            await warm_up(targets, c, client)
            la0 = loadavg()
            res = await rounds(targets, c, n_rounds, dur, client)
            levels[str(c)] = {"shape": shape, "rounds": n_rounds, "duration": dur, "loadavg": [la0, loadavg()], "results": res}
        rss = {v: p.peak_rss_mb() for v, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()
    return {"levels": levels, "peak_rss_mb": rss}


async def guards_on(cfg: dict[str, Any], upstream: Proc, trees: dict[str, Path], client: Client) -> dict[str, Any]:
    c, shape, n_rounds, dur = cfg["guards"]
    guards = {v: start_guard(f"compare-guard-{v}", latency=0.0) for v in trees}
    procs = {
        v: start_tree_proxy(f"compare-{v}-guards", tree, upstream, guards[v], prompt=True, reasoning=True, answer=True)
        for v, tree in trees.items()
    }
    targets = [Target("direct", upstream.base)] + [Target(v, p.base, p) for v, p in procs.items()]
    try:
        print(
            f"  c={c}: all guards on (guard latency 0), stream {shape['reasoning_tokens']}+"
            f"{shape['answer_tokens']} tokens; {n_rounds} rounds x {dur:g} s per target (load {loadavg()})",
            flush=True,
        )
        control(upstream, **shape)
        await warm_up(targets, c, client)
        for g in guards.values():
            http_json("POST", g.base + "/stats/reset", {})
        n0 = {t.name: t.cpu_requests for t in targets if t.proc}
        la0 = loadavg()
        res = await rounds(targets, c, n_rounds, dur, client)
        for t in targets:
            if t.proc:
                st = http_json("GET", guards[t.name].base + "/stats")
                n = t.cpu_requests - n0[t.name]
                res[t.name]["guard_calls_per_req"] = {k: v / n for k, v in st["requests"].items()} if n else None
                res[t.name]["guard_peak_in_flight"] = st["peak_in_flight"]
        rss = {v: p.peak_rss_mb() for v, p in procs.items()}
    finally:
        for p in [*procs.values(), *guards.values()]:
            p.stop()
    return {
        "concurrency": c,
        "shape": shape,
        "rounds": n_rounds,
        "duration": dur,
        "loadavg": [la0, loadavg()],
        "results": res,
        "peak_rss_mb": rss,
    }


# -- report -----------------------------------------------------------------------------------


def _added(s: dict[str, Any], d: dict[str, Any]) -> float | None:
    return None if s["ttft_p50"] is None or d["ttft_p50"] is None else s["ttft_p50"] - d["ttft_p50"]


def _round_ratios(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    rs = [x / y for x, y in zip(a[key], b[key], strict=True) if y]
    return f"{min(rs):.2f}-{max(rs):.2f}" if rs else "-"


def _row(label: str, r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """One table row for a level, and the regressions it shows."""
    d, b, a = r["direct"], r["before"], r["after"]
    rps_ratio = a["rps"] / b["rps"] if b["rps"] else None
    cpu_b, cpu_a = b.get("cpu_ms_per_req"), a.get("cpu_ms_per_req")
    cpu_ratio = cpu_a / cpu_b if cpu_a is not None and cpu_b else None
    flags = []
    if rps_ratio is not None and rps_ratio < RPS_FLOOR:
        flags.append(f"{label}: req/s after/before {rps_ratio:.2f} < {RPS_FLOOR}")
    if cpu_ratio is not None and cpu_ratio > CPU_CEIL:
        flags.append(f"{label}: CPU/request after/before {cpu_ratio:.2f} > {CPU_CEIL}")
    row = [
        label,
        fmt(d["rps"]),
        fmt(b["rps"]),
        fmt(a["rps"]),
        fmt(rps_ratio, 2),
        _round_ratios(a, b, "round_rps"),
        ms(_added(b, d), 2),
        ms(_added(a, d), 2),
        ms(d["itl_p99"]),
        ms(b["itl_p99"]),
        ms(a["itl_p99"]),
        ratio(a["itl_p99"], b["itl_p99"]),
        f"{d['errors']}/{b['errors']}/{a['errors']}",
        fmt(cpu_b, 2),
        fmt(cpu_a, 2),
        fmt(cpu_ratio, 2),
        _round_ratios(a, b, "round_cpu_ms_per_req"),
    ]
    return row, flags


HEADERS = [
    "c",
    "req/s direct",
    "req/s before",
    "req/s after",
    "req/s a/b",
    "req/s a/b per round",
    "added TTFT p50 before",
    "added TTFT p50 after",
    "ITL p99 direct",
    "ITL p99 before",
    "ITL p99 after",
    "ITL p99 a/b",
    "errors d/b/a",
    "CPU ms/req before",
    "CPU ms/req after",
    "CPU a/b",
    "CPU a/b per round",
]


def report(res: dict[str, Any]) -> str:
    m = res["meta"]
    b, a = m["trees"]["before"], m["trees"]["after"]
    out = [
        f"# Scenario 1 before/after: {b['commit'][:7]} vs {a['commit'][:7]}\n",
        f"{m['date']} · {m['cpus']} CPUs · Python {m['python']} · run took {m['elapsed_s']:.0f} s"
        f"{' · quick settings' if m['quick'] else ''}\n",
        f"- before: `{b['commit']}` ({_short(b['subject'])}), run from `{b['tree']}`"
        f"{' (proxy/ modified)' if b['dirty'] else ''}; imports `{b['proxy_file']}`",
        f"- after: `{a['commit']}` ({_short(a['subject'])}), run from `{a['tree']}`"
        f"{' (proxy/ has uncommitted changes)' if a['dirty'] else ''}; imports `{a['proxy_file']}`",
        f"- load average (1/5/15 min) at start: {'; then '.join(m['loadavg_start'])}; at end {m['loadavg_end']}",
        f"- reproduce: `{m['command']}`\n",
        "All servers on 127.0.0.1: one simulated upstream (bench/sim.py), both proxies started with "
        "`python -m proxy serve` and bench/run.py's config (proxy API key on), the same Python. In each round "
        "the three targets (direct upstream, before, after) each get the same load for the same time, in an "
        "order that changes every round; the numbers merge all rounds after one discarded warm-up. Times in "
        "ms; 'added TTFT p50' = proxy p50 minus direct p50 in the same run; CPU = user+system of the proxy "
        "process per request (psutil); 'a/b per round' = the range of the per-round after/before ratios "
        "(round i of after against round i of before), which shows the noise.\n",
    ]
    ov = res["overhead"]
    out.append("## Scenario 1: overhead, guards off\n")
    rows, flags = [], []
    for c, lv in ov["levels"].items():
        row, f = _row(c, lv["results"])
        rows.append(row)
        flags += f
    out.append(table(HEADERS, rows))
    shapes = "; ".join(
        f"c={c}: {lv['shape']['reasoning_tokens']}+{lv['shape']['answer_tokens']} tokens "
        f"{lv['shape']['itl'] * 1000:g} ms apart, {lv['rounds']} rounds x {lv['duration']:g} s, "
        f"load {lv['loadavg'][0]} -> {lv['loadavg'][1]}"
        for c, lv in ov["levels"].items()
    )
    out.append(
        f"\nStreams and rounds: {shapes}. Peak RSS: before {fmt(ov['peak_rss_mb']['before'])} MB, "
        f"after {fmt(ov['peak_rss_mb']['after'])} MB.\n"
    )
    if "guards" in res:
        g = res["guards"]
        out.append(f"## All guards on (prompt, reasoning, answer), c = {g['concurrency']}\n")
        row, f = _row(str(g["concurrency"]), g["results"])
        flags += [f"guards on {x}" for x in f]
        out.append(table(HEADERS, [row]))
        calls = {v: g["results"][v].get("guard_calls_per_req") or {} for v in ("before", "after")}
        calls_txt = "; ".join(f"{v}: " + ", ".join(f"{k} {n:.2f}" for k, n in cs.items()) for v, cs in calls.items())
        out.append(
            f"\nPOST /v1/chat/completions, stream {g['shape']['reasoning_tokens']}+"
            f"{g['shape']['answer_tokens']} tokens {g['shape']['itl'] * 1000:g} ms apart; every stage on "
            "(prompt check `parallel`, reasoning `checked`/`rewrite` every 32 tokens, answer on) against "
            "bench/sim.py's guard at latency 0, one guard simulator per proxy. 'direct' has no guard, so "
            "'added TTFT' includes the checks. Guard calls per request: "
            f"{calls_txt}. {g['rounds']} rounds x {g['duration']:g} s, load {g['loadavg'][0]} -> "
            f"{g['loadavg'][1]}. Peak RSS: before {fmt(g['peak_rss_mb']['before'])} MB, after "
            f"{fmt(g['peak_rss_mb']['after'])} MB.\n"
        )
    moved = [
        f"{name} started at {code[0][:7]}{' (proxy/ modified)' if code[1] else ''}"
        for name, code in m["started"].items()
        if tuple(code) != (m["trees"][name.split("-")[1]]["commit"], m["trees"][name.split("-")[1]]["dirty"])
    ]
    if moved:
        out.append("**Warning: a tree changed during the run**: " + "; ".join(moved) + ".\n")
    out.append("## Verdict\n")
    out.append(
        f"Regression = req/s after/before < {RPS_FLOOR} or CPU/request after/before > {CPU_CEIL} at any "
        "level. " + ("Flagged: " + "; ".join(flags) + "." if flags else "None flagged.")
    )
    return "\n".join(out) + "\n"


# -- main ---------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace, trees: dict[str, Path], meta: dict[str, Any]) -> dict[str, Any]:
    cfg = settings(args.quick)
    res: dict[str, Any] = {"meta": meta}
    meta["settings"] = cfg
    upstream = start_upstream("compare-upstream")
    try:
        async with Client("aiohttp", pool=2048) as client:
            print("Scenario 1: overhead, guards off (direct, before, after)", flush=True)
            res["overhead"] = await overhead(cfg, upstream, trees, client)
            if not args.no_guards:
                print("All guards on (direct, before, after)", flush=True)
                res["guards"] = await guards_on(cfg, upstream, trees, client)
    finally:
        upstream.stop()
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the old code (git worktree add DIR COMMIT)")
    parser.add_argument("--after", default=str(ROOT), help="the new code (default: this checkout)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of shorter loads (~4 minutes)")
    parser.add_argument("--no-guards", action="store_true", help="skip the guards-on table")
    args = parser.parse_args(argv)
    trees = {v: Path(getattr(args, v)).resolve() for v in ("before", "after")}
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "quick": args.quick,
        "trees": {v: tree_info(t) for v, t in trees.items()},
        "loadavg_start": wait_for_quiet(),
        "command": "python -m bench.compare " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        res = asyncio.run(amain(args, trees, meta))
    finally:
        Proc.stop_all()
    meta["started"] = STARTED
    meta["elapsed_s"] = time.monotonic() - t0
    meta["loadavg_end"] = loadavg()
    write_results(OUT_MD, report(res), OUT_JSON, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
