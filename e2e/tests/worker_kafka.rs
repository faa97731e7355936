//! A Kafka-to-Kafka window job on the local stack: several partitions, out-of-order and late
//! events, the worker killed with SIGKILL in the middle and restarted. Every window result
//! equals the reference and every late event reaches the corrections topic. With exactly-once
//! delivery (the default) a `read_committed` consumer sees each result and each late event
//! exactly once, whether the kill came before the first state commit (the restarted worker
//! rebuilds its state from the start of the topic with its Kafka output muted up to the
//! committed offsets) or after (it replays from its state). At-least-once, nothing is lost and
//! the last result per key and window counts, as the upsert contract says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_e2e::{kafka_brokers, require_port, unique, wait_until, worker_bin};

const PARTITIONS: i32 = 3;
const OOO_MS: i64 = 5_000;
const WINDOW_MS: i64 = 60_000;

fn create_topics(names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let topics: Vec<NewTopic> = names.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for r in rt.block_on(admin.create_topics(&topics, &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
}

/// (card, window start) -> (count, sum).
type Windows = BTreeMap<(String, i64), (i64, i64)>;

#[derive(Clone)]
struct Ev {
    id: String,
    card: String,
    amount: i64,
    ts: i64,
}

fn events() -> Vec<(i32, Ev)> {
    // Deterministic input: 24 cards over 3 partitions, ~20 minutes of event time, 10 % out of
    // order by up to 4 s, every 50th event late by 2 minutes.
    let mut out = Vec::new();
    let base = 1_795_564_800_000i64;
    let mut x: u64 = 42;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..6_000i64 {
        let card = format!("card-{:02}", rnd() % 24);
        let p = (card[5..].parse::<i32>().unwrap()) % PARTITIONS;
        let mut ts = base + i * 200;
        if rnd() % 10 == 0 {
            ts -= (rnd() % 4_000) as i64;
        }
        if i % 50 == 49 {
            ts -= 120_000;
        }
        out.push((p, Ev { id: format!("e{i}"), card, amount: (rnd() % 1_000) as i64, ts }));
    }
    out
}

/// Per partition in order: the windows (card, start) -> (count, sum) that the final watermark
/// fires, and the late event ids.
fn reference(evs: &[(i32, Ev)]) -> (Windows, BTreeSet<String>) {
    let mut fired = BTreeMap::new();
    let mut late = BTreeSet::new();
    for p in 0..PARTITIONS {
        let mut results = BTreeMap::new();
        let mut max_ts = i64::MIN;
        for (_, e) in evs.iter().filter(|(q, _)| *q == p) {
            let wm = if max_ts == i64::MIN { i64::MIN } else { max_ts - OOO_MS - 1 };
            let start = e.ts - e.ts.rem_euclid(WINDOW_MS);
            if start + WINDOW_MS - 1 <= wm {
                late.insert(e.id.clone());
            } else {
                let r = results.entry((e.card.clone(), start)).or_insert((0, 0));
                r.0 += 1;
                r.1 += e.amount;
            }
            max_ts = max_ts.max(e.ts);
        }
        let final_wm = max_ts - OOO_MS - 1;
        fired.extend(results.into_iter().filter(|((_, start), _)| start + WINDOW_MS - 1 <= final_wm));
    }
    (fired, late)
}

fn start_worker(manifest: &Path, state: &Path, log: &Path) -> Child {
    Command::new(worker_bin())
        .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .expect("starting weir-worker")
}

/// Every committed record of `topic`, read up to the end offsets as they are now.
fn read_all(topic: &str, partitions: i32) -> Vec<(Option<String>, serde_json::Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("e2e-check"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        ends.push(consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1);
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        (0..partitions).all(|p| match pos.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o >= ends[p as usize],
            _ => ends[p as usize] == 0,
        })
    };
    while !caught_up(&consumer) {
        assert!(Instant::now() < deadline, "could not read {topic} to its end in 30 s");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let key = m.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
            out.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
        }
    }
    out
}

#[test]
fn exactly_once_through_sigkill_before_any_state_commit() {
    windows_survive_sigkill("exactly-once", "1h", false);
}

