#!/usr/bin/env bash
# `make bench-compare` (also run by `make bench`): Weir, Apache Flink (Flink SQL on a local
# mini-cluster) and Kafka Streams on the same Kafka, the same seeded data and the same queries,
# one after another, each pinned to the same cores. For each system and query: throughput from
# the first record read to the input fully processed and the output committed, peak RSS, CPU
# time, and whether its output equals Weir's (a fast wrong answer cannot win). Then the
# end-to-end latency of each system at a fixed rate, with exactly-once. Writes
# bench/results/compare-<date>.md (+ .tsv, .png).
# Env: COMPARE_EVENTS (default 1000000, of payments and of the Nexmark stream each),
# COMPARE_WEIR_EVENTS (default 10000000: Weir again alone on that many, for runs of tens of
# seconds; 0 skips), COMPARE_CORES (default "1 2"), COMPARE_SYSTEMS
# (default "weir flink kstreams"), COMPARE_QUERIES, COMPARE_COMMIT (result visibility interval
# for all three: Weir's epochInterval, Flink's checkpoint interval, Kafka Streams'
# commit.interval.ms; default 1s), COMPARE_LATENCY_RATE (default: half the slowest system's
# filter_project rate; 0 skips the latency runs), COMPARE_LATENCY_COMMIT (default "100ms 20ms"),
# COMPARE_TIMEOUT (seconds a run may take, default 900; a slower one is reported as a timeout),
# COMPARE_RESULTS (the results' path without .md/.tsv/.png; default bench/results/compare-<date>).
set -euo pipefail
source "$(dirname "$0")/../e2e/stack/lib.sh"
source "$(dirname "$0")/queries.sh"
BENCH_DIR=$REPO_DIR/bench
EVENTS=${COMPARE_EVENTS:-1000000}
CORES=${COMPARE_CORES:-1 2}
SYSTEMS=${COMPARE_SYSTEMS:-weir flink kstreams}
QUERIES=${COMPARE_QUERIES:-passthrough filter_project tumbling_1m sliding_5m_1m session_2m join_1to1 enrich fraud_pattern nexmark_q3 nexmark_q8 nexmark_auction_bids}
COMMIT=${COMPARE_COMMIT:-1s}
TIMEOUT=${COMPARE_TIMEOUT:-900}
case $COMMIT in
  *ms) COMMIT_MS=${COMMIT%ms} ;;
  *s) COMMIT_MS=$((${COMMIT%s} * 1000)) ;;
  *) die "COMPARE_COMMIT is like 1s or 500ms, not $COMMIT" ;;
