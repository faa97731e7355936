//! `format: avro` end to end with a real Schema Registry (Apicurio Registry, its Confluent-
//! compatible API, from e2e/stack/registry.sh) and Confluent's own client on the other side
//! (e2e/avro/avro_client.py, through e2e/stack/avro-client.sh): payments written with two
//! versions of their schema, windowed exactly-once through a SIGKILL into an Avro topic whose
//! schema the worker registered, read back by the registry's client and compared with the
//! reference; records of an incompatible schema and corrupt records go to the dead letter
//! with their reasons.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use weir_e2e::payments::{create_topics, events_spaced, reference, Ev, Windows};
use weir_e2e::{kafka_brokers, repo_dir, require_port, run_dir, start_worker, unique, wait_until};

const PARTITIONS: i32 = 3;

/// The registry's Confluent-compatible API.
fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

/// `curl` to the registry: the status and the answer.
fn registry(method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/vnd.schemaregistry.v1+json",
    ]);
    if let Some(b) = body {
        cmd.args(["--data-binary", &b.to_string()]);
    }
    let out = cmd.arg(format!("{}{path}", registry_url())).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(answer).unwrap_or(Value::Null))
}

/// Registers `schema` under `subject`: its id.
fn register(subject: &str, schema: &Value) -> u32 {
    let (code, answer) =
        registry("POST", &format!("/subjects/{subject}/versions"), Some(&json!({"schema": schema.to_string()})));
    assert_eq!(code, 200, "registering under {subject}: {answer}");
    answer["id"].as_u64().unwrap() as u32
}

