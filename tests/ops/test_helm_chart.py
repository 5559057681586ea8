"""The Helm chart (deploy/helm/guardproxy), rendered by Helm's own SDK for several value
sets and checked: helm lint, the Kubernetes 1.30 schemas (strict), checkov's security
checks, and what the proxy needs of it: probes, the drain, non-root on a read-only root,
keys from a Secret, and a config.toml that guardproxy's own loader accepts, pointing at
the chart's vLLM Services or at the external endpoints that replace them.

The checkers run in their own environment (.venv-deploy, made by `bash tests/run.sh`).
Running the pods needs a cluster with GPUs: not done here.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import parse_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY_PYTHON = REPO / os.environ.get("GUARDPROXY_DEPLOY_VENV", ".venv-deploy") / "bin" / "python"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not DEPLOY_PYTHON.exists():
        # In CI the checkers are part of the build: their absence is a failure, not a pass.
        if os.environ.get("CI"):
            pytest.fail(f"{DEPLOY_PYTHON} is missing: tests/run.sh installs the chart's checkers there")
        pytest.skip("run bash tests/run.sh, which installs the deploy checkers into .venv-deploy")
    out = tmp_path_factory.mktemp("helm")
    run = subprocess.run(
        [str(DEPLOY_PYTHON), str(REPO / "deploy/helm/check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def _docs(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [d for text in report["sets"][name]["manifests"].values() for d in yaml.safe_load_all(text) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _config_text(docs: list[dict[str, Any]]) -> str:
    return str(_one(docs, "ConfigMap", "gp-guardproxy-config")["data"]["config.toml"])


def test_helm_lint_passes_with_no_warning(report):
    lint = report["lint"]
    assert lint["errors"] == []
    assert [m for m in lint["messages"] if m["severity"] >= 2] == []  # info (severity 1) only


def test_every_value_set_renders_valid_kubernetes(report):
    assert set(report["sets"]) == {"default", "external", "plain"}
    for name, rendered in report["sets"].items():
        assert rendered["manifests"], (name, rendered.get("render_error"))
        assert rendered["validation_errors"] == [], name


def test_values_that_cannot_work_stop_the_render_with_a_message(report):
    errors = report["render_errors"]
    assert "models.upstream: enabled is false, so externalBaseUrls must name" in errors["unset_external_url"]
    assert "additional properties 'hpa' not allowed" in errors["misspelt_value"]  # values.schema.json
    assert "set the other to null" in errors["two_model_volumes"]


def test_the_security_scan_finds_nothing_and_every_skip_says_why(report):
    sets = report["sets"]
    for name, scan in sets.items():
        assert "checkov_error" not in scan, scan.get("checkov_error")
        assert scan["checkov_passed"] > 50, name
        assert all(s["reason"] for s in scan["checkov_skipped"]), scan["checkov_skipped"]
        # Only these, each explained in the template: tag instead of digest, keys as env.
        assert {s["check_id"] for s in scan["checkov_skipped"]} <= {"CKV_K8S_43", "CKV_K8S_35"}
    for name in ("default", "external"):
        assert sets[name]["checkov_failed"] == [], (name, sets[name]["checkov_failed"])
    # With digests set, the digest check is not skipped but passed; without keys, so is the other.
    assert "CKV_K8S_43" not in {s["check_id"] for s in sets["external"]["checkov_skipped"]}
    assert "CKV_K8S_35" not in {s["check_id"] for s in sets["plain"]["checkov_skipped"]}
    # Network policies switched off: checkov says so, and that is all it says.
    assert {f["check_id"] for f in sets["plain"]["checkov_failed"]} == {"CKV2_K8S_6"}


def test_the_proxy_deployment_drains_and_runs_locked_down(report):
    docs = _docs(report, "default")
    deployment = _one(docs, "Deployment", "gp-guardproxy")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = tomllib.loads(_config_text(docs))["server"]["shutdown_grace_s"]
    assert pod["terminationGracePeriodSeconds"] > grace + int(pre_stop[1])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001  # the image's user
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/guardproxy"]]["configMap"]["name"] == "gp-guardproxy-config"
    assert "emptyDir" in volumes[mounts["/tmp"]]  # --workers writes its metrics files there
    assert container["args"] == ["--config=/etc/guardproxy/config.toml", "--host=0.0.0.0", "--workers=1"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {"GUARDPROXY_API_KEYS": {"name": "gp-guardproxy-keys", "key": "GUARDPROXY_API_KEYS"}}
    secret = _one(docs, "Secret", "gp-guardproxy-keys")
    assert secret["stringData"] == {"GUARDPROXY_API_KEYS": "sk-proxy-1,sk-proxy-2"}
    # A changed config rolls the pods.
    assert len(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]) == 64


def test_the_drain_window_and_the_keys_follow_the_values(report):
    docs = _docs(report, "external")
    pod = _one(docs, "Deployment", "gp-guardproxy")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # shutdownGraceSeconds 60: the config and the grace period move together.
    assert tomllib.loads(_config_text(docs))["server"]["shutdown_grace_s"] == 60
    assert pod["terminationGracePeriodSeconds"] == 60 + 5 + 10
    assert "--workers=2" in container["args"]
    # existingSecret: referenced, not created.
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {
        "GUARDPROXY_API_KEYS": {"name": "guardproxy-keys", "key": "GUARDPROXY_API_KEYS"},
        "UPSTREAM_API_KEY": {"name": "guardproxy-keys", "key": "UPSTREAM_API_KEY"},
    }
    assert container["image"] == "guardproxy@sha256:" + "0" * 64
    # No keys at all: no env, no Secret.
    plain = _docs(report, "plain")
    assert "env" not in _one(plain, "Deployment", "gp-guardproxy")["spec"]["template"]["spec"]["containers"][0]
    assert not [d for d in plain if d["kind"] == "Secret"]


def test_the_rendered_config_is_one_guardproxy_loads(report):
    for name in report["sets"]:
        config = parse_config(_config_text(_docs(report, name)), source=f"{name} config.toml")
        assert config.server.port == 8080
    default = parse_config(_config_text(_docs(report, "default")))
    assert default.upstream.replica_urls == ["http://gp-guardproxy-upstream:8000/v1"]
    assert default.guards.flexguard.replica_urls == ["http://gp-guardproxy-flexguard:8000/v1"]
    assert default.guards.reasoningshield.replica_urls == ["http://gp-guardproxy-reasoningshield:8000/v1"]
    assert default.server.api_keys_env == "GUARDPROXY_API_KEYS" and default.upstream.api_key_env is None
    external = parse_config(_config_text(_docs(report, "external")))
    assert external.upstream.replica_urls == ["http://vllm-router.llm.svc:80/v1"]
    assert external.guards.flexguard.replica_urls == ["http://fg-0.guards.svc:8000/v1", "http://fg-1.guards.svc:8000/v1"]
    assert external.upstream.api_key_env == "UPSTREAM_API_KEY" and external.server.shutdown_grace_s == 60
    assert external.policy.threshold == 35 and external.policy.reasoning.release == "hidden"  # config.extra
    # No keys in the Secret: the config names none (a named, absent key stops the start).
    plain = parse_config(_config_text(_docs(report, "plain")))
    assert plain.server.api_keys_env is None


def test_each_model_server_runs_in_the_chart_or_is_replaced_by_an_endpoint(report):
    default = _docs(report, "default")
    for component, served in (
        ("upstream", "Qwen/Qwen3-8B"),
        ("flexguard", "FlexGuard-Qwen3-8B"),
        ("reasoningshield", "ReasoningShield-3B"),
    ):
        deployment = _one(default, "Deployment", f"gp-guardproxy-{component}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert f"--served-model-name={served}" in container["args"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1800
        assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/health"
        # An unmapped uid on a read-only root: torch needs USER (getpass), the caches a writable HOME.
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["USER"] and env["HF_HUB_OFFLINE"] == "1"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts[env["HOME"]]["name"]] and "emptyDir" in volumes[mounts["/tmp"]["name"]]
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
        assert mounts["/models"]["readOnly"] is True
        assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "guardproxy-models"
        assert pod["securityContext"]["runAsNonRoot"] is True
        service = _one(default, "Service", f"gp-guardproxy-{component}")
        assert service["spec"]["ports"][0]["port"] == 8000
        # Only the proxy may reach a model server.
        policy = _one(default, "NetworkPolicy", f"gp-guardproxy-{component}")
        peer = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert peer["app.kubernetes.io/component"] == "proxy"
    # The reasoning parser on the upstream only: the guards' <think> stays in the text.
    args = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
        for d in default
        if d["kind"] == "Deployment"
    }
    assert "--reasoning-parser=qwen3" in args["gp-guardproxy-upstream"]
    for guard in ("gp-guardproxy-flexguard", "gp-guardproxy-reasoningshield"):
        assert not any(a.startswith("--reasoning-parser") for a in args[guard])
        assert "--enable-prefix-caching" in args[guard]
    external = _docs(report, "external")
    assert [d["metadata"]["name"] for d in external if d["kind"] == "Deployment"] == ["gp-guardproxy"]
    assert [d["metadata"]["name"] for d in external if d["kind"] == "Service"] == ["gp-guardproxy"]
    assert [d["metadata"]["name"] for d in external if d["kind"] == "NetworkPolicy"] == ["gp-guardproxy"]
    # The weights from a hostPath instead of the claim.
    upstream = _one(_docs(report, "plain"), "Deployment", "gp-guardproxy-upstream")
    models = {v["name"]: v for v in upstream["spec"]["template"]["spec"]["volumes"]}["models"]
    assert models == {"name": "models", "hostPath": {"path": "/srv/models", "type": "Directory"}}


def test_the_autoscaler_scales_on_cpu_or_on_requests_in_flight(report):
    cpu = _one(_docs(report, "default"), "HorizontalPodAutoscaler", "gp-guardproxy")
    assert cpu["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in _one(_docs(report, "default"), "Deployment", "gp-guardproxy")["spec"]  # the HPA's to set
    in_flight = _one(_docs(report, "external"), "HorizontalPodAutoscaler", "gp-guardproxy")
    metric = in_flight["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "guardproxy_requests_in_flight"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "150"}
    plain = _docs(report, "plain")
    assert not [d for d in plain if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy")]
    assert _one(plain, "Deployment", "gp-guardproxy")["spec"]["replicas"] == 2
