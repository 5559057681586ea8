"""``guardproxy demo``'s parts that need no vLLM: its models and words, config, display.

The demo itself runs in the end-to-end tier (tests/e2e/test_demo.py).
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec
import pytest

from guards import GuardModelConfig
from proxy._auth import KeyRing
from proxy._config import parse_config
from proxy.demo import MODELS_DIR, _models, run_demo
from proxy.demo._progress import Progress
from proxy.demo._stack import DEMO_KEY, STEER_KEY, STEER_TEXT, demo_config, demo_servers, lowest_cpu_priority
from proxy.exceptions import AuthenticationFailed

REPO = Path(__file__).resolve().parents[2]


def _build_models():
    spec = importlib.util.spec_from_file_location("_build_models", REPO / "tests/e2e/fixtures/build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_words_are_the_ones_the_models_were_trained_on():
    built = _build_models()
    assert _models.HARMFUL_PROMPT_WORD == built.UNSAFE_REASONING_TRIGGER
    assert _models.HARMFUL_PROMPT_WORD in built.FG_PROMPT_UNSAFE_WORDS
    assert _models.UNSAFE_REASONING_WORD == built.STEALTH_REASONING_TRIGGER
    assert _models.UNSAFE_ANSWER_WORD == built.UNSAFE_ANSWER_TRIGGER
    assert _models.REASONING_MARKER == built.REASONING_MARKER
    assert _models.ANSWER_MARKER == built.ANSWER_MARKER


def test_the_models_ship_in_the_package(tmp_path):
    """A wheel built from the sources (copied, as the Dockerfile copies them) carries
    every file of the models."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("proxy", "guards"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("guardproxy-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    models = [p.relative_to(REPO).as_posix() for p in MODELS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(models) >= 19
    assert [m for m in models if m not in shipped] == []
    for key in ("upstream", "flexguard", "reasoningshield"):
        assert (MODELS_DIR / key / "model.safetensors").stat().st_size > 1_000_000


def test_the_demo_config_puts_each_guard_on_its_server(tmp_path):
    servers = demo_servers(tmp_path)
    config = demo_config(servers, "127.0.0.1", 8080)
    assert config.upstream.base_url == servers["upstream"].base_url
    for key in ("flexguard", "reasoningshield"):
        guard: GuardModelConfig = getattr(config.guards, key)
        assert (guard.backend, guard.base_url, guard.model) == ("openai", servers[key].base_url, servers[key].served_name)
    assert "--reasoning-parser" in servers["upstream"].command()
    assert "--reasoning-parser" not in servers["flexguard"].command()  # the proxy parses <think>
    assert len({s.port for s in servers.values()}) == 3


def test_the_demo_key_keeps_the_demo_policy_and_the_steer_key_steers(tmp_path):
    config = demo_config(demo_servers(tmp_path), "127.0.0.1", 8080)
    keys = KeyRing.from_config(config, environ={})
    plain, steered = keys.identify(DEMO_KEY).policy, keys.identify(STEER_KEY).policy
    assert plain == config.policy and plain.reasoning.action == "rewrite"
    assert steered.reasoning.action == "steer" and steered.reasoning.steer_text == STEER_TEXT
    assert steered.reasoning.release == "checked"  # steering rolls back only checked reasoning
    # Rolled back to a check before the unsafe passage (after ~40 tokens), not just before it.
    assert steered.reasoning.every < 40
    # Everything else the steering tenant has is the demo's policy.
    assert msgspec.structs.replace(steered, reasoning=plain.reasoning) == plain
    assert config.upstream.continuation == "completions"
    with pytest.raises(AuthenticationFailed):
        keys.identify("any other key")


def test_the_demo_config_is_one_a_config_file_could_hold(tmp_path):
    """The same settings written as TOML load to the same config: the demo uses nothing a
    user's config could not."""
    config = demo_config(demo_servers(tmp_path), "127.0.0.1", 8080)
    as_toml = _toml(msgspec.to_builtins(config))
    assert parse_config(as_toml) == config


def _toml(doc: dict, path: tuple[str, ...] = (), header: str = "") -> str:
    """A small TOML writer for a plain config: tables, arrays of tables, scalars, lists."""
    tables = [(k, v) for k, v in doc.items() if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict))]
    # None and [] are the defaults they stand for (and `upstreams = []` would mean routes).
    values = [(k, v) for k, v in doc.items() if v not in (None, []) and (k, v) not in tables]
    text = (f"{header}\n" if header else "") + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values)
    for key, value in tables:
        name = ".".join((*path, key))
        for item in value if isinstance(value, list) else [value]:
            text += _toml(item, (*path, key), f"[[{name}]]" if isinstance(value, list) else f"[{name}]")
    return text


def test_progress_in_a_log_prints_lines_not_redraws():
    out = io.StringIO()
    progress = Progress(out, tty=False, heartbeat_s=0.0)
    progress.begin("a", "upstream: starting")
    progress.tick()
    progress.end("a", "ready")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "  ... upstream: starting"
    assert lines[1].startswith("  ... still starting: upstream ")
    assert lines[2].startswith("  [ok] upstream: starting: ready (")


def test_progress_on_a_terminal_redraws_one_line():
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.begin("a", "upstream: starting")
    progress.tick()
    progress.tick()
    progress.end("a", "ready")
    text = out.getvalue()
    assert text.count("\r") >= 3 and text.count("\n") == 1
    assert text.endswith("  [ok] upstream: starting: ready (0 s)\n")
    assert "\x1b" not in text  # no escape codes


def test_without_vllm_the_demo_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert run_demo(tour_only=True) == 2
    assert "pip install 'guardproxy[demo]'" in capsys.readouterr().err


@pytest.mark.parametrize("word", [_models.HARMFUL_PROMPT_WORD, _models.UNSAFE_REASONING_WORD, _models.UNSAFE_ANSWER_WORD])
def test_the_models_readme_names_each_word(word):
    assert f"`{word}`" in (MODELS_DIR / "README.md").read_text()


def test_the_upstream_server_runs_at_the_lowest_priority_even_in_a_session_of_its_own():
    """Each server runs in a session of its own, and under autogroup scheduling a session
    is a scheduling group that a nice value alone does not lower: the group's must be
    raised too, or the tiny upstream takes an equal share of the CPU from the guards."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; sys.stdin.read(); print(os.getpriority(os.PRIO_PROCESS, 0))"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lowest_cpu_priority,
    )
    autogroup = Path(f"/proc/{child.pid}/autogroup")
    group = autogroup.read_text() if autogroup.exists() else None
    out, _ = child.communicate("", timeout=30)
    assert int(out) == 19
    if group is not None:  # kernels without autogroup scheduling have no such file
        assert group.split()[-1] == "19", group
