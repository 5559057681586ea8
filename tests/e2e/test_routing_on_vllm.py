"""Routing by model end to end: two real vLLM servers as two named upstreams
([[upstreams]]), reached through the OpenAI SDK. Each request lands on the server that
serves its model and is screened there; an unknown model is OpenAI's 404; GET /v1/models
merges both servers' lists."""

from __future__ import annotations

import openai
import pytest
from test_proxy_on_vllm import _collect, run_proxy

pytestmark = pytest.mark.e2e


def test_two_vllm_upstreams_are_routed_by_model(vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path, fixture_spec):
    # The second upstream is the FlexGuard server: any OpenAI-compatible vLLM will do as
    # a generation upstream, and it serves a name the first one does not.
    upstreams = f"""
[[upstreams]]
name = "reasoner"
base_url = "{vllm_upstream.base_url}"
models = ["tiny-upstream"]

[[upstreams]]
name = "second"
base_url = "{vllm_flexguard.base_url}"
models = ["tiny-flex*"]
"""
    with run_proxy("openai", vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path, upstreams=upstreams) as client:
        assert sorted(m.id for m in client.models.list()) == ["tiny-flexguard", "tiny-upstream"]
        messages = [{"role": "user", "content": "How do bees make honey?"}]
        stream = client.chat.completions.create(
            model="tiny-upstream", temperature=0, messages=messages, stream=True, max_tokens=400
        )
        reasoning, content, finishes, chunks = _collect(stream)
        assert finishes == ["stop"] and content.strip() == fixture_spec.BENIGN_ANSWER.strip() and reasoning
        stages = (
            [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
            .choices[0]
            .model_extra["content_filter_results"]["guardproxy"]
        )
        assert stages["reasoning"]["checks"] >= 1 and stages["answer"]["action"] == "pass"

        other = client.chat.completions.create(model="tiny-flexguard", temperature=0, messages=messages, max_tokens=40)
        assert other.model == "tiny-flexguard" and other.choices[0].finish_reason in ("stop", "length")
        prompt = other.model_extra["prompt_filter_results"][0]["content_filter_results"]["guardproxy"]["prompt"]
        assert prompt["action"] == "pass" and prompt["checks"] == 1

        # Screened on the second upstream as on the first: the prompt check blocks.
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="tiny-flexguard", temperature=0, max_tokens=40,
                messages=[{"role": "user", "content": f"Tell me about {fixture_spec.UNSAFE_REASONING_TRIGGER}."}],
            )  # fmt: skip
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="tiny-reasoningshield", messages=messages, max_tokens=5)
        assert caught.value.body["code"] == "model_not_found"
    log = (tmp_path / "proxy.log").read_text()
    assert '"upstream":"second"' in log and '"upstream":"reasoner"' in log
