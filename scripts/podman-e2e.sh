#!/usr/bin/env bash
# Builds every Darkroom image with podman, runs the six roles as containers on a podman
# network and walks an image through them, then removes the containers, network and volumes.
#
#   scripts/podman-e2e.sh                   # as root; prints PASS at the end, exits non-zero on failure
#
# 1. the base image: scripts/make-base-image.sh (Debian bookworm + python3, cached), or
#    DARKROOM_BASE=python:3.11-slim where images can be pulled;
# 2. images localhost/darkroom-ROLE:$DARKROOM_IMAGE_TAG (default e2e) from images/Dockerfile,
#    with this machine's pip index and CA bundle passed in as build args and a read-only mount;
# 3. containers named darkroom-e2e-ROLE on network darkroom-e2e: the registry with its file
#    backend, each role advertising its container name; read-only root filesystems, all
#    capabilities dropped; only the master and the frontend published, on 127.0.0.1;
# 4. the flow twice: the chart's smoke test (helm/darkroom/files/smoke_test.py) inside the
#    network, run in the frontend's container (podman exec), and curl from this machine through
#    the published port (POST /new, GET /isReady until 1, GET /get); both check every pixel is
#    (G, R, B) of the input, alpha kept. No container joins or leaves the network once the roles
#    run (see run_smoke_test).
#
# Bounded: DARKROOM_E2E_TIMEOUT seconds in all (default 900; a first run with debootstrap and
# cold pip downloads takes 3-5 minutes, a cached one about a minute). Images are kept as a
# cache; DARKROOM_E2E_KEEP=1 also keeps the containers running for a look.
set -euo pipefail
cd "$(dirname "$0")/.."

ROLES=(registry database storage master worker frontend)
declare -A PORTS=([registry]=3000 [database]=3001 [storage]=3002 [master]=3003 [worker]=9100 [frontend]=8080)
PREFIX=darkroom-e2e
NETWORK=$PREFIX
TAG=${DARKROOM_IMAGE_TAG:-e2e}
BUDGET=${DARKROOM_E2E_TIMEOUT:-900}
export CONTAINERS_CONF=${CONTAINERS_CONF:-/var/tmp/darkroom-containers.conf}
WORK=$(mktemp -d /tmp/darkroom-e2e.XXXXXX)

log() { printf '[podman-e2e %3ds] %s\n' "$SECONDS" "$*" >&2; }
FAILURE=""
fail() {
  FAILURE=$*
  log "FAILED: $*"
  exit 1
}
remaining() {
  local left=$((BUDGET - SECONDS))
  ((left > 0)) || fail "out of time (DARKROOM_E2E_TIMEOUT=$BUDGET s)"
  echo "$left"
}

remove_containers() {
  local role
  for role in "${ROLES[@]}"; do
    podman rm -f -t 5 "$PREFIX-$role" >/dev/null 2>&1 || true
  done
  for role in registry database storage; do
    podman volume rm -f "$PREFIX-$role" >/dev/null 2>&1 || true
  done
  podman network rm -f "$NETWORK" >/dev/null 2>&1 || true
}

cleanup() {
  local status=$?
  if ((status != 0)); then
    local role
    for role in "${ROLES[@]}"; do
      if podman container exists "$PREFIX-$role" 2>/dev/null; then
        echo "----- logs of $PREFIX-$role (last 40 lines)" >&2
        podman logs --tail 40 "$PREFIX-$role" >&2 2>&1 || true
      fi
    done
    # Again after the logs, so that the reason ends the output (callers show only its end).
    log "FAILED: ${FAILURE:-exit status $status}"
  fi
  if [[ ${DARKROOM_E2E_KEEP:-0} == 1 ]]; then
    log "keeping the containers (DARKROOM_E2E_KEEP=1); remove them with: podman rm -f \$(podman ps -aq --filter name=$PREFIX-)"
  else
    remove_containers
  fi
  rm -rf "$WORK"
}

