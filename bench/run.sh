#!/usr/bin/env bash
# `make bench`: single-worker throughput of the engine on ~500-byte JSON payment events, from a
# file and from Kafka, for stateless filter+projection, tumbling, sliding and session windows,
# and state larger than the in-memory cache. Start-up is excluded: the worker reports the time
# from its first record read to everything processed and committed.
# An interval join (join_1to1) reads the data set twice, as two inputs.
# Env: BENCH_EVENTS (default 1000000), BENCH_KAFKA=0 to skip the Kafka runs, BENCH_REDIS=0 to skip
# the Redis-table run, BENCH_PARQUET=0 to skip the Parquet sink runs, BENCH_OPENSEARCH=0 the OpenSearch one, BENCH_CASSANDRA=0 the Cassandra one, BENCH_QUERIES to
# run only some queries (e.g. "tumbling_1m session_2m", or " " for none), BENCH_PERF=1 to record
# a perf profile of each run (perf.data files next to the data set), BENCH_LATENCY_RATE=0 to skip
# the latency run, BENCH_OVERHEAD_EVENTS=0 to skip the checkpoint-overhead runs, BENCH_DECODE=0 to skip
# the decoders' figure.
set -euo pipefail
source "$(dirname "$0")/../e2e/stack/lib.sh"
source "$(dirname "$0")/queries.sh"
EVENTS=${BENCH_EVENTS:-1000000}
WORKER=${CARGO_TARGET_DIR:-$WEIR_CACHE/target}/release/weir-worker
[[ -x $WORKER ]] || die "$WORKER is missing; run make release"
BENCH=$WEIR_CACHE/bench
mkdir -p "$BENCH"
DATA=$BENCH/payments-$EVENTS.jsonl
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

SCHEMA='{id: string, card_id: string, merchant_id: string, amount: double, status: string, country: string, ts: timestamp}'
# Data: datagen -> file (a passthrough writes the records as generated), made once per size.
if [[ ! -s $DATA ]]; then
  log "generating $EVENTS payment events into $DATA"
  cat >"$WORK/gen.yaml" <<YAML
metadata: {name: bench-gen}
spec:
  pipeline:
    sources: {gen: {datagen: {kind: payments, count: $EVENTS, seed: 11, keys: 100000, startTime: 1795564800000, eventRate: 2000}}}
    sinks: {out: {from: gen, file: {path: $DATA}}}
YAML
  "$WORKER" run -f "$WORK/gen.yaml" 2>/dev/null
fi

# Decoding alone, on one core: JSON and Avro (the Schema Registry's wire format) on the same
# payment events (weir-decode-bench). BENCH_DECODE=0 skips it.
if [[ ${BENCH_DECODE:-1} != 0 ]]; then
  "$(dirname "$WORKER")/weir-decode-bench"
fi

query() { # NAME -> the tables and streams of a query
  shared_query "$1" && return
  case $1 in
    # Every event with all its fields (for sink throughput), and keyed by its id.
    all_events) printf '    streams:\n      q: {from: payments}\n' ;;
    events_by_id) printf '    streams:\n      q: {from: payments, keyBy: [id]}\n' ;;
    # Enrichment from a side input of 1,000,000 generated merchants (loaded before the first
    # payment is read, so not timed); the payments go to 2,000 of them, skewed.
    enrich_1m) cat <<Q
    tables:
      merchants:
        datagen: {kind: merchants, keys: 1000000, seed: 1}
        key: merchant_id
    streams:
      q: {from: payments, enrich: {table: merchants, by: merchant_id, fields: [category, country], prefix: merchant_}}
Q
    ;;
    # The same lookups in Redis (the 1,000,000 merchants loaded there by a Weir job with a Redis
    # sink), each value reused for a second before Redis is asked again.
    enrich_redis) cat <<Q
    tables:
      merchants:
        redis: {url: "redis://127.0.0.1:$REDIS_PORT", keyPrefix: "bench:merchant:", cacheTtl: 1s}
        key: merchant_id
        schema: {merchant_id: string, category: string, country: string}
    streams:
      q: {from: payments, enrich: {table: merchants, by: merchant_id, fields: [category, country], prefix: merchant_}}
Q
    ;;
    # Payments re-keyed by merchant through the job's internal topic (a repartition step), then
    # counted per merchant and minute: every event is written to Kafka and read back once more.
    repartition_tumbling_1m) cat <<Q
    streams:
      by_merchant: {from: payments, keyBy: [merchant_id], repartition: true}
      q: {from: by_merchant, keyBy: [merchant_id], window: {tumbling: 1m}, aggregate: {n: "count(*)", total: "sum(amount)"}}
