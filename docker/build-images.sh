#!/usr/bin/env bash
# Builds the image of every component from the repository root.
#
#   docker/build-images.sh TAG            -> fraud-platform/<component>:TAG
#   IMAGE_PREFIX=registry.example.com/fraud-platform docker/build-images.sh TAG
#   COMPONENTS="transformer predictor" docker/build-images.sh TAG   (a subset)
#
# Every image is a target of docker/Dockerfile (--target <component>); the builder and
# runtime stages are shared, so BuildKit builds the dependency layers once for all images.
set -euo pipefail

TAG="${1:-}"
if [[ -z "$TAG" || "$TAG" == "latest" ]]; then
  echo "usage: docker/build-images.sh TAG   (an explicit tag; 'latest' is not allowed)" >&2
  exit 2
fi
PREFIX="${IMAGE_PREFIX:-fraud-platform}"
read -r -a COMPONENTS <<< "${COMPONENTS:-producer quality-gate archiver feature-job transformer predictor model-monitor pipeline feast}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/docker/Dockerfile"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)"

export DOCKER_BUILDKIT=1
for component in "${COMPONENTS[@]}"; do
  grep -qE "^FROM[[:space:]]+runtime[[:space:]]+AS[[:space:]]+$component\$" "$DOCKERFILE" \
    || { echo "no target '$component' in $DOCKERFILE" >&2; exit 1; }
  echo "== $PREFIX/$component:$TAG"
  docker build \
    --file "$DOCKERFILE" \
    --target "$component" \
    --build-arg "VERSION=${VERSION:-0.0.0}" \
    --tag "$PREFIX/$component:$TAG" \
    "$ROOT"
done
