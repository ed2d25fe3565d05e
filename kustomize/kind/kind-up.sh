#!/usr/bin/env bash
# Creates a local kind cluster for the fraud platform and installs, at pinned versions,
# everything the manifests in kustomize/ rely on:
#   cert-manager, KServe (Standard mode, i.e. plain Deployments; called RawDeployment
#   before KServe 0.16), Knative Eventing with the Kafka source and sink
#   (eventing-kafka-broker), the Strimzi operator, and kube-prometheus-stack (Prometheus
#   operator, Prometheus, Grafana with its dashboard sidecar).
#
# Requires: docker, kind, kubectl, helm (3.x), python3. Then run kind-deploy.sh.
#   CLUSTER_NAME=other kustomize/kind/kind-up.sh     (default: fraud-platform)
set -euo pipefail

# ---- Pinned versions: the only place they are set ------------------------------------
KIND_VERSION=v0.30.0
# The node image built by that kind release for Kubernetes 1.34 (the version the
# manifests are validated against), pinned by digest as kind's release notes advise.
# Knative 1.23's controllers refuse to start below Kubernetes 1.34 (knative.dev/pkg's
# minimum version check); tests/unit/test_cluster_versions.py keeps the two in step.
KIND_NODE_IMAGE=kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a
CERT_MANAGER_VERSION=v1.18.2
# The release of the kserve SDK in requirements.lock: the transformer and predictor images
# are built on that SDK, and the controller must speak the same InferenceService contract.
KSERVE_VERSION=v0.21.0
KNATIVE_EVENTING_VERSION=knative-v1.23.0
# eventing-kafka-broker ships KafkaSource and KafkaSink; same release line as Eventing.
KNATIVE_KAFKA_VERSION=knative-v1.23.0
STRIMZI_VERSION=0.49.1
# Chart 82.15.1 deploys Prometheus operator v0.89.0.
KUBE_PROMETHEUS_STACK_VERSION=82.15.1
# ---------------------------------------------------------------------------------------

CLUSTER_NAME="${CLUSTER_NAME:-fraud-platform}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

CERT_MANAGER_URL="https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
KSERVE_URL="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}"
EVENTING_URL="https://github.com/knative/eventing/releases/download/${KNATIVE_EVENTING_VERSION}"
EVENTING_KAFKA_URL="https://github.com/knative-extensions/eventing-kafka-broker/releases/download/${KNATIVE_KAFKA_VERSION}"
STRIMZI_CHART_URL="https://github.com/strimzi/strimzi-kafka-operator/releases/download/${STRIMZI_VERSION}/strimzi-kafka-operator-helm-3-chart-${STRIMZI_VERSION}.tgz"
KPS_CHART_URL="https://github.com/prometheus-community/helm-charts/releases/download/kube-prometheus-stack-${KUBE_PROMETHEUS_STACK_VERSION}/kube-prometheus-stack-${KUBE_PROMETHEUS_STACK_VERSION}.tgz"

log() { printf '\n== %s\n' "$*"; }
die() { echo "kind-up.sh: $*" >&2; exit 1; }

for tool in docker kind kubectl helm python3; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
installed_kind="$(kind version | awk '{print $2}')"
if [[ "$installed_kind" != "$KIND_VERSION" ]]; then
  echo "warning: kind $installed_kind found, the node image is pinned for kind $KIND_VERSION" >&2
fi

wait_deployments() { # namespace [timeout]
  kubectl -n "$1" wait deployment --all --for=condition=Available --timeout="${2:-300s}"
}

log "kind cluster '$CLUSTER_NAME' (Kubernetes from $KIND_NODE_IMAGE)"
if kind get clusters | grep -qx "$CLUSTER_NAME"; then
  echo "exists; reusing it"
else
  kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
    --config "$HERE/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null

log "cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "$CERT_MANAGER_URL"
wait_deployments cert-manager