#[test]
fn exactly_once_through_sigkill_between_state_commits() {
    windows_survive_sigkill("exactly-once", "100ms", false);
}

#[test]
fn exactly_once_through_sigkill_and_a_lost_state_folder() {
    windows_survive_sigkill("exactly-once", "100ms", true);
}

#[test]
fn at_least_once_through_sigkill() {
    windows_survive_sigkill("at-least-once", "100ms", false);
}

/// `lose_state`: the state folder is deleted after the kill (a new node); the worker restores
/// the last checkpoint from storage.
fn windows_survive_sigkill(delivery: &str, checkpoint_interval: &str, lose_state: bool) {
    require_port("Kafka", 9092);
    let name = unique("wk");
    let (input, output, corrections) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-late"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1)]);
    let evs = events();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let produce = |evs: &[(i32, Ev)]| {
        for (p, e) in evs {
            let payload =
                serde_json::json!({"id": e.id, "card_id": e.card, "amount": e.amount, "ts": e.ts}).to_string();
            while producer.send(BaseRecord::to(&input).partition(*p).key(&e.card).payload(&payload)).is_err() {
                producer.poll(Duration::from_millis(10));
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    let (first_half, second_half) = evs.split_at(evs.len() / 2);
    produce(first_half);
    // A bad record in partition 0 goes to the dead letter and stops nothing.
    producer.send(BaseRecord::to(&input).partition(0).key("bad").payload("{\"id\": ")).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  epochInterval: 50ms
  checkpointing: {{interval: {checkpoint_interval}, storage: "file://{checkpoints}"}}
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {input}, startFrom: earliest}}
        schema: {{id: string, card_id: string, amount: long, ts: timestamp}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      per_card_minute:
        from: payments
        keyBy: [card_id]
        window: {{tumbling: 1m}}
        aggregate: {{n: "count(*)", total: "sum(amount)"}}
        lateOutput: corrections
    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}}}}}
      corrections: {{kafka: {{brokers: "{b}", topic: {corrections}}}}}
      dead: {{file: {{path: dead.jsonl}}}}
    deadLetter: dead
"#,
            b = kafka_brokers(),
            checkpoints = dir.path().join("checkpoints").display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    // The worker's log outlives the test's temporary folder, for diagnosis.
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();

    // First run: killed hard as soon as some results are out.
    let mut w = start_worker(&manifest, &state, &log);
    wait_until(&format!("first results (worker log: {})", log.display()), Duration::from_secs(60), || {
        (!read_all(&output, PARTITIONS).is_empty()).then_some(())
    });
    w.kill().unwrap(); // SIGKILL
    w.wait().unwrap();
    if lose_state {
        std::fs::remove_dir_all(&state).unwrap();
    }
    // Windows open at the kill continue from the restored state with the second half.
    produce(second_half);

    // Second run resumes from the state and positions it committed.
    let mut w = start_worker(&manifest, &state, &log);
    let (want, want_late) = reference(&evs);
    let mut last = BTreeMap::new();
    let mut emitted = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let mut got = Windows::new();
        let all = read_all(&output, PARTITIONS);
        emitted = all.len();
        for (key, v) in all {
            let card = v["card_id"].as_str().unwrap().to_string();
            assert_eq!(key.as_deref(), Some(card.as_str()), "the message key is the key field");
            got.insert(
                (card, v["window_start"].as_i64().unwrap()),
                (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap()),
            );
        }
        last = got;
        if last == want {
            break;
        }
    }
    assert_eq!(last.len(), want.len(), "every window the input fires is emitted, no other");
    assert_eq!(last, want, "every window equals the reference");
    let late_all: Vec<String> =
        read_all(&corrections, 1).iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    let late: BTreeSet<String> = late_all.iter().cloned().collect();
    assert_eq!(late, want_late, "exactly the late events reach the corrections topic");
    if delivery == "exactly-once" {
        assert_eq!(emitted, want.len(), "each window result is committed exactly once");
        assert_eq!(late_all.len(), want_late.len(), "each late event is committed exactly once");
    }

    // SIGTERM: commits and exits 0.
    let pid = w.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = w.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0; log: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    assert!(dead.contains("\"partition\":0"), "the bad record reached the dead letter: {dead}");
}
