# brokerguard worker image: `docker build -t brokerguard .` (deploy/compose.yaml builds it too).
# One process per container: `brokerguard run --config /etc/brokerguard/fleet.toml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[postgres,redis,ccxt]" \
    && useradd --system --uid 10001 --home-dir /var/lib/brokerguard --create-home brokerguard \
    && rm -rf /src

# Non-root; the only writable place is the data directory (SQLite of the embedded mode).
USER 10001:10001
WORKDIR /var/lib/brokerguard

# The status server: /healthz (liveness), /readyz, /status, /metrics. A fleet config binds it
# to 0.0.0.0 with [server] allow_remote = true (see deploy/compose.yaml).
EXPOSE 8000

# The slim image has no curl: the standard library asks /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["brokerguard"]
CMD ["run", "--config", "/etc/brokerguard/fleet.toml", "--data-dir", "/var/lib/brokerguard"]