esac
WORKER=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/release/weir-worker
LATENCY=$(dirname "$WORKER")/weir-latency
[[ -x $WORKER ]] || die "$WORKER is missing; run make release"
port_open "$KAFKA_PORT" || die "Kafka is not running; make stack-up"
BROKERS=127.0.0.1:$KAFKA_PORT
JVM=$("$BENCH_DIR/compare/install.sh")
PY=$WEIR_CACHE/venv-bench/bin/python
[[ -x $PY ]] || PY=python3
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weir-compare.XXXXXX")
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
STAMP=$(date -u +%Y-%m-%d)
RESULTS=${COMPARE_RESULTS:-$BENCH_DIR/results/compare-$STAMP}
TSV=$RESULTS.tsv
# COMPARE_QUERIES=" " runs only the latency part, keeping the day's throughput results.
[[ -z ${QUERIES// /} && -s $TSV ]] ||
  printf 'system\tcores\tquery\trecords\tseconds\trate\trss_mib\tcpu_s\tequal\n' >"$TSV"

topic_exists() { "$STACK_DIR/kafka.sh" topics --describe --topic "$1" >/dev/null 2>&1; }
create_topic() { "$STACK_DIR/kafka.sh" topics --create --topic "$1" --partitions "$2" >/dev/null 2>&1; }
delete_topic() { "$STACK_DIR/kafka.sh" topics --delete --topic "$1" >/dev/null 2>&1 || true; }
java_cmd() { # MODULE -> the java command line of a driver module, without its main class
  echo "java -Xms1g -Xmx2g -XX:+UseParallelGC -cp $JVM/$1.jar:$(cat "$JVM/$1.classpath")"
}

# load TOPIC PARTITIONS SOURCE_YAML KEY: fills a topic once (kept for later runs), through a Weir
# job, lz4-compressed, keyed by KEY.
load() {
  local topic=$1 parts=$2 source=$3 key=$4
  topic_exists "$topic" && return 0
  log "loading $topic ($parts partitions)"
  create_topic "$topic" "$parts"
  cat >"$WORK/load.yaml" <<YAML
metadata: {name: compare-load}
spec:
  pipeline:
    sources: {gen: {$source}}
    streams: {keyed: {from: gen, keyBy: [$key]}}
    sinks: {k: {from: keyed, kafka: {brokers: "$BROKERS", topic: $topic, properties: {compression.type: lz4}}}}
YAML
  "$WORKER" run -f "$WORK/load.yaml" 2>/dev/null >/dev/null || { delete_topic "$topic"; die "loading $topic failed"; }
}
# The data of a run: payments (and, for the join, their captures: the same events again), and
# Nexmark's persons, auctions and bids (1 : 3 : 46) of one stream of as many events, 1,000 per
# second of event time, each kind in a topic keyed by its auction or person id.
declare -A NX_KEY=([persons]=id [auctions]=id [bids]=auction)
declare -A NX_COUNT=() NEXMARK=()
NEXMARK_ARGS=()
# use_data N CORES: names the topics of N events (of each data set) with CORES partitions.
use_data() {
  local n=$1 cores=$2 kind nx=$(($1 / 50 * 50))
  DATA_EVENTS=$n
  INPUT=compare-payments-$n-p$cores
  CAPTURES=compare-captures-$n-p$cores
  NX_COUNT=([persons]=$((nx / 50)) [auctions]=$((nx / 50 * 3)) [bids]=$((nx / 50 * 46)))
  NEXMARK_ARGS=()
  for kind in persons auctions bids; do
    NEXMARK[$kind]=compare-nexmark-$kind-$nx-p$cores
    NEXMARK_ARGS+=(--"nexmark-$kind" "${NEXMARK[$kind]}")
  done
}
# load_inputs QUERY CORES: loads the topics the query reads (once; kept for later runs), and
# sets EVENTS_READ, the records of its streams (not of its tables).
load_inputs() {
  local kind streams
  EVENTS_READ=0
  streams=" $(query_inputs "$1") "
  for kind in $(query_inputs "$1") $(query_tables "$1"); do
    case $kind in
      payments | captures)
        load "$([[ $kind == payments ]] && echo "$INPUT" || echo "$CAPTURES")" "$2" \
          "datagen: {kind: payments, count: $DATA_EVENTS, seed: 11, keys: 100000, startTime: 1795564800000, eventRate: 2000}" card_id
        [[ $streams != *" $kind "* ]] || EVENTS_READ=$((EVENTS_READ + DATA_EVENTS)) ;;
      *)
        load "${NEXMARK[$kind]}" "$2" \
          "datagen: {kind: nexmark${kind^}, count: ${NX_COUNT[$kind]}, seed: 11, startTime: 1795564800000, eventRate: 1000}" "${NX_KEY[$kind]}"
        [[ $streams != *" $kind "* ]] || EVENTS_READ=$((EVENTS_READ + NX_COUNT[$kind])) ;;
    esac
  done
}

SCHEMA='{id: string, card_id: string, merchant_id: string, amount: double, status: string, country: string, ts: timestamp}'
# weir_sources QUERY KAFKA INPUT -> the sources of a query, for Weir (KAFKA: the common part of
# each source's kafka map, without its topic).
weir_sources() {
  local q=$1 kafka=$2 input=$3 kind topic schema
  local -A schemas=(
    [payments]=$SCHEMA
    [captures]=$SCHEMA
    [persons]='{id: long, name: string, city: string, state: string, ts: timestamp}'
    [auctions]='{id: long, seller: long, category: long, ts: timestamp}'
    [bids]='{auction: long, bidder: long, price: long, ts: timestamp}'
  )
  for kind in $(query_inputs "$q"); do
    case $kind in
      payments) topic=$input ;;
      captures) topic=$CAPTURES ;;
      *) topic=${NEXMARK[$kind]} ;;
    esac
    printf '      %s:\n        %s, topic: %s}\n        schema: %s\n        eventTime: {field: ts, maxOutOfOrderness: 5s}\n' \
      "$kind" "$kafka" "$topic" "${schemas[$kind]}"
  done
}
# query_tables QUERY -> the Nexmark topics a query reads as tables (loaded, not counted).
query_tables() {
  [[ $1 != nexmark_q3 ]] || echo persons
}
# query_inputs QUERY -> the inputs a query reads (its records are the events it is timed on).
query_inputs() {
  case $1 in
    join_1to1) echo payments captures ;;
    nexmark_q3) echo auctions ;;
    nexmark_q8) echo persons auctions ;;
    nexmark_auction_bids) echo auctions bids ;;
    *) echo payments ;;
  esac
}

