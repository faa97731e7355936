//! The payments fixture of the Kafka end-to-end tests: deterministic keyed events with
//! out-of-order and late ones, a reference for their 1-minute tumbling windows, and helpers to
//! create topics, produce them and read results back as a `read_committed` consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{kafka_brokers, unique, wait_until};

pub const OOO_MS: i64 = 5_000;
pub const WINDOW_MS: i64 = 60_000;

pub fn create_topics(names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let topics: Vec<NewTopic> =
        names.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(crate::replication()))).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for r in rt.block_on(admin.create_topics(&topics, &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    wait_for_topics(names);
}

/// Deletes `names` if they exist (with whatever an earlier run left in them, open
/// transactions included) and creates them afresh.
pub fn recreate_topics(names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    // An unknown topic is the error to ignore here.
    let _ = rt.block_on(admin.delete_topics(&list, &AdminOptions::new()));
    let topics: Vec<NewTopic> =
        names.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(crate::replication()))).collect();
    // The deletion finishes in the background: creating fails until it has.
    wait_until("the topics deleted and created again", Duration::from_secs(60), || {
        let results = rt.block_on(admin.create_topics(&topics, &AdminOptions::new())).ok()?;
        results.iter().all(|r| r.is_ok()).then_some(()).or_else(|| {
            std::thread::sleep(Duration::from_millis(500));
            None
        })
    });
    wait_for_topics(names);
}

/// Until the broker's metadata lists `names` with all their partitions.
fn wait_for_topics(names: &[(&str, i32)]) {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    for (name, partitions) in names {
        wait_until(&format!("topic {name} in the metadata"), Duration::from_secs(30), || {
            let md = consumer.fetch_metadata(Some(name), Duration::from_secs(5)).ok()?;
            let t = md.topics().iter().find(|t| t.name() == *name)?;
            (t.error().is_none() && t.partitions().len() == *partitions as usize).then_some(())
        });
    }
}

/// (card, window start) -> (count, sum).
pub type Windows = BTreeMap<(String, i64), (i64, i64)>;

#[derive(Clone)]
pub struct Ev {
    pub id: String,
    pub card: String,
    pub amount: i64,
    pub ts: i64,
}

pub fn events(partitions: i32) -> Vec<(i32, Ev)> {
    // ~20 minutes of event time.
    events_spaced(partitions, 6_000, 200)
}

/// `n` deterministic events `step_ms` of event time apart: 24 cards over `partitions`
/// partitions, 10 % out of order by up to 4 s, every 50th event late by 2 minutes.
pub fn events_spaced(partitions: i32, n: i64, step_ms: i64) -> Vec<(i32, Ev)> {
    events_of_cards(24, partitions, n, step_ms)
}

