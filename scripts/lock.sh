#!/usr/bin/env bash
# Regenerates requirements/constraints.txt, the pins that scripts/run.sh, scripts/test.sh, CI and
# images/Dockerfile install with (`pip install -c requirements/constraints.txt`), from
# pyproject.toml with every extra, using pip-tools in a throw-away virtual environment.
#
#   scripts/lock.sh              # after editing pyproject.toml: keeps the pins that still fit
#   scripts/lock.sh --upgrade    # the newest versions pyproject.toml allows (other pip-compile
#                                # options pass through too, e.g. --upgrade-package pytest)
#
# Resolves for the python3 that runs it (CI's is 3.11); commit the result with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_TOOLS=pip-tools==7.6.2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$PIP_TOOLS"
# The header of the file names this script as the command that made it.
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$WORK/venv/bin/pip-compile" --quiet --all-extras \
  --strip-extras --no-emit-index-url --no-emit-find-links \
  --output-file requirements/constraints.txt "$@" pyproject.toml
echo "requirements/constraints.txt: $(grep -c '==' requirements/constraints.txt) pins"
