"""Replicas end to end: the upstream's and each guard's first replica is down (nothing
listens there), the second is the real vLLM server; every request through the OpenAI
SDK is served, screened, and the dead replicas leave the rotation."""

from __future__ import annotations

import _servers
import openai
import pytest
from test_proxy_on_vllm import _collect, run_proxy

pytestmark = pytest.mark.e2e


def test_a_dead_upstream_and_guard_replica_are_passed_over(
    vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path, fixture_spec
):
    dead = f"http://127.0.0.1:{_servers.free_port()}/v1"
    with run_proxy("openai", vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path, dead_replica=dead) as client:
        messages = [{"role": "user", "content": "How do bees make honey?"}]
        for _ in range(3):
            stream = client.chat.completions.create(
                model="tiny-upstream", temperature=0, messages=messages, stream=True, max_tokens=400
            )
            reasoning, content, finishes, chunks = _collect(stream)
            assert finishes == ["stop"] and content.strip() == fixture_spec.BENIGN_ANSWER.strip()
            final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
            stages = final.choices[0].model_extra["content_filter_results"]["guardproxy"]
            # Screened by both guards, on their live replicas.
            assert stages["reasoning"]["checks"] >= 1 and stages["reasoning"]["action"] == "pass"
            assert stages["answer"]["action"] == "pass"
        # A harmful prompt is still blocked: FlexGuard's live replica answered.
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="tiny-upstream", temperature=0,
                messages=[{"role": "user", "content": f"Tell me about {fixture_spec.UNSAFE_REASONING_TRIGGER}."}],
            )  # fmt: skip
    log = (tmp_path / "proxy.log").read_text()
    assert f"upstream replica {dead.rstrip('/')} left the rotation" in log
    assert "left the rotation" in log.replace(f"upstream replica {dead.rstrip('/')}", "", 1)  # a guard's too
