#!/usr/bin/env bash
# The worker and operator images as OCI archives, without a container engine or a registry
# (`make images`): each holds its program (debug sections stripped), the libraries it links, CA
# certificates and a non-root user, nothing else (scripts/oci_image.py). Then each is checked:
# the operator prints its version, and the worker runs a small job as the image's user, writing
# its results into the image's state folder.
# Env: WEIR_IMAGE_PROFILE (release, default, or debug: the binaries of that cargo profile),
# WEIR_IMAGE_OUT (default out/images), WEIR_IMAGE_TAG (default: the workspace version).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${WEIR_IMAGE_PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}/$PROFILE
OUT=${WEIR_IMAGE_OUT:-out/images}
TAG=${WEIR_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
for b in weir-worker weir-operator; do
  [[ -x $BIN/$b ]] || { echo "[images] $BIN/$b is missing; run make ${PROFILE/debug/build}" >&2; exit 1; }
done
# Debug builds are checked, not shipped: no compression saves a minute on the worker's layer.
level=6; [[ $PROFILE == debug ]] && level=1
python3 scripts/oci_image.py build --program "$BIN/weir-worker" --name weir-worker --tag "$TAG" --cmd pod \
  --dir /etc/weir --writable /var/lib/weir --compression $level --out "$OUT/weir-worker-$TAG.oci.tar"
python3 scripts/oci_image.py build --program "$BIN/weir-operator" --name weir-operator --tag "$TAG" \
  --compression $level --out "$OUT/weir-operator-$TAG.oci.tar"

python3 scripts/oci_image.py check "$OUT/weir-operator-$TAG.oci.tar" -- --version
job=$(mktemp)
trap 'rm -f "$job"' EXIT
cat >"$job" <<'YAML'
metadata: {name: image-check}
spec:
  pipeline:
    sources:
      payments:
        datagen: {kind: payments, count: 2000, seed: 1, keys: 100, startTime: 1795564800000, eventRate: 100}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams:
      per_card_minute:
        from: payments
        keyBy: [card_id]
        window: {tumbling: 1m}
        aggregate: {"n": "count(*)", total: "sum(amount)"}
    sinks:
      out: {from: per_card_minute, file: {path: /var/lib/weir/out.jsonl}}
YAML
python3 scripts/oci_image.py check --copy "$job:/etc/weir/job.yaml" --expect /var/lib/weir/out.jsonl \
  "$OUT/weir-worker-$TAG.oci.tar" -- run -f /etc/weir/job.yaml --state-dir /var/lib/weir/state
echo "[images] $OUT/weir-worker-$TAG.oci.tar and $OUT/weir-operator-$TAG.oci.tar built and checked"
