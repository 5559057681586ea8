"""Several upstreams chosen by the request's model (``[[upstreams]]``, upstream/_router.py):
exact names before globs, OpenAI's 404 for a model no upstream serves (before any guard
check), one merged GET /v1/models, pass-through paths routed by the model they name,
readiness per upstream, and the config rules that keep the table unambiguous."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from proxy import create_app, parse_config
from proxy._auth import check_secrets
from proxy.exceptions import ConfigError
from proxy.ops._http11 import http_protocol
from tests.ops._helpers import eventually
from tests.support.scripted import GuardServer, ScriptedUpstream
from tests.support.serving import ServerThread

BENIGN = [{"role": "user", "content": "How do plants make food?"}]


def routed_config(alpha_url: str, beta_url: str, guard_url: str, extra: str = "") -> str:
    return f"""
[upstream]
health_interval_s = 60
unscreened_fields = ["x_script"]
[upstream.timeouts]
read_s = 20

[[upstreams]]
name = "alpha"
base_url = "{alpha_url}/v1"
models = ["alpha", "team-*"]

[[upstreams]]
name = "beta"
base_url = "{beta_url}/v1"
models = ["beta", "team-beta", "b-*"]
allow_fields = ["top_k"]
unscreened_fields = ["x_script"]

[guards.flexguard]
model = "flexguard-test"
base_url = "{guard_url}/v1"
timeout_s = 3

[guards.reasoningshield]
model = "reasoningshield-test"
base_url = "{guard_url}/v1"
timeout_s = 3

