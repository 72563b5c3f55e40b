#!/usr/bin/env bash
# The README's first command: installs Darkroom and its pinned dependencies into a virtual
# environment (.venv in the checkout, made when missing; see scripts/lib/venv.sh), then runs the
# whole system on 127.0.0.1 with `darkroom up`. Ctrl-C stops it.
#
#   scripts/run.sh [darkroom up options...]     # e.g. --master-port 4003; --help lists them
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/venv.sh
source scripts/lib/venv.sh

ensure_venv
pinned_install -e .
exec "$VENV/bin/darkroom" up "$@"