/// [`events_spaced`] over `cards` cards (`card-00`…, three digits from 100 cards on), card `c`
/// on partition `c % partitions`: with at least as many cards as partitions, every partition
/// has events.
pub fn events_of_cards(cards: u64, partitions: i32, n: i64, step_ms: i64) -> Vec<(i32, Ev)> {
    let width = if cards > 100 { 3 } else { 2 };
    let mut out = Vec::new();
    let base = 1_795_564_800_000i64;
    let mut x: u64 = 42;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..n {
        let card = format!("card-{:0width$}", rnd() % cards);
        let p = (card[5..].parse::<i32>().unwrap()) % partitions;
        let mut ts = base + i * step_ms;
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
pub fn reference(evs: &[(i32, Ev)], partitions: i32) -> (Windows, BTreeSet<String>) {
    let mut fired = BTreeMap::new();
    let mut late = BTreeSet::new();
    for p in 0..partitions {
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

/// The sources and streams of the windowed job the tests run (at the indentation of
/// `spec.pipeline`'s fields): per-card 1-minute count and sum of `input`, late events to the
/// `corrections` sink, which the caller declares with its `results` sink.
pub fn window_job_pipeline(input: &str) -> String {
    format!(
        r#"    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {input}, startFrom: earliest}}
        schema: {{id: string, card_id: string, amount: long, ts: timestamp}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      per_card_minute:
        from: payments
        keyBy: [card_id]
        window: {{tumbling: 1m}}
        aggregate: {{"n": "count(*)", total: "sum(amount)"}}
        lateOutput: corrections
"#,
        b = kafka_brokers()
    )
}

/// The sources and streams of the repartitioned window job (at the indentation of
/// `spec.pipeline`'s fields): the payments of `input`, moved to the partition of their card by
/// the repartition step `by_card`, counted and summed per card and minute in
/// `per_card_minute`, with late events to the `corrections` sink that the caller declares.
pub fn repartition_job_pipeline(input: &str) -> String {
    let window = window_job_pipeline(input);
    let rekeyed = window.replace(
        "      per_card_minute:\n        from: payments\n",
        "      by_card: {from: payments, keyBy: [card_id], repartition: true}\n      per_card_minute:\n        from: by_card\n",
    );
    assert_ne!(rekeyed, window, "the window job reads the payments");
    rekeyed
}

/// A manifest of the window job ([`window_job_pipeline`]) named `name`, reading `input`,
/// an epoch every `epoch`, checkpointing every 500 ms into `dir`/checkpoints, with `sinks`
/// (the YAML of `spec.pipeline.sinks`' entries, indented by six spaces) and a file sink
/// `corrections` for its late events; written as `dir`/job.yaml, whose path it returns.
pub fn write_window_job(
    dir: &std::path::Path,
    name: &str,
    input: &str,
    epoch: &str,
    sinks: &str,
) -> std::path::PathBuf {
    let manifest = dir.join("job.yaml");
    let text = format!(
        r#"
metadata: {{name: {name}}}
spec:
  epochInterval: {epoch}
  checkpointing: {{interval: 500ms, storage: "file://{checkpoints}"}}
  pipeline:
{pipeline}    sinks:
{sinks}      corrections: {{file: {{path: late.jsonl}}}}
"#,
        checkpoints = dir.join("checkpoints").display(),
        pipeline = window_job_pipeline(input),
    );
    std::fs::write(&manifest, text).unwrap();
    manifest
}

/// The pattern step of the window job's tests: per card, two payments under 150 then one over
/// 850, within a minute (`pattern_step` is the manifest text).
pub fn pattern_step() -> &'static str {
    r#"      alerts:
        from: payments
        keyBy: [card_id]
        pattern:
          within: 1m
          sequence:
            - {name: small, where: "amount < 150", times: 2}
            - {name: big, where: "amount > 850"}
          emit: {card_id: card_id, first: small.id, hit: big.id}
"#
}

/// The reference of [`pattern_step`], written from its definition: per partition in order,
/// the events not late by the partition's watermark (`OOO_MS`); per card in event-time order
/// (equal times in input order), from past the last match on, the first event that completes
/// two smalls then a big, taken greedily from a small within a minute, from the earliest such
/// small. The (card, hit id) of every match the partition's final watermark reaches (the
/// topic does not end: later events wait).
pub fn pattern_reference(evs: &[(i32, Ev)], partitions: i32) -> BTreeSet<(String, String)> {
    let mut cards: BTreeMap<&str, Vec<(i64, usize)>> = BTreeMap::new();
    let mut final_wm: BTreeMap<&str, i64> = BTreeMap::new();
    for p in 0..partitions {
        let mut max_ts = i64::MIN;
        for (i, (_, e)) in evs.iter().enumerate().filter(|(_, (q, _))| *q == p) {
            if max_ts == i64::MIN || e.ts > max_ts - OOO_MS - 1 {
                cards.entry(&e.card).or_default().push((e.ts, i));
            }
            max_ts = max_ts.max(e.ts);
        }
        for (_, e) in evs.iter().filter(|(q, _)| *q == p) {
            final_wm.insert(&e.card, max_ts - OOO_MS - 1);
        }
    }
    let small = |i: usize| evs[i].1.amount < 150;
    let big = |i: usize| evs[i].1.amount > 850;
    let mut out = BTreeSet::new();
    for (card, mut list) in cards {
        list.retain(|&(ts, _)| ts <= final_wm[card]);
        list.sort();
        let completes = |s: usize, j: usize| -> bool {
            let mut smalls = 1;
            for &(ts, i) in &list[s + 1..=j] {
                if ts - list[s].0 > 60_000 {
                    return false;
                }
                if smalls == 2 && big(i) {
                    return (ts, i) == list[j];
                }
                if small(i) && smalls < 2 {
                    smalls += 1;
                }
            }
            false
        };
        let mut from = 0;
        for j in 0..list.len() {
            if j >= from && (from..j).any(|s| small(list[s].1) && completes(s, j)) {
                out.insert((card.to_string(), evs[list[j].1].1.id.clone()));
                from = j + 1;
            }
        }
    }
    out
}

/// Produces `evs` to `topic`, each to its partition, keyed by card; waits until all are acked.
pub fn produce(producer: &BaseProducer, topic: &str, evs: &[(i32, Ev)]) {
    for (p, e) in evs {
        let payload = serde_json::json!({"id": e.id, "card_id": e.card, "amount": e.amount, "ts": e.ts}).to_string();
        while producer.send(BaseRecord::to(topic).partition(*p).key(&e.card).payload(&payload)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    // A broker busy with a hundred workers' transactions can take longer than one flush.
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Err(e) = producer.flush(Duration::from_secs(30)) {
        assert!(Instant::now() < deadline, "producing to {topic}: {e}");
    }
}

/// Produces `evs` to `topic` from a thread, in `chunks` parts `pause` apart (input arriving
/// while a worker runs, is killed and restarts).
pub fn feed(topic: &str, evs: &[(i32, Ev)], chunks: usize, pause: Duration) -> std::thread::JoinHandle<()> {
    let (topic, evs) = (topic.to_string(), evs.to_vec());
    std::thread::spawn(move || {
        let p = producer();
        for chunk in evs.chunks(evs.len() / chunks + 1) {
            produce(&p, &topic, chunk);
            std::thread::sleep(pause);
        }
    })
}

pub fn producer() -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap()
}

/// An idempotent producer: a batch retried after a timeout (a broker busy with a hundred
/// workers) keeps its place, so each partition holds the events in the order they were sent,
/// which is the order the reference assumes. With [`producer`] a retried batch can land after
/// the next one, and its events be late in the partition. (Slower to send a burst.)
pub fn ordered_producer() -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", kafka_brokers()).set("enable.idempotence", "true").create().unwrap()
}

/// Every committed record of `topic`, read up to the end offsets as they are now.
pub fn read_all(topic: &str, partitions: i32) -> Vec<(Option<String>, serde_json::Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("e2e-check"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    // A broker just restarted answers "not leader" until it has taken its partitions back.
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        ends.push(loop {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                Ok((_, end)) => break end,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the end offset of {topic} [{p}]: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        });
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
        // Errors are librdkafka's notices (a broker of the cluster down); it retries.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = m.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
            out.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
        }
    }
    out
}

/// Waits until `topic` holds a result for each of `expected` windows; returns the results by
/// (card, window start) and how many messages there were.
pub fn windows_of(topic: &str, partitions: i32, expected: usize) -> (Windows, usize) {
    wait_until(&format!("{expected} windows in {topic}"), Duration::from_secs(180), || {
        let all = read_all(topic, partitions);
        let got: Windows = all
            .iter()
            .map(|(_, v)| {
                let card = v["card_id"].as_str().unwrap().to_string();
                ((card, v["window_start"].as_i64().unwrap()), (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap()))
            })
            .collect();
        (got.len() >= expected).then_some((got, all.len()))
    })
}

/// Polls `read` (the window results a store holds, and how many rows, documents or records
/// held them) until they equal `want` or two minutes pass, then stops the worker with `stop`
/// and checks that each result is there exactly once with the reference's values.
pub fn assert_exactly_once(
    want: &Windows,
    log: &std::path::Path,
    stop: impl FnOnce(),
    mut read: impl FnMut() -> (Windows, usize),
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut got, mut count) = read();
    while &got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        (got, count) = read();
    }
    stop();
    let missing: Vec<_> = want.iter().filter(|(k, _)| !got.contains_key(*k)).take(5).collect();
    let wrong: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).take(5).collect();
    let log = log.display();
    assert!(missing.is_empty() && wrong.is_empty(), "missing {missing:?}; wrong or extra {wrong:?}; log {log}");
    assert_eq!(count, want.len(), "each window result is stored exactly once; log {log}");
}

