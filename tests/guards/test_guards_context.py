"""Every guard input fits the guard's context: windows of long texts, the worst window's
verdict, the sliding window of growing checks, and the context read from the guard."""

import asyncio
import random
import re

import pytest
import transformers
from test_guards_real_tokenizers import LLAMA32_TEMPLATE, LLAMA_DIR, QWEN_DIR

from guards import FlexGuard, Generation, GuardBackendError, GuardModelConfig, ReasoningShield, ScriptedBackend
from guards._context import DEFAULT_MAX_MODEL_LEN, MARGIN_TOKENS, OVERLAP_DIVISOR, ContextFit, Measure, utf8_len
from guards._prompts import SlotSanitizer
from guards.backends import render_chat, tokenize_rendered
from guards.backends._openai import OpenAIBackend
from tests.support.scripted import GuardServer
from tests.support.serving import ServerThread


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def qwen():
    return transformers.AutoTokenizer.from_pretrained(QWEN_DIR)


@pytest.fixture(scope="module")
def llama():
    tok = transformers.AutoTokenizer.from_pretrained(LLAMA_DIR)
    tok.chat_template = LLAMA32_TEMPLATE
    return tok


class TokenizerBackend(ScriptedBackend):
    """A scripted backend that knows a real tokenizer and a context, as an in-process one
    does; ``text_tokens=False``: it counts whole prompts only, as a vLLM server's
    /tokenize does for the openai backend (slot text is then measured in bytes)."""

    def __init__(self, fn, tokenizer, max_model_len, *, text_tokens=True):
        super().__init__(fn, added_tokens=tokenizer.get_added_vocab())
        self.tokenizer = tokenizer
        self.length = max_model_len
        if text_tokens:
            self.count_text_tokens = lambda text: len(tokenize_rendered(tokenizer, text))

    async def served_max_model_len(self):
        return self.length

    async def count_prompt_tokens(self, prompt):
        return self.rendered_tokens(prompt)

    def rendered_tokens(self, prompt):
        return len(tokenize_rendered(self.tokenizer, render_chat(self.tokenizer, prompt)))


def _flexguard_fn(prompt):
    slot = prompt.messages[1].content.rsplit("[User]: ", 1)[1]
    judged = slot.split("\n[Assistant]: ", 1)[1] if "\n[Assistant]: " in slot else slot
    if "bomb" in judged:
        return Generation(text="<think>x</think>\nVIO,ILG\n90", prompt_tokens=10, completion_tokens=3)
    if "risky" in judged:
        return Generation(text="<think>x</think>\nMIS\n45", prompt_tokens=10, completion_tokens=3)
    return Generation(text="<think>x</think>\nSAFE\n5", prompt_tokens=10, cached_tokens=4, completion_tokens=3)


def _words(n, seed=1):
    rng = random.Random(seed)
    vocab = ["bread", "flour", "oven", "yeast", "knead", "crust", "water", "salt", "rise", "dough", "the", "a"]
    return [f"{rng.choice(vocab)}{i}" for i in range(n)]


HOSTILE = ["<|im_end|>", "<think>", "\n[User]: ", "\nThought: ", "\nSAFE\n", "\u00e9\u00e8", "\U0001f600", "\u200b"]


def _text(n_words, seed=1):
    rng = random.Random(seed)
    words = _words(n_words, seed)
    return "".join(w + (rng.choice(HOSTILE) if rng.random() < 0.05 else rng.choice([" ", " ", "\n"])) for w in words)


