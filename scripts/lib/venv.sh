# shellcheck shell=bash
# Sourced by scripts/run.sh and scripts/test.sh, from the checkout's root: the virtual environment
# both commands install into, and the pinned install.
#
# The venv is .venv in the checkout (DARKROOM_VENV to choose another), made with `python3 -m venv`
# when missing. Debian and Ubuntu refuse pip outside a venv (PEP 668) and ship the venv module
# as its own package, python3-venv: as root it is installed with apt-get when missing, otherwise
# the apt-get command to run is printed.

CONSTRAINTS=requirements/constraints.txt
VENV=${DARKROOM_VENV:-$PWD/.venv}

venv_log() { printf '[darkroom] %s\n' "$*" >&2; }
venv_fail() {
  venv_log "$*"
  exit 1
}

# Tries `python3 -m venv`; a failed attempt leaves a venv without pip, which is removed.
venv_try() {
  python3 -m venv "$VENV" >"$VENV.log" 2>&1 && rm -f "$VENV.log" && return 0
  rm -rf "$VENV"
  return 1
}

ensure_venv() {
  if [[ -x $VENV/bin/python ]]; then
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 \
      || venv_fail "$VENV has no pip: remove it (rm -rf $VENV) and run this again"
    return 0
  fi
  command -v python3 >/dev/null \
    || venv_fail "python3 is needed: sudo apt-get install python3 (Python 3.11 or newer)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || venv_fail "Python 3.11 or newer is needed; python3 is $(python3 -V 2>&1)"
  venv_log "making the virtual environment $VENV"
  venv_try && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    venv_log "python3 has no venv module: apt-get install python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    venv_try && return 0
  fi
  if grep -q ensurepip "$VENV.log"; then
    rm -f "$VENV.log"
    venv_fail "python3 cannot make a virtual environment; install its venv module, then run this again:
    sudo apt-get install python3-venv"
  fi
  cat "$VENV.log" >&2
  rm -f "$VENV.log"
  venv_fail "python3 -m venv $VENV failed"
}

# pip install into the venv with every version pinned by requirements/constraints.txt. Skipped
# when the same arguments were installed against the same pyproject.toml and constraints (a stamp
# in the venv), so a second run starts at once and needs no network.
pinned_install() {
  local key stamp=$VENV/.darkroom-installed
  key="$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16) $*"
  [[ -f $stamp ]] && grep -qxF -- "$key" "$stamp" && return 0
  venv_log "installing $* into $VENV (versions from $CONSTRAINTS)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@"
  echo "$key" >>"$stamp"
}
