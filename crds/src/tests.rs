//! Manifest parsing and validation tests: the PIPELINE.md contract parses, and bad manifests
//! report every error with its path.

use crate::*;

const CONTRACT: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata:
  name: card-fraud
spec:
  image: weir-worker:0.1.0
  parallelism: 3
  upgradeMode: savepoint
  delivery: exactly-once
  checkpointing:
    interval: 30s
    storage: s3://weir/checkpoints/card-fraud
  autoscaler: {enabled: true, minParallelism: 1, maxParallelism: 12, targetUtilization: 0.7,
               catchUpDuration: 5m, scaleDownDelay: 10m}
  pipeline:
    sources:
      payments:
        kafka: {brokers: "127.0.0.1:9092", topic: payments, startFrom: committed}
        format: json
        schema: {id: string, card_id: string, merchant_id: string, amount: double, ts: timestamp}
        eventTime: {field: ts, maxOutOfOrderness: 30s, idleTimeout: 1m}
    tables:
      merchants:
        kafka: {brokers: "127.0.0.1:9092", topic: merchants}
        key: merchant_id
        schema: {merchant_id: string, category: string, country: string}
    streams:
      large:
        from: payments
        where: "amount > 100"
      enriched:
        from: large
        enrich: {table: merchants, on: merchant_id, fields: [category, country]}
      per_card_minute:
        from: payments
        keyBy: [card_id]
        window: {tumbling: 1m}
        allowedLateness: 0s
        aggregate: {n: "count(*)", total: "sum(amount)", max_amount: "max(amount)"}
        lateOutput: corrections
      fraud_alerts:
        from: payments
        keyBy: [card_id]
        pattern:
          within: 5m
          sequence:
            - {name: probe, where: "amount < 2", times: 3}
            - {name: hit, where: "amount > 500"}
          emit: {card_id: card_id, hit_amount: hit.amount, hit_ts: hit.ts}
    sinks:
      alerts: {from: fraud_alerts, kafka: {brokers: "127.0.0.1:9092", topic: fraud-alerts}}
      minute_file: {from: per_card_minute, file: {path: out/per_card_minute.jsonl}}
      corrections: {kafka: {brokers: "127.0.0.1:9092", topic: payments-corrections}}
"#;

fn errors(yaml: &str) -> Vec<FieldError> {
    match Manifest::from_yaml(yaml, "t") {
        Err(ManifestError::Invalid(e)) => e.0,
        Err(e) => panic!("expected validation errors, got {e}"),
        Ok(_) => panic!("expected validation errors, the manifest was accepted"),
    }
}

fn has(errs: &[FieldError], path: &str, needle: &str) -> bool {
    errs.iter().any(|e| e.path == path && e.message.contains(needle))
}

#[test]
fn the_contract_example_parses_and_validates() {
    let m = Manifest::from_yaml(CONTRACT, "x").expect("the PIPELINE.md example is valid");
    assert_eq!(m.metadata.name, "card-fraud");
    assert_eq!(m.spec.parallelism, Some(3));
    assert_eq!(
        m.spec.pipeline.streams["per_card_minute"].window.as_ref().unwrap().tumbling,
        Some(Duration::from("1m"))
    );
    assert_eq!(m.spec.pipeline.sources["payments"].schema["ts"], FieldType::Timestamp);
}

#[test]
fn only_the_pipeline_is_required() {
    let m = Manifest::from_yaml(
        "spec:\n  pipeline:\n    sources:\n      p: {datagen: {kind: payments, count: 10}}\n    sinks:\n      o: {from: p, file: {path: o.jsonl}}\n",
        "from-file-name",
    )
    .unwrap();
    assert_eq!(m.metadata.name, "from-file-name");
    assert_eq!(m.spec.delivery, Delivery::ExactlyOnce);
}

