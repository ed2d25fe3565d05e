# Entry points. `make help` lists them. Everything runs from the project's virtualenv.
SHELL := bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
FRAUD := $(BIN)/fraud
PYTEST := $(BIN)/pytest

.DEFAULT_GOAL := help
.PHONY: help setup system-packages lock up down status lint test test-unit test-integration demo clean \
	images k8s-tools k8s-validate k8s-schemas kind-up kind-deploy bench-ingest bench-features \
	train pipeline bench-model bench audit soak
TAG ?= dev

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "uv==$(UV_VERSION)"

$(VENV)/.synced: requirements.lock requirements-pipeline.lock requirements-dev.lock pyproject.toml | $(BIN)/uv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip sync -q requirements-dev.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	touch $@

system-packages: ## install Redis and Prometheus (Debian packages), check Java, Maven, Go
	@infra/system-packages.sh

# The local KafkaSource stand-in's Go build (app/kafkasource), which `fraud dispatch` runs
# (Go modules are cached in Go's module cache).
KAFKASOURCE := $(BIN)/fraud-kafkasource
$(KAFKASOURCE): $(wildcard app/kafkasource/*.go) app/kafkasource/go.mod app/kafkasource/go.sum | $(BIN)/uv
	cd app/kafkasource && go build -trimpath -o $(abspath $@) .

setup: system-packages $(VENV)/.synced $(KAFKASOURCE) ## create the virtualenv from the lock file; build the Go stand-in

# requirements.lock: the runtime dependencies only, what the serving and worker images
# install (docker/Dockerfile). requirements-pipeline.lock: runtime + the pipeline extra
# (kfp, matplotlib), the pipeline image. requirements-dev.lock: runtime + pipeline + dev,
# what setup syncs. Each is compiled with -c the one before, so every package they share
# has the same version; every pin carries its hashes (pip --require-hashes in the images).
# requirements-overrides.txt applies to the image locks only (no mypy in the images).
# Existing pins are kept: uv prefers the versions already in the output file.
LOCK_FLAGS = --python-version 3.11 --generate-hashes -q
lock: | $(BIN)/uv ## re-resolve the three lock files (runtime, pipeline, dev)
	$(BIN)/uv pip compile pyproject.toml --override requirements-overrides.txt $(LOCK_FLAGS) -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra pipeline --override requirements-overrides.txt -c requirements.lock $(LOCK_FLAGS) -o requirements-pipeline.lock
	$(BIN)/uv pip compile pyproject.toml --extra pipeline --extra dev -c requirements-pipeline.lock $(LOCK_FLAGS) -o requirements-dev.lock

up: setup ## install (cached) and start Kafka, Redis, MinIO, Prometheus; health-check
	$(FRAUD) up

down: ## stop the local services
	@[ -x $(FRAUD) ] && $(FRAUD) down || true

status: ## version, address, memory and health of each service
	$(FRAUD) status

lint: setup ## ruff and mypy; gofmt and go vet
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd app/kafkasource && test -z "$$(gofmt -l .)" && go vet ./...

test: up k8s-tools ## all tests: unit, then integration against the running stack
	cd app/kafkasource && go test ./...
	$(PYTEST) -m "not integration"
	$(PYTEST) -m integration --durations=25

test-unit: setup k8s-tools ## fast tests, no services
	cd app/kafkasource && go test ./...
	$(PYTEST) -m "not integration"

test-integration: up ## tests against the real local services
	$(PYTEST) -m integration

demo: up ## the main command: brings the stack up and proves it works end to end
	$(FRAUD) demo

clean: down ## stop services and delete local state (data, logs)
	rm -rf .state local_outputs

bench-ingest: up ## producer throughput, rate accuracy, ack latency, archive throughput (JSON)
	$(BIN)/python -m fraud_producers.bench

bench: up ## the scoring path under load, end to end (JSON); RATES=500,1000,2000 TRANSFORMERS=2
	$(BIN)/python -m fraud_app.bench $(or $(RATES),500,1000,1500,2000,3000) $(or $(TRANSFORMERS),2)

train: up ## train locally with kfp's local runner and publish the model (ARGS="--source simulator" on a fresh stack)
	$(FRAUD) train $(ARGS)

pipeline: setup ## compile the Kubeflow pipeline to its YAML package
	$(FRAUD) pipeline compile $(ARGS)

bench-model: up ## the Handbook benchmark of the training pipeline (JSON)
	$(BIN)/python -m fraud_pipelines.bench

bench-features: up ## streaming job throughput, online read latency, backfill time (JSON)
	$(BIN)/python -m fraud_features.bench

images: ## build every container image (TAG=dev; IMAGE_PREFIX=registry/prefix to retarget)
	docker/build-images.sh $(TAG)

k8s-tools: ## install the pinned kustomize and kubeconform (cached)
	@kustomize/validate.sh tools

k8s-validate: ## render base and every overlay, validate offline with kubeconform
	kustomize/validate.sh

DURATION ?= 1800
RATE ?= 300
soak: up ## steady live traffic for DURATION s at RATE/s; JSON: loss, latency per 5-min window, memory per process, lag
	$(FRAUD) soak --duration $(DURATION) --rate $(RATE)

audit: setup ## secret scan (gitleaks, cached) of the git history, the manifests and the images' build context; JSON out
	PYTHON=$(BIN)/python infra/audit.sh

k8s-schemas: $(VENV)/.synced ## refresh the vendored Kubernetes and CRD JSON schemas from upstream (needs network)
	$(BIN)/python kustomize/schemas/refresh.py

kind-up: ## kind cluster with cert-manager, KServe, Knative Eventing + Kafka source, Strimzi, Prometheus operator (needs Docker)
	kustomize/kind/kind-up.sh

kind-deploy: ## build the images, load them into kind, kubectl apply -k kustomize/overlays/kind
	kustomize/kind/kind-deploy.sh
