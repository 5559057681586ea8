"""deploy/compose.yaml, checked as compose would read it, against what it runs and the docs.

No container engine runs here, so compose's own ``config`` is out of reach: the file is
parsed, its ``${...}`` references are resolved with compose's rules, and the result is
checked against deploy/config.toml (which it mounts), the Dockerfile, the Helm values and
what README.md and docs/deploy.md tell a user: the secrets the config names, ports,
volumes, model names and the GPU layout.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import load_config
from proxy._auth import check_secrets
from proxy.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_TEXT = (DEPLOY / "compose.yaml").read_text()
README = (ROOT / "README.md").read_text()
DEPLOY_DOC = (ROOT / "docs/deploy.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CONFIG = load_config(DEPLOY / "config.toml")
# What the documented command sets: the keys, and the weights' folder.
DOCUMENTED_ENV = {"GUARDPROXY_API_KEYS": "sk-one,sk-two", "MODELS_DIR": "/srv/models"}
UPSTREAM_MODEL = "Qwen/Qwen3-8B"


class MissingVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error} (the ':' forms treat an empty value as unset)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        given = env.get(name)
        missing = given is None or (given == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if missing else str(given)
        if op in (":?", "?") and missing:
            raise MissingVariable(name, arg)
        return given or ""

    return _REFERENCE.sub(substitute, value)


def _compose(env: dict[str, str]) -> dict[str, Any]:
    return _interpolate(yaml.safe_load(COMPOSE_TEXT), env)


def _required_variables() -> set[str]:
    return {m["name"] for m in _REFERENCE.finditer(COMPOSE_TEXT) if m["op"] in (":?", "?")}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return _compose(DOCUMENTED_ENV)["services"]


# -- start-up: the documented command, and what happens without the keys -------------------


def test_without_the_keys_compose_stops_before_starting_with_a_message():
    with pytest.raises(MissingVariable) as missing:
        _compose({"MODELS_DIR": "/srv/models"})
    assert missing.value.name == "GUARDPROXY_API_KEYS"
    assert "set GUARDPROXY_API_KEYS" in str(missing.value) and "comma-separated" in str(missing.value)
    with pytest.raises(MissingVariable):  # an empty value is no key either
        _compose({**DOCUMENTED_ENV, "GUARDPROXY_API_KEYS": ""})


def test_the_documented_command_gives_compose_every_variable_it_requires():
    documented = [line for text in (COMPOSE_TEXT, README, DEPLOY_DOC) for line in text.splitlines()
                  if "docker compose -f deploy/compose.yaml up" in line]  # fmt: skip
    assert len(documented) >= 3
    for line in documented:
        words = shlex.split(line.lstrip("# "))
        given = {w.split("=", 1)[0] for w in words[: words.index("docker")] if "=" in w}
        assert _required_variables() <= given, line
        assert "MODELS_DIR" in given, line


def test_the_proxy_container_has_every_secret_its_config_names(services):
    environment = services["proxy"]["environment"]
    check_secrets(CONFIG, environment)  # what the proxy checks before it starts
    assert environment["GUARDPROXY_API_KEYS"] == DOCUMENTED_ENV["GUARDPROXY_API_KEYS"]
    # Each variable compose requires is one the config needs: without it the start fails.
    for name in _required_variables():
        with pytest.raises(ConfigError, match=name):
            check_secrets(CONFIG, {k: v for k, v in environment.items() if k != name})


# -- the proxy container: ports, config mount, image -----------------------------------------


def _dockerfile_instruction(name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def _image_config_path() -> str:
    [cmd] = [json.loads(c) for c in _dockerfile_instruction("CMD")]
    return str(cmd[cmd.index("--config") + 1])


def test_the_proxy_serves_on_the_port_compose_publishes(services):
    proxy = services["proxy"]
    assert proxy["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    [port] = proxy["ports"]
    published, target = port.rsplit(":", 1)
    assert published == "8080" and int(target) == CONFIG.server.port
    assert _dockerfile_instruction("EXPOSE") == [str(CONFIG.server.port)]
    assert f"127.0.0.1:{CONFIG.server.port}/healthz" in DOCKERFILE  # the HEALTHCHECK's default
    assert CONFIG.server.host == "0.0.0.0"
    assert _compose({**DOCUMENTED_ENV, "GUARDPROXY_PORT": "9000"})["services"]["proxy"]["ports"] == [f"9000:{CONFIG.server.port}"]


def test_the_config_is_mounted_where_the_image_reads_it(services):
    [volume] = services["proxy"]["volumes"]
    source, target, mode = volume.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "config.toml"
    assert target == _image_config_path() and mode == "ro"


def test_the_proxy_starts_after_the_model_servers_and_drains_before_it_is_killed(services):
    proxy = services["proxy"]
    assert {name: d["condition"] for name, d in proxy["depends_on"].items()} == dict.fromkeys(
        ("upstream", "flexguard", "reasoningshield"), "service_healthy"
    )
    grace = int(proxy["stop_grace_period"].rstrip("s"))
    assert grace > CONFIG.server.shutdown_grace_s + 3  # the drain deadline, then the hard stop


# -- the model servers: weights, names, GPU ----------------------------------------------------


def _flag(command: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
    assert len(values) <= 1
    return values[0] if values else None


def test_each_model_server_reads_its_weights_from_models_dir(services):
    defaults = {"upstream": "Qwen3-8B", "flexguard": "FlexGuard-Qwen3-8B", "reasoningshield": "ReasoningShield-3B"}
    for name, folder in defaults.items():
        service = services[name]
        assert service["image"].startswith("vllm/vllm-openai:")
        assert service["volumes"] == [f"/srv/models/{folder}:/models/{name}:ro"]
        assert _flag(service["command"], "model") == f"/models/{name}"
        assert service["environment"] == {"HF_HUB_OFFLINE": "1"}  # nothing downloads at start
        assert f"{folder}/" in DEPLOY_DOC  # the layout the deploy guide shows


def test_the_servers_serve_the_names_the_proxy_and_its_clients_use(services):
    assert _flag(services["upstream"]["command"], "reasoning-parser") == "qwen3"
    assert _flag(services["upstream"]["command"], "served-model-name") == UPSTREAM_MODEL
    assert urlsplit_host(CONFIG.upstream.base_url) == ("upstream", 8000)
    for name in ("flexguard", "reasoningshield"):
        command = services[name]["command"]
        assert _flag(command, "reasoning-parser") is None  # the proxy parses the guard's output
        guard = getattr(CONFIG.guards, name)
        assert _flag(command, "served-model-name") == guard.model
        assert _flag(command, "port") == "8000" and urlsplit_host(guard.base_url) == (name, 8000)


def urlsplit_host(url: str) -> tuple[str | None, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname, parts.port


def test_one_upstream_model_name_everywhere():
    """The name clients send is the one compose and the chart serve, and the docs show."""
    helm = yaml.safe_load((DEPLOY / "helm/guardproxy/values.yaml").read_text())["models"]
    assert helm["upstream"]["servedModelName"] == UPSTREAM_MODEL
    for name in ("flexguard", "reasoningshield"):
        assert helm[name]["servedModelName"] == getattr(CONFIG.guards, name).model
    quick_start = README.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    for text in (quick_start, DEPLOY_DOC):
        clients = re.findall(r'model="([^"]+)"', text)
        assert clients and set(clients) == {UPSTREAM_MODEL}
    assert f'"model": "{UPSTREAM_MODEL}"' in DEPLOY_DOC  # the curl line


def _readme_quick_start_fractions() -> dict[str, float]:
    """--gpu-memory-utilization per model in the README's one-GPU quick start."""
    fractions = {}
    for line in re.sub(r"\\\n\s*", " ", README).splitlines():
        if line.startswith("vllm serve ") and "--gpu-memory-utilization" in line:
            model = line.split()[2].split("/")[-1]
            fractions[model] = float(re.search(r"--gpu-memory-utilization[ =]([0-9.]+)", line)[1])  # type: ignore[index]
    return fractions


