"""The benchmark suite: one command starts everything, runs the scenarios, writes results.

    python -m bench.run [--quick] [--only 1,3] [--no-litellm]

Every server is a subprocess on 127.0.0.1 (free ports), stopped at the end. Results:
bench/results/results.md, results.json, results.png, and the servers' logs in
bench/results/logs/. See bench/README.md for what each scenario measures.

Comparisons are run side by side: targets take turns in rounds inside one run, so that
drift on a shared machine hits them alike; quote the ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from .load import Client, LoadResult, chat_body, run_load

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
PY = sys.executable
LITELLM_VENV = BENCH / ".venv-litellm"
API_KEY = "sk-bench-local-0123456789abcdef"
PROXY_KEYS_ENV = "BENCH_PROXY_KEYS"
MODEL = "sim-model"

# Upstream stream shapes (seconds, tokens).
SHORT = {"ttft": 0.05, "itl": 0.002, "reasoning_tokens": 20, "answer_tokens": 10, "unsafe_at": None}
DEFAULT = {"ttft": 0.05, "itl": 0.01, "reasoning_tokens": 100, "answer_tokens": 50, "unsafe_at": None}


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, doc: Any = None, timeout: float = 5.0) -> Any:
    assert url.startswith("http://127.0.0.1:"), url
    data = json.dumps(doc).encode() if doc is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class Proc:
    """A server subprocess in its own session; stopped (then killed) on ``stop``."""

    live: list[Proc] = []

    def __init__(self, name: str, cmd: list[str], port: int, health: str, env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.port, self.health = name, cmd, port, health
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        self.popen = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        self.ps = psutil.Process(self.popen.pid)
        Proc.live.append(self)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log_path}")
            try:
                urllib.request.urlopen(self.base + self.health, timeout=2).read()
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.ps] + self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) since start, summed over the process tree."""
        total = 0
        for p in self.procs():
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                pass
        return total / 1024

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGINT)
                self.popen.wait(timeout=8)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        self._log.close()
        if self in Proc.live:
            Proc.live.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.live):
            try:
                p.stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: stopping {p.name}: {exc}", file=sys.stderr)


def start_upstream(name: str = "upstream") -> Proc:
    port = free_port()
    p = Proc(name, [PY, "-m", "bench.sim", "upstream", "--port", str(port)], port, "/health")
    p.wait_ready()
    return p


def start_guard(name: str = "guard", latency: float = 0.0) -> Proc:
    port = free_port()
    p = Proc(name, [PY, "-m", "bench.sim", "guard", "--port", str(port), "--latency", str(latency)], port, "/health")
    p.wait_ready()
    return p


def proxy_config(
    name: str,
    port: int,
    upstream: Proc,
    guard: Proc | None = None,
    *,
    prompt: bool = False,
    prompt_mode: str = "parallel",
    reasoning: bool = False,
    check_every: int = 32,
    answer: bool = False,
    auth: bool = False,
) -> Path:
    guard_url = f"{guard.base}/v1" if guard else "http://127.0.0.1:9/v1"
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_grace_s = 1.0
{f'api_keys_env = "{PROXY_KEYS_ENV}"' if auth else ""}

[upstream]
base_url = "{upstream.base}/v1"
max_connections = 1000

[policy.prompt]
enabled = {str(prompt).lower()}
mode = "{prompt_mode}"

[policy.reasoning]
enabled = {str(reasoning).lower()}
release = "checked"
action = "rewrite"
check_every_tokens = {check_every}

[policy.answer]
enabled = {str(answer).lower()}

[guards.flexguard]
enabled = {str(prompt or answer).lower()}
model = "FlexGuard-Qwen3-8B"
base_url = "{guard_url}"
timeout_s = 30.0
max_retries = 0

[guards.reasoningshield]
enabled = {str(reasoning).lower()}
model = "ReasoningShield-3B"
base_url = "{guard_url}"
timeout_s = 30.0
max_retries = 0
"""
    return write_config(name, text)


def write_config(name: str, text: str) -> Path:
    """A proxy config of one bench run, kept under logs/ to read after the run."""
    path = LOGS / f"{name}.toml"
    LOGS.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_results(md_path: Path, md: str, json_path: Path, doc: Any) -> None:
    """A run's table (markdown, also printed) and its raw figures (JSON, under logs/)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2, default=str))
    md_path.write_text(md)
    print()
    print(md)
    print(f"wrote {md_path} and {json_path}")


