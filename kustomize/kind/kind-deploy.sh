#!/usr/bin/env bash
# Builds the platform's images, loads them into the kind cluster made by kind-up.sh and
# applies the kind overlay.
#
#   kustomize/kind/kind-deploy.sh               build, load, apply
#   SKIP_BUILD=1 kustomize/kind/kind-deploy.sh  reuse images already built
#   CLUSTER_NAME=other kustomize/kind/kind-deploy.sh
#
# Credentials: the MinIO/S3 key pair comes from kustomize/base/secrets/s3.env, the Redis
# password from kustomize/base/secrets/redis.env and the review console's session secret and
# analysts from kustomize/base/secrets/console.env (all ignored by git). A file that does not
# exist is generated with random values; for the console, one analyst `analyst` whose
# password is written to kustomize/base/secrets/console-analyst.txt.
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-fraud-platform}"
TAG=dev   # the kind overlay refers to fraud-platform/<component>:dev
COMPONENTS=(producer quality-gate archiver feature-job transformer predictor model-monitor console pipeline feast)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SECRETS_FILE="$ROOT/kustomize/base/secrets/s3.env"
REDIS_SECRET_FILE="$ROOT/kustomize/base/secrets/redis.env"
CONSOLE_SECRET_FILE="$ROOT/kustomize/base/secrets/console.env"
CONSOLE_PASSWORD_FILE="$ROOT/kustomize/base/secrets/console-analyst.txt"

log() { printf '\n== %s\n' "$*"; }
die() { echo "kind-deploy.sh: $*" >&2; exit 1; }

for tool in docker kind kubectl python3; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
# `kubectl apply -k` uses the kustomize built into kubectl; the overlays need kustomize
# v5.0+ (kubectl 1.27+). kustomize/validate.sh checks them with kustomize v5.7.1.
kubectl_minor="$(kubectl version --client -o json | python3 -c 'import json, sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))')"
(( kubectl_minor >= 27 )) || die "kubectl 1.27 or newer is required (found 1.$kubectl_minor)"
kind get clusters | grep -qx "$CLUSTER_NAME" || die "no kind cluster '$CLUSTER_NAME'; run kind-up.sh first"
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null

if [[ -z "${SKIP_BUILD:-}" ]]; then
  log "building images (tag $TAG)"
  COMPONENTS="${COMPONENTS[*]}" "$ROOT/docker/build-images.sh" "$TAG"
fi

log "loading images into kind"
for component in "${COMPONENTS[@]}"; do
  kind load docker-image --name "$CLUSTER_NAME" "fraud-platform/$component:$TAG"
done

if [[ ! -f "$SECRETS_FILE" ]]; then
  log "generating object-store credentials in kustomize/base/secrets/s3.env"
  umask 077
  python3 - "$SECRETS_FILE" <<'EOF'
import secrets, sys
with open(sys.argv[1], "w") as f:
    f.write(f"AWS_ACCESS_KEY_ID=fraud-{secrets.token_hex(6)}\n")
    f.write(f"AWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(30)}\n")
EOF
fi
if [[ ! -f "$REDIS_SECRET_FILE" ]]; then
  log "generating the Redis password in kustomize/base/secrets/redis.env"
  umask 077
  python3 - "$REDIS_SECRET_FILE" <<'EOF'
import secrets, sys
with open(sys.argv[1], "w") as f:
    # URL-safe characters only: the password travels in Feast's connection string.
    f.write(f"REDIS_PASSWORD={secrets.token_urlsafe(32)}\n")
EOF
fi

if [[ ! -f "$CONSOLE_SECRET_FILE" ]]; then
  log "generating the console's session secret and analyst in kustomize/base/secrets/console.env"
  umask 077
  password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
  # The console image hashes it (Argon2id, as the console verifies it).
  hash="$(printf '%s\n' "$password" | docker run --rm -i --entrypoint fraud \
    "fraud-platform/console:$TAG" console hash-password --password-stdin)"
  python3 - "$CONSOLE_SECRET_FILE" "$hash" <<'EOF'
import json, secrets, sys
with open(sys.argv[1], "w") as f:
    f.write(f"SESSION_SECRET={secrets.token_urlsafe(48)}\n")
    f.write(f"USERS={json.dumps({'analyst': sys.argv[2]})}\n")
EOF
  printf 'analyst\n%s\n' "$password" > "$CONSOLE_PASSWORD_FILE"
fi

log "applying kustomize/overlays/kind"
# A Job's pod template cannot change; drop the finished one-shot Jobs so that they run
# again with the new images and configuration.
kubectl -n fraud delete job create-buckets feast-apply --ignore-not-found
kubectl apply -k "$ROOT/kustomize/overlays/kind"

log "waiting for Kafka and the platform"
kubectl -n fraud wait kafka/fraud-kafka --for=condition=Ready --timeout=600s
kubectl -n fraud rollout status statefulset/redis --timeout=300s
kubectl -n fraud rollout status statefulset/minio --timeout=300s
for deployment in quality-gate archiver feature-job model-monitor console feast-server; do
  kubectl -n fraud rollout status "deployment/$deployment" --timeout=300s
done

cat <<'EOF'

Deployed. The predictor becomes ready once a model exists at s3://models/fraud/champion
(promoted by the training pipeline); until then its storage initializer retries.
  kubectl -n fraud get inferenceservice fraud
  kubectl -n fraud scale deployment/producer --replicas=1     # start the simulator
  curl -s localhost:30080/v2/health/ready                      # the transformer
  Kafka from the host: localhost:30092   MinIO console: http://localhost:30901
  Review console: kubectl -n fraud port-forward svc/console 8090, then http://localhost:8090
    (analyst and password: kustomize/base/secrets/console-analyst.txt)
EOF
