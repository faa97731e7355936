//! Redis on the local stack (`make stack-up`): the sink upserts window results under their key
//! fields and window start, with a TTL, and late events into a list; a Redis table enriches
//! rows with the values stored under their keys.

use std::process::Command;

use weir_worker::sink::redis::{Connection, Reply};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn get(c: &mut Connection, key: &str) -> Option<serde_json::Value> {
    match c.command(&[b"GET", key.as_bytes()]).unwrap() {
        Reply::Bulk(Some(v)) => Some(serde_json::from_slice(&v).unwrap()),
        Reply::Bulk(None) => None,
        other => panic!("GET {key}: {other:?}"),
    }
}

#[test]
fn window_results_are_upserted_by_key_and_window_with_a_ttl() {
    let mut c = Connection::open(&redis_url())
        .unwrap_or_else(|e| panic!("Redis is not reachable ({e}); start the local stack with `make stack-up`"));
    let prefix = format!("weir-test-{}-{}:", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_795_564_800_000i64;
    let lines = [
        (1, "c1", 10.0, t0),
        (2, "c1", 5.0, t0 + 20_000),
        (3, "c2", 7.0, t0 + 30_000),
        (4, "c1", 1.0, t0 + 70_000),
        (5, "c2", 2.0, t0 + 200_000),
        (6, "c1", 99.0, t0 + 1_000), // late: the first minute has fired
    ];
    let text: String = lines
        .iter()
        .map(|(id, card, amount, ts)| {
            format!("{{\"id\": \"p{id}\", \"card\": \"{card}\", \"amount\": {amount}, \"ts\": {ts}}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let job = format!(
        r#"
metadata: {{name: redis-sink}}
spec:
  pipeline:
    sources:
      payments:
        file: {{path: in.jsonl}}
        schema: {{id: string, card: string, amount: double, ts: timestamp}}
        eventTime: {{field: ts}}
    streams:
      per_minute:
        from: payments
        keyBy: [card]
        window: {{tumbling: 1m}}
        aggregate: {{n: "count(*)", total: "sum(amount)"}}
        lateOutput: late
    sinks:
      results: {{from: per_minute, redis: {{url: "{url}", keyPrefix: "{prefix}", ttl: 1h}}}}
      late: {{redis: {{url: "{url}", keyPrefix: "{prefix}"}}}}
"#,
        url = redis_url()
    );
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    for run in 0..2 {
        // The second run writes the same results again: an upsert, nothing doubles.
        let out = Command::new(env!("CARGO_BIN_EXE_weir-worker"))
            .args(["run", "-f", dir.path().join("job.yaml").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut w = |card: &str, start: i64| get(&mut c, &format!("{prefix}{card}:{start}"));
    let r = w("c1", t0).unwrap();
    assert_eq!(
        (r["n"].as_i64(), r["total"].as_f64(), r["window_end"].as_i64()),
        (Some(2), Some(15.0), Some(t0 + 60_000))
    );
    assert_eq!(w("c2", t0).unwrap()["total"], 7.0);
    assert_eq!(w("c1", t0 + 60_000).unwrap()["n"], 1);
    assert_eq!(w("c2", t0 + 180_000).unwrap()["total"], 2.0);
    assert_eq!(w("c2", t0 + 60_000), None);
    let Reply::Int(ttl) = c.command(&[b"PTTL", format!("{prefix}c1:{t0}").as_bytes()]).unwrap() else { panic!() };
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "the keys expire an hour after their last write: {ttl} ms");
    let Reply::Array(Some(late)) = c.command(&[b"LRANGE", format!("{prefix}late").as_bytes(), b"0", b"-1"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(late.len(), 2, "the late event, once per run");
    let Reply::Bulk(Some(first)) = &late[0] else { panic!() };
    assert!(String::from_utf8_lossy(first).contains("\"p6\""));
    let keys = [format!("{prefix}c1:{t0}"), format!("{prefix}c2:{t0}"), format!("{prefix}c1:{}", t0 + 60_000)];
    for k in keys.iter().chain([&format!("{prefix}c2:{}", t0 + 180_000), &format!("{prefix}late")]) {
        c.command(&[b"DEL", k.as_bytes()]).unwrap();
    }
}

/// A session window with `sessionState` on the stack's Kafka and Redis: each card's open session
/// is in Redis (its count and bounds so far, expiring after the gap) while events arrive; when
/// the watermark closes a session, its result is emitted and its key removed.
#[test]
fn open_sessions_live_in_redis_until_they_close() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let brokers = format!("127.0.0.1:{}", std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into()));
    let mut c = Connection::open(&redis_url())
        .unwrap_or_else(|e| panic!("Redis is not reachable ({e}); start the local stack with `make stack-up`"));
    let run = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos() % 1_000_000_000);
    let (topic, prefix) = (format!("sessions-{run}"), format!("weir-sessions-{run}:"));
    let created = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/stack/kafka.sh"))
        .args(["topics", "--create", "--topic", &topic, "--partitions", "1"])
        .output()
        .unwrap();
    assert!(created.status.success(), "Kafka: {}", String::from_utf8_lossy(&created.stderr));
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let t0 = 1_795_564_800_000i64;
    let send = |id: &str, card: &str, ts: i64| {
        let payload = format!("{{\"id\": \"{id}\", \"card\": \"{card}\", \"ts\": {ts}}}");
        producer.send(BaseRecord::to(&topic).key(card).payload(&payload)).unwrap();
        producer.flush(std::time::Duration::from_secs(10)).unwrap();
    };
    send("p1", "a", t0);
    send("p2", "b", t0 + 10_000);
    send("p3", "a", t0 + 30_000);
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        r#"
metadata: {{name: sessions-{run}}}
spec:
  epochInterval: 50ms
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{brokers}", topic: {topic}, startFrom: earliest}}
        schema: {{id: string, card: string, ts: timestamp}}
        eventTime: {{field: ts, maxOutOfOrderness: 1s}}
    streams:
      visits:
        from: payments
        keyBy: [card]
        window: {{session: {{gap: 2m}}}}
        aggregate: {{n: "count(*)"}}
        sessionState: live
    sinks:
      closed: {{from: visits, file: {{path: closed.jsonl}}}}
      live: {{redis: {{url: "{url}", keyPrefix: "{prefix}"}}}}
"#,
        url = redis_url()
    );
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_weir-worker"))
        .args(["run", "-f", dir.path().join("job.yaml").to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |c: &mut Connection, what: &str, f: &dyn Fn(&mut Connection) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !f(c) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let key = |card: &str| format!("{prefix}{card}");
    wait(&mut c, "both open sessions in Redis", &|c| {
        get(c, &key("a")).is_some_and(|v| v["n"] == 2) && get(c, &key("b")).is_some()
    });
    let a = get(&mut c, &key("a")).unwrap();
    assert_eq!((a["window_start"].as_i64(), a["window_end"].as_i64()), (Some(t0), Some(t0 + 30_000 + 120_000)));
    let Reply::Int(ttl) = c.command(&[b"PTTL", key("a").as_bytes()]).unwrap() else { panic!("PTTL") };
    assert!(ttl > 0 && ttl <= 120_000, "an open session expires after the gap: {ttl} ms");
    // Ten minutes later in event time: both sessions close; a new one opens.
    send("p4", "c", t0 + 600_000);
    wait(&mut c, "the closed sessions gone, the new one there", &|c| {
        get(c, &key("a")).is_none() && get(c, &key("b")).is_none() && get(c, &key("c")).is_some()
    });
    let closed = std::fs::read_to_string(dir.path().join("closed.jsonl")).unwrap_or_default();
    let mut rows: Vec<(String, i64)> = closed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["card"].as_str().unwrap().to_string(), v["n"].as_i64().unwrap()))
        .collect();
    rows.sort();
    assert_eq!(rows, [("a".to_string(), 2), ("b".to_string(), 1)], "the closed sessions' results");
    worker.kill().unwrap();
    worker.wait().unwrap();
    c.command(&[b"DEL", key("c").as_bytes()]).unwrap();
}

/// Redis drops the sink's connection every 50 ms while a job writes 100,000 keys (`CLIENT
/// KILL`, as a restart or a network blip would): the sink reconnects, sends the unconfirmed
/// commands again, and every key ends up with its value.
#[test]
fn dropped_connections_are_replaced_and_nothing_is_lost() {
    let prefix = format!("weir-kill-{}-{}:", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let dir = tempfile::tempdir().unwrap();
    const ROWS: usize = 100_000;
    let text: String = (0..ROWS).map(|i| format!("{{\"id\": \"r{i}\", \"v\": {i}}}\n")).collect();
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    // The sink's name names its connection (weir-sink-<name>): only it is dropped.
    let sink = format!("dropped{}", std::process::id());
    let job = format!(
        r#"
spec:
  pipeline:
    sources: {{s: {{file: {{path: in.jsonl}}, schema: {{id: string, v: long}}}}}}
    sinks: {{{sink}: {{from: s, redis: {{url: "{url}", key: [id], keyPrefix: "{prefix}"}}}}}}
"#,
        url = redis_url()
    );
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, name) = (stop.clone(), format!("name=weir-sink-{sink} "));
        std::thread::spawn(move || {
            let mut k = Connection::open(&redis_url()).unwrap();
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Reply::Bulk(Some(list)) = k.command(&[b"CLIENT", b"LIST"]).unwrap() else { panic!("CLIENT LIST") };
                for line in String::from_utf8_lossy(&list).lines().filter(|l| l.contains(&name)) {
                    let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap().to_string();
                    if let Reply::Int(n) = k.command(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]).unwrap() {
                        kills += n;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            kills
        })
    };
    let out = Command::new(env!("CARGO_BIN_EXE_weir-worker"))
        .args(["run", "-f", dir.path().join("job.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(kills >= 2, "the sink's connection was dropped while it wrote ({kills} times): {log}");
    let mut c = Connection::open(&redis_url()).unwrap();
    let mut found = 0;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("{prefix}r{i}")).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        let Reply::Array(Some(values)) = c.command(&args).unwrap() else { panic!("MGET") };
        for (i, v) in chunk.iter().zip(values) {
            let Reply::Bulk(Some(v)) = v else { panic!("key r{i} is missing") };
            let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(v["v"], *i as i64, "r{i}");
            found += 1;
        }
        let mut del: Vec<&[u8]> = vec![b"DEL"];
        del.extend(keys.iter().map(|k| k.as_bytes()));
        c.command(&del).unwrap();
    }
    assert_eq!(found, ROWS);
}

#[test]
fn an_unreachable_redis_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let job = r#"
spec:
  pipeline:
    sources: {s: {file: {path: in.jsonl}, schema: {k: string}}}
    sinks: {out: {from: s, redis: {url: "redis://127.0.0.1:1", key: [k]}}}
"#;
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-worker"))
        .args(["run", "-f", dir.path().join("job.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sink out") && err.contains("connecting to 127.0.0.1:1"), "{err}");
}

#[test]
fn a_redis_table_enriches_rows_with_the_values_under_their_keys() {
    let mut c = Connection::open(&redis_url())
        .unwrap_or_else(|e| panic!("Redis is not reachable ({e}); start the local stack with `make stack-up`"));
    let prefix = format!("weir-test-{}-{}:", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let values = [
        ("m-1", r#"{"merchant_id": "m-1", "category": "food", "risk": 0.5}"#),
        ("m-2", r#"{"category": "travel"}"#),
        ("m-3", "not json"),
    ];
    for (k, v) in values {
        c.command(&[b"SET", format!("{prefix}{k}").as_bytes(), v.as_bytes()]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let payments: String = ["m-1", "m-2", "m-3", "m-4", "m-1"]
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{{\"id\": \"p{i}\", \"merchant_id\": \"{m}\", \"ts\": {}}}\n", 1000 + i))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), payments).unwrap();
    let job = format!(
        r#"
spec:
  pipeline:
    sources:
      payments:
        file: {{path: in.jsonl}}
        schema: {{id: string, merchant_id: string, ts: timestamp}}
        eventTime: {{field: ts}}
    tables:
      merchants:
        redis: {{url: "{url}", keyPrefix: "{prefix}"}}
        key: merchant_id
        schema: {{merchant_id: string, category: string, risk: double}}
    streams:
      enriched:
        from: payments
        enrich: {{table: merchants, by: merchant_id, fields: [category, risk]}}
    sinks:
      out: {{from: enriched, file: {{path: out.jsonl}}}}
"#,
        url = redis_url()
    );
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-worker"))
        .args(["run", "-f", dir.path().join("job.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, Option<&str>, Option<f64>)> =
        rows.iter().map(|r| (r["id"].as_str().unwrap(), r["category"].as_str(), r["risk"].as_f64())).collect();
    assert_eq!(
        got,
        [
            ("p0", Some("food"), Some(0.5)),
            ("p1", Some("travel"), None),
            ("p2", None, None), // not a JSON object: taken as missing, with a warning
            ("p3", None, None), // no such key
            ("p4", Some("food"), Some(0.5)),
        ]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON objects of the table's schema"));
    for (k, _) in values {
        c.command(&[b"DEL", format!("{prefix}{k}").as_bytes()]).unwrap();
    }
}