#[test]
fn reports_every_error_at_once_with_paths() {
    let bad = r#"
spec:
  pipeline:
    sources:
      payments:
        file: {path: p.jsonl}
        kafka: {brokers: "", topic: p}
        schema: {card_id: string, amount: double, ts: timestamp}
        eventTime: {field: when, maxOutOfOrderness: -5s}
    streams:
      a:
        from: nowhere
      w:
        from: payments
        window: {sliding: {size: 5m, slide: 2m}}
        aggregate: {n: "count(*)", m: "median(amount)"}
      s:
        from: payments
        keyBy: [card_id, nope]
        window: {session: {gap: 0s}}
        aggregate: {n: "count(*)"}
        lateOutput: missing
        stateTtl: 1h
    sinks:
      out: {from: w, file: {path: o.jsonl}}
      orphan: {file: {path: x.jsonl}}
"#;
    let errs = errors(bad);
    let expect = [
        ("spec.pipeline.sources.payments", "exactly one of kafka, file, datagen"),
        ("spec.pipeline.sources.payments.kafka.brokers", "host:port"),
        ("spec.pipeline.sources.payments.eventTime.field", "`when` is not a field"),
        ("spec.pipeline.sources.payments.eventTime.maxOutOfOrderness", "negative"),
        ("spec.pipeline.streams.a.from", "`nowhere` is not a source or a step"),
        ("spec.pipeline.streams.w.window", "needs keyBy"),
        ("spec.pipeline.streams.w.window.sliding.slide", "does not divide"),
        ("spec.pipeline.streams.w.aggregate.m", "unknown aggregate `median`"),
        ("spec.pipeline.streams.s.keyBy", "`nope` is not a field"),
        ("spec.pipeline.streams.s.window.session.gap", "above zero"),
        ("spec.pipeline.streams.s.lateOutput", "`missing` is not a sink"),
        ("spec.pipeline.streams.s.stateTtl", "dropped when the window closes"),
        ("spec.pipeline.sinks.orphan.from", "needs `from`"),
    ];
    for (path, needle) in expect {
        assert!(has(&errs, path, needle), "missing error at {path} containing {needle:?}; got {errs:#?}");
    }
    assert_eq!(errs.len(), expect.len(), "unexpected extra errors: {errs:#?}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let bad = "spec:\n  pipeline:\n    sources:\n      p: {datagen: {kind: payments}, colour: red}\n";
    match Manifest::from_yaml(bad, "t") {
        Err(ManifestError::Parse { path, message }) => {
            assert_eq!(path, "spec.pipeline.sources.p.colour");
            assert!(message.contains("unknown field `colour`"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn cycles_are_reported() {
    let bad = r#"
spec:
  pipeline:
    sources: {p: {datagen: {kind: payments}}}
    streams:
      a: {from: b}
      b: {from: a}
    sinks: {o: {from: a, file: {path: o}}}
"#;
    let errs = errors(bad);
    assert!(has(&errs, "spec.pipeline.streams", "cycle"), "{errs:#?}");
}

#[test]
fn window_output_fields_feed_later_steps() {
    let ok = r#"
spec:
  pipeline:
    sources: {p: {datagen: {kind: payments}}}
    streams:
      w: {from: p, keyBy: [card_id], window: {tumbling: 1m}, aggregate: {n: "count(*)"}}
      big: {from: w, keyBy: [window_start], window: {tumbling: 1h}, aggregate: {cards: "count(card_id)"}}
    sinks: {o: {from: big, file: {path: o}}}
"#;
    Manifest::from_yaml(ok, "t").expect("window_start is a field of a window step's output");
    let bad = ok.replace("keyBy: [window_start]", "keyBy: [amount]");
    assert!(has(&errors(&bad), "spec.pipeline.streams.big.keyBy", "`amount` is not a field of `w`"));
}

#[test]
fn timestamps_parse_both_forms() {
    assert_eq!(parse_timestamp_millis("1700000000000"), Some(1_700_000_000_000));
    assert_eq!(parse_timestamp_millis("2026-11-25T00:00:00Z"), Some(1_795_564_800_000));
    assert_eq!(parse_timestamp_millis("2026-11-25T01:00:00+01:00"), Some(1_795_564_800_000));
    assert_eq!(parse_timestamp_millis("yesterday"), None);
}

#[test]
fn checked_in_crd_matches_the_types() {
    // Included at build time: the target folder is shared between checkouts, so a path baked
    // into the test binary may name another checkout's file.
    let on_disk = include_str!("../streamjob.yaml");
    assert!(
        on_disk == crd_yaml(),
        "crds/streamjob.yaml is out of date; run `cargo run -p weir-crds --bin crdgen > crds/streamjob.yaml`"
    );
}

#[test]
fn the_crd_reads_the_same_as_yaml_1_1() {
    // kubectl reads YAML 1.1: no plain word in the CRD may turn into a boolean there.
    let yaml = crate::crd_yaml();
    for line in yaml.lines() {
        let word = line.trim_start().trim_start_matches("- ").trim_end_matches(':');
        assert!(!["on", "off", "yes", "no", "y", "n"].contains(&word.to_lowercase().as_str()), "unquoted: {line}");
    }
    // No field is named `on` (the join and enrich steps take `by`), which kubectl would send as
    // `true`.
    assert!(!yaml.contains("'on'"), "a field named `on`");
}

#[test]
fn boolean_field_names_point_at_yaml_1_1() {
    // What kubectl sends for `aggregate: {n: "count(*)"}`.
    let errs = errors(
        r#"
spec:
  pipeline:
    sources: {p: {datagen: {kind: payments}}}
    streams:
      w: {from: p, keyBy: [card_id], window: {tumbling: 1m}, aggregate: {"false": "count(*)"}}
    sinks: {o: {from: w, file: {path: o}}}
"#,
    );
    assert!(has(&errs, "spec.pipeline.streams.w.aggregate.false", "quote the name"), "{errs:#?}");
}

#[test]
fn worker_env_and_resources_are_checked() {
    let errs = errors(
        r#"
spec:
  env:
  - {name: AWS_REGION, value: eu-west-1}
  - {name: "1BAD"}
  - {name: WEIR_CONFIG, value: x}
  - {name: TOKEN, value: a, valueFrom: {secretKeyRef: {name: s, key: k}}}
  resources: {requests: {cpu: 500m, memory: lots}, limits: {gpu: "1"}}
  pipeline:
    sources: {p: {datagen: {kind: payments}}}
    sinks: {o: {from: p, file: {path: o}}}
"#,
    );
    let expect = [
        ("spec.env[1].name", "not an environment variable name"),
        ("spec.env[1]", "exactly one of value and valueFrom"),
        ("spec.env[2].name", "set by the operator"),
        ("spec.env[3]", "exactly one of value and valueFrom"),
        ("spec.resources.requests.memory", "not a quantity"),
        ("spec.resources.limits.gpu", "only cpu, memory"),
    ];
    for (path, needle) in expect {
        assert!(has(&errs, path, needle), "missing error at {path} containing {needle:?}; got {errs:#?}");
    }
    assert_eq!(errs.len(), expect.len(), "unexpected extra errors: {errs:#?}");
}

#[test]
fn savepoint_history_keeps_the_newest_once_each() {
    let mut st = StreamJobStatus::default();
    let sp = |i: usize| SavepointInfo { path: format!("s3://b/savepoints/sp-{i}"), ..Default::default() };
    for i in 0..SAVEPOINT_HISTORY + 3 {
        assert!(st.record_savepoint(sp(i)));
    }
    assert!(!st.record_savepoint(sp(SAVEPOINT_HISTORY + 2)), "the same savepoint is recorded once");
    assert_eq!(st.savepoints.len(), SAVEPOINT_HISTORY);
    assert_eq!(st.savepoints[0], sp(3), "the oldest leave the list");
    assert_eq!(st.last_savepoint, Some(sp(SAVEPOINT_HISTORY + 2)));
}

#[test]
fn joins_are_checked_and_their_fields_feed_later_steps() {
    let ok = r#"
spec:
  pipeline:
    sources:
      orders: {file: {path: o.jsonl}, schema: {order_id: string, total: double, ts: timestamp}, eventTime: {field: ts}}
      payments: {file: {path: p.jsonl}, schema: {order_id: string, amount: double, ts: timestamp}, eventTime: {field: ts}}
    streams:
      paid:
        join: {left: orders, right: payments, by: [order_id], after: 15m, type: left}
        lateOutput: late
      big: {from: paid, where: "amount > total", select: {order_id: order_id, at: payments_ts}}
    sinks:
      o: {from: big, file: {path: o}}
      late: {file: {path: l}}
"#;
    Manifest::from_yaml(ok, "t").expect("a left join with bounds; its right `ts` is `payments_ts`");
    let bad = ok
        .replace("left: orders", "left: order")
        .replace("by: [order_id]", "by: [order_id, total]")
        .replace("after: 15m", "within: 0s")
        .replace("lateOutput: late", "lateOutput: late\n        from: orders\n        keyBy: [order_id]");
    let errs = errors(&bad);
    for (path, needle) in [
        ("spec.pipeline.streams.paid.join.left", "`order` is not a source or a step"),
        ("spec.pipeline.streams.paid.join.by", "`total` is not a field of `payments` (the right input)"),
        ("spec.pipeline.streams.paid.join.within", "the bounds are all zero"),
        ("spec.pipeline.streams.paid.from", "a join step reads `join.left` and `join.right`"),
        ("spec.pipeline.streams.paid", "keyBy and window belong in a step that reads the join"),
    ] {
        assert!(has(&errs, path, needle), "{path}: {needle} in {errs:?}");
    }
}

#[test]
fn pattern_quantifiers_and_negative_steps_are_checked() {
    let ok = r#"
spec:
  pipeline:
    sources: {p: {datagen: {kind: payments}}}
    streams:
      f:
        from: p
        keyBy: [card_id]
        pattern:
          within: 5m
          sequence:
            - {name: probe, where: "amount < 2", minTimes: 2, maxTimes: 5}
            - {name: refund, where: "status = 'refunded'", absent: true}
            - {name: hit, where: "amount > 500"}
          emit: {card_id: card_id, hit: hit.amount}
    sinks: {o: {from: f, file: {path: o}}}
"#;
    Manifest::from_yaml(ok, "t").expect("a range, then no refund, then a hit");
    let bad = ok
        .replace("minTimes: 2, maxTimes: 5", "times: 2, minTimes: 1, maxTimes: 0")
        .replace("{name: hit, where: \"amount > 500\"}", "{name: hit, where: \"amount > 500\", absent: true, times: 2}")
        .replace("hit: hit.amount", "hit: hit.amount, refund: refund.id");
    let errs = errors(&bad);
    for (path, needle) in [
        ("spec.pipeline.streams.f.pattern.sequence[0].times", "either times (exactly) or minTimes/maxTimes"),
        ("spec.pipeline.streams.f.pattern.sequence[0].maxTimes", "must be at least 1"),
        ("spec.pipeline.streams.f.pattern.sequence[2].absent", "has no times"),
        ("spec.pipeline.streams.f.pattern.emit", "`refund` is a negative step"),
    ] {
        assert!(has(&errs, path, needle), "{path}: {needle} in {errs:?}");
    }
    // "Not followed by" at the end is a pattern; at the start it is not.
    let trailing = ok.replace(
        "- {name: hit, where: \"amount > 500\"}",
        "- {name: hit, where: \"amount > 500\"}\n            - {name: refunded, where: \"amount < 0\", absent: true}",
    );
    Manifest::from_yaml(&trailing, "t").expect("a hit not followed by a refund within 5m");
    let leading = ok.replace(
        "- {name: probe, where: \"amount < 2\", minTimes: 2, maxTimes: 5}",
        "- {name: probe, where: \"amount < 2\", absent: true}",
    );
    let errs = errors(&leading);
    assert!(
        has(&errs, "spec.pipeline.streams.f.pattern.sequence[0].absent", "cannot start with a negative step"),
        "{errs:?}"
    );
    // An optional step: before a required one, never last, never next to a negative step.
    let no_refund = ok.replace("            - {name: refund, where: \"status = 'refunded'\", absent: true}\n", "");
    let optional = no_refund.replace("minTimes: 2, maxTimes: 5", "minTimes: 0, maxTimes: 5");
    Manifest::from_yaml(&optional, "t").expect("up to five probes, then a hit");
    let errs = errors(&ok.replace("minTimes: 2, maxTimes: 5", "minTimes: 0"));
    assert!(
        has(&errs, "spec.pipeline.streams.f.pattern.sequence[0].minTimes", "cannot be next to a negative step"),
        "{errs:?}"
    );
    let last =
        no_refund.replace("{name: hit, where: \"amount > 500\"}", "{name: hit, where: \"amount > 500\", minTimes: 0}");
    let errs = errors(&last);
    assert!(has(&errs, "spec.pipeline.streams.f.pattern.sequence[1].minTimes", "cannot be the last step"), "{errs:?}");
}

#[test]
fn enrichment_errors_name_the_field_and_the_fix() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources:
      payments:
        datagen: {kind: payments}
    tables:
      merchants:
        datagen: {kind: merchants}
        file: {path: m.jsonl}
        key: merchant_id
      cards:
        file: {path: c.jsonl}
        key: card
        schema: {card_id: string}
        versions: {field: card_id, retention: 0s}
    streams:
      enriched:
        from: payments
        enrich: {table: merchants, by: merchant, missing: deadLetter}
      twice:
        from: payments
        enrich: {table: merchants, by: merchant_id, fields: [country, rating]}
    sinks:
      out: {from: enriched, file: {path: o.jsonl}}
      out2: {from: twice, file: {path: o2.jsonl}}
"#,
    );
    let t = "spec.pipeline.tables";
    let s = "spec.pipeline.streams";
    assert!(has(&errs, &format!("{t}.merchants"), "exactly one of kafka, file, datagen, redis; found 2"), "{errs:?}");
    assert!(has(&errs, &format!("{t}.cards.key"), "`card` is not a field"), "{errs:?}");
    assert!(has(&errs, &format!("{t}.cards.versions.field"), "versions need a timestamp"), "{errs:?}");
    assert!(has(&errs, &format!("{t}.cards.versions.retention"), "must be above zero"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.enriched.enrich.by"), "`merchant` is not a field of `payments`"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.enriched.enrich.missing"), "needs spec.pipeline.deadLetter"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.enriched.enrich.fields"), "`country` is already a field"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.twice.enrich.fields"), "`rating` is not a field of table"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.twice.enrich.fields"), "enrich.prefix"), "{errs:?}");
}

#[test]
fn redis_sink_errors_say_what_is_wrong() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources: {s: {datagen: {kind: payments}}}
    tables:
      t:
        redis: {url: "redis://", keyPrefix: "m:"}
        key: k
        schema: {k: string, at: timestamp}
        versions: {field: at}
    sinks:
      a: {from: s, redis: {url: "localhost:6379", ttl: 0s, key: []}}
      b: {from: s, redis: {url: "redis://h"}, file: {path: x.jsonl}}
"#,
    );
    let p = "spec.pipeline.sinks";
    assert!(has(&errs, &format!("{p}.a.redis.url"), "not a redis://host"), "{errs:?}");
    assert!(has(&errs, &format!("{p}.a.redis.ttl"), "must be above zero"), "{errs:?}");
    assert!(has(&errs, &format!("{p}.a.redis.key"), "at least one field"), "{errs:?}");
    assert!(
        has(&errs, &format!("{p}.b"), "exactly one of kafka, file, redis, parquet, opensearch, cassandra; found 2"),
        "{errs:?}"
    );
    assert!(has(&errs, "spec.pipeline.tables.t.redis.url", "not a redis://host"), "{errs:?}");
    assert!(has(&errs, "spec.pipeline.tables.t.versions", "one value per key"), "{errs:?}");
}

/// Asserts `errs` has each (path under `base`, needle) and nothing under `base.ok`.
fn expect(errs: &[FieldError], base: &str, want: &[(&str, &str)]) {
    for (path, needle) in want {
        assert!(has(errs, &format!("{base}.{path}"), needle), "{base}.{path}: {needle}: {errs:?}");
    }
    assert!(!errs.iter().any(|e| e.path.starts_with(&format!("{base}.ok"))), "{errs:?}");
}

#[test]
fn session_state_errors_say_what_is_wrong() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources: {s: {datagen: {kind: payments}}}
    streams:
      tumbling: {from: s, keyBy: [card_id], window: {tumbling: 1m}, aggregate: {n: "count(*)"}, sessionState: live}
      a: {from: s, keyBy: [card_id], window: {session: {gap: 2m}}, aggregate: {n: "count(*)"}, sessionState: nowhere}
      b: {from: s, keyBy: [card_id], window: {session: {gap: 2m}}, aggregate: {n: "count(*)"}, sessionState: file}
      c: {from: s, keyBy: [card_id], window: {session: {gap: 2m}}, aggregate: {n: "count(*)"}, sessionState: taken}
      ok: {from: s, keyBy: [card_id], window: {session: {gap: 2m}}, aggregate: {n: "count(*)"}, sessionState: live}
    sinks:
      live: {redis: {url: "redis://h"}}
      file: {file: {path: x.jsonl}}
      taken: {from: s, redis: {url: "redis://h"}}
"#,
    );
    assert!(!errs.iter().any(|e| e.path.starts_with("spec.pipeline.sinks.live")), "{errs:?}");
    expect(
        &errs,
        "spec.pipeline.streams",
        &[
            ("tumbling.sessionState", "only a session window"),
            ("a.sessionState", "`nowhere` is not a sink"),
            ("b.sessionState", "not a redis sink"),
            ("c.sessionState", "must have no `from`"),
        ],
    );
}

