#!/usr/bin/env bash
# Schemathesis (PyPI), for the property tests of the operator's REST API against its OpenAPI
# document, in a virtual environment of its own.
# Usage: schemathesis.sh install | schemathesis.sh run ARGS (a schemathesis command line)
source "$(dirname "$0")/lib.sh"
SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
VENV=$WEIR_CACHE/schemathesis-$SCHEMATHESIS_VERSION

install() {
  [[ -x $VENV/bin/schemathesis ]] && return 0
  log "installing Schemathesis $SCHEMATHESIS_VERSION from PyPI"
  rm -rf "$VENV"
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" \
    || { rm -rf "$VENV"; die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"; }
}

case "${1:-}" in
  install) install ;;
  run)
    shift
    [[ -x $VENV/bin/schemathesis ]] || die "$VENV/bin/schemathesis is missing; run e2e/stack/schemathesis.sh install"
    exec "$VENV/bin/schemathesis" "$@" ;;
  *) die "usage: schemathesis.sh install | schemathesis.sh run ARGS" ;;
esac
