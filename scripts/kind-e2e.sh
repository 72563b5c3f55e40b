#!/usr/bin/env bash
# The whole Kubernetes path on a throwaway kind cluster, for machines with docker and kind:
# create the cluster, build and load the six images, `helm install --wait`, `helm test`, then
# the curl walk-through of docs/kubernetes.md through a port-forward, and delete the cluster.
#
#   scripts/kind-e2e.sh            # ~5-10 minutes; exits non-zero on the first failure
#   scripts/kind-e2e.sh --keep     # leave the cluster (kind delete cluster --name darkroom-e2e)
#
# Needs docker, kind, kubectl, helm 3 and curl. Environment: KIND_CLUSTER (default
# darkroom-e2e), DARKROOM_IMAGE_TAG (default kind), DARKROOM_BASE (build arg BASE, default the
# Dockerfile's python:3.11-slim), KIND_NODE_IMAGE (e.g. kindest/node:v1.23.17 to try the
# oldest supported Kubernetes).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-darkroom-e2e}
TAG=${DARKROOM_IMAGE_TAG:-kind}
NAMESPACE=darkroom
RELEASE=darkroom
ROLES=(registry database storage master worker frontend)
KEEP=0
for arg in "$@"; do
  case $arg in
    --keep) KEEP=1 ;;
    -h | --help)
      sed -n '2,13p' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

log() { printf '[kind-e2e %4ds] %s\n' "$SECONDS" "$*" >&2; }
[[ -x .venv/bin/helm ]] && export PATH=$PWD/.venv/bin:$PATH # scripts/install-helm.sh's
for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || {
    hint=""
    [[ $tool == helm ]] && hint=" (scripts/install-helm.sh installs it into .venv/bin)"
    log "$tool is needed$hint"
    exit 1
  }
done

WORK=$(mktemp -d)
FORWARD_PID=""
cleanup() {
  local status=$?
  [[ -n $FORWARD_PID ]] && kill "$FORWARD_PID" 2>/dev/null
  if ((status != 0)); then
    kubectl --context "kind-$CLUSTER" -n "$NAMESPACE" get pods -o wide >&2 || true
    kubectl --context "kind-$CLUSTER" -n "$NAMESPACE" logs -l app.kubernetes.io/instance=$RELEASE \
      --all-containers --tail 30 --prefix >&2 || true
  fi
  if ((KEEP)); then
    log "keeping cluster $CLUSTER (kubectl context kind-$CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
export KUBECONFIG="$WORK/kubeconfig"
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"

build_args=()
[[ -n ${DARKROOM_BASE:-} ]] && build_args+=(--build-arg "BASE=$DARKROOM_BASE")
for role in "${ROLES[@]}"; do
  log "building and loading darkroom-$role:$TAG"
  docker build --quiet -f images/Dockerfile --target "$role" -t "darkroom-$role:$TAG" \
    "${build_args[@]}" . >/dev/null
  kind load docker-image "darkroom-$role:$TAG" --name "$CLUSTER" >/dev/null
done

log "installing the chart into namespace $NAMESPACE (Pod Security: restricted)"
kubectl create namespace "$NAMESPACE"
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted
helm install "$RELEASE" helm/darkroom -n "$NAMESPACE" --set image.tag="$TAG" \
  --wait --timeout 5m

# Twice: the test pod is kept for --logs to read, and the second run must replace it
# (hook-delete-policy before-hook-creation) rather than fail on a pod that already exists.
for run in 1 2; do
  log "helm test --logs ($run of 2)"
  helm test "$RELEASE" -n "$NAMESPACE" --logs --timeout 5m
done

log "curl walk-through through a port-forward"
kubectl -n "$NAMESPACE" port-forward svc/$RELEASE-master 13003:3003 >"$WORK/forward.log" 2>&1 &
FORWARD_PID=$!
for _ in $(seq 30); do
  curl -fsS -o /dev/null http://127.0.0.1:13003/healthz 2>/dev/null && break
  sleep 1
done
chmod 0777 "$WORK"
docker run --rm -v "$WORK:/work" -v "$PWD/helm/darkroom/files:/smoke:ro" \
  --entrypoint python3 "darkroom-master:$TAG" /smoke/smoke_test.py --write-sample /work/in.png
id=$(curl -fsS -H 'Content-Type: image/png' --data-binary @"$WORK/in.png" http://127.0.0.1:13003/new)
log "task $id"
for _ in $(seq 120); do
  [[ $(curl -fsS "http://127.0.0.1:13003/isReady?id=$id") == 1 ]] && break
  sleep 1
done
curl -fsS "http://127.0.0.1:13003/status?id=$id" && echo
curl -fsS -o "$WORK/out.png" "http://127.0.0.1:13003/get?id=$id"
docker run --rm -v "$WORK:/work:ro" -v "$PWD/helm/darkroom/files:/smoke:ro" \
  --entrypoint python3 "darkroom-master:$TAG" /smoke/smoke_test.py --verify /work/in.png /work/out.png

log "PASS"