#[test]
fn cassandra_sink_errors_say_what_is_wrong() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources: {s: {datagen: {kind: payments}}}
    sinks:
      a: {from: s, cassandra: {contactPoints: [], keyspace: "1ks", table: "per-card", ttl: 0s, replicationFactor: 0}}
      b: {from: s, cassandra: {contactPoints: ["cass", ":9042"], keyspace: weir, table: t}}
      c: {cassandra: {contactPoints: ["cass:9042"], keyspace: weir, table: t}}
      ok: {from: s, cassandra: {contactPoints: ["127.0.0.1:9042"], keyspace: weir, table: per_card, ttl: 7d, createTable: true}}
"#,
    );
    expect(
        &errs,
        "spec.pipeline.sinks",
        &[
            ("a.cassandra.contactPoints", "at least one"),
            ("a.cassandra.keyspace", "`1ks` is not a Cassandra name"),
            ("a.cassandra.table", "`per-card` is not a Cassandra name"),
            ("a.cassandra.ttl", "above zero"),
            ("a.cassandra.replicationFactor", "at least 1"),
            ("b.cassandra.contactPoints[0]", "`cass` is not host:port"),
            ("b.cassandra.contactPoints[1]", "is not host:port"),
            ("c.from", "typed columns"),
        ],
    );
}

