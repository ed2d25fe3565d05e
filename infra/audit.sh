#!/usr/bin/env bash
# Secret audit (`make audit`): prints one JSON object and exits non-zero on any finding.
#
#   1. history:   gitleaks over every commit of the repository (all branches);
#   2. manifests: gitleaks over the manifests' sources (kustomize/, observability/) and over
#                 the rendered base and every overlay, less the Secret objects kustomize
#                 generates from the operator's untracked secrets/*.env (rendered here from
#                 kustomize/validate.sh's placeholders; the history scan covers those files);
#   3. images:    gitleaks over the images' build context: exactly the files
#                 docker/Dockerfile.dockerignore lets in, plus the Dockerfile itself;
#   4. local:     the values of this checkout's own generated secrets (.env: keys, passwords,
#                 session secrets) searched for, literally, in all three of the above; they
#                 are read here and never printed.
#
#   infra/audit.sh [REPO]     REPO defaults to this project (a test audits a fixture repo)
#
# Environment: FRAUD_TOOLS_BIN (where gitleaks is cached; default ~/.cache/fraud-platform/bin).
set -euo pipefail

GITLEAKS_VERSION=v8.30.1
GITLEAKS_MODULE=github.com/zricethezav/gitleaks/v8

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT="$(dirname "$HERE")"
REPO="$(cd "${1:-$PROJECT}" && pwd)"
BIN="${FRAUD_TOOLS_BIN:-$HOME/.cache/fraud-platform/bin}"
GITLEAKS="$BIN/gitleaks"
PYTHON="${PYTHON:-$PROJECT/.venv/bin/python}"

die() { echo "audit.sh: $*" >&2; exit 2; }

if ! { [[ -x "$GITLEAKS" ]] && go version -m "$GITLEAKS" 2>/dev/null | awk '$1 == "mod" {print $3}' | grep -qx "$GITLEAKS_VERSION"; }; then
  command -v go >/dev/null || die "Go is needed to install gitleaks (go install)"
  mkdir -p "$BIN"
  echo "installing gitleaks $GITLEAKS_VERSION into $BIN" >&2
  GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "$GITLEAKS_MODULE@$GITLEAKS_VERSION" >&2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Findings of one gitleaks report (a JSON array), redacted: rule, file, line, commit.
findings() { "$PYTHON" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$1"; }

scan() { # scan KIND ARGS...: run gitleaks, keep its redacted JSON report
  local kind="$1"; shift
  "$GITLEAKS" "$@" --no-banner --redact --log-level error --exit-code 0 \
    --report-format json --report-path "$WORK/$kind.json" >/dev/null
}

# 1. History.
scan history git --log-opts="--all" "$REPO"
commits="$(git -C "$REPO" rev-list --all --count)"

# 2. Rendered manifests (only when REPO is a checkout of this project).
mkdir -p "$WORK/manifests" "$WORK/context"
manifests=0
if [[ -x "$REPO/kustomize/validate.sh" ]]; then
  for target in base overlays/kind overlays/eks overlays/gke; do
    "$REPO/kustomize/validate.sh" render "$target" |
      "$PYTHON" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d.get("kind") != "Secret"]
yaml.safe_dump_all(docs, sys.stdout)' > "$WORK/manifests/rendered-${target//\//-}.yaml"
    manifests=$((manifests + 1))
  done
  git -C "$REPO" ls-files -z --cached --others --exclude-standard -- kustomize observability |
    tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/manifests" -xf -
fi
scan manifests dir "$WORK/manifests"

# 3. The images' build context, as the .dockerignore allowlist selects it from what git
# would commit (tracked, or new and not ignored).
context_files=0
if [[ -f "$REPO/docker/Dockerfile.dockerignore" ]]; then
  allowed="$(sed -n 's/^!//p' "$REPO/docker/Dockerfile.dockerignore")"
  # shellcheck disable=SC2086
  git -C "$REPO" ls-files -z --cached --others --exclude-standard -- $allowed |
    while IFS= read -r -d '' file; do
      case "$file" in *.env|*/__pycache__/*|*.pyc) continue ;; esac
      [[ -e "$REPO/$file" ]] && printf '%s\0' "$file"
    done | tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/context" -xf -
  cp "$REPO/docker/Dockerfile" "$WORK/context/Dockerfile"
  context_files="$(find "$WORK/context" -type f | wc -l | tr -d ' ')"
fi
scan images dir "$WORK/context"

# 4. This checkout's own secrets, literally.
local_hits=0
if [[ -f "$REPO/.env" ]]; then
  sed -nE 's/^[A-Z0-9_]*(KEY|SECRET|PASSWORD|USERS)[A-Z0-9_]*=//p' "$REPO/.env" |
    sed -E "s/^'(.*)'$/\\1/" | awk 'length($0) >= 8' > "$WORK/values"
  if [[ -s "$WORK/values" ]]; then
    git -C "$REPO" log --all -p --no-color > "$WORK/history.txt"
    for where in "$WORK/history.txt" "$WORK/manifests" "$WORK/context"; do
      hits="$({ grep -rFc -f "$WORK/values" "$where" 2>/dev/null || true; } | awk -F: '{s += $NF} END {print s + 0}')"
      local_hits=$((local_hits + hits))
    done
  fi
fi

history="$(findings "$WORK/history.json")"
in_manifests="$(findings "$WORK/manifests.json")"
in_images="$(findings "$WORK/images.json")"
total=$((history + in_manifests + in_images + local_hits))
cat <<JSON
{"gitleaks": "$GITLEAKS_VERSION", "history": {"commits": $commits, "findings": $history}, "manifests": {"rendered": $manifests, "findings": $in_manifests}, "images": {"context_files": $context_files, "findings": $in_images}, "local_secrets_found": $local_hits, "clean": $([[ $total -eq 0 ]] && echo true || echo false)}
JSON
if [[ $total -ne 0 ]]; then
  for kind in history manifests images; do
    "$PYTHON" - "$WORK/$kind.json" "$kind" >&2 <<'PY'
import json, sys
for f in json.load(open(sys.argv[1])):
    where = f.get("Commit", "")[:12] or "-"
    print(f"{sys.argv[2]}: {f['RuleID']} in {f['File']}:{f['StartLine']} (commit {where})")
PY
  done
  [[ $local_hits -eq 0 ]] || echo "local: a value from .env appears $local_hits time(s) in the history, manifests or image context" >&2
  exit 1
fi
