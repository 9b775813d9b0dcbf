# syntax=docker/dockerfile:1
# One image, two entrypoints: `packgate operator run` and `packgate gateway run` (the sidecar).
# Build: docker build -t packgate:dev .

# --- build: compile wheels with the toolchain, which never reaches the final stage ---
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY operator/ operator/
RUN python -m venv /opt/packgate \
 && /opt/packgate/bin/pip install --no-compile . \
 && /opt/packgate/bin/python -m compileall -q /opt/packgate/lib \
 && find /opt/packgate -name '*.dist-info' -prune -o -name 'tests' -type d -prune -exec rm -rf {} +

# --- runtime: the virtualenv only, as a non-root user, read-only-root-filesystem friendly ---
FROM python:3.11.14-slim-bookworm
ENV PATH=/opt/packgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/packgate /opt/packgate
USER 65532:65532
EXPOSE 41002 41003
ENTRYPOINT ["packgate"]
CMD ["gateway", "run", "--listen", "0.0.0.0:41002", "--policy-config", "/etc/packgate/config/policy.yaml"]