#[test]
fn opensearch_sink_errors_say_what_is_wrong() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources: {s: {datagen: {kind: payments}}}
    sinks:
      a: {from: s, opensearch: {url: "https://search:9200", index: Payments, id: []}}
      b: {from: s, opensearch: {url: "search:9200", index: "_x", mappings: {card_id: ""}}}
      ok: {from: s, opensearch: {url: "http://elastic:secret@127.0.0.1:9200", index: payments-1m, mappings: {card_id: keyword}}}
"#,
    );
    expect(
        &errs,
        "spec.pipeline.sinks",
        &[
            ("a.opensearch.url", "https is not available"),
            ("a.opensearch.index", "`Payments` is not an index name"),
            ("a.opensearch.id", "at least one field"),
            ("b.opensearch.url", "not an http://host"),
            ("b.opensearch.index", "`_x` is not an index name"),
            ("b.opensearch.mappings.card_id", "needs a field type"),
        ],
    );
}

#[test]
fn parquet_sink_errors_say_what_is_wrong() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources: {s: {datagen: {kind: payments}}}
    streams:
      late: {from: s, window: {tumbling: 1m}, aggregate: {n: "count(*)"}, lateOutput: bad}
    sinks:
      a: {from: s, parquet: {path: "s3:///x", maxFileSize: 12Q, partitionBy: {field: "", format: "../%Y"}}}
      b: {from: s, parquet: {path: "file://relative", maxFileSize: "10", timestamps: [""]}}
      c: {from: s, parquet: {path: "gs://bucket/x"}}
      bad: {parquet: {path: out}}
      ok: {from: late, parquet: {path: s3://b/t, maxFileSize: 64Mi, partitionBy: {field: window_start, format: "%Y/%m/%d/%H"}}}
"#,
    );
    assert_eq!(crate::parse_size("64Mi"), Some(64 << 20));
    assert_eq!(crate::parse_size("2G"), Some(2_000_000_000));
    assert_eq!(crate::parse_size("Mi"), None);
    expect(
        &errs,
        "spec.pipeline.sinks",
        &[
            ("a.parquet.path", "has no bucket"),
            ("a.parquet.maxFileSize", "`12Q` is not a size"),
            ("a.parquet.partitionBy.field", "must name a timestamp field"),
            ("a.parquet.partitionBy.format", "not a folder pattern"),
            ("b.parquet.path", "is not absolute"),
            ("b.parquet.maxFileSize", "below the least size"),
            ("b.parquet.timestamps", "must not be empty"),
            ("c.parquet.path", "expected s3://bucket/prefix"),
            ("bad.from", "late events and dead letters"),
        ],
    );
}