/// Confluent's client (`avro_client.py ARGS`, at most 2 minutes): its standard output.
fn client(args: &[&str]) -> String {
    // Bounded, so that a client that hangs fails the test instead of holding it.
    let out = Command::new("timeout")
        .arg("120")
        .arg(repo_dir().join("e2e/stack/avro-client.sh"))
        .arg("run")
        .args(args)
        .output()
        .expect("e2e/stack/avro-client.sh");
    assert!(out.status.success(), "avro_client.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every committed record of `topic` as Confluent's deserializer reads it.
fn consume(topic: &str) -> Vec<Value> {
    let text = client(&["consume", &kafka_brokers(), &registry_url(), topic, &PARTITIONS.to_string()]);
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn v1() -> Value {
    json!({"type": "record", "name": "Payment", "namespace": "weir.e2e", "fields": [
        {"name": "id", "type": "string"},
        {"name": "card_id", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": null}]})
}

/// v1 with `note` removed and `currency` (default EUR) and `merchant` (optional) added: a
/// backward-compatible change, which the registry's BACKWARD rule lets in.
fn v2() -> Value {
    json!({"type": "record", "name": "Payment", "namespace": "weir.e2e", "fields": [
        {"name": "id", "type": "string"},
        {"name": "card_id", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "currency", "type": "string", "default": "EUR"},
        {"name": "merchant", "type": ["null", "string"], "default": null}]})
}

/// `amount` as text: no reader of v2 can take it, and the BACKWARD rule refuses it.
fn v3_incompatible() -> Value {
    json!({"type": "record", "name": "Payment", "namespace": "weir.e2e", "fields": [
        {"name": "id", "type": "string"},
        {"name": "card_id", "type": "string"},
        {"name": "amount", "type": "string"},
        {"name": "ts", "type": "long"}]})
}

/// The first event of each 5 goes as v1, the others as v2; every seventh v2 payment is in USD.
fn is_v1(i: usize) -> bool {
    i.is_multiple_of(5)
}

fn is_usd(i: usize) -> bool {
    !is_v1(i) && i % 7 == 3
}

/// Avro's zig-zag varint.
fn long(v: i64, out: &mut Vec<u8>) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(s: &str, out: &mut Vec<u8>) {
    long(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

/// A record in the wire format by hand: schema `id`, then `body`.
fn wire(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes `lines` (events for avro_client.py) to a file and produces them to `topic`.
fn produce(dir: &Path, topic: &str, lines: &[Value]) {
    let path = dir.join(format!("events-{}.jsonl", unique("p")));
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    client(&["produce", &kafka_brokers(), &registry_url(), topic, path.to_str().unwrap()]);
}

/// Writes `manifest` as `dir`/job.yaml and starts a worker on it (state in `dir`/state): the
/// worker and its log, named after `name`.
fn start_job(dir: &Path, name: &str, manifest: String) -> (std::process::Child, std::path::PathBuf) {
    let path = dir.join("job.yaml");
    std::fs::write(&path, manifest).unwrap();
    let log = run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    (start_worker(&path, &dir.join("state"), &log, &[]), log)
}

/// Produces each of `bad`'s records to partition 0 of `topic` as its bytes are.
fn produce_raw(dir: &Path, topic: &str, bad: &[(Vec<u8>, &str)]) {
    let lines: Vec<Value> =
        bad.iter().map(|(b, _)| json!({"partition": 0, "key": "bad", "raw_base64": weir_crds::base64(b)})).collect();
    produce(dir, topic, &lines);
}

/// The dead letters in `file` are `bad`'s records, each with an error holding its reason.
fn assert_dead_letters(file: &Path, bad: &[(Vec<u8>, &str)]) {
    let dead = std::fs::read_to_string(file).unwrap();
    let letters: Vec<Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (bytes, reason) in bad {
        let letter = letters
            .iter()
            .find(|l| {
                l["record_base64"].as_str() == Some(&weir_crds::base64(bytes))
                    || l["record"].as_str().map(str::as_bytes) == Some(bytes.as_slice())
            })
            .unwrap_or_else(|| panic!("{bytes:?} is not in the dead letter: {dead}"));
        let error = letter["error"].as_str().unwrap();
        assert!(error.contains(reason), "{reason:?} in {error}");
    }
    assert_eq!(letters.len(), bad.len(), "only the bad records are dead letters: {dead}");
}

fn event_line(i: usize, p: i32, e: &Ev) -> Value {
    let (schema, value) = if is_v1(i) {
        let note = if i.is_multiple_of(2) { json!("first") } else { Value::Null };
        (v1(), json!({"id": e.id, "card_id": e.card, "amount": e.amount, "ts": e.ts, "note": note}))
    } else {
        let currency = if is_usd(i) { "USD" } else { "EUR" };
        let merchant = if i.is_multiple_of(3) { json!(format!("m{}", i % 11)) } else { Value::Null };
        let v = json!({"id": e.id, "card_id": e.card, "amount": e.amount, "ts": e.ts, "currency": currency, "merchant": merchant});
        (v2(), v)
    };
    json!({"partition": p, "key": e.card, "schema": schema.to_string(), "value": value})
}

#[test]
fn avro_in_two_schema_versions_is_windowed_exactly_once_into_avro_and_bad_records_are_dead_letters() {
    require_port("Kafka", 9092);
    require_port("the schema registry", 8081);
    let name = unique("avro");
    let (input, output, late) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-late"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&late, 1)]);
    let subject = format!("{input}-value");
    let (code, answer) = registry("PUT", &format!("/config/{subject}"), Some(&json!({"compatibility": "BACKWARD"})));
    assert_eq!(code, 200, "{answer}");
    let v1_id = register(&subject, &v1());
    let v2_id = register(&subject, &v2());
    assert_ne!(v1_id, v2_id);
    // The registry keeps malformed schemas out of the subject...
    let (code, answer) = registry(
        "POST",
        &format!("/subjects/{subject}/versions"),
        Some(&json!({"schema": v3_incompatible().to_string()})),
    );
    assert_eq!(code, 409, "the BACKWARD rule refuses `amount` as text: {answer}");
    // ...but a producer can still use a schema of another subject on the topic.
    let v3_id = register(&format!("{input}-legacy"), &v3_incompatible());

    let evs = events_spaced(PARTITIONS, 3_000, 400);
    // USD payments count a hundred times their amount (the projection's CASE): v1 payments,
    // written without a currency, take v2's default, EUR.
    let priced: Vec<(i32, Ev)> = evs
        .iter()
        .enumerate()
        .map(|(i, (p, e))| (*p, Ev { amount: if is_usd(i) { e.amount * 100 } else { e.amount }, ..e.clone() }))
        .collect();
    let (want, want_late): (Windows, BTreeSet<String>) = reference(&priced, PARTITIONS);
    let lines: Vec<Value> = evs.iter().enumerate().map(|(i, (p, e))| event_line(i, *p, e)).collect();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = lines.split_at(lines.len() / 2);
    produce(dir.path(), &input, first);
    // Bad records, all in partition 0 at offsets after the first half, where they hold nothing up.
    let mut incompatible = Vec::new();
    string("bad-1", &mut incompatible);
    string("card-00", &mut incompatible);
    string("twelve", &mut incompatible);
    long(1_795_564_800_000, &mut incompatible);
    let mut truncated = Vec::new();
    string("bad-2", &mut truncated);
    string("card-00", &mut truncated);
    let bad = [
        (wire(v3_id, &incompatible), "cannot be read as the pipeline's fields"),
        (wire(v2_id, &truncated), "does not follow its schema"),
        (wire(987_654, &incompatible), "schema id 987654 is not in the registry"),
        (b"{\"id\": \"json\"}".to_vec(), "not in the Schema Registry's wire format"),
        (vec![0, 0, 1], "too short for the Schema Registry's header"),
    ];
    produce_raw(dir.path(), &input, &bad);

    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  epochInterval: 200ms
  checkpointing: {{interval: 500ms, storage: "file://{checkpoints}"}}
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {input}, startFrom: earliest}}
        format: avro
        registry: {{url: "{r}"}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      priced:
        from: payments
        select: {{card_id: card_id, ts: ts, amount: "CASE WHEN currency = 'EUR' THEN amount ELSE amount * 100 END"}}
      per_card_minute:
        from: priced
        keyBy: [card_id]
        window: {{tumbling: 1m}}
        aggregate: {{"n": "count(*)", total: "sum(amount)"}}
        lateOutput: corrections
    sinks:
      results:
        from: per_card_minute
        kafka: {{brokers: "{b}", topic: {output}, format: avro, registry: {{url: "{r}"}}, keyFormat: avro}}
      corrections: {{kafka: {{brokers: "{b}", topic: {late}}}}}
      dead: {{file: {{path: dead.jsonl}}}}
    deadLetter: dead
"#,
            checkpoints = dir.path().join("checkpoints").display(),
            b = kafka_brokers(),
            r = registry_url(),
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let log = run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();

    // First run: killed hard as soon as some results are out.
    let mut w = start_worker(&manifest, &state, &log, &[]);
    wait_until(&format!("first Avro results (log {})", log.display()), Duration::from_secs(90), || {
        (!consume(&output).is_empty()).then_some(())
    });
    w.kill().unwrap();
    w.wait().unwrap();
    produce(dir.path(), &input, second);
    let mut w = start_worker(&manifest, &state, &log, &[]);

    // The registry holds the schema the worker derived for its output, and the keys'.
    let out_schema = wait_until("the output's schema in the registry", Duration::from_secs(30), || {
        let (code, v) = registry("GET", &format!("/subjects/{output}-value/versions/latest"), None);
        (code == 200).then_some(v)
    });
    let (code, key_schema) = registry("GET", &format!("/subjects/{output}-key/versions/latest"), None);
    assert_eq!(code, 200, "{key_schema}");
    let got =
        wait_until(&format!("every window in {output} (log {})", log.display()), Duration::from_secs(180), || {
            let all = consume(&output);
            let windows: BTreeSet<(String, i64)> = all
                .iter()
                .map(|r| {
                    (r["value"]["card_id"].as_str().unwrap().to_string(), r["value"]["window_start"].as_i64().unwrap())
                })
                .collect();
            (windows.len() >= want.len()).then_some(all)
        });
    // Late payments go on as the rows the window read (Avro records are not copied as read).
    let want_late: BTreeSet<(String, i64)> =
        priced.iter().filter(|(_, e)| want_late.contains(&e.id)).map(|(_, e)| (e.card.clone(), e.ts)).collect();
    let got_late = wait_until("every late payment in the late output", Duration::from_secs(60), || {
        let rows = weir_e2e::payments::read_all(&late, 1);
        (rows.len() >= want_late.len()).then_some(rows)
    });
    Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap();
    assert!(w.wait().unwrap().success(), "SIGTERM exits 0; log {}", log.display());

    let mut windows = Windows::new();
    for r in &got {
        let v = &r["value"];
        let key = (v["card_id"].as_str().unwrap().to_string(), v["window_start"].as_i64().unwrap());
        assert_eq!(r["key"], json!({"card_id": key.0}), "the key is the Avro record of the key fields");
        assert_eq!(r["schema_id"], out_schema["id"], "written with the registered schema");
        assert!(
            windows.insert(key.clone(), (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap())).is_none(),
            "{key:?} twice: exactly once"
        );
    }
    assert_eq!(windows, want, "every window once, with the reference's count and sum");
    let late_rows: BTreeSet<(String, i64)> =
        got_late.iter().map(|(_, v)| (v["card_id"].as_str().unwrap().to_string(), v["ts"].as_i64().unwrap())).collect();
    assert_eq!((late_rows, got_late.len()), (want_late.clone(), want_late.len()), "the late payments, each once");
    let schema = out_schema["schema"].as_str().unwrap();
    assert!(schema.contains("timestamp-millis") && schema.contains("\"window_start\""), "{schema}");

    assert_dead_letters(&dir.path().join("dead.jsonl"), &bad);
}

/// `examples/payments-avro-loader.yaml` and `examples/payments-avro.yaml` as written: datagen
/// payments written in Avro, then windowed from Avro (the schema from the subject) into Avro,
/// which Confluent's deserializer reads.
#[test]
fn the_avro_examples_run_as_written() {
    require_port("Kafka", 9092);
    require_port("the schema registry", 8081);
    let results = "payments-avro-per-card-minute";
    weir_e2e::payments::recreate_topics(&[
        ("payments-avro", PARTITIONS),
        (results, PARTITIONS),
        ("payments-avro-corrections", 1),
        ("payments-avro-dead-letters", 1),
    ]);
    let loader = Command::new(weir_e2e::worker_bin())
        .args(["run", "-f", repo_dir().join("examples/payments-avro-loader.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(loader.status.success(), "the loader: {}", String::from_utf8_lossy(&loader.stderr));
    let (code, loaded) = registry("GET", "/subjects/payments-avro-value/versions/latest", None);
    assert_eq!(code, 200, "the loader registered its schema: {loaded}");
    let dir = tempfile::tempdir().unwrap();
    let log = run_dir().join("logs").join(format!("e2e-{}.log", unique("avro-example")));
    let example = repo_dir().join("examples/payments-avro.yaml");
    let mut w = start_worker(&example, &dir.path().join("state"), &log, &[]);
    let got = wait_until(&format!("the example's windows (log {})", log.display()), Duration::from_secs(120), || {
        let all = consume(results);
        (all.len() >= 100).then_some(all)
    });
    Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap();
    assert!(w.wait().unwrap().success(), "SIGTERM exits 0; log {}", log.display());
    for r in &got {
        let v = &r["value"];
        for field in ["card_id", "window_start", "window_end", "n", "total"] {
            assert!(!v[field].is_null(), "{field} in {r}");
        }
        assert_eq!(r["key"]["card_id"], v["card_id"], "{r}");
        assert!(v["n"].as_i64().unwrap() >= 1 && v["total"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// An Avro sink whose derived schema breaks its subject's compatibility rule stops the start
/// with the registry's reason; nothing is written.
#[test]
fn an_avro_sink_schema_the_registry_refuses_stops_the_start_with_its_reason() {
    require_port("Kafka", 9092);
    require_port("the schema registry", 8081);
    let name = unique("avro-refused");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&[(&input, 1), (&output, 1)]);
    let subject = format!("{output}-value");
    let (code, answer) = registry("PUT", &format!("/config/{subject}"), Some(&json!({"compatibility": "BACKWARD"})));
    assert_eq!(code, 200, "{answer}");
    let earlier = json!({"type": "record", "name": "Row", "namespace": "weir.results", "fields": [
        {"name": "card_id", "type": "long"}]});
    register(&subject, &earlier);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  pipeline:
    sources: {{p: {{kafka: {{brokers: "{b}", topic: {input}, bounded: true}}, schema: {{card_id: string}}}}}}
    sinks:
      results: {{from: p, kafka: {{brokers: "{b}", topic: {output}, format: avro, registry: {{url: "{r}"}}}}}}
"#,
            b = kafka_brokers(),
            r = registry_url(),
        ),
    )
    .unwrap();
    let out = Command::new(weir_e2e::worker_bin()).args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("sink results: the schema registry refused the schema for subject {subject} as incompatible with its earlier versions")),
        "{err}"
    );
    // Apicurio names the field by its place in the schema.
    assert!(err.contains("at /fields/0/type"), "the registry's reason names the field: {err}");
}

/// A Kafka table in Avro: merchants written with two versions of their schema (the second adds
/// `risk` with a default) enrich JSON payments; the table's schema comes from its subject.
#[test]
fn an_avro_table_enriches_a_stream() {
    require_port("Kafka", 9092);
    require_port("the schema registry", 8081);
    let name = unique("avro-table");
    let (payments, merchants) = (format!("{name}-pay"), format!("{name}-merchants"));
    create_topics(&[(&payments, 1), (&merchants, 1)]);
    let subject = format!("{merchants}-value");
    let m1 = json!({"type": "record", "name": "Merchant", "fields": [
        {"name": "merchant_id", "type": "string"}, {"name": "category", "type": "string"}]});
    let m2 = json!({"type": "record", "name": "Merchant", "fields": [
        {"name": "merchant_id", "type": "string"}, {"name": "category", "type": "string"},
        {"name": "risk", "type": "long", "default": 5}]});
    register(&subject, &m1);
    register(&subject, &m2);
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..6)
        .map(|i| {
            let (schema, value) = match i % 2 {
                0 => (&m1, json!({"merchant_id": format!("m{i}"), "category": format!("c{i}")})),
                _ => (&m2, json!({"merchant_id": format!("m{i}"), "category": format!("c{i}"), "risk": i * 10})),
            };
            json!({"partition": 0, "key": format!("m{i}"), "schema": schema.to_string(), "value": value})
        })
        .collect();
    produce(dir.path(), &merchants, &rows);
    let producer = weir_e2e::payments::producer();
    for i in 0..6 {
        let payload = json!({"id": format!("p{i}"), "merchant_id": format!("m{i}"), "ts": 1_000 + i}).to_string();
        producer.send(rdkafka::producer::BaseRecord::<(), _>::to(&payments).payload(&payload)).unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    let (mut w, log) = start_job(
        dir.path(),
        &name,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {payments}, startFrom: earliest, bounded: true}}
        schema: {{id: string, merchant_id: string, ts: timestamp}}
    tables:
      merchants:
        kafka: {{brokers: "{b}", topic: {merchants}}}
        key: merchant_id
        format: avro
        registry: {{url: "{r}"}}
    streams:
      enriched: {{from: payments, enrich: {{table: merchants, by: merchant_id}}}}
    sinks:
      out: {{from: enriched, file: {{path: out.jsonl}}}}
"#,
            b = kafka_brokers(),
            r = registry_url(),
        ),
    );
    let status =
        wait_until(&format!("the bounded job to finish (log {})", log.display()), Duration::from_secs(60), || {
            w.try_wait().unwrap()
        });
    assert!(status.success(), "log {}", log.display());
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let got: BTreeSet<(String, String, i64)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (v["id"].as_str().unwrap().into(), v["category"].as_str().unwrap().into(), v["risk"].as_i64().unwrap())
        })
        .collect();
    // v1 merchants take v2's default risk.
    let want: BTreeSet<(String, String, i64)> =
        (0..6).map(|i| (format!("p{i}"), format!("c{i}"), if i % 2 == 0 { 5 } else { i * 10 })).collect();
    assert_eq!(got, want, "{text}");
}

/// `format: json-schema`: JSON objects in the registry's wire format, as Confluent's JSON Schema
/// serializer writes them, in two versions of their schema (the second adds `currency`),
/// windowed into a `json-schema` topic that Confluent's deserializer reads; records not in the
/// wire format, or naming a schema the registry lacks, are dead letters.
#[test]
fn json_schema_in_and_out_through_the_registry() {
    require_port("Kafka", 9092);
    require_port("the schema registry", 8081);
    let name = unique("jsonsr");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS)]);
    let subject = format!("{input}-value");
    let v1 = json!({"type": "object", "properties": {
        "id": {"type": "string"}, "card_id": {"type": "string"}, "amount": {"type": "integer"},
        "ts": {"type": "integer"}}, "required": ["id", "card_id", "amount", "ts"]});
    let mut v2 = v1.clone();
    v2["properties"]["currency"] = json!({"type": "string"});
    for v in [&v1, &v2] {
        let body = json!({"schema": v.to_string(), "schemaType": "JSON"});
        let (code, answer) = registry("POST", &format!("/subjects/{subject}/versions"), Some(&body));
        assert_eq!(code, 200, "{answer}");
    }
    let evs = events_spaced(PARTITIONS, 900, 400);
    let (want, _) = reference(&evs, PARTITIONS);
    let lines: Vec<Value> = evs
        .iter()
        .enumerate()
        .map(|(i, (p, e))| {
            let mut value = json!({"id": e.id, "card_id": e.card, "amount": e.amount, "ts": e.ts});
            let schema = if i % 2 == 0 {
                &v1
            } else {
                value["currency"] = json!("EUR");
                &v2
            };
            json!({"partition": p, "key": e.card, "json_schema": schema.to_string(), "value": value})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    produce(dir.path(), &input, &lines);
    let plain = br#"{"id": "plain", "card_id": "card-00", "amount": 1, "ts": 1}"#.to_vec();
    let unknown = wire(987_655, br#"{"id": "unknown", "card_id": "card-00", "amount": 1, "ts": 1}"#);
    let bad =
        [(plain, "not in the Schema Registry's wire format"), (unknown, "schema id 987655 is not in the registry")];
    produce_raw(dir.path(), &input, &bad);
    let (mut w, log) = start_job(
        dir.path(),
        &name,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  epochInterval: 200ms
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {input}, startFrom: earliest}}
        format: json-schema
        registry: {{url: "{r}"}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      per_card_minute:
        from: payments
        keyBy: [card_id]
        window: {{tumbling: 1m}}
        aggregate: {{"n": "count(*)", total: "sum(amount)"}}
    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}, format: json-schema, registry: {{url: "{r}"}}}}}}
      dead: {{file: {{path: dead.jsonl}}}}
    deadLetter: dead
"#,
            b = kafka_brokers(),
            r = registry_url(),
        ),
    );
    let got =
        wait_until(&format!("every window in {output} (log {})", log.display()), Duration::from_secs(120), || {
            let all = consume(&output);
            (all.len() >= want.len()).then_some(all)
        });
    Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap();
    assert!(w.wait().unwrap().success(), "SIGTERM exits 0; log {}", log.display());
    let (code, out_schema) = registry("GET", &format!("/subjects/{output}-value/versions/latest"), None);
    assert_eq!((code, out_schema["schemaType"].as_str()), (200, Some("JSON")), "{out_schema}");
    let mut windows = Windows::new();
    for r in &got {
        let v = &r["value"];
        assert_eq!(r["schema_id"], out_schema["id"], "{r}");
        let key = (v["card_id"].as_str().unwrap().to_string(), v["window_start"].as_i64().unwrap());
        assert!(windows.insert(key, (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap())).is_none(), "{r}");
    }
    assert_eq!(windows, want);
    assert_dead_letters(&dir.path().join("dead.jsonl"), &bad);
}
