#!/usr/bin/env bash
# Keeps the shared cargo target folder from filling the disk: every change of the workspace's
# crates (or of their features) leaves a new ~1.5 GB test binary next to the old ones, and cargo
# never removes them. Deletes the workspace's own artifacts and incremental caches not touched
# for a day (third-party crates are kept; anything deleted that is still wanted is rebuilt).
set -euo pipefail
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
[[ -d $TARGET ]] || exit 0
for prof in debug release; do
  [[ -d $TARGET/$prof/deps ]] || continue
  find "$TARGET/$prof/deps" -maxdepth 1 -type f -mtime +0 \
    \( -name 'weir_*' -o -name 'libweir_*' -o -name 'cli-*' -o -name 'worker_kafka-*' -o -name 'operator_k8s-*' \
       -o -name 'stack_*' -o -name 'checkpoint_s3-*' -o -name 'crdgen-*' -o -name 'latency-*' \) -delete
  [[ -d $TARGET/$prof/incremental ]] && find "$TARGET/$prof/incremental" -mindepth 1 -maxdepth 1 -mtime +0 -exec rm -rf {} +
done
exit 0