#[test]
fn window_join_errors_say_what_is_wrong() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources:
      a: {datagen: {kind: orders}}
      b: {datagen: {kind: orderPayments}}
    streams:
      both:
        join: {left: a, right: b, by: [order_id], within: 1m, window: {tumbling: 1m}}
      sliding_outer:
        join: {left: a, right: b, by: [order_id], window: {sliding: {size: 5m, slide: 2m}}, type: left}
      session:
        join: {left: a, right: b, by: [order_id], window: {session: {gap: 1m}}}
    sinks:
      o1: {from: both, file: {path: o1}}
      o2: {from: sliding_outer, file: {path: o2}}
      o3: {from: session, file: {path: o3}}
"#,
    );
    let s = "spec.pipeline.streams";
    assert!(has(&errs, &format!("{s}.both.join.window"), "either a window or time bounds"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.sliding_outer.join.window.sliding.slide"), "does not divide"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.sliding_outer.join.type"), "needs tumbling windows"), "{errs:?}");
    assert!(has(&errs, &format!("{s}.session.join.window"), "exactly one of tumbling, sliding"), "{errs:?}");
}

#[test]
fn a_repartition_step_only_rekeys_a_kafka_stream() {
    let ok = r#"
spec:
  pipeline:
    sources:
      payments:
        kafka: {brokers: "127.0.0.1:9092", topic: payments}
        schema: {id: string, merchant_id: string, amount: double, ts: timestamp}
        eventTime: {field: ts}
    streams:
      by_merchant: {from: payments, keyBy: [merchant_id], repartition: true}
      per_merchant:
        from: by_merchant
        keyBy: [merchant_id]
        window: {tumbling: 1m}
        aggregate: {n: "count(*)"}
    sinks:
      out: {from: per_merchant, kafka: {brokers: "127.0.0.1:9092", topic: out}}
"#;
    let m = Manifest::from_yaml(ok, "x").expect("a repartition step is valid");
    assert!(m.spec.pipeline.streams["by_merchant"].repartition);
    let bad = ok
        .replace(
            "by_merchant: {from: payments, keyBy: [merchant_id], repartition: true}",
            "by_merchant: {from: payments, where: \"amount > 1\", keyBy: [shop], repartition: true}",
        )
        .replace("keyBy: [merchant_id]\n        window", "keyBy: [shop]\n        window");
    let errs = errors(&bad);
    assert!(has(&errs, "spec.pipeline.streams.by_merchant.where", "only re-keys its input"), "{errs:?}");
    assert!(has(&errs, "spec.pipeline.streams.by_merchant.keyBy", "`shop` is not a field of `payments`"), "{errs:?}");
    let errs = errors(&ok.replace("keyBy: [merchant_id], repartition", "repartition"));
    assert!(has(&errs, "spec.pipeline.streams.by_merchant.keyBy", "needs keyBy"), "{errs:?}");
    let file = ok.replace("kafka: {brokers: \"127.0.0.1:9092\", topic: payments}", "file: {path: p.jsonl}");
    let errs = errors(&file);
    assert!(has(&errs, "spec.pipeline.streams.by_merchant.repartition", "has none"), "{errs:?}");
}

