#!/usr/bin/env bash
# Makes a local Python base image for building the Darkroom images where none can be pulled.
#
#   scripts/make-base-image.sh            # prints the image name when done
#   scripts/make-base-image.sh --bare     # the same without Python: a fresh machine
#
# Debian bookworm (--variant=minbase) plus python3 and python3-venv (Python 3.11 at
# /usr/bin/python3), imported into podman as localhost/darkroom-base:bookworm. With --bare, the
# minbase alone, as localhost/darkroom-base:bookworm-bare: what tests/deploy/test_fresh_machine.py
# installs python3 into with apt and then runs the README's commands on. Build the images
# from it with `--build-arg BASE=localhost/darkroom-base:bookworm`; anyone who can pull images
# builds from the default python:3.11-slim instead and never needs this script.
#
# The root filesystem is cached as a tarball (/var/tmp by default), so a second run on the same
# machine imports in seconds without debootstrap. Also sets podman up for this machine (see
# podman_setup below): run as root. Other podman commands need the same configuration:
# `export CONTAINERS_CONF=/var/tmp/darkroom-containers.conf` (scripts/podman-e2e.sh does).
#
# Environment: DARKROOM_BASE_IMAGE (image name), DARKROOM_BASE_CACHE (tarball path),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), CONTAINERS_CONF (podman config file; by
# default one this script writes), DARKROOM_BASE_REBUILD=1 (ignore the image and the cache).
set -euo pipefail

FLAVOUR=bookworm
PACKAGES=python3,python3-venv
COMMAND='["python3"]'
if [[ ${1:-} == --bare ]]; then
  FLAVOUR=bookworm-bare
  PACKAGES=""
  COMMAND='["bash"]'
elif [[ -n ${1:-} ]]; then
  echo "usage: $0 [--bare]" >&2
  exit 2
fi
IMAGE=${DARKROOM_BASE_IMAGE:-localhost/darkroom-base:$FLAVOUR}
CACHE=${DARKROOM_BASE_CACHE:-/var/tmp/darkroom-base-$FLAVOUR.tar}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

log() { printf '[make-base-image] %s\n' "$*" >&2; }

# Podman on a fresh CI machine: runc as the OCI runtime and ulimits that fit the sandbox. Written
# to a file of our own, named by CONTAINERS_CONF, so /etc/containers stays untouched. A
# CONTAINERS_CONF set to another file is the caller's own configuration and used as it is.
DEFAULT_CONTAINERS_CONF=/var/tmp/darkroom-containers.conf
podman_setup() {
  if [[ -z ${CONTAINERS_CONF:-} || ${CONTAINERS_CONF} == "$DEFAULT_CONTAINERS_CONF" ]]; then
    export CONTAINERS_CONF=$DEFAULT_CONTAINERS_CONF
    cat >"$CONTAINERS_CONF.tmp" <<'CONF'
# Written by darkroom scripts/make-base-image.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
    mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
  fi
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

make_rootfs_tarball() {
  local root
  root=$(mktemp -d /var/tmp/darkroom-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  log "debootstrap --variant=minbase $SUITE (${PACKAGES:-nothing more}) from $MIRROR; takes a few minutes"
  debootstrap --variant=minbase ${PACKAGES:+--include="$PACKAGES"} "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; return 1; }
  rm -f "$root.log"
  # What an image does not need: package caches and lists, docs, man pages, locales.
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/tmp/* "$root"/root/.cache
  # debootstrap copies the host's resolver settings; the container runtime provides its own.
  : >"$root/etc/resolv.conf"
  mkdir -p "$(dirname "$CACHE")"
  tar --numeric-owner -C "$root" -cf "$CACHE.tmp" .
  mv "$CACHE.tmp" "$CACHE"
  log "cached the root filesystem at $CACHE ($(du -h "$CACHE" | cut -f1))"
}

main() {
  podman_setup
  if [[ ${DARKROOM_BASE_REBUILD:-0} == 1 ]]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    rm -f "$CACHE"
  fi
  if podman image exists "$IMAGE"; then
    log "$IMAGE exists"
  else
    [[ -s $CACHE ]] || make_rootfs_tarball
    log "importing $CACHE as $IMAGE"
    podman import --quiet \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change "CMD $COMMAND" \
      "$CACHE" "$IMAGE" >/dev/null
  fi
  echo "$IMAGE"
}

main "$@"
