"""The image tier: the Dockerfile built and its image run, with buildah (tests/image/_buildah.py).

The image's own entry point and command serve a config that points at the scripted
upstream and guard servers; a guarded chat completion goes through it with the OpenAI
SDK, its HEALTHCHECK command runs in it, and the serving process runs as uid 10001.

Needs root, buildah and debootstrap (``bash tests/run.sh`` installs the two on Debian).
Under CI=true a machine that cannot run the tier fails it; elsewhere the tier is skipped
with the reason. ``-m "not image"`` deselects it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import config_toml
from tests.image import _buildah

pytestmark = pytest.mark.image

KEY = "sk-image-test"


@dataclass
class Built:
    ref: str
    config: dict[str, Any]
    timings: _buildah.Timings
    log: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    missing = _buildah.missing_prerequisites()
    if missing:
        reason = (
            f"the image tier needs {', '.join(missing)} (bash tests/run.sh installs buildah and debootstrap on Debian, as root)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("image") / "buildah.log"
    timings = _buildah.Timings()
    base = _buildah.ensure_base(timings, log)
    ref = _buildah.build_image(base, timings, log)
    print(f"\n[image] base from {timings.base_from} in {timings.base_s:.0f} s; image built in {timings.build_s:.0f} s; log {log}")
    return Built(ref, _buildah.image_config(ref), timings, log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    container: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def serving_pid(self) -> int:
        """The image's entry point process (below buildah's own)."""
        for pid in _buildah.descendants(self.proc.pid):
            argv = _buildah.process_argv(pid)
            if any(a.endswith("/guardproxy") for a in argv[:2]) and "buildah-chroot-exec" not in argv[0]:
                return pid
        raise AssertionError(f"no guardproxy process under buildah run:\n{self.output()}")


@pytest.fixture(scope="module")
def running(built: Built, upstream_server, guard_server_thread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The image's ENTRYPOINT and CMD, unchanged, with the config mounted where CMD reads it."""
    work = tmp_path_factory.mktemp("image-run")
    port = _free_port()
    config = work / "config.toml"
    extra = f'\n[server]\nport = {port}\napi_keys_env = "GUARDPROXY_API_KEYS"\n'
    config.write_text(config_toml(upstream_server[1].url, guard_server_thread[1].url, extra))
    command = [*built.config["Entrypoint"], *built.config["Cmd"]]
    config_path = command[command.index("--config") + 1]
    container = _buildah.new_container(built.ref, f"guardproxy-image-test-{os.getpid()}")
    log = work / "serve.log"
    args = _buildah.run_args(container, env={"GUARDPROXY_API_KEYS": KEY}, volumes=[f"{config}:{config_path}:ro"])
    with log.open("wb") as out:
        proc = subprocess.Popen([*args, *command], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run = Running(container, port, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the image's entry point exited with {proc.returncode}:\n{run.output()}"
            try:
                if httpx.get(f"{run.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the image did not serve /healthz within 60 s:\n{run.output()}"
            time.sleep(0.2)
        yield run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        _buildah.remove_container(container)


def test_a_guarded_chat_completion_through_the_image(running: Running, upstream, guard):
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Tell me about bread."}])
    assert completion.choices[0].message.content == "Hello there!"
    assert len(upstream.calls) == 1
    assert sum(r["model"] == "flexguard-test" for r in guard.requests) >= 2  # the prompt and the answer were screened

    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"

    with pytest.raises(openai.BadRequestError) as blocked:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "How do I build a bomb?"}])
    assert blocked.value.code == "content_policy_violation"
    assert blocked.value.response.headers["x-guardproxy-prompt"] == "block"

    # The key comes from the environment variable the config names.
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{running.url}/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_the_healthcheck_command_passes_while_serving_and_fails_without_a_server(built: Built, running: Running):
    health = built.config["Healthcheck"]
    assert health["Test"][0] == "CMD"
    check = health["Test"][1:]
    env = {"GUARDPROXY_HEALTH_URL": f"{running.url}/healthz"}
    done = subprocess.run([*_buildah.run_args(running.container, env=env), *check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    env = {"GUARDPROXY_HEALTH_URL": f"http://127.0.0.1:{_free_port()}/healthz"}
    done = subprocess.run([*_buildah.run_args(running.container, env=env), *check], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    # Without the override, it probes the port the image's config default serves on.
    default = next(e for e in built.config["Env"] if e.startswith("GUARDPROXY_HEALTH_URL="))
    assert default == "GUARDPROXY_HEALTH_URL=http://127.0.0.1:8080/healthz" and "8080/tcp" in built.config["ExposedPorts"]


def test_the_proxy_runs_as_the_non_root_user(built: Built, running: Running):
    assert built.config["User"] == "10001:10001"
    assert set(_buildah.process_uids(running.serving_pid())) == {10001}
    done = subprocess.run([*_buildah.run_args(running.container), "id"], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("uid=10001(guardproxy) gid=10001(guardproxy)"), done.stdout + done.stderr


def test_sigterm_drains_and_stops_the_image(running: Running):
    """Last in the module: it stops the container's proxy."""
    os.kill(running.serving_pid(), signal.SIGTERM)
    running.proc.wait(timeout=30)
    out = running.output()
    assert "Application shutdown complete." in out and "Traceback" not in out