/// Every `yaml` block of docs/manifest.md validates in a pipeline around it: a block of
/// pipeline sections (`streams:`, `tables:`) is merged into it, any other block is steps.
#[test]
fn the_manifest_reference_examples_validate() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/manifest.md")).unwrap();
    let blocks: Vec<&str> = docs.split("```yaml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(blocks.len() >= 4, "the reference's examples: {}", blocks.len());
    let base = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: docs}
spec:
  pipeline:
    sources:
      payments:
        kafka: {brokers: "127.0.0.1:9092", topic: payments}
        schema: {id: string, card_id: string, merchant_id: string, order_id: string, amount: double, ts: timestamp}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
      orders:
        kafka: {brokers: "127.0.0.1:9092", topic: orders}
        schema: {order_id: string, customer: string, total: double, ts: timestamp}
        eventTime: {field: ts, maxOutOfOrderness: 5s}
    streams: {}
    sinks: {}
"#;
    for block in blocks {
        let mut job: serde_yaml::Value = serde_yaml::from_str(base).unwrap();
        let fragment: serde_yaml::Mapping = serde_yaml::from_str(block).unwrap();
        let sections = ["sources", "tables", "streams", "sinks"];
        let whole = fragment.keys().all(|k| sections.contains(&k.as_str().unwrap_or("")));
        let pipeline = job["spec"]["pipeline"].as_mapping_mut().unwrap();
        let merge = |pipeline: &mut serde_yaml::Mapping, section: &str, entries: &serde_yaml::Mapping| {
            let key = serde_yaml::Value::from(section);
            let into = pipeline.entry(key).or_insert_with(|| serde_yaml::Mapping::new().into());
            into.as_mapping_mut().unwrap().extend(entries.clone());
        };
        if whole {
            for (section, entries) in &fragment {
                merge(pipeline, section.as_str().unwrap(), entries.as_mapping().unwrap());
            }
        } else {
            merge(pipeline, "streams", &fragment);
        }
        // Each step of the example goes to a sink of its own (a source, when it has no steps).
        let mut steps: Vec<String> =
            pipeline["streams"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect();
        if steps.is_empty() {
            steps.push("payments".into());
        }
        for step in steps {
            let sink: serde_yaml::Mapping = serde_yaml::from_str(&format!(
                "{step}_out: {{from: {step}, kafka: {{brokers: \"127.0.0.1:9092\", topic: {step}}}}}"
            ))
            .unwrap();
            merge(pipeline, "sinks", &sink);
        }
        if block.contains("lateOutput: late_payments") {
            let sink =
                serde_yaml::from_str("late_payments: {kafka: {brokers: \"127.0.0.1:9092\", topic: late}}").unwrap();
            merge(pipeline, "sinks", &sink);
        }
        if block.contains("missing: deadLetter") {
            let sink = serde_yaml::from_str("dead: {file: {path: dead.jsonl}}").unwrap();
            merge(pipeline, "sinks", &sink);
            pipeline.insert("deadLetter".into(), "dead".into());
        }
        let text = serde_yaml::to_string(&job).unwrap();
        // Avro examples read their subject's schema: here, the payments of the examples.
        let subject = |_: &crate::registry::SchemaLookup| {
            let schema = r#"{"type": "record", "name": "Payment", "fields": [{"name": "id", "type": "string"},
                {"name": "card_id", "type": "string"}, {"name": "amount", "type": "double"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
            Ok(Some(crate::registry::SubjectSchema { version: 1, schema: schema.into() }))
        };
        if let Err(e) = Manifest::from_yaml_with_registry(&text, "docs", subject) {
            panic!("the example\n{block}\nin docs/manifest.md does not validate: {e}");
        }
    }
}

#[test]
fn secret_client_properties_come_only_from_the_environment() {
    let job = |password: &str| {
        format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: secure}}
spec:
  pipeline:
    sources:
      payments:
        kafka:
          brokers: "127.0.0.1:9096"
          topic: payments
          properties: {{security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.username: weir, sasl.password: "{password}"}}
        schema: {{id: string, ts: timestamp}}
    sinks:
      out: {{from: payments, kafka: {{brokers: "127.0.0.1:9096", topic: out, properties: {{ssl.key.password: "{password}"}}}}}}
"#
        )
    };
    assert!(Manifest::from_yaml(&job("${env:KAFKA_PASSWORD}"), "x").is_ok());
    let errs = errors(&job("weir-secret"));
    assert!(
        has(
            &errs,
            "spec.pipeline.sources.payments.kafka.properties.sasl.password",
            "must not be written in the manifest"
        ),
        "{errs:?}"
    );
    assert!(has(&errs, "spec.pipeline.sinks.out.kafka.properties.ssl.key.password", "Secret in spec.env"), "{errs:?}");
    let errs = errors(&job("${env:1-bad}"));
    assert!(
        has(&errs, "spec.pipeline.sources.payments.kafka.properties.sasl.password", "not an environment variable name"),
        "{errs:?}"
    );

    let props: BTreeMap<String, String> =
        [("sasl.password", "${env:PW}"), ("sasl.username", "weir")].map(|(k, v)| (k.to_string(), v.to_string())).into();
    let resolved = resolve_properties(&props, |n| (n == "PW").then(|| "s3cret".to_string())).unwrap();
    assert_eq!(resolved["sasl.password"], "s3cret");
    assert_eq!(resolved["sasl.username"], "weir");
    let err = resolve_properties(&props, |_| None).unwrap_err();
    assert!(err.contains("sasl.password") && err.contains("PW") && !err.contains("s3cret"), "{err}");
}

