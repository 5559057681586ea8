"""Render the guardproxy chart for each named set of values, and check what it renders:
helm lint, the Kubernetes schemas (kubernetes-validate, strict) and a security scan
(checkov's Kubernetes checks). Prints one JSON object; the test suite asserts on it
(tests/ops/test_helm_chart.py). Exits 0 whatever the findings: judging them is the test's.

    .venv-deploy/bin/python deploy/helm/check.py --out DIR [--values-json '{"name": {values}}']...

DIR/<set>/ keeps each set's manifests, one file per template, for a look or another scanner.

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
              "networkPolicy": {"enabled": False}, "serviceAccount": {"create": False},
              "vllm": {"modelsVolume": {"persistentVolumeClaim": None, "hostPath": {"path": "/srv/models", "type": "Directory"}}}},
}

# Values that must stop the render with a message, not render a broken release.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "unset_external_url": {"models": {"upstream": {"enabled": False}}},
    "misspelt_value": {"hpa": {"enabled": False}},
    "two_model_volumes": {"vllm": {"modelsVolume": {"hostPath": {"path": "/srv/models"}}}},
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
        return {"checkov_error": (run.stdout + run.stderr)[-2000:], "checkov_failed": [], "checkov_passed": 0, "checkov_skipped": []}
    if not isinstance(report, dict):  # a list: more than one framework ran
        return {"checkov_error": f"unexpected report: {run.stdout[:500]}", "checkov_failed": [], "checkov_passed": 0,
                "checkov_skipped": []}
    results = report.get("results", {})
    return {
        "checkov_failed": [{"check_id": c["check_id"], "resource": c["resource"], "file": c["file_path"]}
                           for c in results.get("failed_checks", [])],
        "checkov_passed": report.get("summary", {}).get("passed", 0),
        "checkov_skipped": [{"check_id": c["check_id"], "resource": c["resource"],
                             "reason": c.get("check_result", {}).get("suppress_comment")}
                            for c in results.get("skipped_checks", [])],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the rendered manifests go, one folder per value set")
    parser.add_argument("--values-json", action="append", default=[], metavar="JSON",
                        help='more sets, or replacements for the built-in ones: {"name": {values}}; repeatable')
    args = parser.parse_args()
    sets = dict(VALUE_SETS)
    for extra in args.values_json:
        sets.update(json.loads(extra))
    out = Path(args.out)
    report: dict[str, Any] = {"lint": helm.lint(str(CHART)), "sets": {}, "render_errors": {}}
    for name, values in sets.items():
        try:
            manifests = render(values)
        except Exception as exc:  # a finding like any other: the other sets still get checked
            report["sets"][name] = {"values": values, "render_error": str(exc), "manifests": {}, "validation_errors": [],
                                    "checkov_failed": [], "checkov_passed": 0, "checkov_skipped": []}
            continue
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.yaml"):  # from an earlier run: checkov would scan it too
            stale.unlink()
        for path, text in manifests.items():
            (folder / path.replace("/", "_")).write_text(text)
        report["sets"][name] = {"values": values, "manifests": manifests, "validation_errors": validate(manifests),
                                **scan(folder)}
    for name, values in BAD_VALUES.items():
        try:
            render(values)
            report["render_errors"][name] = None
        except Exception as exc:  # helm_python's HelmRenderError or HelmValuesError
            report["render_errors"][name] = str(exc)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