/// The window job of a sink's end-to-end test: a fresh input topic of `partitions` partitions,
/// the fixture's events and their reference windows, and the manifest ([`write_window_job`])
/// in a folder of its own, with its state folder, log and worker environment.
pub struct SinkJob {
    pub name: String,
    pub input: String,
    pub evs: Vec<(i32, Ev)>,
    pub want: Windows,
    pub manifest: std::path::PathBuf,
    pub state: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl SinkJob {
    /// `sink` gives the YAML of the sinks' entries (indented by six spaces) for the job's name;
    /// `epoch` is its `epochInterval`.
    pub fn new(
        prefix: &str,
        partitions: i32,
        epoch: &str,
        env: Vec<(&'static str, String)>,
        sink: impl FnOnce(&str) -> String,
    ) -> SinkJob {
        let name = unique(prefix);
        let input = format!("{name}-in");
        create_topics(&[(&input, partitions)]);
        let evs = events(partitions);
        let (want, _) = reference(&evs, partitions);
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_window_job(dir.path(), &name, &input, epoch, &sink(&name));
        let state = dir.path().join("state");
        let log = crate::run_dir().join("logs").join(format!("e2e-{name}.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        SinkJob { name, input, evs, want, manifest, state, log, env, _dir: dir }
    }

    pub fn start(&self) -> std::process::Child {
        crate::start_worker(&self.manifest, &self.state, &self.log, &self.env)
    }

    /// Feeds the input while the worker is killed at random moments ([`crate::kill_repeatedly`],
    /// five rounds from `seed`), then starts the worker that runs to the end.
    pub fn through_kills(&self, seed: u64) -> std::process::Child {
        let feeder = feed(&self.input, &self.evs, 40, Duration::from_millis(250));
        crate::kill_repeatedly(&self.manifest, &self.state, &self.log, &self.env, (5, seed, 1500));
        feeder.join().unwrap();
        self.start()
    }

    /// Feeds the input to a running worker; once `begun` says output arrived, the stack's
    /// `component` (`e2e/stack/<component>.sh`) is stopped for `down`, then started again. The
    /// worker, which went on through it.
    pub fn through_outage(
        &self,
        component: &str,
        down: Duration,
        mut begun: impl FnMut() -> bool,
    ) -> std::process::Child {
        let feeder = feed(&self.input, &self.evs, 40, Duration::from_millis(250));
        let w = self.start();
        wait_until(&format!("the first output before stopping {component}"), Duration::from_secs(60), || {
            begun().then_some(())
        });
        let script = crate::repo_dir().join(format!("e2e/stack/{component}.sh"));
        for (action, pause) in [("stop", down), ("start", Duration::ZERO)] {
            let out = std::process::Command::new(&script).arg(action).output().unwrap();
            assert!(out.status.success(), "{component} {action}: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(pause);
        }
        feeder.join().unwrap();
        w
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