weir_query() { # NAME -> the tables and streams of a query, for Weir
  shared_query "$1" && return
  case $1 in
    passthrough) echo "    streams: {q: {from: payments}}" ;;
    join_1to1) cat <<Q
    streams:
      q:
        join: {left: payments, right: captures, by: [id], within: 10s}
        select: {id: id, card_id: card_id, amount: amount, captured: captures_ts}
Q
    ;;
    enrich) cat <<Q
    tables:
      merchants:
        kafka: {brokers: "$BROKERS", topic: $MERCHANTS}
        key: merchant_id
        schema: {merchant_id: string, category: string, country: string}
    streams:
      q: {from: payments, enrich: {table: merchants, by: merchant_id, fields: [category, country], prefix: merchant_}}
Q
    ;;
    fraud_pattern) cat <<Q
    streams:
      q:
        from: payments
        keyBy: [card_id]
        pattern:
          within: 5m
          sequence:
            - {name: probe, where: "amount < 10", times: 3, strict: true}
            - {name: hit, where: "amount > 200", strict: true}
          emit: {card_id: card_id, last_probe: probe.id, hit_amount: hit.amount, hit_ts: hit.ts}
Q
    ;;
    # Nexmark query 3 (local item suggestion): auctions in category 10 by sellers in Oregon,
    # Idaho or California, the persons read as a table.
    nexmark_q3) cat <<Q
    tables:
      persons:
        kafka: {brokers: "$BROKERS", topic: ${NEXMARK[persons]}}
        key: id
        schema: {id: long, name: string, city: string, state: string}
    streams:
      sellers: {from: auctions, where: "category = 10", enrich: {table: persons, by: seller, fields: [name, city, state], missing: drop}}
      q: {from: sellers, where: "state IN ('OR', 'ID', 'CA')", select: {name: name, city: city, state: state, id: id}}
Q
    ;;
    # Nexmark query 8 (new users who opened an auction in the same 10 s), one row per auction:
    # the auctions re-keyed by seller, then a tumbling window join.
    nexmark_q8) cat <<Q
    streams:
      sellers: {from: auctions, select: {person_id: seller, auction_id: id, ts: ts}}
      by_seller: {from: sellers, keyBy: [person_id], repartition: true}
      people: {from: persons, select: {person_id: id, name: name, ts: ts}}
      q:
        join: {left: people, right: by_seller, by: [person_id], window: {tumbling: 10s}}
        select: {person_id: person_id, name: name, auction_id: auction_id, window_start: window_start}
Q
    ;;
    # The bids of each auction's first minute (an interval join).
    nexmark_auction_bids) cat <<Q
    streams:
      opened: {from: auctions, select: {auction: id, seller: seller, category: category, ts: ts}}
      q:
        join: {left: opened, right: bids, by: [auction], after: 1m}
        select: {auction: auction, seller: seller, category: category, bidder: bidder, price: price, bid_ts: bids_ts}
Q
    ;;
  esac
}

# run SYSTEM CORES QUERY INPUT OUTPUT -> "records secs rate rss_mib cpu_s" (or fails)
run() {
  local sys=$1 cores=$2 q=$3 input=$4 output=$5 cpus stats
  cpus=$( ((cores == 1)) && echo 0 || echo "0-$((cores - 1))")
  local state=$WORK/state-$sys-$q-$cores
  mkdir -p "$state"
  local cmd=()
  case $sys in
    weir)
      local kafka="kafka: {brokers: \"$BROKERS\", startFrom: earliest, bounded: true, group: compare-$q-$RANDOM"
      cat >"$WORK/$q.yaml" <<YAML
metadata: {name: compare-$q}
spec:
  delivery: exactly-once
  epochInterval: $COMMIT
  checkpointing: {interval: 10s, storage: "file://$state/checkpoints"}
  pipeline:
    sources:
