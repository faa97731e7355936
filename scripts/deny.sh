#!/usr/bin/env bash
# `make lint`'s dependency check: cargo-deny (installed once into the cache) on licenses (only
# those deny.toml allows), banned sources (crates.io only) and wildcard versions. Its advisories
# check needs the RustSec database from GitHub, which CI's machine cannot reach: run
# `cargo deny check advisories` where it can.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${WEIR_CACHE:-$HOME/.cache/weir}
VERSION=0.20.2
DENY=$CACHE/cargo-deny-$VERSION/bin/cargo-deny
[[ -x $DENY ]] || cargo install --locked --quiet --root "$CACHE/cargo-deny-$VERSION" "cargo-deny@$VERSION"
"$DENY" --offline check licenses bans sources
