"""Tenants, per-request strictness, per-category rules and /v1/moderations via the SDK."""

from __future__ import annotations

import hashlib

import openai
import pytest

RISKY = [{"role": "user", "content": "a risky question"}]  # scripted FlexGuard: MIS 45
JAIL = [{"role": "user", "content": "jailbreakme now"}]  # JAIL 30
BENIGN = [{"role": "user", "content": "Tell me about bread."}]

TENANTS = f"""
[policy]
strictness = "moderate"

[[tenants]]
name = "strict-team"
key_sha256 = "{hashlib.sha256(b"sk-strict").hexdigest()}"
[tenants.policy]
strictness = "strict"

[[tenants]]
name = "lab"
key_env = "TEST_LAB_KEY"
allow_loosen = true
[tenants.policy.prompt]
action = "flag"
"""


def _client(proxy, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, default_headers=headers or None)


@pytest.fixture
def tenants_proxy(make_proxy, monkeypatch):
    monkeypatch.setenv("TEST_LAB_KEY", "sk-lab")
    return make_proxy(TENANTS)


def test_each_key_gets_its_tenants_policy(tenants_proxy):
    strict = _client(tenants_proxy, "sk-strict")
    with pytest.raises(openai.BadRequestError):
        strict.chat.completions.create(model="m", messages=[{"role": "user", "content": "jailbreakme"}])
    lab = _client(tenants_proxy, "sk-lab")
    raw = lab.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "a bomb"}])
    assert raw.headers["x-guardproxy-prompt"] == "flag"  # the lab tenant only flags prompts
    # The tenant changed only prompt.action: the rest is the global policy.
    assert raw.headers["x-guardproxy-answer"] == "pass"


def test_unknown_or_missing_key_is_rejected(tenants_proxy):
    with pytest.raises(openai.AuthenticationError):
        _client(tenants_proxy, "sk-nobody").chat.completions.create(model="m", messages=BENIGN)


def test_a_request_may_make_its_policy_stricter(tenants_proxy):
    # Benign text scores 5: it passes the strict tenant (20), not a request asking for 5.
    assert _client(tenants_proxy, "sk-strict").chat.completions.create(model="m", messages=BENIGN).choices[0].message.content
    stricter = _client(tenants_proxy, "sk-strict", **{"X-Guard-Strictness": "5"})
    with pytest.raises(openai.BadRequestError) as info:
        stricter.chat.completions.create(model="m", messages=BENIGN)
    assert "threshold 5" in info.value.body["message"]


def test_loosening_needs_the_keys_permission(tenants_proxy):
    strict_loose = _client(tenants_proxy, "sk-strict", **{"X-Guard-Strictness": "loose"})
    with pytest.raises(openai.PermissionDeniedError) as info:
        strict_loose.chat.completions.create(model="m", messages=JAIL)
    assert info.value.body["code"] == "permission_denied"
    assert "stricter" in info.value.body["message"]
    lab_loose = _client(tenants_proxy, "sk-lab", **{"X-Guard-Strictness": "loose"})
    raw = lab_loose.chat.completions.with_raw_response.create(model="m", messages=RISKY)
    assert raw.headers["x-guardproxy-prompt"] == "pass"  # 45 < loose 60


def test_bad_strictness_header_is_a_400(tenants_proxy):
    client = _client(tenants_proxy, "sk-lab", **{"X-Guard-Strictness": "extreme"})
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=BENIGN)
    assert info.value.body["param"] == "X-Guard-Strictness"


def test_per_category_threshold(make_proxy):
    # JAIL scores 30: passes under moderate (40), blocked with a JAIL threshold of 20.
    assert make_proxy().client.chat.completions.create(model="m", messages=JAIL).choices[0].message.content
    proxy = make_proxy("[policy.categories]\nthresholds = {JAIL = 20}")
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=JAIL)
    # Other categories keep the strictness: MIS 45 is still judged against 40... and 46.
    proxy = make_proxy("[policy]\nstrictness = 46\n[policy.categories]\nthresholds = {JAIL = 20}")
    assert proxy.client.chat.completions.create(model="m", messages=RISKY).choices[0].message.content


def test_always_block_and_always_allow(make_proxy):
    proxy = make_proxy('[policy]\nstrictness = "loose"\n[policy.categories]\nalways_block = ["JAIL"]')
    with pytest.raises(openai.BadRequestError):
        proxy.client.chat.completions.create(model="m", messages=JAIL)
    proxy = make_proxy('[policy.categories]\nalways_allow = ["MIS"]')
    assert proxy.client.chat.completions.create(model="m", messages=RISKY).choices[0].message.content


def test_moderations_with_the_sdk(make_proxy):
    proxy = make_proxy()
    result = proxy.client.moderations.create(model="flexguard", input="How do I build a bomb?")
    assert result.model == "flexguard"
    r = result.results[0]
    assert r.flagged is True
    assert r.categories.violence is True and r.categories.illicit is True and r.categories.sexual is False
    assert r.category_scores.violence == pytest.approx(0.9) and r.category_scores.hate == 0.0
    assert r.model_extra["guardproxy"] == {"risk_score": 90, "categories": ["VIO", "ILG"], "threshold": 40}


def test_moderations_array_input_and_strictness(make_proxy):
    proxy = make_proxy()
    result = proxy.client.moderations.create(input=["Tell me about bread.", "a risky question", "jailbreakme"])
    assert [r.flagged for r in result.results] == [False, True, False]
    assert result.results[2].categories.model_extra["jailbreak"] is False
    assert result.results[2].category_scores.model_extra["jailbreak"] == pytest.approx(0.3)
    strict = _client(proxy, "k", **{"X-Guard-Strictness": "strict"})
    assert [r.flagged for r in strict.moderations.create(input=["Tell me about bread.", "jailbreakme"]).results] == [False, True]


def test_moderations_bad_input_and_guard_errors(make_proxy):
    proxy = make_proxy()
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client.moderations.create(input=[])
    assert info.value.body["param"] == "input"
    with pytest.raises(openai.InternalServerError) as err:
        proxy.client.moderations.create(input="guard500 please")
    assert err.value.status_code == 503 and err.value.body["code"] == "guard_unavailable"
