"""The README's quick start and config.example.toml agree: the GPU path's `vllm serve`
commands serve each guard under the name and port the proxy asks for, and the
`guardproxy serve` line builds that config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from proxy import load_config
from proxy._cli import build_parser, serve_config

REPO = Path(__file__).resolve().parents[2]


def _quickstart_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line, comments=True))
    return commands


def _vllm_serves() -> dict[int, tuple[str, list[str]]]:
    """port -> (served model name, the command)"""
    serves = {}
    for cmd in _quickstart_commands():
        if cmd[:2] == ["vllm", "serve"]:
            port = int(cmd[cmd.index("--port") + 1])
            name = cmd[cmd.index("--served-model-name") + 1] if "--served-model-name" in cmd else cmd[2]
            serves[port] = (name, cmd)
    return serves


def _port(url: str) -> int:
    match = re.match(r"https?://[^/:]+:(\d+)/", url)
    assert match, url
    return int(match.group(1))


def test_the_gpu_commands_serve_the_names_the_example_config_asks_for():
    serves = _vllm_serves()
    example = load_config(REPO / "config.example.toml")
    for guard in (example.guards.flexguard, example.guards.reasoningshield):
        name, cmd = serves[_port(guard.base_url + "/")]
        assert name == guard.model, cmd
        assert "--reasoning-parser" not in cmd  # the proxy parses FlexGuard's <think> block
    assert _port(example.upstream.base_url + "/") in serves
    total = sum(float(cmd[cmd.index("--gpu-memory-utilization") + 1]) for _, cmd in serves.values())
    assert round(total, 2) <= 0.95  # the three share one GPU


def test_the_serve_line_builds_the_example_configs_servers():
    (serve,) = [cmd for cmd in _quickstart_commands() if cmd[:2] == ["guardproxy", "serve"]]
    config = serve_config(build_parser().parse_args(serve[1:]))
    example = load_config(REPO / "config.example.toml")
    assert config.upstream.base_url == example.upstream.base_url
    for key in ("flexguard", "reasoningshield"):
        assert getattr(config.guards, key).base_url == getattr(example.guards, key).base_url
        assert getattr(config.guards, key).model == getattr(example.guards, key).model
    assert "--wait" in serve


def test_the_client_asks_for_the_model_the_upstream_serves():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    (model,) = re.findall(r'model="([^"]+)"', section)
    assert _vllm_serves()[8000][0] == model


def test_the_demo_is_one_command():
    assert ["pip", "install", ".[demo]", "&&", "guardproxy", "demo"] in _quickstart_commands()


def test_every_toml_block_in_the_docs_is_a_config_the_proxy_loads():
    from proxy import parse_config

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    blocks = [(page, block) for page in pages for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S)]
    assert len(blocks) >= 3  # the walk found them
    for page, block in blocks:
        parse_config(block, source=page.name)


def test_the_sizing_rule_quotes_the_bench_and_the_default_schedules():
    from proxy import ProxyConfig
    from proxy.pipeline._monitor import check_positions

    section = (REPO / "docs/deploy.md").read_text().split("\n## Sizing\n", 1)[1].split("\n## ", 1)[0]
    results = (REPO / "bench/results/scaling.md").read_text()
    for figure in ("72.5", "68.4"):  # CPU ms per request, guards off and defaults
        assert f"| {figure}" in results and f"{figure} ms" in section
    policy = ProxyConfig().policy
    bound = f"would get {len(check_positions(policy.reasoning, 2000))} reasoning and {len(check_positions(policy.answer, 300))} answer checks"
    assert bound in section.replace("\n  ", " ")
