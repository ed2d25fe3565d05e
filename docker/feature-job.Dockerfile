# syntax=docker/dockerfile:1
# Streaming feature job: online features from the transaction stream.
# Build from the repository root (the build context):
#   docker build -f docker/feature-job.Dockerfile -t fraud-platform/feature-job:<tag> .
# or build every image with docker/build-images.sh <tag>.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- builder: the locked dependencies and the project in a virtualenv ----------------
# These steps are identical in every Dockerfile under docker/, so the builder layers are
# built once and shared by all images.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Exactly the locked versions, nothing resolved at build time.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock
# The project itself (its dependencies are already there).
COPY pyproject.toml README.md* ./
COPY fraudcore ./fraudcore
COPY producers ./producers
COPY feature_store ./feature_store
COPY pipelines ./pipelines
COPY predictors ./predictors
COPY transformers ./transformers
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv

# ---- runtime: slim image, non-root, no compilers, no secrets ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fraud-platform-feature-job" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Real-time fraud detection platform: feature-job"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 fraud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin fraud
COPY --from=builder /opt/venv /opt/venv
# The Feast feature repository (feature_store/repo): `feast` runs in it, and the
# components that use the Feast SDK load its definitions.
COPY --from=builder /src/feature_store /app/feature_store
ENV FRAUD_FEATURES__REPO=/app/feature_store/repo
WORKDIR /app
USER 10001:10001
EXPOSE 9104
ENTRYPOINT ["fraud"]
CMD ["features", "stream"]