def serve_proxy(name: str, config: Path | str, port: int, *flags: str, env: dict[str, str] | None = None) -> Proc:
    """The proxy as its CLI runs it (``python -m proxy serve``), once it is ready."""
    cmd = [PY, "-m", "proxy", "serve", "--config", str(config), "--log-level", "warning", *flags]
    p = Proc(name, cmd, port, "/healthz", env={PROXY_KEYS_ENV: API_KEY, **(env or {})})
    p.wait_ready(60)
    return p


def start_proxy(
    name: str, upstream: Proc, guard: Proc | None = None, *, transport: str | None = None, server: str = "uvicorn", **policy: Any
) -> Proc:
    """``transport=None``: the real CLI (``python -m proxy serve``); else bench/_launch.py."""
    port = free_port()
    cfg = proxy_config(name, port, upstream, guard, **policy)
    if transport is None:
        return serve_proxy(name, cfg, port)
    cmd = [PY, "-m", "bench._launch", "--config", str(cfg), "--port", str(port), "--transport", transport, "--server", server]
    p = Proc(name, cmd, port, "/healthz", env={PROXY_KEYS_ENV: API_KEY})
    p.wait_ready(60)
    return p


def ensure_litellm(install_timeout: float = 900) -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print("creating bench/.venv-litellm and installing litellm[proxy] (takes a minute or two) ...", flush=True)
    try:
        subprocess.run([PY, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True, timeout=install_timeout
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"LiteLLM unavailable: {exc}", file=sys.stderr)
        return None
    return exe if exe.exists() else None


def start_litellm(upstream: Proc) -> Proc | None:
    exe = ensure_litellm()
    if exe is None:
        return None
    port = free_port()
    cfg = LOGS / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream.base}/v1
      api_key: sk-upstream
