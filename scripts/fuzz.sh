#!/usr/bin/env bash
# `make fuzz`: each fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS (default 600) under
# libFuzzer with AddressSanitizer (cargo-fuzz, nightly toolchain), its corpus seeded with the
# repository's example manifests and data. A crash, overflow or hang fails the run; its input is left in
# fuzz/artifacts/<target>/ to be fixed and kept as a regression test.
# Env: FUZZ_SECONDS, FUZZ_TARGETS (default: every target).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${WEIR_CACHE:-$HOME/.cache/weir}
SECONDS_EACH=${FUZZ_SECONDS:-600}
export CARGO_TARGET_DIR=$CACHE/fuzz-target
rustup toolchain list | grep -q '^nightly' || { echo "[fuzz] needs the nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
FUZZ=$CACHE/cargo-fuzz/bin/cargo-fuzz
[[ -x $FUZZ ]] || cargo install --locked --root "$CACHE/cargo-fuzz" cargo-fuzz
TARGETS=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^weir-fuzz$')}
for t in $TARGETS; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus"
  case $t in
    manifest) cp examples/*.yaml operator/fixtures/*.streamjob.yaml "$corpus/" ;;
    json_decoder) cp examples/data/*.jsonl "$corpus/" ;;
    checkpoint_manifest) cp fuzz/seeds/checkpoint_manifest/* "$corpus/" ;;
  esac
  echo "[fuzz] $t for ${SECONDS_EACH}s"
  (cd fuzz && PATH=$(dirname "$FUZZ"):$PATH cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10)
done
echo "[fuzz] no crash in: $TARGETS"
