"""Render the guardproxy chart for each named set of values, and check what it renders:
helm lint, the Kubernetes schemas (kubernetes-validate, strict) and a security scan
(checkov's Kubernetes checks). Prints one JSON object; the test suite asserts on it
(tests/ops/test_helm_chart.py).

    .venv-deploy/bin/python deploy/helm/check.py --out DIR

Runs in its own environment (.venv-deploy, which `bash tests/run.sh` installs from
deploy/helm/requirements*.txt): checkov pins versions that the product's do not share.
Helm itself comes from helm-python-sdk (Helm's Go SDK, no helm binary needed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent / "guardproxy"
KUBERNETES = "1.30"
NAMESPACE = "guardproxy"

# What the tests render: the defaults, every model server external, and the bare minimum.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {"secrets": {"proxyApiKeys": "sk-proxy-1,sk-proxy-2"}},
    "external": {
        "models": {
            "upstream": {"enabled": False, "externalBaseUrls": ["http://vllm-router.llm.svc:80/v1"]},
            "flexguard": {"enabled": False, "externalBaseUrls": ["http://fg-0.guards.svc:8000/v1", "http://fg-1.guards.svc:8000/v1"]},
            "reasoningshield": {"enabled": False, "externalBaseUrls": ["http://rs.guards.svc:8000/v1"]},
        },
        "secrets": {"existingSecret": "guardproxy-keys", "existingSecretHasUpstreamKey": True},
        "autoscaling": {"metric": "inFlight", "targetInFlightPerPod": "150"},
        "image": {"digest": "sha256:" + "0" * 64},
        "proxy": {"workers": 2, "shutdownGraceSeconds": 60},
        "config": {"strictness": 35, "extra": '[policy.reasoning]\nrelease = "hidden"\n'},
    },
    "plain": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
              "networkPolicy": {"enabled": False}, "serviceAccount": {"create": False}},
}


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(values, name="gp", namespace=NAMESPACE)
    return {path: text for path, text in rendered.items() if path.endswith(".yaml") and text.strip()}


def validate(manifests: dict[str, str]) -> list[str]:
    errors = []
    for path, text in manifests.items():
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: {exc.message}")
    return errors


def scan(directory: Path) -> dict[str, Any]:
    run = subprocess.run(
        [str(Path(sys.executable).with_name("checkov")), "-d", str(directory), "--framework", "kubernetes",
         "--output", "json", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        return {"error": (run.stdout + run.stderr)[-2000:], "failed": [], "passed": 0, "skipped": []}
    results = report.get("results", {}) if isinstance(report, dict) else {}
    return {
        "failed": [{"check_id": c["check_id"], "resource": c["resource"], "file": c["file_path"]}
                   for c in results.get("failed_checks", [])],
        "passed": report.get("summary", {}).get("passed", 0) if isinstance(report, dict) else 0,
        "skipped": [{"check_id": c["check_id"], "resource": c["resource"], "reason": c.get("check_result", {}).get("suppress_comment")}
                    for c in results.get("skipped_checks", [])],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the rendered manifests go, one folder per value set")
    out = Path(parser.parse_args().out)
    report: dict[str, Any] = {"lint": helm.lint(str(CHART)), "sets": {}}
    for name, values in VALUE_SETS.items():
        manifests = render(values)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in manifests.items():
            (folder / path.replace("/", "_")).write_text(text)
        report["sets"][name] = {"values": values, "manifests": manifests, "validation_errors": validate(manifests),
                                "checkov": scan(folder)}
    # A values mistake must stop the render, not render a proxy pointed nowhere.
    try:
        render({"models": {"upstream": {"enabled": False}}})
        report["unset_external_url"] = "rendered"
    except Exception as exc:  # helm_python's render error
        report["unset_external_url"] = str(exc)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