""")
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": API_KEY,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "NO_DOCS": "True",
    }
    p = Proc(
        "litellm",
        [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        port,
        "/health/liveliness",
        env=env,
    )
    try:
        p.wait_ready(180)
    except RuntimeError as exc:
        print(f"LiteLLM did not start: {exc}", file=sys.stderr)
        p.stop()
        return None
    return p


# -- measuring ----------------------------------------------------------------------------


class Target:
    """Something the load generator talks to, and (if a proxy) the process to meter."""

    def __init__(self, name: str, base: str, proc: Proc | None = None) -> None:
        self.name, self.base, self.proc = name, base, proc
        self.url = f"{base}/v1/chat/completions"
        self.cpu_s = 0.0
        self.cpu_requests = 0


async def measure(
    target: Target,
    concurrency: int,
    *,
    duration: float | None = None,
    requests: int | None = None,
    client: Client,
    label: str = "",
) -> LoadResult:
    cpu0 = target.proc.cpu_seconds() if target.proc else 0.0
    result = await run_load(
        target.url,
        chat_body(MODEL),
        concurrency,
        duration=duration,
        requests=requests,
        client=client,
        timeout=120.0,
        label=label or target.name,
    )
    if target.proc:
        target.cpu_s += target.proc.cpu_seconds() - cpu0
        target.cpu_requests += len(result.samples)
    return result


def merge(results: list[LoadResult]) -> LoadResult:
    samples = [s for r in results for s in r.samples]
    return LoadResult(results[0].label, results[0].concurrency, samples, sum(r.wall for r in results))


async def side_by_side(
    targets: list[Target],
    concurrency: int,
    rounds: int,
    *,
    duration: float | None = None,
    requests: int | None = None,
    client: Client,
) -> dict[str, dict[str, Any]]:
    """Targets take turns, ``rounds`` times; returns a merged summary per target."""
    per: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    cpu: dict[str, tuple[float, int]] = {t.name: (t.cpu_s, t.cpu_requests) for t in targets}
    for r in range(rounds):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for t in order:
            per[t.name].append(await measure(t, concurrency, duration=duration, requests=requests, client=client))
            await asyncio.sleep(0.3)
    out = {}
    for t in targets:
        s = merge(per[t.name]).summary()
        if t.proc:
            c0, n0 = cpu[t.name]
            n = t.cpu_requests - n0
            s["cpu_ms_per_req"] = (t.cpu_s - c0) / n * 1000 if n else None
            s["peak_rss_mb"] = t.proc.peak_rss_mb()
        out[t.name] = s
        print(
            f"    {t.name:<22} c={concurrency:<4} ok={s['ok']}/{s['requests']} err={s['errors']} "
            f"rps={s['rps']:.1f} ttft50={ms(s['ttft_p50'])} ttft99={ms(s['ttft_p99'])} "
            f"itl99={ms(s['itl_p99'])} total50={ms(s['total_p50'])}"
            + (f" cpu/req={s['cpu_ms_per_req']:.2f}ms" if s.get("cpu_ms_per_req") else ""),
            flush=True,
        )
        if s["error_example"]:
            print(f"      first error: {s['error_example']}", flush=True)
    return out


def ms(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v * 1000:.{digits}f}"


def control(proc: Proc, **params: Any) -> None:
    http_json("POST", proc.base + "/control", params)


# -- scenarios ------------------------------------------------------------------------------


async def scenario_overhead(cfg: dict[str, Any], upstream: Proc, client: Client, with_litellm: bool) -> dict[str, Any]:
    """1 + 2: guards off, direct vs guardproxy (vs LiteLLM), c = 1, 32, 256."""
    proxy = start_proxy("guardproxy-off", upstream, auth=True)
    targets = [Target("direct", upstream.base), Target("guardproxy", proxy.base, proxy)]
    litellm = start_litellm(upstream) if with_litellm else None
    if litellm is not None:
        targets.append(Target("litellm", litellm.base, litellm))
    out: dict[str, Any] = {"levels": {}, "litellm": litellm is not None}
    try:
        for c, shape, rounds, dur in cfg["overhead_levels"]:
            print(
                f"  concurrency {c} (stream {shape['reasoning_tokens']}+{shape['answer_tokens']} tokens, "
                f"itl {shape['itl'] * 1000:g} ms)",
                flush=True,
            )
            control(upstream, **shape)
            await side_by_side(targets, c, 1, requests=max(2, c), client=client)  # warm-up, discarded
            out["levels"][str(c)] = {
                "shape": shape,
                "results": await side_by_side(targets, c, rounds, duration=dur, client=client),
            }
        out["peak_rss_mb"] = {t.name: t.proc.peak_rss_mb() for t in targets if t.proc}
    finally:
        proxy.stop()
        if litellm is not None:
            litellm.stop()
    return out


async def scenario_hiding(cfg: dict[str, Any], upstream: Proc, client: Client) -> dict[str, Any]:
    """3: prompt check in parallel with the upstream call vs before it."""
    guard = start_guard("guard-s3")
    par = start_proxy("guardproxy-parallel", upstream, guard, prompt=True, prompt_mode="parallel")
    bef = start_proxy("guardproxy-before", upstream, guard, prompt=True, prompt_mode="before")
    targets = [Target("direct", upstream.base), Target("parallel", par.base, par), Target("before", bef.base, bef)]
    rows = []
    try:
        for g, u in cfg["hiding_pairs"]:
            print(f"  G={g} U={u}", flush=True)
            control(guard, latency=g)
            control(upstream, **dict(SHORT, ttft=u))
            res = await side_by_side(targets, cfg["hiding_c"], cfg["hiding_rounds"], requests=cfg["hiding_n"], client=client)
            rows.append({"G": g, "U": u, "results": res})
    finally:
        for p in (par, bef, guard):
            p.stop()
    return {"rows": rows}


async def scenario_abort(cfg: dict[str, Any], upstream: Proc, client: Client) -> dict[str, Any]:
    """4: tokens the upstream generates after the unsafe passage began, before the abort."""
    guard = start_guard("guard-s4")
    k, itl = cfg["abort_k"], cfg["abort_itl"]
    shape = {"ttft": 0.05, "itl": itl, "reasoning_tokens": cfg["abort_reasoning"], "answer_tokens": 20, "unsafe_at": k}
    control(upstream, **shape)
    proxies = {n: start_proxy(f"guardproxy-check{n}", upstream, guard, reasoning=True, check_every=n) for n in cfg["abort_n"]}
    rate = 1.0 / itl
    rows = []
    try:
        for lat in cfg["abort_l"]:
            control(guard, latency=lat)
            for n, proc in proxies.items():
                http_json("POST", upstream.base + "/stats/reset", {})
                res = await run_load(
                    f"{proc.base}/v1/chat/completions",
                    chat_body(MODEL),
                    cfg["abort_c"],
                    requests=cfg["abort_requests"],
                    client=client,
                    timeout=60.0,
                )
                for _ in range(50):  # the upstream sees the disconnect within one itl
                    st = http_json("GET", upstream.base + "/stats")
                    if st["active"] == 0:
                        break
                    await asyncio.sleep(0.05)
                after = st["after_unsafe"]
                summ = res.summary()
                row = {
                    "N": n,
                    "L": lat,
                    "requests": summ["requests"],
                    "ok": summ["ok"],
                    "finish_reasons": summ["finish_reasons"],
                    "aborted": st["aborted"],
                    "unsafe_completed": st["unsafe_completed"],
                    "after_unsafe": after,
                    "after_mean": sum(after) / len(after) if after else None,
                    "after_min": min(after) if after else None,
                    "after_max": max(after) if after else None,
                    "floor": n + lat * rate,
                    "bound": max(n, lat * rate) + lat * rate,
                    "rate": rate,
                }
                rows.append(row)
                print(
                    f"    N={n:<3} L={lat:<5} after-unsafe mean={fmt(row['after_mean'])} "
                    f"min={row['after_min']} max={row['after_max']} N+L*r={row['floor']:.0f} "
                    f"aborted={st['aborted']}/{summ['requests']} finish={summ['finish_reasons']}",
                    flush=True,
                )
    finally:
        for p in proxies.values():
            p.stop()
        guard.stop()
        control(upstream, unsafe_at=None)
    return {"K": k, "itl": itl, "rate": rate, "reasoning_tokens": cfg["abort_reasoning"], "rows": rows}


async def scenario_stack(cfg: dict[str, Any], upstream: Proc, client: Client) -> dict[str, Any]:
    """5: httpx vs aiohttp transport, uvicorn vs granian, c=256, guards off."""
    targets = [Target("direct", upstream.base)]
    procs = []
    try:
        for server in ("uvicorn", "granian"):
            for transport in ("httpx", "aiohttp"):
                name = f"{server}+{transport}"
                p = start_proxy(f"guardproxy-{name}", upstream, transport=transport, server=server)
                procs.append(p)
                targets.append(Target(name, p.base, p))
        control(upstream, **DEFAULT)
        c = cfg["stack_c"]
        await side_by_side(targets, c, 1, requests=c, client=client)  # warm-up, discarded
        res = await side_by_side(targets, c, cfg["stack_rounds"], duration=cfg["stack_duration"], client=client)
        rss = {t.name: t.proc.peak_rss_mb() for t in targets if t.proc}
    finally:
        for p in procs:
            p.stop()
    return {"concurrency": c, "results": res, "peak_rss_mb": rss}


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# -- report -----------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def report(res: dict[str, Any]) -> str:
    out: list[str] = []
    meta = res["meta"]
    out.append(f"# guardproxy benchmark ({'quick' if meta['quick'] else 'full'} run)\n")
    out.append(
        f"{meta['date']} · {meta['cpus']} CPUs · load average at start {meta['loadavg_start']}, "
        f"at end {meta.get('loadavg_end')} · Python {meta['python']} · run took {meta.get('elapsed_s', 0):.0f} s. "
        "All servers on 127.0.0.1; targets measured in alternating rounds within this run, so compare "
        "ratios rather than absolute times (the machine is shared).\n"
    )
    if "overhead" in res:
        ov = res["overhead"]
        out.append("## 1. Overhead with guards off: guardproxy vs direct upstream\n")
        rows = []
        for c, lv in ov["levels"].items():
            r = lv["results"]
            d, g = r["direct"], r["guardproxy"]
            rows.append(
                [
                    c,
                    f"{lv['shape']['reasoning_tokens']}+{lv['shape']['answer_tokens']}",
                    ms(d["ttft_p50"]),
                    ms(g["ttft_p50"]),
                    ms(_sub(g["ttft_p50"], d["ttft_p50"]), 2),
                    ms(d["ttft_p99"]),
                    ms(g["ttft_p99"]),
                    ms(d["itl_p99"]),
                    ms(g["itl_p99"]),
                    ms(d["total_p50"]),
                    ms(g["total_p50"]),
                    fmt(d["rps"]),
                    fmt(g["rps"]),
                    f"{d['errors']}/{g['errors']}",
                    fmt(g.get("cpu_ms_per_req"), 2),
                ]
            )
        out.append(
            table(
                [
                    "c",
                    "tokens",
                    "TTFT p50 direct",
                    "TTFT p50 proxy",
                    "added p50",
                    "TTFT p99 direct",
                    "TTFT p99 proxy",
                    "ITL p99 direct",
                    "ITL p99 proxy",
                    "total p50 direct",
                    "total p50 proxy",
                    "req/s direct",
                    "req/s proxy",
                    "errors d/p",
                    "proxy CPU ms/req",
                ],
                rows,
            )
        )
        out.append(
            "\nTimes in ms. 'tokens' = reasoning+answer tokens per stream (c=1 uses a short fast stream "
            "so that many TTFT samples fit; the others the default 100+50 at 10 ms/token). Target: added "
            f"p50 TTFT <= 2 ms at c=1, no errors at c=256. Proxy peak RSS: "
            f"{fmt(ov.get('peak_rss_mb', {}).get('guardproxy'))} MB.\n"
        )
        if ov.get("litellm"):
            out.append("## 2. guardproxy vs LiteLLM proxy (pass-through, same upstream)\n")
            rows = []
            for c, lv in ov["levels"].items():
                r = lv["results"]
                d, g, l = r["direct"], r["guardproxy"], r["litellm"]
                ag, al = _sub(g["ttft_p50"], d["ttft_p50"]), _sub(l["ttft_p50"], d["ttft_p50"])
                tg, tl = _sub(g["total_p50"], d["total_p50"]), _sub(l["total_p50"], d["total_p50"])
                rows.append(
                    [
                        c,
                        ms(ag, 2),
                        ms(al, 2),
                        ratio(ag, al),
                        ms(tg, 1),
                        ms(tl, 1),
                        fmt(g["rps"]),
                        fmt(l["rps"]),
                        ratio(g["rps"], l["rps"]),
                        f"{g['errors']}/{l['errors']}",
                        fmt(g.get("cpu_ms_per_req"), 2),
                        fmt(l.get("cpu_ms_per_req"), 2),
                    ]
                )
            out.append(
                table(
                    [
                        "c",
                        "added TTFT p50 guardproxy",
                        "added TTFT p50 LiteLLM",
                        "ratio g/L",
                        "added total p50 guardproxy",
                        "added total p50 LiteLLM",
                        "req/s guardproxy",
                        "req/s LiteLLM",
                        "throughput g/L",
                        "errors g/L",
                        "CPU ms/req guardproxy",
                        "CPU ms/req LiteLLM",
                    ],
                    rows,
                )
            )
            out.append(
                f"\nAdded = proxy p50 minus direct p50 in the same run (ms). Targets: added latency ratio "
                f"<= 0.33, throughput ratio >= 2. Peak RSS: guardproxy "
                f"{fmt(ov['peak_rss_mb'].get('guardproxy'))} MB, LiteLLM "
                f"{fmt(ov['peak_rss_mb'].get('litellm'))} MB.\n"
            )
    if "hiding" in res:
        out.append("## 3. Guard-latency hiding: prompt check `parallel` vs `before`\n")
        rows = []
        for row in res["hiding"]["rows"]:
            g, u, r = row["G"], row["U"], row["results"]
            par, bef, d = r["parallel"], r["before"], r["direct"]
            rows.append(
                [
                    f"{g:g}",
                    f"{u:g}",
                    ms(d["ttft_p50"]),
                    f"{max(g, u) * 1000:.0f}",
                    ms(par["ttft_p50"]),
                    ms(_sub(par["ttft_p50"], max(g, u))),
                    f"{(g + u) * 1000:.0f}",
                    ms(bef["ttft_p50"]),
                    ms(_sub(bef["ttft_p50"], g + u)),
                    ms(_sub(bef["ttft_p50"], par["ttft_p50"])),
                ]
            )
        out.append(
            table(
                [
                    "G (s)",
                    "U (s)",
                    "direct TTFT",
                    "max(G,U)",
                    "parallel TTFT",
                    "parallel - max",
                    "G+U",
                    "before TTFT",
                    "before - (G+U)",
                    "saved by parallel",
                ],
                rows,
            )
        )
        out.append(
            "\nTTFT p50 in ms; FlexGuard prompt check only (reasoning and answer stages off). 'parallel - max' "
            "and 'before - (G+U)' are the proxy's own overhead on top of the ideal.\n"
        )
    if "abort" in res:
        ab = res["abort"]
        out.append("## 4. Early-abort delay (reasoning stage, release = checked)\n")
        rows = []
        for row in ab["rows"]:
            rows.append(
                [
                    str(row["N"]),
                    f"{row['L']:g}",
                    fmt(row["after_mean"]),
                    str(row["after_min"]),
                    str(row["after_max"]),
                    f"{row['floor']:.0f}",
                    f"{row['bound']:.0f}",
                    f"{row['aborted']}/{row['requests']}",
                    str(row["unsafe_completed"]),
                    ",".join(f"{k}:{v}" for k, v in row["finish_reasons"].items()),
                ]
            )
        out.append(
            table(
                [
                    "check every N",
                    "guard latency L (s)",
                    "tokens after unsafe (mean)",
                    "min",
                    "max",
                    "floor N + L*r",
                    "bound max(N,L*r)+L*r",
                    "upstream aborted",
                    "unsafe streamed to end",
                    "client finish",
                ],
                rows,
            )
        )
        out.append(
            f"\nThe upstream streams {ab['reasoning_tokens']} reasoning tokens at r = {ab['rate']:.0f} tokens/s; "
            f"the unsafe passage begins at token K = {ab['K']} (ReasoningShield flags any Thought containing "
            "it). 'Tokens after unsafe' is counted by the upstream simulator: tokens it generated from token K "
            "on, until it saw the proxy close the connection. Floor: a check starts only every N new tokens, "
            "so the first check that sees token K may start up to N tokens after it, and the upstream keeps "
            "generating L*r tokens while that check runs: N + L*r. With one check in flight at a time, when "
            "L*r > N the checks run back to back and the covering check can wait for the one in flight, "
            "so the worst case becomes max(N, L*r) + L*r. Where K falls inside a window the typical value is "
            "lower than the floor (on average N/2 + L*r when L*r < N). The abort itself (close the upstream "
            "connection; the simulator stops within one token) adds ~1 token.\n"
        )
    if "stack" in res:
        st = res["stack"]
        out.append(f"## 5. Upstream HTTP client and ASGI server (c = {st['concurrency']}, guards off)\n")
        base = st["results"].get("uvicorn+httpx")
        rows = []
        for name, s in st["results"].items():
            rows.append(
                [
                    name,
                    fmt(s["rps"]),
                    ratio(s["rps"], base["rps"]) if base and name != "direct" else "-",
                    ms(s["ttft_p50"]),
                    ms(s["ttft_p99"]),
                    ms(s["itl_p99"]),
                    ms(s["total_p50"]),
                    str(s["errors"]),
                    fmt(s.get("cpu_ms_per_req"), 2),
                    fmt(st["peak_rss_mb"].get(name)),
                ]
            )
        out.append(
            table(
                [
                    "stack",
                    "req/s",
                    "vs uvicorn+httpx",
                    "TTFT p50",
                    "TTFT p99",
                    "ITL p99",
                    "total p50",
                    "errors",
                    "CPU ms/req",
                    "peak RSS MB",
                ],
                rows,
            )
        )
        out.append(
            "\nAll launched by bench/_launch.py (the config's `upstream.http_transport` set per stack); "
            "'direct' is the upstream without a proxy. CPU = user+system of the proxy process tree over the "
            "measured rounds / requests.\n"
        )
    if "cost" in res:
        from .cost import report_cost

        out.append(report_cost(res["cost"]))
    if "client_check" in res:
        cc = res["client_check"]
        out.append("## Load generator client\n")
        out.append(
            table(["client", "req/s direct c=256", "TTFT p50"], [[k, fmt(v["rps"]), ms(v["ttft_p50"])] for k, v in cc.items()])
        )
        out.append("\nThe load generator uses the faster of the two.\n")
    return "\n".join(out) + "\n"


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    ax = axes[0][0]
    if "overhead" in res:
        levels = list(res["overhead"]["levels"])
        names = list(next(iter(res["overhead"]["levels"].values()))["results"])
        for n in names:
            ys = [res["overhead"]["levels"][c]["results"][n]["ttft_p50"] for c in levels]
            ax.plot(levels, [y * 1000 if y else None for y in ys], marker="o", label=n)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("TTFT p50 (ms)")
        ax.set_title("1/2: TTFT p50, guards off")
        ax.legend()
        ax = axes[0][1]
        for n in names:
            ys = [res["overhead"]["levels"][c]["results"][n]["rps"] for c in levels]
            ax.plot(levels, ys, marker="o", label=n)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("requests/s")
        ax.set_title("1/2: throughput")
        ax.legend()
    ax = axes[0][2]
    if "hiding" in res:
        rows = res["hiding"]["rows"]
        xs = range(len(rows))
        for i, (key, lab) in enumerate([("direct", "direct (U)"), ("parallel", "parallel"), ("before", "before")]):
            ax.bar([x + i * 0.25 for x in xs], [r["results"][key]["ttft_p50"] * 1000 for r in rows], 0.25, label=lab)
        ax.scatter(
            [x + 0.25 for x in xs],
            [max(r["G"], r["U"]) * 1000 for r in rows],
            marker="_",
            s=400,
            color="k",
            label="max(G,U)",
            zorder=3,
        )
        ax.scatter(
            [x + 0.5 for x in xs], [(r["G"] + r["U"]) * 1000 for r in rows], marker="_", s=400, color="r", label="G+U", zorder=3
        )
        ax.set_xticks([x + 0.25 for x in xs], [f"G={r['G']} U={r['U']}" for r in rows])
        ax.set_ylabel("TTFT p50 (ms)")
        ax.set_title("3: prompt-check latency hiding")
        ax.legend(fontsize=8)
    ax = axes[1][0]
    if "abort" in res:
        rows = res["abort"]["rows"]
        for lat in sorted({r["L"] for r in rows}):
            rs = [r for r in rows if r["L"] == lat]
            (line,) = ax.plot([r["N"] for r in rs], [r["after_mean"] for r in rs], marker="o", label=f"L={lat}s measured")
            ax.plot([r["N"] for r in rs], [r["floor"] for r in rs], ls="--", color=line.get_color(), label=f"L={lat}s N+L*r")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("check every N tokens")
        ax.set_ylabel("tokens after unsafe began")
        ax.set_title("4: early-abort delay")
        ax.legend(fontsize=7)
    ax = axes[1][1]
    if "stack" in res:
        st = res["stack"]["results"]
        names = list(st)
        ax.bar(names, [st[n]["rps"] for n in names], color="tab:blue")
        ax.set_ylabel("requests/s")
        ax.set_title(f"5: stacks at c={res['stack']['concurrency']}")
        ax.tick_params(axis="x", rotation=20)
        ax = axes[1][2]
        names = [n for n in names if st[n].get("cpu_ms_per_req")]
        ax.bar(names, [st[n]["cpu_ms_per_req"] for n in names], color="tab:orange")
        ax.set_ylabel("proxy CPU ms / request")
        ax.set_title("5: CPU per request")
        ax.tick_params(axis="x", rotation=20)
    else:
        axes[1][2].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "overhead_levels": [(1, SHORT, 3, 2.0), (32, DEFAULT, 1, 4.0), (256, DEFAULT, 1, 5.0)],
            "hiding_pairs": [(0.2, 0.3), (0.3, 0.2)],
            "hiding_c": 1,
            "hiding_rounds": 1,
            "hiding_n": 4,
            "abort_n": [8, 16, 32, 64],
            "abort_l": [0.05, 0.2, 0.5],
            "abort_c": 2,
            "abort_requests": 2,
            "abort_k": 100,
            "abort_itl": 0.01,
            "abort_reasoning": 400,
            "stack_c": 256,
            "stack_rounds": 1,
            "stack_duration": 5.0,
            "cost_c": 2,
            "cost_requests": 2,
            "cost_abort_c": 2,
        }
    return {
        "overhead_levels": [(1, SHORT, 6, 3.0), (32, DEFAULT, 2, 8.0), (256, DEFAULT, 2, 10.0)],
        "hiding_pairs": [(0.2, 0.3), (0.3, 0.2)],
        "hiding_c": 1,
        "hiding_rounds": 3,
        "hiding_n": 5,
        "abort_n": [8, 16, 32, 64],
        "abort_l": [0.05, 0.2, 0.5],
        "abort_c": 4,
        "abort_requests": 8,
        "abort_k": 100,
        "abort_itl": 0.01,
        "abort_reasoning": 400,
        "stack_c": 256,
        "stack_rounds": 2,
        "stack_duration": 10.0,
        "cost_c": 3,
        "cost_requests": 3,
        "cost_abort_c": 3,
    }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    cfg = settings(args.quick)
    only = {int(x) for x in args.only.split(",")} if args.only else {1, 2, 3, 4, 5, 6}
    t0 = time.monotonic()
    res: dict[str, Any] = {
        "meta": {
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpus": os.cpu_count(),
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
            "settings": {k: v for k, v in cfg.items()},
        }
    }
    upstream = start_upstream()
    async with Client("aiohttp", pool=2048) as client:
        if only & {1, 2}:
            print("Scenario 1/2: overhead, guards off (direct, guardproxy, LiteLLM)", flush=True)
            res["overhead"] = await scenario_overhead(cfg, upstream, client, 2 in only and not args.no_litellm)
        if 3 in only:
            print("Scenario 3: guard-latency hiding", flush=True)
            res["hiding"] = await scenario_hiding(cfg, upstream, client)
        if 4 in only:
            print("Scenario 4: early-abort delay", flush=True)
            res["abort"] = await scenario_abort(cfg, upstream, client)
        if 5 in only:
            print("Scenario 5: transports and servers", flush=True)
            res["stack"] = await scenario_stack(cfg, upstream, client)
        if 6 in only:
            from .cost import scenario_cost

            print("Scenario 6: what protection costs (check schedules)", flush=True)
            res["cost"] = await scenario_cost(cfg, client)
    upstream.stop()
    res["meta"]["elapsed_s"] = time.monotonic() - t0
    res["meta"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (~2-3 minutes)")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,3")
    parser.add_argument("--no-litellm", action="store_true", help="skip scenario 2 (no LiteLLM venv)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        res = asyncio.run(amain(args))
    finally:
        Proc.stop_all()
    # Scenario 6 alone keeps its own file: results.md holds the last full run.
    name = "cost" if args.only.replace(" ", "") == "6" else "results"
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    md = report(res)
    if name == "results":
        try:
            plot(res, RESULTS / "results.png")
            md += "\n![results](results.png)\n"
        except Exception as exc:  # the tables matter more than the picture
            print(f"plot failed: {exc!r}", file=sys.stderr)
    (RESULTS / f"{name}.md").write_text(md)
    print()
    print(md)
    print(f"wrote {RESULTS / name}.md and {name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