log "kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION (Prometheus operator, Prometheus, Grafana)"
# Select every ServiceMonitor/PodMonitor/PrometheusRule in the cluster (not only the
# chart's own), and load dashboards from ConfigMaps labelled grafana_dashboard=1 in any
# namespace.
values="$(mktemp)"
trap 'rm -f "$values"' EXIT
cat > "$values" <<EOF
prometheus:
  service:
    type: NodePort
    nodePort: 30090
  prometheusSpec:
    serviceMonitorSelectorNilUsesHelmValues: false
    podMonitorSelectorNilUsesHelmValues: false
    ruleSelectorNilUsesHelmValues: false
    retention: 2d
grafana:
  adminPassword: "$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
  service:
    type: NodePort
    nodePort: 30300
  sidecar:
    dashboards:
      enabled: true
      label: grafana_dashboard
      labelValue: "1"
      searchNamespace: ALL
      folderAnnotation: grafana_folder
      provider:
        foldersFromFilesStructure: true
nodeExporter:
  enabled: false
EOF
helm upgrade --install kube-prometheus-stack "$KPS_CHART_URL" \
  --namespace monitoring --create-namespace --values "$values" --wait --timeout 10m

log "Strimzi $STRIMZI_VERSION (watching all namespaces)"
helm upgrade --install strimzi-cluster-operator "$STRIMZI_CHART_URL" \
  --namespace strimzi --create-namespace --set watchAnyNamespace=true --wait --timeout 10m

log "Knative Eventing $KNATIVE_EVENTING_VERSION"
kubectl apply -f "$EVENTING_URL/eventing-crds.yaml"
kubectl wait crd --all --for=condition=Established --timeout=120s
kubectl apply -f "$EVENTING_URL/eventing-core.yaml"
wait_deployments knative-eventing

log "Knative Kafka source and sink $KNATIVE_KAFKA_VERSION"
kubectl apply -f "$EVENTING_KAFKA_URL/eventing-kafka-controller.yaml"
kubectl apply -f "$EVENTING_KAFKA_URL/eventing-kafka-source.yaml"
kubectl apply -f "$EVENTING_KAFKA_URL/eventing-kafka-sink.yaml"
wait_deployments knative-eventing

log "KServe $KSERVE_VERSION (Standard deployment mode)"
# The InferenceService CRD is too large for client-side apply.
kubectl apply --server-side --force-conflicts -f "$KSERVE_URL/kserve.yaml"
kubectl -n kserve rollout status deployment/kserve-controller-manager --timeout=300s
kubectl apply --server-side --force-conflicts -f "$KSERVE_URL/kserve-cluster-resources.yaml"
# Default to Standard mode (no Knative Serving on kind) and create no Ingress (the kind
# overlay exposes the transformer with a NodePort instead).
patch="$(kubectl -n kserve get configmap inferenceservice-config -o json | python3 -c '
import json, sys
data = json.load(sys.stdin)["data"]
deploy = json.loads(data.get("deploy") or "{}")
deploy["defaultDeploymentMode"] = "Standard"
ingress = json.loads(data.get("ingress") or "{}")
ingress["disableIngressCreation"] = True
print(json.dumps({"data": {"deploy": json.dumps(deploy, indent=2), "ingress": json.dumps(ingress, indent=2)}}))
')"
kubectl -n kserve patch configmap inferenceservice-config --type merge --patch "$patch"
kubectl -n kserve rollout restart deployment kserve-controller-manager
kubectl -n kserve rollout status deployment kserve-controller-manager --timeout=300s

log "ready"
cat <<EOF
Cluster '$CLUSTER_NAME' is up with its operators. Next:
  kustomize/kind/kind-deploy.sh
Grafana:    http://localhost:30300  (user admin; password:
            kubectl -n monitoring get secret kube-prometheus-stack-grafana -o jsonpath='{.data.admin-password}' | base64 -d)
Prometheus: http://localhost:30090
EOF
