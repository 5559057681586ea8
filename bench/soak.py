"""Soak: thousands of concurrent streams and mid-stream disconnects through one proxy.

    python -m bench.soak [--streams 2000] [--disconnects 2000] [--guards off|on]

Run on purpose, never in CI. Everything is a subprocess on 127.0.0.1 started with
bench/run.py's launchers (the simulated upstream of bench/sim.py, its simulated guard with
``--guards on``, and the proxy as its own process: ``python -m proxy serve --config``),
and everything stops by itself: every phase has a deadline, and the whole run
``--timeout``.

1. **Hold**: ``--streams`` streaming chat completions are opened (evenly over ``--ramp``
   seconds) and held: each
   upstream stream lasts ``--tokens`` tokens ``--itl`` seconds apart (30 s by default),
   so they are all in flight together (the peak of the proxy's in-flight gauge shows it).
2. **Disconnect**: once every held stream has started, ``--disconnects`` more streams
   are opened (at most ``--disconnect-concurrency`` at a time), each read up to its
   first SSE event (``--cut-at token``: its first token) and then cut: the socket is
   closed mid-stream, while the held streams are still open (the table says how many
   were when the last cut was made; on a busy machine raise ``--itl``).
3. The held streams are read to their end; an error is a non-200, a broken stream, an
   error event or a stream without ``data: [DONE]`` (expected: 0).
4. The client closes its connections; then ``GET /metrics``
   ``guardproxy_requests_in_flight`` is polled until it is 0, and the proxy's open file
   descriptors (``/proc/PID/fd``) until they are back near the count before the run
   (idle upstream keep-alive connections expire after 5 s). Then one more request: the
   guard clients' httpx pools drop their expired idle connections only when used again,
   so the count after it tells idle pooled sockets from leaked ones. The proxy's TCP
   sockets are listed by peer (clients, upstream, guard) at each step.

The table goes to stdout and to ``bench/results/soak.txt`` (``--append`` adds to it).

2,000 streams and 2,000 disconnects need more than the usual 1,024 file descriptors (the
client holds one socket per stream, the proxy two): the script raises its own soft
RLIMIT_NOFILE up to the hard limit, and the servers it starts inherit it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import _HEADERS, Sample, _StreamParser, chat_body
from .run import (
    API_KEY,
    LOGS,
    MODEL,
    RESULTS,
    Proc,
    free_port,
    http_json,
    proxy_config,
    serve_proxy,
    start_guard,
    start_upstream,
)

OUT = RESULTS / "soak.txt"
GAUGE = "guardproxy_requests_in_flight"


# -- the file-descriptor limit ------------------------------------------------------------


def raise_nofile(needed: int) -> str:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); say what."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    new = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    line = f"RLIMIT_NOFILE: soft {soft} -> {new} (hard {hard}), inherited by the servers started here"
    if new < needed:
        line += f"; WARNING: this run needs about {needed}"
    return line


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_breakdown(proxy: Proc, upstream: Proc, guard: Proc | None) -> str:
    """The proxy's TCP sockets by peer, e.g. "upstream 3, guard 280, clients 0, listen 1"."""
    peers: Counter[str] = Counter()
    try:
        conns = proxy.ps.net_connections(kind="tcp")
    except Exception as exc:  # psutil too old, or no permission
        return f"unavailable ({type(exc).__name__})"
    for c in conns:
        if c.status == "LISTEN":
            peers["listen"] += 1
        elif not c.raddr:
            peers["unconnected"] += 1
        elif c.raddr.port == upstream.port:
            peers["upstream"] += 1
        elif guard is not None and c.raddr.port == guard.port:
            peers["guard"] += 1
        elif c.laddr.port == proxy.port:
            peers["clients"] += 1
        else:
            peers["other"] += 1
    return ", ".join(f"{k} {v}" for k, v in sorted(peers.items())) or "none"