$(weir_sources "$q" "$kafka" "$input")
$(weir_query "$q")
    sinks:
      out: {from: q, kafka: {brokers: "$BROKERS", topic: $output}}
YAML
      if ((cores == 1)); then
        cmd=("$WORKER" run -f "$WORK/$q.yaml" --state-dir "$state/rocks")
      else
        cmd=("$BENCH_DIR/compare/weir-workers.sh" "$cores" "$WORKER" "$WORK/$q.yaml" "$state")
      fi
      ;;
    flink)
      read -ra cmd <<<"$(java_cmd flink)"
      cmd+=( dev.weir.bench.FlinkBench --query "$q" --brokers "$BROKERS" --input "$input"
           --input2 "$CAPTURES" --table "$MERCHANTS" --output "$output" --parallelism "$cores"
           --checkpoint-interval "$COMMIT" --state-dir "$state" --events "$EVENTS_READ" "${NEXMARK_ARGS[@]}")
      ;;
    kstreams)
      read -ra cmd <<<"$(java_cmd kstreams)"
      cmd+=( dev.weir.bench.StreamsBench --query "$q" --brokers "$BROKERS" --input "$input"
           --input2 "$CAPTURES" --table "$MERCHANTS" --output "$output" --parallelism "$cores"
           --commit-interval-ms "$COMMIT_MS" --state-dir "$state" --events "$EVENTS_READ" "${NEXMARK_ARGS[@]}")
      ;;
  esac
  local rc=0
  stats=$( { /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' timeout -k 10 "$TIMEOUT" taskset -c "$cpus" "${cmd[@]}" >/dev/null; } 2>&1 ) || rc=$?
  rm -rf "$state"
  # Kafka Streams' internal topics (changelogs, repartition topics) are named after its
  # application id, ks-bench-<query>-<n>.
  [[ $sys != kstreams ]] || delete_topic 'ks-bench-.*'
  if ((rc == 124)); then
    return 2
  elif ((rc != 0)); then
    tail -30 <<<"$stats" >&2
    return 1
  fi
  local line
  line=$(grep -o 'processed [0-9]* records in [0-9.]* s' <<<"$stats" | tail -1 || true)
  [[ -n $line ]] || { tail -30 <<<"$stats" >&2; return 1; }
  local secs rss cpu
  secs=$(awk '{print $5}' <<<"$line")
  rss=$(grep -o 'RSS_KB=[0-9]*' <<<"$stats" | tail -1 | cut -d= -f2)
  cpu=$(printf '%.2f' "$(grep -o 'CPU_S=[0-9.+]*' <<<"$stats" | tail -1 | cut -d= -f2 | bc)")
  printf '%s %s %.0f %s %s\n' "$EVENTS_READ" "$secs" "$(bc -l <<<"$EVENTS_READ / $secs")" $((rss / 1024)) "$cpu"
}

MERCHANTS=compare-merchants-1m
load "$MERCHANTS" 1 "datagen: {kind: merchants, keys: 1000000, seed: 1, startTime: 0}" merchant_id
# The broker runs on this machine too: for runs on fewer cores than the machine has, it is moved
# to the others, so it does not take the measured system's core.
KAFKA_PID=$(cat "$WEIR_RUN/kafka.pid" 2>/dev/null || true)
broker_cores() { [[ -n $KAFKA_PID ]] && taskset -a -p -c "$1" "$KAFKA_PID" >/dev/null 2>&1 || true; }
trap 'broker_cores 0-$(($(nproc) - 1)); pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
# measure SYSTEM CORES QUERY: one run, its line in the TSV; checks the output against Weir's
# (system weir-long: Weir on the long data set, output unchecked).
measure() {
  local sys=$1 cores=$2 q=$3 out=compare-out-$1-$3-$2-$RANDOM rc=0 res status equal records secs rate rss cpu
  local canon=$WORK/canon-$sys-$q-$cores.txt
  create_topic "$out" "$cores"
  res=$(run "${sys%-long}" "$cores" "$q" "$INPUT" "$out") || rc=$?
  if ((rc != 0)); then
    status=FAILED
    ((rc == 2)) && status="timeout: not done after $TIMEOUT s (< $((EVENTS_READ / TIMEOUT)) ev/s)"
    printf '%-9s %-15s %s\n' "$sys" "$q" "$status"
    printf '%s\t%s\t%s\t\t\t\t\t\t%s\n' "$sys" "$cores" "$q" "$status" >>"$TSV"
    delete_topic "$out"
    return
  fi
  if [[ $sys == weir-long ]]; then
    equal="unchecked (Weir alone)"
    : >"$canon"
  else
    $(java_cmd kstreams) dev.weir.bench.Dump "$BROKERS" "$out" 2>/dev/null |
      "$PY" "$BENCH_DIR/compare/results.py" canon "$q" >"$canon"
    equal=reference
    if [[ $sys != weir ]]; then
      if [[ -s $WORK/canon-weir-$q-$cores.txt ]]; then
        equal=$("$PY" "$BENCH_DIR/compare/results.py" diff "$WORK/canon-weir-$q-$cores.txt" "$canon")
      else
        equal=unchecked
      fi
    fi
  fi
  delete_topic "$out"
  read -r records secs rate rss cpu <<<"$res"
  printf '%-9s %-15s %10s rec %8s s %10s rec/s %6s MiB cpu %7s s  %s (%s)\n' "$sys" "$q" "$records" "$secs" \
    "$rate" "$rss" "$cpu" "$equal" "$([[ $sys == weir-long ]] && echo "output not read back" || echo "$(wc -l <"$canon") rows")"
  [[ $sys == weir ]] || rm -f "$canon"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$cores" "$q" "$records" "$secs" "$rate" "$rss" "$cpu" "$equal" >>"$TSV"
}

# warm_up CORES: one unmeasured Weir run over the payments, so that the first measured run does
# not meet a cold broker (its JIT, its page cache): a passthrough right after the broker started
# took 3.6 s instead of 2.2 s.
warm_up() {
  local out=compare-warmup-$RANDOM
  load_inputs passthrough "$1"
  create_topic "$out" "$1"
  run weir "$1" passthrough "$INPUT" "$out" >/dev/null || log "the warm-up run failed"
  delete_topic "$out"
}

# Weir alone on LONG events per data set, so its runs last tens of seconds as the others' do on
# EVENTS (the first record to the last commit either way); its topics are deleted afterwards.
LONG=${COMPARE_WEIR_EVENTS:-10000000}
for cores in $CORES; do
  [[ -n ${QUERIES// /} ]] || break
  if ((cores < $(nproc))); then broker_cores "$cores-$(($(nproc) - 1))"; else broker_cores "0-$(($(nproc) - 1))"; fi
  use_data "$EVENTS" "$cores"
  warm_up "$cores"
  printf '== %s events of ~480 bytes per data set, %s partition(s), %s core(s) (taskset), results visible every %s\n' \
    "$EVENTS" "$cores" "$cores" "$COMMIT"
  for q in $QUERIES; do
    load_inputs "$q" "$cores"
    for sys in $SYSTEMS; do
      if [[ $sys == kstreams && $q == fraud_pattern ]]; then
        printf '%-9s %-15s %s\n' "$sys" "$q" "not expressible in the Kafka Streams DSL (MATCH_RECOGNIZE / CEP)"
        printf '%s\t%s\t%s\t\t\t\t\t\tn/a\n' "$sys" "$cores" "$q" >>"$TSV"
        continue
      fi
      measure "$sys" "$cores" "$q"
    done
    rm -f "$WORK"/canon-*-"$q-$cores".txt
  done
  if ((LONG > EVENTS)) && [[ " $SYSTEMS " == *" weir "* ]]; then
    use_data "$LONG" "$cores"
    printf '== Weir alone: %s events per data set, %s partition(s), %s core(s)\n' "$LONG" "$cores" "$cores"
    for q in $QUERIES; do
      load_inputs "$q" "$cores"
      measure weir-long "$cores" "$q"
    done
    for t in "$INPUT" "$CAPTURES" "${NEXMARK[@]}"; do delete_topic "$t"; done
  fi
done
# End-to-end latency with exactly-once, results visible every LAT_COMMIT (100 ms: Weir's and
# Kafka Streams' default under exactly-once, Flink checkpointing that often; then 20 ms, for
# latency-sensitive jobs), one core per system,
# at half the slowest system's filter_project rate (measured above on the first core count), or
# COMPARE_LATENCY_RATE: each system started on empty topics, probed until it answers, 10 s of
# warm-up, then 20 s measured by weir-latency (on the broker's core).
LAT_COMMITS=${COMPARE_LATENCY_COMMIT:-100ms 20ms}
LAT_TSV=$RESULTS-latency.tsv
rate=${COMPARE_LATENCY_RATE:-auto}
if [[ $rate == auto ]]; then
  first_cores=${CORES%% *}
  rate=$(awk -F'\t' -v c="$first_cores" '$2 == c && $3 == "filter_project" && $6 != "" { r = $6 / c; if (!m || r < m) m = r }
    END { printf "%d", m ? int(m / 2 / 1000) * 1000 : 10000 }' "$TSV")
  ((rate > 0)) || rate=1000
fi
latency_run() { # SYSTEM -> one line of LAT_TSV, or fails
  local sys=$1 in=compare-lat-in-$1-$RANDOM out=compare-lat-out-$1-$RANDOM state=$WORK/lat-$1 cmd=()
  create_topic "$in" 1
  create_topic "$out" 1
  mkdir -p "$state"
  case $sys in
    weir)
      cat >"$WORK/latency.yaml" <<YAML
metadata: {name: compare-latency}
spec:
  delivery: exactly-once
  epochInterval: $LAT_COMMIT
  checkpointing: {interval: 10s, storage: "file://$state/checkpoints"}
  pipeline:
    sources:
      payments:
        kafka: {brokers: "$BROKERS", topic: $in, startFrom: earliest}
        schema: {id: string, card_id: string, amount: double, status: string, ts: timestamp, sent_ms: long}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams:
      q: {from: payments, where: "status = 'approved'", select: {id: id, card_id: card_id, sent_ms: sent_ms}}
    sinks:
      out: {from: q, kafka: {brokers: "$BROKERS", topic: $out}}
YAML
      cmd=("$WORKER" run -f "$WORK/latency.yaml" --state-dir "$state/rocks") ;;
    flink)
      read -ra cmd <<<"$(java_cmd flink)"
      cmd+=(dev.weir.bench.FlinkBench --query latency --unbounded --brokers "$BROKERS" --input "$in" --output "$out"
            --checkpoint-interval "$LAT_COMMIT" --state-dir "$state") ;;
    kstreams)
      read -ra cmd <<<"$(java_cmd kstreams)"
      cmd+=(dev.weir.bench.StreamsBench --query latency --unbounded --brokers "$BROKERS" --input "$in" --output "$out"
            --commit-interval-ms "${LAT_COMMIT%ms}" --state-dir "$state") ;;
  esac
  taskset -c 0 "${cmd[@]}" >"$state.log" 2>&1 &
  local pid=$! line
  line=$(taskset -c "$(($(nproc) > 1 ? 1 : 0))" "$LATENCY" --brokers "$BROKERS" --input "$in" --output "$out" \
    --rate "$rate" --warmup 10 --seconds 20 --wait-ready 180 2>/dev/null) || line=
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  delete_topic "$in"; delete_topic "$out"
  [[ $sys != kstreams ]] || delete_topic 'ks-bench-.*'
  [[ -n $line ]] || { tail -20 "$state.log" >&2; return 1; }
  echo "$line" >&2
  local p50 p90 p99 max
  read -r p50 p90 p99 max < <(sed -E 's/.*p50 ([0-9]+) ms  p90 ([0-9]+) ms  p99 ([0-9]+) ms  max ([0-9]+) ms/\1 \2 \3 \4/' <<<"$line")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$LAT_COMMIT" "$rate" "$p50" "$p90" "$p99" "$max" >>"$LAT_TSV"
}
if [[ $rate != 0 ]]; then
  printf 'system\tcommit\trate\tp50_ms\tp90_ms\tp99_ms\tmax_ms\n' >"$LAT_TSV"
  broker_cores "$(($(nproc) > 1 ? 1 : 0))-$(($(nproc) - 1))"
  for LAT_COMMIT in $LAT_COMMITS; do
    echo "== latency at $rate events/s, results visible every $LAT_COMMIT, 1 core each"
    for sys in $SYSTEMS; do
      printf '%-9s ' "$sys"
      latency_run "$sys" 2>&1 | grep -E '^latency|Exception|ERROR|error' | head -5 || echo "FAILED"
    done
  done
else
  rm -f "$LAT_TSV" # no latency runs: no figures left from an earlier run
fi
"$PY" "$BENCH_DIR/compare/results.py" report "$TSV" "$RESULTS"
log "results: $RESULTS.md"