# ---- windows ------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["bytes", "qwen"])
def test_windows_cover_the_text_overlap_and_fit(qwen, count):
    sanitize = SlotSanitizer(qwen.get_added_vocab())
    measure = Measure(None if count == "bytes" else (lambda t: len(tokenize_rendered(qwen, t))))
    fit = ContextFit(10_000, "config", {"prompt": 10_000}, measure, sanitize)
    for seed, size in [(1, 300), (2, 1000), (3, 4000), (4, 150)]:
        text = _text(3000, seed)
        spans = fit.windows(text, size)
        assert len(spans) > 2
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (a0, b0), (a1, b1) in zip(spans, spans[1:], strict=False):
            assert a0 < a1 < b0 < b1  # each window starts inside the one before
            # The overlap is about an eighth of a window, never less than a sixteenth.
            assert (b0 - a0) // (2 * OVERLAP_DIVISOR) <= b0 - a1 <= (b0 - a0) // OVERLAP_DIVISOR + 1
        for a, b in spans:
            assert measure(sanitize(text[a:b])) <= size
            # Cut after a space or line break where one is near: words stay whole.
            assert b == len(text) or text[b - 1] in " \n" or not re.search(r"[ \n]", text[b - (b - a) // 16 : b])
        # Windows are not much smaller than they may be (bytes: ASCII-heavy text).
        assert max(measure(sanitize(text[a:b])) for a, b in spans) > size * 0.6


def test_a_text_that_fits_is_one_window():
    fit = ContextFit(10_000, "config", {"prompt": 10_000}, Measure(), SlotSanitizer())
    assert fit.windows("short text", 100) == [(0, 10)]
    assert fit.plan("prompt", "x" * 2000) == (None, [(0, 2000)])
    # Sanitising inserts characters: a text of exactly the size that needs breaks does not fit.
    assert len(fit.windows("<|" * 50, 100)) > 1


# ---- FlexGuard: prompt and response mode --------------------------------------------


@pytest.mark.parametrize("text_tokens", [True, False], ids=["tokenizer", "bytes"])
def test_every_prompt_window_fits_the_real_context(qwen, text_tokens):
    """A prompt about three contexts long, measured against Qwen3's real tokenizer: every
    check's rendered prompt plus max_tokens fits max_model_len, and all windows together
    hold every word of the text."""
    length = 4096
    backend = TokenizerBackend(_flexguard_fn, qwen, length, text_tokens=text_tokens)
    guard = FlexGuard(backend, GuardModelConfig(model="m", max_tokens=1024))
    fit = run(guard.fit_context())
    assert (fit.max_model_len, fit.source, fit.counted) == (length, "served", True)
    words = _words(9000)  # about 3 x 4096 tokens
    text = " ".join(words)
    verdict = run(guard.check_prompt(text))
    assert verdict.risk_score == 5 and verdict.windows == len(backend.prompts) > 3
    for prompt in backend.prompts:
        assert backend.rendered_tokens(prompt) + prompt.max_tokens <= length
    seen = " ".join(p.messages[1].content for p in backend.prompts)
    assert all(w in seen for w in words)
    # The usage adds up every window's.
    assert verdict.prompt_tokens == 10 * verdict.windows and verdict.completion_tokens == 3 * verdict.windows


def test_the_worst_window_decides(qwen):
    backend = TokenizerBackend(_flexguard_fn, qwen, 4096)
    guard = FlexGuard(backend, GuardModelConfig(model="m"))
    run(guard.fit_context())
    words = _words(9000)
    words[2000] = "risky"
    words[4500] = "bomb"  # the middle of the text
    verdict = run(guard.check_prompt(" ".join(words)))
    assert verdict.windows > 3
    assert (verdict.risk_score, verdict.categories) == (90, ("VIO", "ILG", "MIS"))
    assert not verdict.safe_label and verdict.output.endswith("90")
    flagged = [p for p in backend.prompts if "bomb" in p.messages[1].content]
    assert len(flagged) in (1, 2)  # whole in one window, or two where they overlap


def test_a_failed_window_fails_the_whole_check():
    def fn(prompt):
        if "guard500" in prompt.messages[1].content:
            raise GuardBackendError("down")
        return "<think>x</think>\nSAFE\n5"

    guard = FlexGuard(ScriptedBackend(fn), GuardModelConfig(model="m", max_model_len=6000))
    words = _words(6000)
    words[3000] = "guard500"
    with pytest.raises(GuardBackendError):
        run(guard.check_prompt(" ".join(words)))


def test_response_mode_keeps_the_end_of_the_user_text(qwen):
    backend = TokenizerBackend(_flexguard_fn, qwen, 4096)
    guard = FlexGuard(backend, GuardModelConfig(model="m", max_tokens=1024))
    run(guard.fit_context())
    user = " ".join(_words(5000, seed=2)) + " QUESTION-END"
    answer = " ".join(_words(6000, seed=3)) + " bomb"
    verdict = run(guard.check_response(user, answer))
    assert verdict.risk_score == 90 and verdict.windows == len(backend.prompts) > 2
    budget = guard.context.budget("response")
    for prompt in backend.prompts:
        assert backend.rendered_tokens(prompt) + prompt.max_tokens <= 4096
        slot = prompt.messages[1].content.split("[User]: ", 1)[1]
        kept = slot.split("\n[Assistant]: ", 1)[0]
        assert kept.endswith("QUESTION-END") and len(tokenize_rendered(qwen, kept)) <= budget // 4
    # A pair that fits is one check, with all of both texts.
    backend.prompts.clear()
    run(guard.check_response("short question", "short answer"))
    [prompt] = backend.prompts
    assert prompt.messages[1].content.endswith("[User]: short question\n[Assistant]: short answer")


def test_window_tokens_caps_the_windows():
    backend = ScriptedBackend(_flexguard_fn)
    guard = FlexGuard(backend, GuardModelConfig(model="m", window_tokens=500))
    verdict = run(guard.check_prompt("x " * 1000))
    assert verdict.windows == len(backend.prompts) >= 4
    assert all(utf8_len(p.messages[1].content.rsplit("[User]: ", 1)[1]) <= 500 for p in backend.prompts)


def test_without_a_tokenizer_or_server_the_fit_is_a_safe_estimate():
    guard = FlexGuard(ScriptedBackend(_flexguard_fn), GuardModelConfig(model="m"))
    fit = run(guard.fit_context())
    assert (fit.max_model_len, fit.source, fit.counted, fit.measure.unit) == (
        DEFAULT_MAX_MODEL_LEN,
        "default",
        False,
        "UTF-8 bytes",
    )
    system_and_head = sum(utf8_len(m.content) for m in guard.prompt_check("").messages)
    assert fit.budget("prompt") < DEFAULT_MAX_MODEL_LEN - system_and_head - 2048 - MARGIN_TOKENS
    assert "default" in fit.describe() and fit.problem is None


# ---- growing checks: the sliding window ----------------------------------------------


def _shield_fn(prompt):
    thought = prompt.messages[1].content.split("\nThought: ", 1)[1]
    judgment = 1 if "detonator" in thought else 0
    return Generation(text=f'"Analysis": x\n"Judgment": {judgment}', prompt_tokens=10, completion_tokens=2)


@pytest.mark.parametrize("text_tokens", [True, False], ids=["tokenizer", "bytes"])
def test_a_30000_token_trace_never_outgrows_reasoningshield(llama, text_tokens):
    """Checked every 200 tokens: every prompt fits, holds the query, and the window moves
    in large steps (successive checks share their start between moves); every word of the
    trace is in some check."""
    length = 8192
    backend = TokenizerBackend(_shield_fn, llama, length, text_tokens=text_tokens)
    shield = ReasoningShield(backend, GuardModelConfig(model="m"))
    run(shield.fit_context())
    query = "How do I bake sourdough bread at home? " * 3
    checks = shield.growing_checks(query)
    words = _words(26_000, seed=4)
    ids = llama(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) >= 30_000
    starts = []
    step = 200  # tokens, about
    for end in range(step, len(words) + step, step * 26_000 // len(ids)):
        text = " ".join(words[:end])
        verdict = run(checks.check(text))
        assert verdict.risk_score == 0 and verdict.windows == 1
        prompt = backend.prompts[-1]
        assert backend.rendered_tokens(prompt) + prompt.max_tokens <= length
        content = prompt.messages[1].content
        assert content.startswith(f"Query: {query}\nThought: ")
        starts.append(content.split("\nThought: ", 1)[1].split(" ", 1)[0])
    moves = sum(a != b for a, b in zip(starts, starts[1:], strict=False))
    assert 2 < moves < len(starts) / 5  # it slides, by large steps
    seen = set(" ".join(p.messages[1].content for p in backend.prompts).split())
    assert set(words) <= seen


def test_a_jump_past_the_window_is_checked_in_windows_of_its_own(llama):
    backend = TokenizerBackend(_shield_fn, llama, 4096)
    shield = ReasoningShield(backend, GuardModelConfig(model="m"))
    run(shield.fit_context())
    checks = shield.growing_checks("q?")
    words = _words(12_000, seed=5)
    words[5000] = "detonator"
    run(checks.check(" ".join(words[:100])))
    verdict = run(checks.check(" ".join(words)))  # one delta of about 14,000 tokens
    assert verdict.risk_score == 100 and verdict.windows > 3
    for prompt in backend.prompts:
        assert backend.rendered_tokens(prompt) + prompt.max_tokens <= 4096
    seen = set(" ".join(p.messages[1].content for p in backend.prompts).split())
    assert set(words) <= seen
    # The text goes on growing from the new window, one check at a time.
    more = words + _words(300, seed=6)
    assert run(checks.check(" ".join(more))).windows == 1


def test_answer_checks_slide_too(qwen):
    backend = TokenizerBackend(_flexguard_fn, qwen, 4096)
    flex = FlexGuard(backend, GuardModelConfig(model="m", max_tokens=512))
    run(flex.fit_context())
    checks = flex.answer_checks("a question " * 2000)  # longer than a quarter of the budget
    words = _words(8000, seed=7)
    for end in range(300, len(words), 300):
        run(checks.check(" ".join(words[:end])))
    for prompt in backend.prompts:
        assert backend.rendered_tokens(prompt) + prompt.max_tokens <= 4096
    assert len({p.messages[1].content.split("[Assistant]: ", 1)[1][:20] for p in backend.prompts}) > 2


# ---- the context, read from a guard server --------------------------------------------


def test_the_context_is_read_from_the_guard_server():
    server = GuardServer(max_model_len=6000)
    with ServerThread(server) as thread:
        url = f"{thread.url}/v1"

        async def fitted(**options):
            backend = OpenAIBackend(GuardModelConfig(model="flexguard-test", base_url=url, **options))
            try:
                guard = FlexGuard(backend, backend.config)
                return guard, await guard.fit_context()
            finally:
                await backend.aclose()

        guard, fit = run(fitted())
        assert (fit.max_model_len, fit.source, fit.counted, fit.measure.unit) == (6000, "served", True, "UTF-8 bytes")
        body = OpenAIBackend(guard.config).request_body(guard.prompt_check(""))
        assert fit.budget("prompt") == 6000 - GuardServer.prompt_tokens(body["messages"]) - 2048 - MARGIN_TOKENS
        _, capped = run(fitted(max_model_len=5000))
        assert (capped.max_model_len, capped.source) == (5000, "served, capped by config")
        server.max_model_len = None
        _, unlisted = run(fitted(max_model_len=7000))
        assert (unlisted.max_model_len, unlisted.source) == (7000, "config")
    assert server.requests == []  # counting prompts is no check


def test_a_guard_server_that_refuses_long_prompts_screens_them_in_windows():
    server = GuardServer(max_model_len=6000)
    with ServerThread(server) as thread:
        config = GuardModelConfig(model="flexguard-test", base_url=f"{thread.url}/v1", timeout_s=10)

        async def check(fit: bool):
            backend = OpenAIBackend(config)
            try:
                guard = FlexGuard(backend, config)
                if fit:
                    await guard.fit_context()
                return await guard.check_prompt(" ".join(_words(3000)) + " bomb " + " ".join(_words(3000, 9)))
            finally:
                await backend.aclose()

        # Without reading the context (the default 32768), the server refuses the prompt.
        with pytest.raises(GuardBackendError, match="HTTP 400"):
            run(check(fit=False))
        refused = len(server.refused)
        assert refused >= 1
        verdict = run(check(fit=True))
        assert verdict.risk_score == 90 and verdict.windows == len(server.requests) > 20
        assert len(server.refused) == refused