[endpoints]
passthrough = ["POST /v1/embeddings", "GET /v1/models/{{id}}"]
{extra}
"""


class Routed:
    def __init__(self, alpha: ScriptedUpstream, beta: ScriptedUpstream, guard: GuardServer, url: str) -> None:
        self.alpha, self.beta, self.guard, self.url = alpha, beta, guard, url
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0, timeout=30)

    def paths(self, app: ScriptedUpstream) -> list[tuple[str, Any]]:
        return [(c.path, c.body.get("model")) for c in app.calls]


@pytest.fixture
def routed(guard: GuardServer, guard_server_thread: tuple[GuardServer, ServerThread]) -> Iterator[Routed]:
    alpha = ScriptedUpstream(models=["alpha", "team-red", "beta"])  # "beta" is routed to beta: not listed
    beta = ScriptedUpstream(models=["beta", "b-large", "unrouted"])
    with ServerThread(alpha) as a, ServerThread(beta) as b:
        config = parse_config(routed_config(a.url, b.url, guard_server_thread[1].url))
        with ServerThread(create_app(config), http=http_protocol()) as proxy:
            yield Routed(alpha, beta, guard, proxy.url)


def test_each_api_goes_to_the_upstream_serving_its_model(routed: Routed):
    script = {"x_script": {"answer": "Sunlight."}}
    for model, app in (("alpha", routed.alpha), ("beta", routed.beta), ("team-red", routed.alpha), ("b-small", routed.beta)):
        r = routed.client.chat.completions.create(model=model, messages=BENIGN, extra_body=script)
        assert r.choices[0].message.content == "Sunlight."
        chunks = list(routed.client.chat.completions.create(model=model, messages=BENIGN, stream=True, extra_body=script))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sunlight."
        assert routed.paths(app)[-2:] == [("/v1/chat/completions", model)] * 2
    routed.client.responses.create(model="beta", input="How do plants make food?", extra_body=script)
    routed.client.completions.create(model="alpha", prompt="Plants make food by", extra_body=script)
    assert routed.paths(routed.beta)[-1] == ("/v1/responses", "beta")
    assert routed.paths(routed.alpha)[-1] == ("/v1/completions", "alpha")
    # An exact name wins over a glob that comes first: team-beta is beta's, not team-*'s.
    routed.client.chat.completions.create(model="team-beta", messages=BENIGN, extra_body=script)
    assert routed.paths(routed.beta)[-1] == ("/v1/chat/completions", "team-beta")
    assert len(routed.alpha.calls) == 5 and len(routed.beta.calls) == 6


def test_an_unknown_model_is_a_404_before_any_guard_check(routed: Routed):
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            routed.client.chat.completions.create(model="gamma", messages=BENIGN, stream=stream)
        error = caught.value.body
        assert caught.value.status_code == 404
        assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
        assert error["param"] == "model" and "`gamma`" in error["message"]
    with pytest.raises(openai.NotFoundError):
        routed.client.responses.create(model="gamma", input="hi")
    assert routed.guard.requests == []  # the guards were never asked
    assert routed.alpha.calls == [] and routed.beta.calls == []
    # A hostile model name is cut in the message, not echoed whole.
    with pytest.raises(openai.NotFoundError) as caught:
        routed.client.chat.completions.create(model="x" * 100_000, messages=BENIGN)
    assert len(caught.value.body["message"]) < 400


def test_models_lists_what_each_upstream_serves_and_routes_there(routed: Routed):
    ids = [m.id for m in routed.client.models.list()]
    # alpha's "beta" would be sent to beta, and beta's "unrouted" nowhere: neither listed from there.
    assert ids == ["alpha", "team-red", "beta", "b-large"]


def test_models_fails_when_an_upstream_fails(routed: Routed, guard_server_thread):
    alpha = ScriptedUpstream(models=["alpha"])
    with ServerThread(alpha) as a:
        dead = "http://127.0.0.1:9"  # discard port: the connection is refused
        config = parse_config(routed_config(a.url, dead, guard_server_thread[1].url))
        with ServerThread(create_app(config), http=http_protocol()) as proxy:
            r = httpx.get(f"{proxy.url}/v1/models", timeout=30)
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
            ready = httpx.get(f"{proxy.url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["checks"] == {
                "upstream alpha": True, "upstream beta": False, "flexguard": True, "reasoningshield": True
            }  # fmt: skip


def test_pass_through_paths_are_routed_by_the_model_they_name(routed: Routed):
    e = routed.client.embeddings.create(model="b-embed", input="hello")
    assert e.data[0].embedding == [0.25, -0.5, 1.0]
    assert routed.paths(routed.beta) == [("/v1/embeddings", "b-embed")] and routed.alpha.calls == []
    assert routed.client.models.retrieve("team-blue").id == "team-blue"
    with pytest.raises(openai.NotFoundError) as caught:
        routed.client.models.retrieve("gamma")
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        routed.client.embeddings.create(model="gamma", input="hello")


def test_a_hostile_pass_through_body_goes_to_the_first_upstream_not_to_a_500(routed: Routed):
    for body in (
        b"[" * 200_000 + b"]" * 200_000,
        b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        b"\xff\xfe",
        b"not json",
        b'["model"]',
        b'{"model": 7}',
    ):
        r = httpx.post(f"{routed.url}/v1/embeddings", content=body, headers={"content-type": "application/json"}, timeout=30)
        # Forwarded unscreened as with one upstream: the upstream's 400 (or its answer) relayed,
        # never the proxy's own 500.
        assert r.status_code in (200, 400), (body[:20], r.status_code, r.text[:200])
    assert routed.beta.calls == []  # every one went to the first upstream


def test_readiness_and_the_log_name_each_upstream(routed: Routed, caplog):
    caplog.set_level(logging.INFO, logger="guardproxy.requests")
    ready = httpx.get(f"{routed.url}/readyz", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"upstream alpha": True, "upstream beta": True, "flexguard": True, "reasoningshield": True}
    routed.client.chat.completions.create(model="b-1", messages=BENIGN, extra_body={"x_script": {"answer": "ok"}})
    lines = eventually(lambda: [json.loads(r.getMessage()) for r in caplog.records if r.name == "guardproxy.requests"] or None)
    assert lines[-1]["upstream"] == "beta" and lines[-1]["model"] == "b-1"


def test_an_upstream_serving_none_of_its_models_is_not_ready(guard, guard_server_thread):
    alpha = ScriptedUpstream(models=["alpha"])
    beta = ScriptedUpstream(models=["something-else"])
    with ServerThread(alpha) as a, ServerThread(beta) as b:
        config = parse_config(routed_config(a.url, b.url, guard_server_thread[1].url))
        with ServerThread(create_app(config), http=http_protocol()) as proxy:
            ready = httpx.get(f"{proxy.url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["checks"]["upstream beta"] is False


def test_upstreams_share_the_settings_of_upstream():
    config = parse_config(routed_config("http://a", "http://b", "http://g"))
    alpha, beta = config.routes()
    assert (alpha.name, alpha.base_url, beta.base_url) == ("alpha", "http://a/v1", "http://b/v1")
    assert alpha.timeouts.read_s == beta.timeouts.read_s == 20 and alpha.health_interval_s == 60
    one = parse_config('[upstream]\nbase_url = "http://u/v1"').routes()
    assert [(r.name, r.base_url, r.models) for r in one] == [("default", "http://u/v1", ["*"])]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[upstream]\nbase_url = "http://u/v1"\n[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = ["m"]',
         "upstream.base_url"),
        ('[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = ["m"]\nauth = "passthrough"', "upstreams[0].auth"),
        ('[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = []', "`models` must list"),
        ('[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"', "models"),
        ('[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = ["m"]\n'
         '[[upstreams]]\nname = "b"\nbase_url = "http://b/v1"\nmodels = ["m"]', "listed by both 'a' and 'b'"),
        ('[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = ["m"]\n'
         '[[upstreams]]\nname = "a"\nbase_url = "http://b/v1"\nmodels = ["n"]', "same name"),
        ('[[upstreams]]\nname = "a"\nbase_url = "ftp://a/v1"\nmodels = ["m"]', "http://"),
    ],
)  # fmt: skip
def test_an_ambiguous_or_incomplete_routing_table_stops_the_start(toml, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_config(toml)


def test_each_upstream_s_secret_must_be_set():
    config = parse_config('[[upstreams]]\nname = "a"\nbase_url = "http://a/v1"\nmodels = ["*"]\napi_key_env = "ALPHA_KEY"')
    with pytest.raises(ConfigError, match="ALPHA_KEY"):
        check_secrets(config, {})
    check_secrets(config, {"ALPHA_KEY": "sk-alpha"})


def test_extra_fields_are_each_upstreams_own(routed: Routed):
    """beta takes top_k (its allow_fields); alpha refuses it before any guard check."""
    with pytest.raises(openai.BadRequestError) as info:
        routed.client.chat.completions.create(model="alpha", messages=BENIGN, extra_body={"top_k": 3})
    assert info.value.body["param"] == "top_k" and routed.alpha.calls == [] and routed.guard.requests == []
    routed.client.chat.completions.create(model="beta", messages=BENIGN, extra_body={"top_k": 3, "x_script": {"answer": "ok"}})
    assert routed.beta.calls[-1].body["top_k"] == 3
