# guardproxy: the proxy alone. The upstream model and the guard models run in their own
# vLLM servers (see deploy/compose.yaml); no vLLM, torch or CUDA in this image.
#
#   docker build -t guardproxy .
#   docker run -p 8080:8080 -e GUARDPROXY_API_KEYS=sk-your-key \
#       -v "$PWD/deploy/config.toml:/etc/guardproxy/config.toml:ro" guardproxy
#
# deploy/config.toml names GUARDPROXY_API_KEYS (server.api_keys_env): the proxy refuses to
# start without it. Clients then send one of those keys as their OpenAI API key.
#
# The base is Debian bookworm with Debian's own Python 3.11. BASE_IMAGE swaps in another
# bookworm root (a mirror, or a locally built one) without changing anything else.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# PROMETHEUS_DISABLE_CREATED_SERIES: no *_created series at /metrics.
# GUARDPROXY_HEALTH_URL: what the health check probes (change it with server.port).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    GUARDPROXY_HEALTH_URL=http://127.0.0.1:8080/healthz \
    PATH=/opt/guardproxy/bin:$PATH

# The proxy's packages go into a virtual environment, apart from Debian's. ca-certificates:
# the system trust store, for upstreams and guards reached over HTTPS. DL3008: the
# packages follow the base's bookworm point release; pin the base by digest for a fixed build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/guardproxy \
    && groupadd --system --gid 10001 guardproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin guardproxy

WORKDIR /src
COPY pyproject.toml README.md ./
COPY guards ./guards
COPY proxy ./proxy
# The otlp extra lets `telemetry.traces = "otlp"` work without rebuilding. DL3013: this
# installs the project itself, whose dependencies are bounded in pyproject.toml; for a
# fully pinned build, copy a constraints file in and add `-c constraints.txt`.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[otlp]" \
    && rm -rf /src

WORKDIR /
USER 10001:10001
EXPOSE 8080

# No curl in the image: the probe is Python's own urllib.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['GUARDPROXY_HEALTH_URL'], timeout=2).status == 200 else 1)"]

# Mount the config at /etc/guardproxy/config.toml; secrets come as environment variables
# named by the config's *_env options. SIGTERM drains (server.shutdown_grace_s): give the
# container a stop timeout longer than that (docker stop -t / stop_grace_period).
ENTRYPOINT ["guardproxy", "serve"]
CMD ["--config", "/etc/guardproxy/config.toml", "--host", "0.0.0.0"]
