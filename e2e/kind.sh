#!/usr/bin/env bash
# The e2e scenario on kind: build the image, load it, helm install the chart (mesh.mode=gateway),
# run e2e/incluster.py as a Job in the cluster. Needs docker, kind, kubectl and helm on PATH.
#
#   bash e2e/kind.sh                 # KEEP_CLUSTER=1 keeps the cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-callwarden-e2e}"
IMAGE="callwarden:e2e"
KUBECTL=(kubectl --context "kind-${CLUSTER}")

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e/kind.sh: $tool is not on PATH" >&2; exit 2; }
done

cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then kind delete cluster --name "$CLUSTER" || true; fi
}
trap cleanup EXIT

if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s
fi

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

helm upgrade --install callwarden charts/callwarden --kube-context "kind-${CLUSTER}" \
  --namespace callwarden-system --create-namespace \
  --values e2e/kind/values.yaml --wait --timeout 5m

"${KUBECTL[@]}" create namespace board-packet --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
"${KUBECTL[@]}" -n board-packet create configmap e2e-code \
  --from-file=e2e/__init__.py --from-file=e2e/scenario.py --from-file=e2e/incluster.py \
  --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
"${KUBECTL[@]}" -n board-packet create configmap e2e-example \
  --from-file=examples/board-packet/servers.yaml --from-file=examples/board-packet/policies.yaml \
  --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
"${KUBECTL[@]}" -n board-packet delete job e2e --ignore-not-found
"${KUBECTL[@]}" apply -f e2e/kind/runner.yaml

# Wait for the Job to succeed or fail (kubectl wait cannot wait for either).
for _ in $(seq 1 180); do
  succeeded="$("${KUBECTL[@]}" -n board-packet get job e2e -o jsonpath='{.status.succeeded}')"
  failed="$("${KUBECTL[@]}" -n board-packet get job e2e -o jsonpath='{.status.failed}')"
  [[ -n "$succeeded" || -n "$failed" ]] && break
  sleep 5
done
"${KUBECTL[@]}" -n board-packet logs job/e2e || true
"${KUBECTL[@]}" get mcpservers,toolpolicies -n board-packet || true
if [[ "${succeeded:-}" != 1 ]]; then
  echo "e2e/kind.sh: the scenario failed; operator and ext_authz logs follow" >&2
  "${KUBECTL[@]}" -n callwarden-system logs -l app.kubernetes.io/component=operator --tail=100 --prefix || true
  "${KUBECTL[@]}" -n callwarden-system logs -l app.kubernetes.io/component=extauthz --tail=100 --prefix || true
  "${KUBECTL[@]}" -n callwarden-system logs -l app.kubernetes.io/component=gateway --tail=50 --prefix || true
  exit 1
fi
echo "e2e/kind.sh: passed"