def one_request(proxy: Proc) -> int:
    """A short non-streamed completion (it also lets the pools drop their expired connections)."""
    body = chat_body(
        MODEL, stream=False, extra={"x_sim": {"ttft": 0.01, "itl": 0.001, "reasoning_tokens": 2, "answer_tokens": 2}}
    )
    request = urllib.request.Request(proxy.base + "/v1/chat/completions", data=body, headers=_HEADERS, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        resp.read()
        return int(resp.status)


# -- the proxy --------------------------------------------------------------------------------


def start_soak_proxy(upstream: Proc, guard: Proc | None, connections: int, guard_queue: int) -> Proc:
    """bench/run.py's proxy config, with an upstream pool and a guard queue sized for
    the run, started like ``guardproxy serve`` (``python -m proxy serve``)."""
    port = free_port()
    on = guard is not None
    path = proxy_config("soak-proxy", port, upstream, guard, auth=True, prompt=on, reasoning=on, answer=on)
    text = path.read_text()
    text = text.replace("max_connections = 1000", f"max_connections = {connections}")
    text = text.replace("[server]\n", f"[server]\nguard_queue = {guard_queue}\nguard_queue_timeout_s = 60.0\n", 1)
    path.write_text(text)
    return serve_proxy(f"soak-proxy-guards-{'on' if on else 'off'}", path, port)


def in_flight(proxy: Proc) -> float | None:
    request = urllib.request.Request(proxy.base + "/metrics", headers={"authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(GAUGE + " ") or line.startswith(GAUGE + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class _Started:
    """Has the stream started? ``event``: its first SSE event arrived (the proxy has
    answered and is relaying); ``token``: its first reasoning or answer token arrived."""

    def __init__(self, parser: _StreamParser, at: str) -> None:
        self.parser, self.at, self.head, self.started = parser, at, b"", False

    def feed(self, piece: bytes) -> bool:
        if not self.started:
            if self.at == "token":
                self.started = self.parser.sample.tokens > 0
            else:
                self.head += piece
                self.started = b"\n\n" in self.head
        return self.started


# -- the clients --------------------------------------------------------------------------------


@dataclass
class Run:
    held_first_token: int = 0
    all_held: asyncio.Event = field(default_factory=asyncio.Event)
    held: list[Sample] = field(default_factory=list)
    cuts: Counter[str] = field(default_factory=Counter)
    cut_example: str = ""
    cut_started_s: list[float] = field(default_factory=list)  # request sent -> stream started, per cut
    held_started_s: list[float] = field(default_factory=list)  # the same, per held stream
    peak_in_flight: float = 0.0
    t_all_held: float | None = None
    t_first_end: float | None = None
    t_cuts_done: float | None = None


async def hold_one(
    session: Any, url: str, body: bytes, limit_s: float, run: Run, streams: int, t0: float, at: str, delay_s: float
) -> None:
    """One held stream, opened after ``delay_s`` and read to its end (bench.load's parser
    and error rules)."""
    import aiohttp

    await asyncio.sleep(delay_s)
    s = Sample(start=time.perf_counter())
    p = _StreamParser(s)
    started = _Started(p, at)
    counted = False
    try:
        async with asyncio.timeout(limit_s):
            async with session.post(url, data=body, headers=_HEADERS) as resp:
                s.status = resp.status
                if resp.status != 200:
                    s.error = f"HTTP {resp.status}: {(await resp.read())[:160]!r}"
                else:
                    async for piece in resp.content.iter_any():
                        p.feed(piece, time.perf_counter())
                        if not counted and started.feed(piece):
                            run.held_started_s.append(time.perf_counter() - s.start)
                            counted = True
                            run.held_first_token += 1
                            if run.held_first_token == streams:
                                run.t_all_held = time.monotonic() - t0
                                run.all_held.set()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"[:200]
    if not counted:  # never started: do not keep the disconnect phase waiting
        run.held_first_token += 1
        if run.held_first_token == streams:
            run.t_all_held = time.monotonic() - t0
            run.all_held.set()
    s.total = time.perf_counter() - s.start
    if not s.error and not p.done:
        s.error = "stream ended without [DONE]"
    s.ok = p.done and not s.error
    if run.t_first_end is None:
        run.t_first_end = time.monotonic() - t0
    run.held.append(s)


async def cut_one(session: Any, url: str, body: bytes, limit_s: float, run: Run, at: str) -> None:
    """One stream read until it started (``at``), then cut: the connection is closed."""
    import aiohttp

    s = Sample(start=time.perf_counter())
    p = _StreamParser(s)
    started = _Started(p, at)
    outcome = f"ended before its first {at}"
    try:
        async with asyncio.timeout(limit_s):
            resp = await session.post(url, data=body, headers=_HEADERS)
            try:
                if resp.status != 200:
                    outcome = f"HTTP {resp.status}"
                    run.cut_example = run.cut_example or f"HTTP {resp.status}: {(await resp.read())[:160]!r}"
                else:
                    async for piece in resp.content.iter_any():
                        p.feed(piece, time.perf_counter())
                        if p.done:
                            break  # ended before it could be cut
                        if started.feed(piece):
                            run.cut_started_s.append(time.perf_counter() - s.start)
                            outcome = "cut"
                            break
            finally:
                resp.close()  # closes the socket; a stream that was not finished is cut
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        outcome = type(exc).__name__
        run.cut_example = run.cut_example or f"{type(exc).__name__}: {exc}"[:200]
    run.cuts[outcome] += 1


async def watch_gauge(proxy: Proc, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        value = await asyncio.to_thread(in_flight, proxy)
        if value is not None:
            run.peak_in_flight = max(run.peak_in_flight, value)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def settle(probe: Any, ok: Any, limit_s: float) -> tuple[Any, float]:
    """Poll ``probe()`` until ``ok(value)`` or ``limit_s`` seconds: (last value, seconds taken)."""
    t0 = time.monotonic()
    while True:
        value = await asyncio.to_thread(probe)
        if ok(value) or time.monotonic() - t0 > limit_s:
            return value, time.monotonic() - t0
        await asyncio.sleep(0.25)


# -- the run ------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, proxy: Proc, upstream: Proc, guard: Proc | None) -> dict[str, Any]:
    import aiohttp

    url = f"{proxy.base}/v1/chat/completions"
    half = args.tokens // 2
    shape = {"ttft": 0.05, "itl": args.itl, "reasoning_tokens": half, "answer_tokens": args.tokens - half}
    body = chat_body(MODEL, extra={"x_sim": shape})
    stream_s = shape["ttft"] + shape["itl"] * (args.tokens - 1)
    per_request = stream_s + 120.0
    http_json("POST", upstream.base + "/stats/reset", {})
    res: dict[str, Any] = {"stream_s": stream_s, "shape": shape}
    res["fds_before"] = open_fds(proxy.popen.pid)
    res["rss_before_mb"] = proxy.ps.memory_info().rss / 2**20
    cpu0 = proxy.cpu_seconds()

    run = Run()
    stop = asyncio.Event()
    t0 = time.monotonic()
    watcher = asyncio.create_task(watch_gauge(proxy, run, stop))
    timeout = aiohttp.ClientTimeout(total=None)
    held_conn = aiohttp.TCPConnector(limit=0, force_close=True)
    cut_conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with (
        aiohttp.ClientSession(connector=held_conn, timeout=timeout, auto_decompress=False) as held_session,
        aiohttp.ClientSession(connector=cut_conn, timeout=timeout, auto_decompress=False) as cut_session,
    ):
        print(
            f"hold: opening {args.streams} streams over {args.ramp:g} s, {args.tokens} tokens {args.itl:g} s apart "
            f"(~{stream_s:.0f} s each) ...",
            flush=True,
        )
        holders = [
            asyncio.create_task(
                hold_one(held_session, url, body, per_request, run, args.streams, t0, args.cut_at, args.ramp * i / args.streams)
            )
            for i in range(args.streams)
        ]
        try:
            await asyncio.wait_for(run.all_held.wait(), args.hold_timeout)
        except TimeoutError:
            print(
                f"  only {run.held_first_token}/{args.streams} streams started after {args.hold_timeout:g} s; cutting anyway",
                flush=True,
            )
        else:
            print(f"  all {args.streams} held streams streaming after {run.t_all_held:.1f} s", flush=True)
        print(
            f"disconnect: {args.disconnects} streams cut after their first {args.cut_at}, "
            f"{args.disconnect_concurrency} at a time ...",
            flush=True,
        )
        lanes = asyncio.Semaphore(args.disconnect_concurrency)

        async def one_cut() -> None:
            async with lanes:
                await cut_one(cut_session, url, body, per_request, run, args.cut_at)

        await asyncio.gather(*(one_cut() for _ in range(args.disconnects)))
        run.t_cuts_done = time.monotonic() - t0
        held_at_cut_end = sum(1 for h in holders if not h.done())
        print(
            f"  done after {run.t_cuts_done:.1f} s ({held_at_cut_end} held streams still open); "
            "reading the held streams to their end ...",
            flush=True,
        )
        await asyncio.gather(*holders)
    t_end = time.monotonic() - t0
    stop.set()
    await watcher
    res["cpu_s"] = proxy.cpu_seconds() - cpu0
    res["rss_peak_mb"] = proxy.peak_rss_mb()

    gauge, gauge_s = await settle(lambda: in_flight(proxy), lambda v: v == 0, args.settle_timeout)
    res["fds_at_gauge_zero"] = open_fds(proxy.popen.pid)
    res["sockets_at_gauge_zero"] = fd_breakdown(proxy, upstream, guard)
    up_stats, _ = await settle(lambda: http_json("GET", upstream.base + "/stats"), lambda s: s["active"] == 0, 10)
    guard_stats = http_json("GET", guard.base + "/stats") if guard is not None else None
    fds, fds_s = await settle(
        lambda: open_fds(proxy.popen.pid), lambda v: v <= res["fds_before"] + args.fd_slack, args.fd_settle_timeout
    )
    res["sockets_settled"] = fd_breakdown(proxy, upstream, guard)
    # httpx drops expired idle connections only when its pool is used again (the guard
    # clients); one more request tells idle pooled sockets from leaked ones.
    res["nudge_status"] = await asyncio.to_thread(one_request, proxy)
    await asyncio.sleep(1.0)
    res["fds_after_nudge"] = open_fds(proxy.popen.pid)
    res["sockets_after_nudge"] = fd_breakdown(proxy, upstream, guard)

    ok = [s for s in run.held if s.ok]
    errors = [s.error for s in run.held if not s.ok]
    res.update(
        {
            "streams": args.streams,
            "completed": len(ok),
            "errors": len(errors),
            "error_kinds": dict(Counter(e.split(":")[0] for e in errors).most_common(5)),
            "error_example": errors[0] if errors else None,
            "finish_reasons": dict(Counter(s.finish_reason for s in ok)),
            "tokens_per_stream": sorted({s.tokens for s in ok}),
            "disconnects_asked": args.disconnects,
            "cuts": dict(run.cuts),
            "cut_example": run.cut_example,
            "held_at_cut_end": held_at_cut_end,
            "cut_started": _quantiles(run.cut_started_s),
            "held_started": _quantiles(run.held_started_s),
            "t_all_held": run.t_all_held,
            "t_cuts_done": run.t_cuts_done,
            "t_first_end": run.t_first_end,
            "t_end": t_end,
            "peak_in_flight": run.peak_in_flight,
            "gauge_after": gauge,
            "gauge_settle_s": gauge_s,
            "fds_after": fds,
            "fds_settle_s": fds_s,
            "upstream": up_stats,
            "guard": guard_stats,
            "rss_after_mb": proxy.ps.memory_info().rss / 2**20,
            "proxy_log": proxy.log_path,
        }
    )
    return res


def table(args: argparse.Namespace, res: dict[str, Any], limit_line: str) -> str:
    up = res["upstream"]
    cut = res["cuts"].get("cut", 0)
    not_cut = {k: v for k, v in res["cuts"].items() if k != "cut"}
    gauge = res["gauge_after"]
    rows = [
        ("held streams completed / opened", f"{res['completed']} / {res['streams']}", "all"),
        ("errors on the held streams", f"{res['errors']}" + (f" {res['error_kinds']}" if res["errors"] else ""), "0"),
        ("peak in-flight (proxy gauge, sampled every 0.5 s)", f"{res['peak_in_flight']:.0f}", f">= {res['streams']}"),
        ("peak concurrent upstream streams (simulator)", f"{up.get('peak_active')}", f">= {res['streams']}"),
        (
            f"disconnects made (cut after the first {args.cut_at})",
            f"{cut} / {res['disconnects_asked']}" + (f" (not cut: {not_cut})" if not_cut else ""),
            f"{res['disconnects_asked']}",
        ),
        (f"time to first {args.cut_at} (s), held: p50 / p99 / max", res["held_started"], ""),
        (f"time to first {args.cut_at} (s), cut: p50 / p99 / max", res["cut_started"], ""),
        ("held streams still open when the last cut was made", f"{res['held_at_cut_end']}", f"{res['streams']}"),
        ("upstream requests aborted by the proxy", f"{up.get('aborted')}", "= disconnects"),
        ("upstream requests completed", f"{up.get('completed')}", "= held streams"),
        ("in-flight gauge afterwards", "unread" if gauge is None else f"{gauge:.0f} (after {res['gauge_settle_s']:.1f} s)", "0"),
        ("upstream streams active afterwards", f"{up.get('active')}", "0"),
        (
            "proxy open fds: before / at gauge 0 / settled",
            f"{res['fds_before']} / {res['fds_at_gauge_zero']} / {res['fds_after']} (after {res['fds_settle_s']:.1f} s)",
            f"settled <= before + {args.fd_slack}",
        ),
        ("proxy TCP sockets at gauge 0", res["sockets_at_gauge_zero"], ""),
        ("proxy TCP sockets settled", res["sockets_settled"], ""),
        (
            "proxy open fds after one more request (1 s later)",
            f"{res['fds_after_nudge']} ({res['sockets_after_nudge']}; HTTP {res['nudge_status']})",
            f"<= before + {args.fd_slack}",
        ),
        (
            "proxy RSS MB: before / peak / after",
            f"{res['rss_before_mb']:.0f} / {res['rss_peak_mb']:.0f} / {res['rss_after_mb']:.0f}",
            "",
        ),
        ("proxy CPU s (user + system)", f"{res['cpu_s']:.1f}", ""),
    ]
    if res["guard"] is not None:
        g = res["guard"]
        rows.append(
            ("guard checks (simulator: requests / peak in flight)", f"{g.get('requests')} / {g.get('peak_in_flight')}", "")
        )
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [
        f"## soak {time.strftime('%Y-%m-%d %H:%M:%S')}: --streams {args.streams} --disconnects {args.disconnects} "
        f"--guards {args.guards}",
        "",
        f"stream: {args.tokens} tokens (reasoning + answer), {args.itl:g} s apart, ~{res['stream_s']:.0f} s; "
        f"held streams opened over {args.ramp:g} s; "
        f"cuts {args.disconnect_concurrency} at a time; commit {_commit()}; cpus {os.cpu_count()}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        limit_line,
        f"timeline (s from start): all held streams streaming {_s(res['t_all_held'])}, last cut "
        f"{_s(res['t_cuts_done'])}, first held stream ended {_s(res['t_first_end'])}, all ended {_s(res['t_end'])}",
        "",
        f"| {'measure':<{w0}} | {'value':<{w1}} | expected |",
        f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|----------|",
    ]
    lines += [f"| {a:<{w0}} | {b:<{w1}} | {c} |" for a, b, c in rows]
    if res["error_example"]:
        lines.append(f"\nfirst error on a held stream: {res['error_example']}")
    if res["log_failures"]:
        lines.append(f"\nproxy log, failed requests by outcome: {res['log_failures']}; first: {res['log_example']}")
    if res["cut_example"]:
        lines.append(f"\nfirst failed cut: {res['cut_example']}")
    lines.append(
        f"\nheld streams' finish reasons: {res['finish_reasons']}; tokens per held stream: {res['tokens_per_stream'][:5]}"
    )
    return "\n".join(lines) + "\n"


def _quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return " / ".join(f"{v[min(len(v) - 1, int(q * len(v)))]:.2f}" for q in (0.5, 0.99)) + f" / {v[-1]:.2f}"


def _commit() -> str:
    """The commit the proxy ran from, with "+changes" when the work tree differs."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "proxy", "guards"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" +changes in proxy/ or guards/" if dirty else "")


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def failures_in_log(path: Path) -> tuple[dict[str, int], str]:
    """The proxy's "request failed (OUTCOME): why" lines, counted by outcome."""
    found: Counter[str] = Counter()
    example = ""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}, ""
    for line in lines:
        if "request failed (" in line:
            found[line.split("request failed (", 1)[1].split(")", 1)[0]] += 1
            example = example or line.strip()[:300]
    return dict(found), example


def verdict(args: argparse.Namespace, res: dict[str, Any]) -> list[str]:
    """What did not hold, in words (empty: everything did)."""
    bad = []
    if res["completed"] != res["streams"] or res["errors"]:
        bad.append(f"{res['errors']} errors on the held streams")
    if res["cuts"].get("cut", 0) != args.disconnects:
        bad.append("not every disconnect was made mid-stream")
    if res["gauge_after"] != 0:
        bad.append(f"in-flight gauge afterwards {res['gauge_after']}")
    if min(res["fds_after"], res["fds_after_nudge"]) > res["fds_before"] + args.fd_slack:
        bad.append(f"open fds {res['fds_before']} -> {res['fds_after']} ({res['fds_after_nudge']} after one more request)")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000, help="streams held open together")
    parser.add_argument("--disconnects", type=int, default=2000, help="streams cut mid-stream")
    parser.add_argument(
        "--guards",
        choices=["off", "on"],
        default="off",
        help="off: all policy stages disabled; on: prompt, reasoning and answer checks against bench/sim.py's guard",
    )
    parser.add_argument("--guard-latency", type=float, default=0.05, help="the simulated guard's latency (s)")
    parser.add_argument("--tokens", type=int, default=60, help="tokens per upstream stream (half reasoning)")
    parser.add_argument("--itl", type=float, default=0.5, help="seconds between upstream tokens")
    parser.add_argument(
        "--ramp",
        type=float,
        default=5.0,
        help="seconds over which the held streams are opened (evenly); with --guards on every one "
        "starts with a prompt check: on a small machine give it ~20 s and a longer --itl",
    )
    parser.add_argument("--disconnect-concurrency", type=int, default=500)
    parser.add_argument(
        "--cut-at",
        choices=["event", "token"],
        default="event",
        help="a stream counts as started, and a disconnect is made, after its first SSE event "
        "(the proxy is relaying) or its first token (with guards on and release=checked, "
        "reasoning tokens are released only after a check)",
    )
    parser.add_argument("--hold-timeout", type=float, default=120.0, help="seconds to wait for every held stream to start")
    parser.add_argument("--settle-timeout", type=float, default=60.0, help="seconds to wait for the gauge to reach 0")
    parser.add_argument(
        "--fd-settle-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the fds to return near their count before (idle upstream connections expire after 5 s)",
    )
    parser.add_argument("--fd-slack", type=int, default=16, help="settled fds may exceed the count before by this much")
    parser.add_argument("--timeout", type=float, default=1200.0, help="the whole run, seconds")
    parser.add_argument("--out", default=str(OUT), help="where the table is written")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args(argv)
    if min(args.streams, args.disconnects, args.disconnect_concurrency) < 0 or args.streams < 1:
        parser.error("--streams must be >= 1, the other counts >= 0")
    limit_line = raise_nofile(3 * (args.streams + args.disconnect_concurrency) + 1024)
    print(limit_line, flush=True)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    LOGS.mkdir(parents=True, exist_ok=True)
    try:
        upstream = start_upstream("soak-upstream")
        guard = start_guard("soak-guard", latency=args.guard_latency) if args.guards == "on" else None
        connections = 2 * (args.streams + args.disconnect_concurrency) + 64
        proxy = start_soak_proxy(upstream, guard, connections, guard_queue=4 * (args.streams + args.disconnect_concurrency))
        res = asyncio.run(asyncio.wait_for(soak(args, proxy, upstream, guard), args.timeout))
    finally:
        Proc.stop_all()
    res["log_failures"], res["log_example"] = failures_in_log(res["proxy_log"])
    text = table(args, res, limit_line)
    bad = verdict(args, res)
    text += ("\nresult: " + ("PASS" if not bad else "FAIL: " + "; ".join(bad))) + "\n"
    if res["held_at_cut_end"] < args.streams:
        text += (
            f"note: {args.streams - res['held_at_cut_end']} held streams had ended before the last cut; "
            "a larger --itl keeps them open longer\n"
        )
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if args.append else "w") as f:
        f.write(text + "\n")
    print(f"wrote {out} (server logs in {LOGS})")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
