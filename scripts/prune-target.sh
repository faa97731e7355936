#!/usr/bin/env bash
# Keeps the shared cargo target folder from filling the disk: every change of the workspace's
# crates (or of their features, or a build from another clone) leaves a new ~1.5 GB test binary
# next to the old ones, and cargo never removes them. Of the workspace's own artifacts untouched
# for two hours, only the newest of each (name, extension) is kept, and none untouched for a
# day; incremental caches untouched for a day go too. Third-party crates are kept; anything
# deleted that is still wanted is rebuilt.
set -euo pipefail
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
[[ -d $TARGET ]] || exit 0
for prof in debug release; do
  deps=$TARGET/$prof/deps
  [[ -d $deps ]] || continue
  # Newest first; an artifact is `<stem>-<16 hex digits><extension>`.
  find "$deps" -maxdepth 1 -type f -mmin +120 \
    \( -name 'weir_*' -o -name 'libweir_*' -o -name 'cli-*' -o -name 'worker_kafka-*' -o -name 'operator_k8s-*' \
       -o -name 'stack_*' -o -name 'checkpoint_s3-*' -o -name 'crdgen-*' -o -name 'latency-*' \
       -o -name 'node_agent-*' \) -printf '%T@ %p\n' |
    sort -rn |
    awk -v now="$(date +%s)" '
      BEGIN { hash = "-"; for (i = 0; i < 16; i++) hash = hash "[0-9a-f]" }
      {
        t = $1; path = substr($0, length($1) + 2)
        n = split(path, parts, "/"); f = parts[n]
        if (!match(f, hash)) next
        key = substr(f, 1, RSTART - 1) "|" substr(f, RSTART + RLENGTH)
        if (seen[key]++ || now - t > 86400) print path
      }' |
    while read -r old; do rm -f -- "$old"; done
  [[ -d $TARGET/$prof/incremental ]] && find "$TARGET/$prof/incremental" -mindepth 1 -maxdepth 1 -mtime +0 -exec rm -rf {} +
done
exit 0
