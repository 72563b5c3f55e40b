#!/usr/bin/env bash
# Installs what the tests need, then runs the linters and the whole test suite.
# Usage: scripts/test.sh [pytest args...]
#   DARKROOM_CONTAINER_TESTS=1  also build the images with podman and run the flow in containers
#   DARKROOM_BROWSER_TESTS=0    skip the headless-Chromium tests (they need apt's chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# System packages: Chromium for the browser tests, podman for the container tests.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  packages=()
  [ "${DARKROOM_BROWSER_TESTS:-1}" = 1 ] && ! command -v chromium >/dev/null && packages+=(chromium chromium-driver)
  [ "${DARKROOM_CONTAINER_TESTS:-0}" = 1 ] && ! command -v podman >/dev/null \
    && packages+=(podman buildah debootstrap uidmap slirp4netns fuse-overlayfs)
  if [ ${#packages[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
fi

# Helm 3 for the chart tests; the project's shared tool installs it where no package exists.
if ! command -v helm >/dev/null && [ -x ../shared/tools/install-helm ]; then
  ../shared/tools/install-helm
fi

python3 -m ruff check .
python3 -m ruff format --check .
PYTHONPATH=services lint-imports --no-cache  # the import contracts in pyproject.toml
python3 -m pytest "$@"
