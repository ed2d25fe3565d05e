#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests: render the base and every overlay with
# kustomize, then check each rendered object with kubeconform against the JSON schemas of
# Kubernetes 1.34 and of the CRDs used, vendored in kustomize/schemas/ (no cluster, no network
# once the tools are cached; `make k8s-schemas` refreshes the schemas from upstream).
#
#   kustomize/validate.sh              install the tools if missing, validate everything,
#                                      and check that the broken fixture is rejected
#   kustomize/validate.sh tools        only install the pinned tools (cached)
#   kustomize/validate.sh render DIR   print the rendered YAML of DIR (relative to kustomize/)
#   kustomize/validate.sh check DIR    render DIR and validate it with kubeconform
#
# Environment:
#   K8S_SCHEMAS_DIR   schema folder with core/ and crds/, absolute or relative to the project
#                     root (default: the vendored kustomize/schemas)
#   FRAUD_TOOLS_BIN   where the tools are cached (default: ~/.cache/fraud-platform/bin)
#
# Rendering happens in a temporary copy of kustomize/ and observability/ in which
# base/secrets/s3.env, redis.env and console.env hold placeholder values, so validation
# never needs (or prints) real credentials and works on a fresh checkout.
set -euo pipefail

KUSTOMIZE_VERSION=v5.7.1
KUBECONFORM_VERSION=v0.7.0
KUBERNETES_VERSION=1.34.0

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BIN="${FRAUD_TOOLS_BIN:-$HOME/.cache/fraud-platform/bin}"
SCHEMAS="${K8S_SCHEMAS_DIR:-$HERE/schemas}"
TARGETS=(base overlays/kind overlays/eks overlays/gke)
BROKEN=tests/broken

die() { echo "validate.sh: $*" >&2; exit 1; }

# A binary built by `go install` records its module version; reuse it only if it matches.
has_version() {
  [[ -x "$1" ]] && go version -m "$1" 2>/dev/null | awk '$1 == "mod" {print $3}' | grep -qx "$2"
}

install_tools() {
  if ! command -v go >/dev/null; then
    # Without Go the versions cannot be read back; use cached binaries as they are.
    [[ -x "$BIN/kustomize" && -x "$BIN/kubeconform" ]] && return 0
    die "Go is needed to install kustomize and kubeconform (go install)"
  fi
  mkdir -p "$BIN"
  if ! has_version "$BIN/kustomize" "$KUSTOMIZE_VERSION"; then
    echo "installing kustomize $KUSTOMIZE_VERSION into $BIN" >&2
    GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  fi
  if ! has_version "$BIN/kubeconform" "$KUBECONFORM_VERSION"; then
    echo "installing kubeconform $KUBECONFORM_VERSION into $BIN" >&2
    GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  fi
}

WORK=""
workspace() {
  [[ -n "$WORK" ]] && return
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Only what git would commit (tracked, or new and not ignored): a manifest that
    # depends on an ignored local file fails here as it would in a fresh clone.
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard -- kustomize observability |
      while IFS= read -r -d '' file; do
        [[ -e "$ROOT/$file" ]] && printf '%s\0' "$file"
      done |
      tar -C "$ROOT" --null -T - -cf - | tar -C "$WORK" -xf -
  else
    cp -R "$ROOT/kustomize" "$ROOT/observability" "$WORK/"
  fi
  mkdir -p "$WORK/kustomize/base/secrets"
  # Placeholders only: the real file (if any) is replaced in the copy.
  printf 'AWS_ACCESS_KEY_ID=placeholder-access-key\nAWS_SECRET_ACCESS_KEY=placeholder-secret-key\n' \
    > "$WORK/kustomize/base/secrets/s3.env"
  printf 'REDIS_PASSWORD=placeholder-redis-password\n' > "$WORK/kustomize/base/secrets/redis.env"
  printf 'SESSION_SECRET=placeholder-session-secret-placeholder-session\nUSERS=placeholder-users\n' \
    > "$WORK/kustomize/base/secrets/console.env"
}

render() {
  workspace
  [[ -d "$WORK/kustomize/$1" ]] || die "no such kustomization: kustomize/$1"
  "$BIN/kustomize" build "$WORK/kustomize/$1"
}

schemas_dir() {
  local dir="$SCHEMAS"
  [[ "$dir" = /* ]] || dir="$ROOT/$dir"
  [[ -d "$dir/core" && -d "$dir/crds" ]] || die "schemas not found at $dir (core/ and crds/; see kustomize/schemas/README.md)"
  (cd "$dir" && pwd)
}

# Built-in kinds resolve under core/, custom resources under crds/; nothing is fetched,
# and a kind found in neither fails ("could not find schema").
conform() {
  local dir
  dir="$(schemas_dir)"
  "$BIN/kubeconform" -strict -summary -output text \
    -kubernetes-version "$KUBERNETES_VERSION" \
    -schema-location "$dir/core/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$dir/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    -
}

check() {
  workspace
  local rendered="$WORK/rendered.yaml"
  render "$1" > "$rendered" || die "kustomize build failed for kustomize/$1"
  conform < "$rendered"
}

case "${1:-all}" in
  tools)
    install_tools
    ;;
  render)
    [[ $# -eq 2 ]] || die "usage: validate.sh render DIR"
    install_tools
    render "$2"
    ;;
  check)
    [[ $# -eq 2 ]] || die "usage: validate.sh check DIR"
    install_tools
    check "$2"
    ;;
  all)
    install_tools
    for target in "${TARGETS[@]}"; do
      echo "== kustomize/$target"
      check "$target"
    done
    echo "== kustomize/$BROKEN (must be rejected)"
    if check "$BROKEN"; then
      die "the broken fixture kustomize/$BROKEN passed validation; the checks are not strict"
    fi
    echo "rejected as expected"
    echo "all manifests valid"
    ;;
  *)
    die "unknown command: $1 (use: tools, render DIR, check DIR, or no argument)"
    ;;
esac
