# syntax=docker/dockerfile:1
# One image for the operator (`localai-operator run`, the default) and the fallback router
# (`localai-operator router --config ...`), which the operator starts with its own image.
#   docker build -t localai-operator:0.1.0 .
# Without a Docker engine, `make images` builds this same file with buildah, PYTHON_IMAGE set to a Debian bookworm
# base it makes with mmdebstrap (python3, python3-venv, python3-pip, python-is-python3): any base with `python`,
# `pip` and `venv` on PATH works.
# The runtime stage needs no shell: the entrypoint is exec form and the virtualenv is copied in whole.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.m[d]: optional, so the build does not depend on it.
COPY pyproject.toml README.m[d] ./
COPY operator ./operator
# With the telemetry extra: the OpenTelemetry SDK and OTLP exporter, imported only when an endpoint is set.
RUN pip wheel --wheel-dir /wheels '.[telemetry]' \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels 'localai-operator[telemetry]' \
 && /opt/venv/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="localai-operator" \
      org.opencontainers.image.description="Kubernetes operator for LocalAI pools with a cloud fallback router" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# The distroless "nonroot" uid: no home, no shell login; the chart runs it with a read-only root.
USER 65532:65532
# router, operator metrics, operator health
EXPOSE 8080 8081 8082
ENTRYPOINT ["localai-operator"]
CMD ["run"]