/// The manifest reference covers the schema: every field of `spec` in the CRD (generated from
/// the types) is named in docs/manifest.md, so a new field cannot go undocumented.
#[test]
fn every_field_of_the_schema_is_in_the_manifest_reference() {
    use std::collections::BTreeSet;
    fn fields(schema: &serde_json::Value, into: &mut BTreeSet<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                into.insert(name.clone());
                fields(sub, into);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
                fields(sub, into);
            }
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for sub in schema.get(key).and_then(|s| s.as_array()).into_iter().flatten() {
                fields(sub, into);
            }
        }
    }
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut names = BTreeSet::new();
    fields(spec, &mut names);
    assert!(names.len() > 100, "{names:?}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/manifest.md")).unwrap();
    let named = |name: &str| {
        docs.match_indices(name).any(|(i, _)| {
            let before = docs[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
            let after = docs[i + name.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric());
            before && after
        })
    };
    let missing: Vec<&String> = names.iter().filter(|n| !named(n)).collect();
    assert!(missing.is_empty(), "fields of the schema not in docs/manifest.md: {missing:?}");
}

#[test]
fn avro_inputs_and_sinks_are_checked_all_at_once() {
    let errs = errors(
        r#"
spec:
  pipeline:
    sources:
      a: {kafka: {brokers: "k:9092", topic: a}, format: avro}
      b: {file: {path: b.avro}, format: avro, registry: {url: "http://r:8081"}, schema: {id: string}}
      c: {kafka: {brokers: "k:9092", topic: c}, registry: {url: "http://r:8081"}, schema: {id: string}}
      d:
        kafka: {brokers: "k:9092", topic: d}
        format: avro
        registry: {url: "http://u:p@r:8081", subject: "", version: 0, username: u, password: secret}
        schema: {id: string}
      e: {kafka: {brokers: "k:9092", topic: e}, format: avro, registry: {url: "http://r:8081"}}
    streams:
      late_ones: {from: a, keyBy: [id], window: {tumbling: 1m}, aggregate: {n: "count(*)"}, lateOutput: late}
    sinks:
      out:
        from: a
        kafka: {brokers: "k:9092", topic: o, keyFormat: avro, registry: {url: "http://r:8081", version: 2}}
      late: {kafka: {brokers: "k:9092", topic: l, format: avro, registry: {url: "http://r:8081"}}}
      plain: {from: a, kafka: {brokers: "k:9092", topic: p, format: avro}}
"#,
    );
    let src = "spec.pipeline.sources";
    assert!(has(&errs, &format!("{src}.a.registry"), "format: avro needs the registry"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.b.format"), "only a kafka input can be avro"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.c.registry"), "only used with format: avro"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.d.registry.url"), "credentials go in username and password"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.d.registry.subject"), "must not be empty"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.d.registry.version"), "versions start at 1"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.d.registry.password"), "a secret must not be written"), "{errs:?}");
    assert!(has(&errs, &format!("{src}.e.schema"), "taken from the registry subject when omitted"), "{errs:?}");
    let sink = "spec.pipeline.sinks";
    assert!(has(&errs, &format!("{sink}.out.kafka.registry"), "only used with format: avro"), "{errs:?}");
    assert!(has(&errs, &format!("{sink}.out.kafka.registry.version"), "version is for sources"), "{errs:?}");
    assert!(has(&errs, &format!("{sink}.out.kafka.keyFormat"), "needs format: avro"), "{errs:?}");
    assert!(has(&errs, &format!("{sink}.late.kafka.format"), "cannot be format: avro"), "{errs:?}");
    assert!(has(&errs, &format!("{sink}.plain.kafka.registry"), "needs the registry to register"), "{errs:?}");
}