def test_the_gpu_layout_is_the_documented_one(services):
    """One GPU for the three servers, split as the README's quick start splits it, each
    server starting once the one before is healthy (vLLM sizes its cache from what is free)."""
    devices = {
        name: services[name]["deploy"]["resources"]["reservations"]["devices"]
        for name in ("upstream", "flexguard", "reasoningshield")
    }
    for device in devices.values():
        assert len(device) == 1 and device[0]["driver"] == "nvidia" and device[0]["capabilities"] == ["gpu"]
    assert {tuple(d[0]["device_ids"]) for d in devices.values()} == {("0",)}
    moved = _compose({**DOCUMENTED_ENV, "GPU_ID": "3"})["services"]
    assert {tuple(moved[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) for n in devices} == {("3",)}

    readme = _readme_quick_start_fractions()
    folders = {"upstream": "Qwen3-8B", "flexguard": "FlexGuard-Qwen3-8B", "reasoningshield": "ReasoningShield-3B"}
    compose = {name: float(_flag(services[name]["command"], "gpu-memory-utilization") or 0) for name in folders}
    assert compose == {name: readme[folder] for name, folder in folders.items()}
    assert sum(compose.values()) < 1.0
    assert _flag(services["reasoningshield"]["command"], "max-model-len") == "40960"
    assert "--max-model-len 40960" in README
    assert services["flexguard"]["depends_on"] == {"upstream": {"condition": "service_healthy"}}
    assert services["reasoningshield"]["depends_on"] == {"flexguard": {"condition": "service_healthy"}}
    assert "sharing one GPU" in README and "one GPU" in DEPLOY_DOC


# -- the Dockerfile's own example -------------------------------------------------------------


def test_the_dockerfile_docker_run_example_passes_the_keys_and_mounts_the_config():
    comment = "\n".join(line[1:].strip() for line in DOCKERFILE.splitlines() if line.startswith("#"))
    [run] = [line for line in re.sub(r"\\\n\s*", " ", comment).splitlines() if line.startswith("docker run ")]
    words = shlex.split(run)
    env = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w in ("-e", "--env"))
    check_secrets(CONFIG, env)  # deploy/config.toml's secrets are all passed
    [volume] = [words[i + 1] for i, w in enumerate(words) if w in ("-v", "--volume")]
    source, target, mode = volume.split(":")
    assert source == "$PWD/deploy/config.toml" and target == _image_config_path() and mode == "ro"
    assert f"{CONFIG.server.port}:{CONFIG.server.port}" in words