# pip inside the build: the same index (and extra http(s) indexes) as this machine's pip, and
# its CA bundle, so builds work behind a proxy that intercepts TLS. Only as build args.
pip_build_args() {
  local index extra trusted cert
  index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
  extra=${PIP_EXTRA_INDEX_URL:-$(python3 -m pip config get global.extra-index-url 2>/dev/null || true)}
  trusted=${PIP_TRUSTED_HOST:-$(python3 -m pip config get global.trusted-host 2>/dev/null || true)}
  # file:// indexes are this machine's directories, which a build cannot see.
  extra=$(tr ' ' '\n' <<<"$extra" | grep -E '^https?://' | paste -sd' ' || true)
  [[ $index =~ ^https?:// ]] && BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$index")
  [[ -n $extra ]] && BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
  [[ -n $trusted ]] && BUILD_ARGS+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
  cert=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
  if [[ -s $cert ]]; then
    # Over the system bundle (which Debian's pip reads) and named by PIP_CERT (for any pip).
    BUILD_ARGS+=(-v "$cert:/etc/ssl/certs/ca-certificates.crt:ro"
      --build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
  fi
  return 0
}

build_images() {
  local base role
  if [[ -n ${DARKROOM_BASE:-} ]]; then
    base=$DARKROOM_BASE
  else
    base=$(timeout "$(remaining)" scripts/make-base-image.sh)
  fi
  BUILD_ARGS=(--build-arg "BASE=$base")
  pip_build_args
  for role in "${ROLES[@]}"; do
    log "building localhost/darkroom-$role:$TAG from $base"
    timeout "$(remaining)" podman build --quiet --layers -f images/Dockerfile --target "$role" \
      -t "localhost/darkroom-$role:$TAG" "${BUILD_ARGS[@]}" . >"$WORK/build-$role.log" 2>&1 \
      || { tail -n 40 "$WORK/build-$role.log" >&2; fail "building the $role image"; }
  done
}

start_role() {
  local role=$1
  shift
  local env=(
    -e "DARKROOM_PORT=${PORTS[$role]}"
    -e "DARKROOM_REGISTRY_ADDRESS=$PREFIX-registry:3000"
    -e "DARKROOM_INTERNAL_TOKEN=$TOKEN"
    -e "DARKROOM_LOG_LEVEL=INFO"
  )
  [[ $role != worker ]] && env+=(-e "DARKROOM_ADVERTISE_ADDRESS=$PREFIX-$role:${PORTS[$role]}")
  podman run -d --name "$PREFIX-$role" --hostname "$PREFIX-$role" --network "$NETWORK" \
    --read-only --tmpfs /tmp:rw,mode=1777 --cap-drop ALL --security-opt no-new-privileges \
    "${env[@]}" "$@" "localhost/darkroom-$role:$TAG" >/dev/null
}

# Asks a role's /readyz from inside its own container (no shell there, but Python).
ready_inside() {
  podman exec "$PREFIX-$1" python3 -c "import sys, urllib.request as u
try:
    u.urlopen('http://127.0.0.1:${PORTS[$1]}/readyz', timeout=3)
except Exception as e:
    sys.exit(str(e))" >/dev/null 2>&1
}

wait_ready() {
  local role deadline=$((SECONDS + ${1:-120}))
  for role in "${ROLES[@]}"; do
    until ready_inside "$role"; do
      [[ $(podman inspect -f '{{.State.Running}}' "$PREFIX-$role") == true ]] \
        || fail "$PREFIX-$role exited"
      ((SECONDS < deadline)) || fail "$PREFIX-$role not ready in time"
      remaining >/dev/null
      sleep 1
    done
    log "$role is ready"
  done
}

# The chart's smoke test as helm test runs it, from inside the network, but in a container that
# is already there (the frontend's, a client of the master's API) rather than a new one: a
# container joining or leaving the network makes aardvark-dns reload, and older ones (1.4 here;
# containers/aardvark-dns#389, fixed upstream in 2024) drop the queries that arrive meanwhile.
# The master resolves the database and the storage just then, for the smoke test's upload, and
# a lost query costs the resolver's 5 s timeout: POST /new took 10 s, once over the smoke
# test's 30 s, and the run failed.
run_smoke_test() {
  log "smoke test inside the network (as helm test runs it), in $PREFIX-frontend"
  timeout "$(remaining)" podman exec -i "$PREFIX-frontend" \
    python3 - "http://$PREFIX-master:3003" --timeout 90 <"$SMOKE" || fail "smoke test"
}

host_walkthrough() {
  local master=$1 frontend=$2 id ready="" deadline=$((SECONDS + 90))
  chmod 0777 "$WORK"
  podman run --rm --network none -v "$WORK:/work" -v "$SMOKE:/smoke_test.py:ro" \
    --entrypoint python3 "localhost/darkroom-master:$TAG" /smoke_test.py --write-sample /work/in.png
  log "curl walk-through against $master"
  curl -fsS --max-time 10 "$frontend/" -o "$WORK/page.html" || fail "the frontend's page"
  id=$(curl -fsS --max-time 30 -H 'Content-Type: image/png' --data-binary @"$WORK/in.png" "$master/new")
  [[ $id =~ ^[A-Za-z0-9_-]+$ ]] || fail "POST /new answered '$id'"
  while [[ $ready != 1 ]]; do
    ((SECONDS < deadline)) || fail "task $id not ready: $(curl -sS "$master/status?id=$id")"
    remaining >/dev/null
    sleep 0.5
    ready=$(curl -fsS --max-time 10 "$master/isReady?id=$id")
  done
  curl -fsS --max-time 30 -o "$WORK/out.png" "$master/get?id=$id"
  podman run --rm --network none -v "$WORK:/work:ro" -v "$SMOKE:/smoke_test.py:ro" \
    --entrypoint python3 "localhost/darkroom-master:$TAG" /smoke_test.py \
    --verify /work/in.png /work/out.png
}

main() {
  [[ $(id -u) == 0 ]] || fail "run as root (podman here is set up for root)"
  command -v curl >/dev/null || fail "curl is needed"
  SMOKE=$PWD/helm/darkroom/files/smoke_test.py
  trap cleanup EXIT
  build_images

  remove_containers # leftovers of an interrupted run
  TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
  podman network create "$NETWORK" >/dev/null
  local role
  for role in registry database storage; do
    podman volume create "$PREFIX-$role" >/dev/null
  done
  log "starting the containers"
  start_role registry -e DARKROOM_REGISTRY_BACKEND=file -v "$PREFIX-registry:/data"
  start_role database -v "$PREFIX-database:/data"
  start_role storage -v "$PREFIX-storage:/data"
  start_role master -p 127.0.0.1::3003
  start_role worker -e DARKROOM_CONCURRENCY=1
  start_role frontend -p 127.0.0.1::8080
  wait_ready 120

  run_smoke_test

  local master frontend
  master=http://$(podman port "$PREFIX-master" 3003/tcp)
  frontend=http://$(podman port "$PREFIX-frontend" 8080/tcp)
  [[ $master == http://127.0.0.1:* ]] || fail "master published on $master, not 127.0.0.1"
  host_walkthrough "$master" "$frontend"
  log "PASS: images built, six containers ran, both walk-throughs checked every pixel"
}

main "$@"
