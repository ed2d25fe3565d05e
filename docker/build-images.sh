#!/usr/bin/env bash
# Builds the image of every component from the repository root.
#
#   docker/build-images.sh TAG            -> fraud-platform/<component>:TAG
#   IMAGE_PREFIX=registry.example.com/fraud-platform docker/build-images.sh TAG
#   COMPONENTS="transformer predictor" docker/build-images.sh TAG   (a subset)
#   PUSH=1 OVERLAY=kustomize/overlays/eks IMAGE_PREFIX=... docker/build-images.sh TAG
#       also pushes each image and pins it in the overlay by digest
#       (`kustomize edit set image fraud-platform/<component>=<prefix>/<component>@sha256:...`)
#
# Every image is a target of docker/Dockerfile (--target <component>); the builder and
# runtime stages are shared, so BuildKit builds the dependency layers once for all images.
#
# Why digests in the cloud overlays: in Knative mode (eks, gke) Knative Serving resolves
# each image tag to a digest with its controller's own registry credentials, which a
# private registry refuses, so the revision never becomes ready. An image already named by
# digest is not resolved. (The alternative is listing the registry under
# `registries-skipping-tag-resolving` in knative-serving's config-deployment.)
set -euo pipefail

TAG="${1:-}"
if [[ -z "$TAG" || "$TAG" == "latest" ]]; then
  echo "usage: docker/build-images.sh TAG   (an explicit tag; 'latest' is not allowed)" >&2
  exit 2
fi
PREFIX="${IMAGE_PREFIX:-fraud-platform}"
read -r -a COMPONENTS <<< "${COMPONENTS:-producer quality-gate archiver feature-job transformer predictor model-monitor console pipeline feast}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/docker/Dockerfile"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
PUSH="${PUSH:-0}"
OVERLAY="${OVERLAY:-}"
if [[ -n "$OVERLAY" && "$PUSH" != "1" ]]; then
  echo "OVERLAY needs PUSH=1: a digest exists only once the registry has the image" >&2
  exit 2
fi
if [[ -n "$OVERLAY" ]]; then
  [[ "$OVERLAY" = /* ]] || OVERLAY="$PWD/$OVERLAY"
  [[ -f "$OVERLAY/kustomization.yaml" ]] || { echo "no kustomization.yaml in $OVERLAY" >&2; exit 2; }
  KUSTOMIZE="$(command -v kustomize || echo "${XDG_CACHE_HOME:-$HOME/.cache}/fraud-platform/bin/kustomize")"
  [[ -x "$KUSTOMIZE" ]] || { echo "kustomize not found (make k8s-tools installs it)" >&2; exit 2; }
fi

export DOCKER_BUILDKIT=1
for component in "${COMPONENTS[@]}"; do
  grep -qE "^FROM[[:space:]]+(pipeline-)?runtime[[:space:]]+AS[[:space:]]+$component\$" "$DOCKERFILE" \
    || { echo "no target '$component' in $DOCKERFILE" >&2; exit 1; }
  image="$PREFIX/$component:$TAG"
  echo "== $image"
  docker build \
    --file "$DOCKERFILE" \
    --target "$component" \
    --build-arg "VERSION=${VERSION:-0.0.0}" \
    --tag "$image" \
    "$ROOT"
  if [[ "$PUSH" == "1" ]]; then
    docker push "$image"
    # RepoDigests holds <repository>@sha256:<digest> once the push is done.
    pinned="$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$image" \
      | grep -m1 "^$PREFIX/$component@sha256:" || true)"
    [[ -n "$pinned" ]] || { echo "no registry digest for $image after the push" >&2; exit 1; }
    echo "   $pinned"
    if [[ -n "$OVERLAY" ]]; then
      (cd "$OVERLAY" && "$KUSTOMIZE" edit set image "fraud-platform/$component=$pinned")
    fi
  fi
done
