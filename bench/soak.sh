#!/usr/bin/env bash
# `make soak` (not in CI): a long run at a steady share of capacity, to show that memory, open
# files and state stay bounded and latency stays flat, through periodic checkpoints and one
# rescale.
#
# An exactly-once job (results every 100 ms, checkpoints every 30 s to a folder) reads payments
# from a 4-partition topic: a filter and projection (whose results carry the send time, for the
# end-to-end latency) and per-card 1-minute windows (state that grows and is dropped as windows
# fire). Two workers in Pod mode run it. Their capacity is measured first (the workers' own
# `weir_capacity_records_per_second` under a warm-up load), then weir-latency produces at
# SOAK_LOAD of it for SOAK_MINUTES, one latency measurement a minute; halfway, the job is
# rescaled 2 -> 3 workers as the operator does it (all stopped with SIGTERM, the new count
# restoring from the checkpoints). Every 10 s each worker's RSS and open files, the state size
# and the lag are sampled.
#
# Writes bench/results/soak-DATE.tsv (samples), soak-DATE-latency.tsv (per minute) and
# soak-DATE.png (with matplotlib, bench/compare/install.sh), and fails when the workers' RSS in
# the last quarter is over 25 % above that of the quarter before the rescale (a leak).
# The workers' capacity figure (processed rate / busy ratio) varies from run to run at a light
# warm-up load (53,000 and 149,000 events/s on the same machine); SOAK_RATE, a share of a rate
# the machine was seen to sustain, is steadier (docs/benchmarks.md, "Soak").
# Env: SOAK_MINUTES (60), SOAK_LOAD (0.7), SOAK_RATE (events/s; skips the capacity measurement).
set -euo pipefail
source "$(dirname "$0")/../e2e/stack/lib.sh"
BIN=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/release
WORKER=$BIN/weir-worker
LATENCY=$BIN/weir-latency
[[ -x $WORKER && -x $LATENCY ]] || die "$WORKER or $LATENCY is missing; run make release"
port_open "$KAFKA_PORT" || die "Kafka is not running; make stack-up"
BROKERS=127.0.0.1:$KAFKA_PORT
MINUTES=${SOAK_MINUTES:-60}
LOAD=${SOAK_LOAD:-0.7}
PARTITIONS=4
RUN=$(date +%s)
DAY=$(date -u +%F)
RESULTS=$(cd "$(dirname "$0")" && pwd)/results
SAMPLES=$RESULTS/soak-$DAY.tsv
LAT=$RESULTS/soak-$DAY-latency.tsv
WORK=$(mktemp -d -p "$WEIR_CACHE" soak.XXXXXX)
IN=soak-in-$RUN
OUT=soak-out-$RUN
WINDOWS=soak-windows-$RUN
declare -A PIDS=()
SAMPLER=
cleanup() {
  [[ -z $SAMPLER ]] || kill "$SAMPLER" 2>/dev/null || true
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for t in "$IN" "$OUT" "$WINDOWS"; do "$STACK_DIR/kafka.sh" topics --delete --topic "$t" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# At ~50 MB/s of input, the topics keep 1 GiB a partition (128 MiB segments), not a week: an
# hour of it would fill the disk.
for t in "$IN" "$OUT" "$WINDOWS"; do
  "$STACK_DIR/kafka.sh" topics --create --topic "$t" --partitions $PARTITIONS \
    --config retention.bytes=1073741824 --config segment.bytes=134217728 >/dev/null
done

cat >"$WORK/job.yaml" <<YAML
metadata: {name: soak-$RUN}
spec:
  delivery: exactly-once
  epochInterval: 100ms
  checkpointing: {interval: 30s, storage: "file://$WORK/checkpoints", retained: 2}
  pipeline:
    sources:
      payments:
        kafka: {brokers: "$BROKERS", topic: $IN, startFrom: earliest}
        schema: {id: string, card_id: string, amount: double, status: string, ts: timestamp, sent_ms: long}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams:
      approved: {from: payments, where: "status = 'approved'", select: {id: id, card_id: card_id, sent_ms: sent_ms}}
      per_card:
        from: payments
        keyBy: [card_id]
        window: {tumbling: 1m}
        aggregate: {"n": "count(*)", total: "sum(amount)"}
    sinks:
      out: {from: approved, kafka: {brokers: "$BROKERS", topic: $OUT}}
      windows: {from: per_card, kafka: {brokers: "$BROKERS", topic: $WINDOWS}}
YAML

PORT_BASE=$((20000 + RANDOM % 20000))
port() { echo $((PORT_BASE + $1)); }
metric() { # ORDINAL NAME -> the sum of its samples, 0 when unanswered
  { curl -fsS "http://127.0.0.1:$(port "$1")/metrics" 2>/dev/null || true; } |
    awk -v m="$2" '{ n = $1; sub(/\{.*/, "", n) } n == m {s += $2} END {printf "%.0f\n", s}'
}
total() { local i s=0; for i in "${!PIDS[@]}"; do s=$((s + $(metric "$i" "$1"))); done; echo $s; }
GEN=0
start() { # N workers, each on a new state folder (a new Pod)
  local i
  GEN=$((GEN + 1))
  for ((i = 0; i < $1; i++)); do
    WEIR_ORDINAL=$i WEIR_PARALLELISM=$1 WEIR_CONFIG=$WORK/job.yaml WEIR_STATE_DIR=$WORK/state-$GEN-$i \
      WEIR_ADMIN_ADDR=127.0.0.1:$(port "$i") WEIR_STATE_MEMORY_MIB=256 "$WORKER" pod >>"$WORK/worker-$GEN-$i.log" 2>&1 &
    PIDS[$i]=$!
  done
  for ((i = 0; i < $1; i++)); do
    until curl -fsS "http://127.0.0.1:$(port "$i")/readyz" >/dev/null 2>&1; do
      kill -0 "${PIDS[$i]}" 2>/dev/null || { tail -20 "$WORK/worker-$GEN-$i.log"; die "worker $i stopped"; }
      sleep 0.2
    done
  done
}
stop_all() { # SIGTERM: each commits, checkpoints and exits
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p"; done
  for p in "${PIDS[@]}"; do wait "$p" || die "a worker failed to stop cleanly; see $WORK"; done
  PIDS=()
}
latency() { # RATE SECONDS -> weir-latency's line
  "$LATENCY" --brokers "$BROKERS" --input "$IN" --output "$OUT" --output-partitions $PARTITIONS \
    --rate "$1" --seconds "$2" 2>>"$WORK/latency.log"
}

start 2
if [[ -n ${SOAK_RATE:-} ]]; then
  rate=$SOAK_RATE
else
  log "measuring capacity: 60 s at 20,000 events/s"
  latency 20000 60 >/dev/null
  capacity=$(total weir_capacity_records_per_second)
  ((capacity > 0)) || die "the workers report no capacity; see $WORK"
  rate=$(awk -v c="$capacity" -v l="$LOAD" 'BEGIN { printf "%d", c * l / 1000 * 1000 }')
  log "capacity $capacity events/s: soaking at $rate events/s ($LOAD)"
fi

printf 'seconds\tworkers\trss_mib\topen_files\tstate_mib\tlag\tcheckpoints\n' >"$SAMPLES"
printf 'minute\trate\tp50_ms\tp90_ms\tp99_ms\tmax_ms\n' >"$LAT"
T0=$(date +%s)
sample() {
  while true; do
    local rss=0 fds=0 i p
    for i in "${!PIDS[@]}"; do
      p=${PIDS[$i]}
      rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
      fds=$((fds + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
    done
    printf '%d\t%d\t%d\t%d\t%d\t%d\t%d\n' $(($(date +%s) - T0)) ${#PIDS[@]} $((rss / 1024)) "$fds" \
      $(($(total weir_state_size_bytes) / 1048576)) "$(total weir_consumer_lag)" \
      "$(total weir_checkpoints_total)" >>"$SAMPLES"
    sleep 10
  done
}
sample &
SAMPLER=$!
for ((m = 1; m <= MINUTES; m++)); do
  if ((m == MINUTES / 2 + 1)); then
    log "minute $m: rescaling 2 -> 3 workers"
    kill "$SAMPLER"; wait "$SAMPLER" 2>/dev/null || true
    stop_all
    start 3
    sample &
    SAMPLER=$!
  fi
  line=$(latency "$rate" 55) || line=
  read -r p50 p90 p99 max < <(sed -E 's/.*p50 ([0-9]+) ms  p90 ([0-9]+) ms  p99 ([0-9]+) ms  max ([0-9]+) ms/\1 \2 \3 \4/' <<<"$line")
  printf '%d\t%d\t%s\t%s\t%s\t%s\n' "$m" "$rate" "${p50:-}" "${p90:-}" "${p99:-}" "${max:-}" >>"$LAT"
  log "minute $m/$MINUTES: p50 ${p50:-?} ms, p99 ${p99:-?} ms; $(tail -1 "$SAMPLES" | awk -F'\t' '{printf "RSS %d MiB, %d open files, state %d MiB, lag %d", $3, $4, $5, $6}')"
done
kill "$SAMPLER"; wait "$SAMPLER" 2>/dev/null || true
SAMPLER=

PY=python3
[[ -x $WEIR_CACHE/venv-bench/bin/python ]] && PY=$WEIR_CACHE/venv-bench/bin/python
"$PY" - "$SAMPLES" "$LAT" "$RESULTS/soak-$DAY.png" "$MINUTES" <<'PY' || exit 1
import csv, subprocess, sys
samples, lat, png, minutes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = list(csv.DictReader(open(samples), delimiter="\t"))
half, end = minutes * 30, minutes * 60
def peak(lo, hi):
    return max((int(r["rss_mib"]) for r in rows if lo <= int(r["seconds"]) < hi), default=0)
# Per worker: the two workers before the rescale, the three after it.
before = peak(half / 2, half) / 2
after = peak(end * 3 / 4, end + 60) / 3
print(f"peak RSS per worker: {before:.0f} MiB in the quarter before the rescale, {after:.0f} MiB in the last quarter")
lats = [r for r in csv.DictReader(open(lat), delimiter="\t") if r["p99_ms"]]
if lats:
    p99 = sorted(int(r["p99_ms"]) for r in lats)
    print(f"p99 latency per minute: median {p99[len(p99) // 2]} ms, worst {p99[-1]} ms over {len(lats)} minutes")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [int(r["seconds"]) / 60 for r in rows]
    rescaled = next((int(r["seconds"]) / 60 for r in rows if r["workers"] == "3"), minutes / 2)
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    for a, key, label in zip(ax[:3], ["rss_mib", "open_files", "state_mib"], ["RSS of all workers (MiB)", "open files", "state (MiB)"]):
        a.plot(t, [int(r[key]) for r in rows]); a.set_ylabel(label); a.axvline(rescaled, color="grey", ls=":")
    ax[3].plot([int(r["minute"]) for r in lats], [int(r["p99_ms"]) for r in lats], label="p99")
    ax[3].plot([int(r["minute"]) for r in lats], [int(r["p50_ms"]) for r in lats], label="p50")
    ax[3].set_ylabel("latency (ms)"); ax[3].set_xlabel("minutes (dotted: the rescale 2 -> 3; latency: one point per measured minute)"); ax[3].legend()
    fig.tight_layout(); fig.savefig(png)
    print(f"chart: {png}")
except ImportError:
    print("matplotlib is missing: no chart (bench/compare/install.sh installs it)", file=sys.stderr)
if before and after > before * 1.25:
    sys.exit(f"memory grew: {after:.0f} MiB per worker at the end against {before:.0f} MiB before the rescale")
PY
echo "== soak: $MINUTES minutes at $rate events/s; samples in $SAMPLES, latency in $LAT"
