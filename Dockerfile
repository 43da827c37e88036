# The quorum-signer proxy: `docker build -t quorum-signer .` (docker-compose.yml builds it).
# Slim, non-root, SoftHSM2 included; no secret is ever baked in: configuration comes from the
# environment (QSIGNER_*), secrets from environment files, docker secrets or Kubernetes Secrets.

# Wheels for the package and its dependencies (a compiler only here, for any that need one).
FROM python:3.11.10-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY signer ./signer
COPY policy ./policy
COPY softhsm ./softhsm
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM python:3.11.10-slim-bookworm
# softhsm2: the PKCS#11 module used when QSIGNER_PKCS11_MODULE names no other (a network HSM's
# client library is added by an image built from this one, or mounted: see docs/deploy.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends softhsm2 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 qsigner \
    && useradd --system --uid 10001 --gid qsigner --home-dir /var/lib/quorum-signer \
        --shell /usr/sbin/nologin qsigner
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/wheels \
        quorum-signer \
    && rm -rf /tmp/wheels
# SoftHSM's tokens live in /var/lib/quorum-signer/tokens: mount a volume there, shared by the
# replicas that sign with the same token (the image's copy belongs to the non-root user, so a
# fresh named volume does too).
COPY softhsm/softhsm2.conf.in /etc/quorum-signer/softhsm2.conf.in
RUN mkdir -p /var/lib/quorum-signer/tokens \
    && sed 's|@TOKENDIR@|/var/lib/quorum-signer/tokens|' /etc/quorum-signer/softhsm2.conf.in \
        > /etc/quorum-signer/softhsm2.conf \
    && chown -R qsigner:qsigner /var/lib/quorum-signer
ENV SOFTHSM2_CONF=/etc/quorum-signer/softhsm2.conf \
    QSIGNER_LISTEN=0.0.0.0:8545 \
    QSIGNER_LOG_FORMAT=json \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER qsigner:qsigner
WORKDIR /var/lib/quorum-signer
EXPOSE 8545
# Healthy when /readyz answers 200: the database, the HSM and at least one node usable.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('QSIGNER_LISTEN', ':8545').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
ENTRYPOINT ["quorum-signer"]
CMD ["serve"]