#[test]
fn an_avro_source_takes_its_schema_from_the_subject() {
    let yaml = r#"
spec:
  pipeline:
    sources:
      p:
        kafka: {brokers: "k:9092", topic: pay}
        format: avro
        registry: {url: "http://r:8081/apis/ccompat/v7", username: weir, password: "${env:REGISTRY_PASSWORD}"}
        eventTime: {field: ts}
    streams:
      big: {from: p, where: "amount > 100"}
    sinks:
      out:
        from: big
        kafka: {brokers: "k:9092", topic: o, format: avro, registry: {url: "http://r:8081/apis/ccompat/v7"}, keyFormat: avro}
"#;
    let mut asked = Vec::new();
    let m = Manifest::from_yaml_with_registry(yaml, "t", |l| {
        asked.push((l.subject.clone(), l.version));
        let schema = r#"{"type": "record", "name": "P", "fields": [{"name": "amount", "type": "long"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
        Ok(Some(crate::registry::SubjectSchema { version: 4, schema: schema.into() }))
    })
    .unwrap();
    assert_eq!(asked, [("pay-value".to_string(), None)]);
    let p = &m.spec.pipeline.sources["p"];
    assert_eq!(p.schema.get("amount"), Some(&FieldType::Long));
    assert_eq!(p.registry.as_ref().unwrap().version, Some(4), "the version read is pinned");
    // Without the registry the schema is unknown, and the steps' fields with it.
    let errs = errors(yaml);
    assert!(has(&errs, "spec.pipeline.sources.p.schema", "taken from the registry subject"), "{errs:?}");
}