Q
    ;;
    # The fraud pattern: three payments under 5.00 on a card, then one over 500, within 5 minutes.
    fraud_pattern) cat <<Q
    streams:
      q:
        from: payments
        keyBy: [card_id]
        pattern:
          within: 5m
          sequence:
            - {name: probe, where: "amount < 5", times: 3}
            - {name: hit, where: "amount > 500"}
          emit: {card_id: card_id, last_probe: probe.id, hit_amount: hit.amount, hit_ts: hit.ts}
Q
    ;;
    # An interval join of the data set with a second copy of itself (as payments and their
    # captures): every event finds its copy, one pair per event; EVENTS x 2 rows are read.
    join_1to1) cat <<Q
      captures:
        file: {path: $DATA}
        schema: $SCHEMA
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams:
      q:
        join: {left: payments, right: captures, by: [id], within: 10s}
        select: {id: id, card_id: card_id, amount: amount, captured: captures_ts}
Q
    ;;
  esac
}

# run_one LABEL SOURCE_YAML QUERY [WORKER ARGS...]: prints one result row.
# SPEC_EXTRA: more spec fields, e.g. checkpointing; OUT: the results' file (/dev/null drops them).
run_one() {
  local label=$1 source=$2 q=$3; shift 3
  # SINK: the sink's kind and fields instead of the results' file.
  local sink="file: {path: ${OUT:-$WORK/out-$q.jsonl}}"
  [[ -n ${SINK:-} ]] && sink=$SINK
  cat >"$WORK/$q.yaml" <<YAML
metadata: {name: bench-$q}
spec:
${SPEC_EXTRA:-}
  pipeline:
    sources:
      payments:
        $source
        schema: $SCHEMA
        eventTime: {field: ts, maxOutOfOrderness: 5s}
$(query "$q")
    sinks:
      out: {from: q, $sink}
YAML
  local stats
  local perf=()
  [[ ${BENCH_PERF:-0} == 1 ]] && perf=(perf record -g -o "$BENCH/perf-$label-$q.data" --)
  stats=$( { /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' "${perf[@]}" "$WORKER" run -f "$WORK/$q.yaml" --state-dir "$WORK/state-$q-$label" "$@" >/dev/null; } 2>&1 ) || true
  rm -rf "$WORK/state-$q-$label"
  local line rate secs rss cpu
  line=$(grep -o 'processed [0-9]* records in [0-9.]* s ([0-9]* records/s)' <<<"$stats" || true)
  [[ -n $line ]] || { echo "$stats" >&2; die "benchmark $q ($label) failed"; }
  local records; records=$(awk '{print $2}' <<<"$line")
  secs=$(awk '{print $5}' <<<"$line"); rate=$(sed 's/.*(\([0-9]*\) records.*/\1/' <<<"$line")
  rss=$(grep -o 'RSS_KB=[0-9]*' <<<"$stats" | cut -d= -f2); cpu=$(grep -o 'CPU_S=[0-9.+]*' <<<"$stats" | cut -d= -f2)
  printf '%-8s %-22s %10s %9s s %12s ev/s %8s MiB  cpu %s s\n' "$label" "$q" "$records" "$secs" "$rate" $((rss / 1024)) "$cpu"
}

echo "== weir-worker, 1 task, $EVENTS events of $(($(stat -c %s "$DATA") / EVENTS)) bytes, $(nproc) cores"
QUERIES=${BENCH_QUERIES:-filter_project tumbling_1m sliding_5m_1m session_2m join_1to1 enrich_1m fraud_pattern}
for q in $QUERIES; do
  run_one file "file: {path: $DATA}" "$q"
done
# State larger than the cache: 100,000 cards, only 1,000 kept decoded, an 8 MiB block cache.
[[ " $QUERIES " == *" sliding_5m_1m "* ]] &&
  run_one file-smallcache "file: {path: $DATA}" sliding_5m_1m --max-cached-keys 1000 --state-memory-mib 8
# Enrichment from Redis instead of a loaded table, when the stack's Redis runs (BENCH_REDIS=0
# skips it).
if [[ ${BENCH_REDIS:-1} != 0 && " $QUERIES " == *" enrich_1m "* ]] && port_open "$REDIS_PORT"; then
  cat >"$WORK/redis-load.yaml" <<YAML
metadata: {name: bench-redis-load}
spec:
  pipeline:
    sources: {m: {datagen: {kind: merchants, keys: 1000000, seed: 1}}}
    sinks: {r: {from: m, redis: {url: "redis://127.0.0.1:$REDIS_PORT", key: [merchant_id], keyPrefix: "bench:merchant:"}}}
YAML
  "$WORKER" run -f "$WORK/redis-load.yaml" 2>/dev/null
  run_one file-redis "file: {path: $DATA}" enrich_redis
fi
# Checkpoint overhead: the tumbling run again, with an incremental checkpoint every second.
[[ " $QUERIES " == *" tumbling_1m "* ]] &&
  SPEC_EXTRA="  checkpointing: {interval: 1s, storage: \"file://$WORK/checkpoints\"}" \
    run_one file-checkpoint-1s "file: {path: $DATA}" tumbling_1m

# Checkpoint overhead at the default interval (30 s): a run long enough to take several,
# generated in-process (BENCH_OVERHEAD_EVENTS, default 40,000,000; 0 skips it), without and with
# checkpoints of the tumbling job's state.
OVERHEAD_EVENTS=${BENCH_OVERHEAD_EVENTS:-40000000}
if [[ $OVERHEAD_EVENTS != 0 && " $QUERIES " == *" tumbling_1m "* ]]; then
  gen="datagen: {kind: payments, count: $OVERHEAD_EVENTS, seed: 11, keys: 100000, startTime: 1795564800000, eventRate: 2000}"
  EVENTS=$OVERHEAD_EVENTS OUT=/dev/null run_one datagen "$gen" tumbling_1m
  EVENTS=$OVERHEAD_EVENTS OUT=/dev/null SPEC_EXTRA="  checkpointing: {interval: 30s, storage: \"file://$WORK/checkpoints-30s\"}" \
    run_one datagen-checkpoint-30s "$gen" tumbling_1m
fi

if [[ ${BENCH_KAFKA:-1} != 0 ]]; then
  port_open "$KAFKA_PORT" || die "Kafka is not running; make stack-up (or BENCH_KAFKA=0)"
  TOPIC=bench-payments-$EVENTS
  if ! "$STACK_DIR/kafka.sh" topics --describe --topic "$TOPIC" >/dev/null 2>&1; then
    log "loading $DATA into topic $TOPIC"
    "$STACK_DIR/kafka.sh" topics --create --topic "$TOPIC" --partitions 1 >/dev/null
    cat >"$WORK/load.yaml" <<YAML
metadata: {name: bench-load}
spec:
  pipeline:
    sources: {f: {file: {path: $DATA}, schema: $SCHEMA}}
    sinks: {k: {from: f, kafka: {brokers: "127.0.0.1:$KAFKA_PORT", topic: $TOPIC}}}
YAML
    "$WORKER" run -f "$WORK/load.yaml" 2>/dev/null
  fi
  for q in $QUERIES; do
    run_one kafka "kafka: {brokers: \"127.0.0.1:$KAFKA_PORT\", topic: $TOPIC, startFrom: earliest, bounded: true, group: bench-$q-$RANDOM}" "$q"
  done

  # A repartition step (Kafka source only): exactly-once, each event written to the internal
  # topic in the task's transaction and read back; the count of records read includes them.
  if [[ " $QUERIES " == *" tumbling_1m "* ]]; then
    group=bench-rp-$RANDOM
    run_one kafka-repartition "kafka: {brokers: \"127.0.0.1:$KAFKA_PORT\", topic: $TOPIC, startFrom: earliest, bounded: true, group: $group}" \
      repartition_tumbling_1m
    "$STACK_DIR/kafka.sh" topics --delete --topic "$group.by_merchant.repartition" >/dev/null 2>&1 || true
  fi

  # Sink throughput: every event (seven fields) into a Parquet table in hourly folders,
  # exactly-once (staged, then published when the epoch commits), an epoch every 10 s: on the
  # local disk, then on the stack's S3 server when it runs. BENCH_PARQUET=0 skips it.
  if [[ ${BENCH_PARQUET:-1} != 0 ]]; then
    pq='partitionBy: {field: ts, format: "date=%Y-%m-%d/hour=%H"}'
    kafka="kafka: {brokers: \"127.0.0.1:$KAFKA_PORT\", topic: $TOPIC, startFrom: earliest, bounded: true, group: bench-pq-$RANDOM}"
    SPEC_EXTRA="  epochInterval: 10s" SINK="parquet: {path: $WORK/warehouse, $pq}" run_one kafka-parquet "$kafka" all_events
    rm -rf "$WORK/warehouse"
    if port_open "$S3_PORT"; then
      kafka=${kafka/bench-pq-/bench-pq-s3-}
      AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT \
        SPEC_EXTRA="  epochInterval: 10s" SINK="parquet: {path: \"s3://$S3_BUCKET/bench-parquet-$RANDOM\", $pq}" \
        run_one kafka-parquet-s3 "$kafka" all_events
    fi
  fi
  # The same events indexed into the stack's OpenSearch, one document per event (id: the event's
  # id), when it runs; BENCH_OPENSEARCH=0 skips it.
  if [[ ${BENCH_OPENSEARCH:-1} != 0 ]] && port_open "$OPENSEARCH_PORT"; then
    idx=bench-events-$RANDOM
    kafka="kafka: {brokers: \"127.0.0.1:$KAFKA_PORT\", topic: $TOPIC, startFrom: earliest, bounded: true, group: bench-os-$RANDOM}"
    SINK="opensearch: {url: \"http://127.0.0.1:$OPENSEARCH_PORT\", index: $idx, id: [id]}" \
      run_one kafka-opensearch "$kafka" all_events
    curl -s -X DELETE "http://127.0.0.1:$OPENSEARCH_PORT/$idx" >/dev/null || true
  fi
  # The same events upserted into the stack's Cassandra, one row (and partition) per event id,
  # when it runs; BENCH_CASSANDRA=0 skips it.
  if [[ ${BENCH_CASSANDRA:-1} != 0 ]] && port_open "$CASSANDRA_PORT"; then
    kafka="kafka: {brokers: \"127.0.0.1:$KAFKA_PORT\", topic: $TOPIC, startFrom: earliest, bounded: true, group: bench-cass-$RANDOM}"
    # One keyspace for every run: the same ids are upserted again, the data does not grow.
    SINK="cassandra: {contactPoints: [\"127.0.0.1:$CASSANDRA_PORT\"], keyspace: weir_bench, table: events, createTable: true}" \
      run_one kafka-cassandra "$kafka" events_by_id
  fi
  # The same events upserted into the stack's Redis, one key per event (expiring after a
  # minute), when it runs; BENCH_REDIS=0 skips it.
  if [[ ${BENCH_REDIS:-1} != 0 ]] && port_open "$REDIS_PORT"; then
    kafka="kafka: {brokers: \"127.0.0.1:$KAFKA_PORT\", topic: $TOPIC, startFrom: earliest, bounded: true, group: bench-redis-$RANDOM}"
    SINK="redis: {url: \"redis://127.0.0.1:$REDIS_PORT\", key: [id], keyPrefix: \"bench:event:\", ttl: 1m}" \
      run_one kafka-redis "$kafka" all_events
  fi

  # End-to-end latency with exactly-once on: from the producer's send time to the result being
  # readable by a read_committed consumer, at a steady rate (BENCH_LATENCY_RATE, default 20000/s)
  # for each epoch interval in BENCH_LATENCY_EPOCHS (default "100ms 20ms": the default, and a
  # short one for latency-sensitive jobs); BENCH_LATENCY_RATE=0 skips it.
  [[ ${BENCH_LATENCY_RATE:-20000} == 0 ]] && exit 0
  for epoch in ${BENCH_LATENCY_EPOCHS:-100ms 20ms}; do
    LAT=bench-latency-$RANDOM
    for t in "$LAT-in" "$LAT-out"; do "$STACK_DIR/kafka.sh" topics --create --topic "$t" --partitions 1 >/dev/null; done
    cat >"$WORK/latency.yaml" <<YAML
metadata: {name: $LAT}
spec:
  delivery: exactly-once
  epochInterval: $epoch
  pipeline:
    sources:
      payments:
        kafka: {brokers: "127.0.0.1:$KAFKA_PORT", topic: $LAT-in, startFrom: earliest}
        schema: {id: string, card_id: string, amount: double, status: string, ts: timestamp, sent_ms: long}
        eventTime: {field: ts, maxOutOfOrderness: 1s}
    streams:
      q: {from: payments, where: "status = 'approved'", select: {id: id, card_id: card_id, sent_ms: sent_ms}}
    sinks:
      out: {from: q, kafka: {brokers: "127.0.0.1:$KAFKA_PORT", topic: $LAT-out}}
YAML
    "$WORKER" run -f "$WORK/latency.yaml" --state-dir "$WORK/state-latency-$epoch" >"$WORK/latency.log" 2>&1 &
    lat_worker=$!
    sleep 3
    printf 'epochInterval %-6s ' "$epoch"
    "$(dirname "$WORKER")/weir-latency" --brokers "127.0.0.1:$KAFKA_PORT" --input "$LAT-in" --output "$LAT-out" \
      --rate "${BENCH_LATENCY_RATE:-20000}" --seconds 15 2> >(grep -v SLF4J >&2) \
      || { tail -20 "$WORK/latency.log"; kill $lat_worker; die "latency run failed"; }
    kill -TERM $lat_worker; wait $lat_worker || true
    for t in "$LAT-in" "$LAT-out"; do "$STACK_DIR/kafka.sh" topics --delete --topic "$t" >/dev/null 2>&1 || true; done
  done
fi
