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
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use weir_e2e::payments::{
    create_topics, events, feed, produce, producer, read_all, reference, window_job_pipeline, windows_of, Ev,
};
use weir_e2e::window_job::{alerts_of, check_alerts, check_results, write_job, write_manifest, PARTITIONS};
use weir_e2e::{free_port, kafka_brokers, require_port, start_pod, unique, wait_until, worker_bin};

fn start_worker(manifest: &Path, state: &Path, log: &Path) -> Child {
    weir_e2e::start_worker(manifest, state, log, &[])
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
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1), (&alerts_of(&output), 1)]);
    let evs = events(PARTITIONS);
    let producer = producer();
    let produce = |evs: &[(i32, Ev)]| produce(&producer, &input, evs);
    let (first_half, second_half) = evs.split_at(evs.len() / 2);
    produce(first_half);
    // A bad record in partition 0 goes to the dead letter and stops nothing.
    producer.send(BaseRecord::to(&input).partition(0).key("bad").payload("{\"id\": ")).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let manifest = write_job(dir.path(), &name, delivery, checkpoint_interval, &input, &output, &corrections);
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
    check_results(&evs, &output, &corrections, delivery == "exactly-once");

    // SIGTERM: commits and exits 0.
    let pid = w.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = w.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0; log: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    assert!(dead.contains("\"partition\":0"), "the bad record reached the dead letter: {dead}");
}

/// Eight SIGKILLs at random moments while the input is being produced (every third one also
/// loses the state folder, so the next run restores a checkpoint); a last run finishes the input.
/// A `read_committed` consumer sees every window and late event exactly once.
#[test]
fn exactly_once_through_repeated_random_kills() {
    require_port("Kafka", 9092);
    let name = unique("kills");
    let (input, output, corrections) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-late"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1), (&alerts_of(&output), 1)]);
    let evs = events(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_job(dir.path(), &name, "exactly-once", "200ms", &input, &output, &corrections);
    let state = dir.path().join("state");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = feed(&input, &evs, 20, Duration::from_millis(150));
    kill_repeatedly(&manifest, &state, &log, 8, 0x9e37_79b9_7f4a_7c15, 300);
    feeder.join().unwrap();
    let mut w = start_worker(&manifest, &state, &log);
    check_results(&evs, &output, &corrections, true);
    check_alerts(&evs, PARTITIONS, &alerts_of(&output));
    w.kill().unwrap();
    w.wait().unwrap();
}

fn kill_repeatedly(manifest: &Path, state: &Path, log: &Path, rounds: u32, seed: u64, min_ms: u64) {
    weir_e2e::kill_repeatedly(manifest, state, log, &[], (rounds, seed, min_ms));
}

/// A sink topic that does not exist stops the worker at once with what to do, in both delivery
/// modes, instead of waiting for Kafka's message timeout.
#[test]
fn a_missing_sink_topic_is_a_clear_error() {
    require_port("Kafka", 9092);
    for delivery in ["exactly-once", "at-least-once"] {
        let name = unique("missing");
        let err = failed_start(&name, delivery, &format!("topic: {name}-nowhere"));
        assert!(
            err.contains(&format!("topic {name}-nowhere does not exist")) && err.contains("create it first"),
            "{delivery}: {err}"
        );
    }
}

#[test]
fn a_transaction_timeout_above_the_brokers_maximum_is_a_clear_error() {
    require_port("Kafka", 9092);
    let name = unique("txn-timeout");
    create_topics(&[(&name, 1)]);
    // The local broker keeps Kafka's default transaction.max.timeout.ms of 15 minutes.
    let sink = format!("topic: {name}, properties: {{transaction.timeout.ms: \"1000000\"}}");
    let err = failed_start(&name, "exactly-once", &sink);
    assert!(
        err.contains("transaction.timeout.ms is 1000000 ms, above the brokers' transaction.max.timeout.ms"),
        "{err}"
    );
}

/// Runs a job from topic `<name>-in` (created here) to a Kafka sink with `sink` fields, which
/// must fail at start; its error output.
fn failed_start(name: &str, delivery: &str, sink: &str) -> String {
    let input = format!("{name}-in");
    create_topics(&[(&input, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  pipeline:
    sources: {{p: {{kafka: {{brokers: "{b}", topic: {input}, bounded: true}}, schema: {{id: string}}}}}}
    sinks: {{out: {{from: p, kafka: {{brokers: "{b}", {sink}}}}}}}
"#,
            b = kafka_brokers()
        ),
    )
    .unwrap();
    let out = Command::new(worker_bin()).args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{delivery}: {err}");
    err
}

fn admin(port: u16, method: &str, path: &str) -> String {
    weir_e2e::http_raw(("127.0.0.1", port), method, path, None, "").unwrap_or_default()
}

/// Three workers in Pod mode run `manifest` (state folders next to it) until they have read
/// `first_read` records, take savepoint `sp1` and are killed; `then` produces the rest of the
/// input; `to` workers with
/// fresh state folders start from the savepoint (partitions now spread differently) and run
/// while `check` reads the results. Every one of the `partitions` is restored from it.
fn through_savepoint(
    manifest: &Path,
    log: &Path,
    partitions: usize,
    first_read: u64,
    to: u32,
    then: impl FnOnce(),
    check: impl FnOnce(),
) {
    let dir = manifest.parent().expect("the manifest is in a folder");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut workers: Vec<Child> = (0..3u32)
        .map(|i| start_pod(manifest, i, 3, &dir.join(format!("a{i}")), ports[i as usize], None, log))
        .collect();
    let read_in = |ports: &[u16]| -> u64 {
        ports
            .iter()
            .flat_map(|&p| {
                let m = admin(p, "GET", "/metrics");
                m.lines()
                    .filter(|l| l.starts_with("weir_records_in_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    wait_until("the first half read by 3 workers", Duration::from_secs(60), || {
        (read_in(&ports) == first_read).then_some(())
    });
    // Every worker has committed epoch transactions, and timed them, and none failed.
    let commits_timed = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with(r#"weir_epoch_seconds_count{phase="commit""#))
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > 0))
    };
    wait_until("committed transactions on every worker", Duration::from_secs(30), || {
        ports
            .iter()
            .all(|&p| {
                let m = admin(p, "GET", "/metrics");
                m.contains("weir_transactions_total") && m.contains(r#"outcome="committed""#) && commits_timed(&m)
            })
            .then_some(())
    });
    assert!(ports.iter().all(|&p| !admin(p, "GET", "/metrics").contains(r#"outcome="failed""#)));
    for &p in &ports {
        assert!(admin(p, "POST", "/savepoints/sp1").starts_with("HTTP/1.0 202"));
    }
    wait_until("the savepoint on every worker", Duration::from_secs(60), || {
        ports.iter().all(|&p| admin(p, "GET", "/savepoints/sp1").contains(r#""state":"completed""#)).then_some(())
    });
    for w in &mut workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    then();
    let ports: Vec<u16> = (0..to).map(|_| free_port()).collect();
    let mut workers: Vec<Child> = (0..to)
        .map(|i| start_pod(manifest, i, to, &dir.join(format!("b{i}")), ports[i as usize], Some("sp1"), log))
        .collect();
    check();
    for w in &mut workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(text.matches("restored state from savepoint").count(), partitions, "every partition from the savepoint");
}

/// The window job (with its pattern step) through a savepoint of 3 workers restored into `to`:
/// every window, late event and alert exactly once.
fn savepoint_into_parallelism(to: u32) {
    require_port("Kafka", 9092);
    const P4: i32 = 4;
    let name = unique(&format!("sp{to}"));
    let (input, output, corrections) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-late"));
    create_topics(&[(&input, P4), (&output, P4), (&corrections, 1), (&alerts_of(&output), 1)]);
    let evs = events(P4);
    let (first, second) = evs.split_at(evs.len() / 2);
    let producer = producer();
    produce(&producer, &input, first);
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_job(dir.path(), &name, "exactly-once", "1h", &input, &output, &corrections);
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    let then = || produce(&producer, &input, second);
    let check = || {
        let (want, want_late) = reference(&evs, P4);
        let (got, emitted) = windows_of(&output, P4, want.len());
        let late = read_all(&corrections, 1).len();
        check_alerts(&evs, P4, &alerts_of(&output));
        assert_eq!(got, want, "3 -> {to} workers through a savepoint: every window equals the reference");
        assert_eq!((emitted, late), (want.len(), want_late.len()), "each result and late event once");
    };
    through_savepoint(&manifest, &log, P4 as usize, first.len() as u64, to, then, check);
}

#[test]
fn a_savepoint_of_3_workers_restores_into_2() {
    savepoint_into_parallelism(2);
}

#[test]
fn a_savepoint_of_3_workers_restores_into_4() {
    savepoint_into_parallelism(4);
}

/// Exactly-once with `startFrom: latest`: a worker that restarts without state (killed before
/// its first state commit) resumes at the group's committed offset, not at the topic's end, so
/// input that arrived while it was down is not skipped; every record is written once.
#[test]
fn latest_resumes_at_the_committed_offset_after_losing_state() {
    require_port("Kafka", 9092);
    let name = unique("latest");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&[(&input, 1), (&output, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  epochInterval: 50ms
  checkpointing: {{interval: 1h}}
  pipeline:
    sources: {{p: {{kafka: {{brokers: "{b}", topic: {input}, startFrom: latest}}, schema: {{id: string}}}}}}
    streams: {{s: {{from: p, select: {{id: id}}}}}}
    sinks: {{out: {{from: s, kafka: {{brokers: "{b}", topic: {output}}}}}}}
"#,
            b = kafka_brokers()
        ),
    );
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    let state = dir.path().join("state");
    let producer = producer();
    let send = |from: usize, to: usize| {
        for i in from..to {
            let payload = format!(r#"{{"id":"r{i}"}}"#);
            producer.send(BaseRecord::<(), _>::to(&input).partition(0).payload(&payload)).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    let mut w = start_worker(&manifest, &state, &log);
    // `latest`: only what arrives once the worker runs; keep sending until it shows up.
    let mut sent = 0;
    wait_until("the worker to pick up new input", Duration::from_secs(60), || {
        send(sent, sent + 10);
        sent += 10;
        std::thread::sleep(Duration::from_millis(300));
        (!read_all(&output, 1).is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    w.kill().unwrap();
    w.wait().unwrap();
    let before: BTreeSet<String> =
        read_all(&output, 1).iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    // Input while the worker is down, then a restart with no state at all.
    std::fs::remove_dir_all(&state).ok();
    send(sent, sent + 100);
    let first_missed = sent;
    sent += 100;
    let mut w = start_worker(&manifest, &state, &log);
    let ids = wait_until("the input sent while down", Duration::from_secs(60), || {
        let all: Vec<String> =
            read_all(&output, 1).iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
        all.contains(&format!("r{}", sent - 1)).then_some(all)
    });
    w.kill().unwrap();
    w.wait().unwrap();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "every record written once");
    for i in first_missed..sent {
        assert!(unique.contains(&format!("r{i}")), "r{i}, sent while the worker was down, is not skipped");
    }
    assert!(unique.is_superset(&before));
}

/// The rows of `evs` (in order per partition) that are not late by their own topic's
/// watermark (maximum event time so far - `ooo` - 1 ms), by id, and each partition's final
/// watermark.
fn not_late(evs: &[(i32, Ev)], ooo: i64) -> (BTreeMap<String, (i32, i64)>, BTreeMap<i32, i64>) {
    let mut max_ts: BTreeMap<i32, i64> = BTreeMap::new();
    let mut kept = BTreeMap::new();
    for (p, e) in evs {
        let m = max_ts.entry(*p).or_insert(i64::MIN);
        if *m == i64::MIN || e.ts > *m - ooo - 1 {
            kept.insert(e.id.clone(), (*p, e.ts));
        }
        *m = (*m).max(e.ts);
    }
    (kept, max_ts.into_iter().map(|(p, m)| (p, m - ooo - 1)).collect())
}

/// A left join of payments with their captures (same id and card, so the same partition of
/// topics with the same partition count) within a minute after the payment.
struct JoinCase {
    name: String,
    pays: String,
    caps: String,
    output: String,
    payments: Vec<(i32, Ev)>,
    captures: Vec<(i32, Ev)>,
    /// Every pair and unmatched payment: (payment id, paired).
    want: BTreeSet<(String, bool)>,
}

impl JoinCase {
    fn new(prefix: &str) -> JoinCase {
        let name = unique(prefix);
        let (pays, caps, output) = (format!("{name}-pay"), format!("{name}-cap"), format!("{name}-out"));
        create_topics(&[(&pays, PARTITIONS), (&caps, PARTITIONS), (&output, PARTITIONS)]);
        let payments = events(PARTITIONS);
        // A capture per payment but every seventh, 0-89 s after it (so some miss the minute).
        let mut captures: Vec<(i32, Ev)> = payments
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 != 3)
            .map(|(i, (p, e))| (*p, Ev { ts: e.ts + (i as i64 * 7_919) % 90_000, ..e.clone() }))
            .collect();
        // Captures arrive in their own order: sorted by time within a few seconds' disorder.
        captures.sort_by_key(|(_, e)| e.ts / 3_000);
        let ooo = 5_000;
        let ((left, left_wm), (right, right_wm)) = (not_late(&payments, ooo), not_late(&captures, ooo));
        let mut want: BTreeSet<(String, bool)> = BTreeSet::new();
        for (id, (p, ts)) in &left {
            let paired = right.get(id).is_some_and(|(_, c)| *c >= *ts && *c <= ts + 60_000);
            // The topics do not end: an unpaid payment comes out once the join's watermark (the
            // least of the two topics') shows that no capture can come for it any more.
            let expired = ts + 60_000 <= left_wm[p].min(right_wm[p]);
            if paired || expired {
                want.insert((id.clone(), paired));
            }
        }
        JoinCase { name, pays, caps, output, payments, captures, want }
    }

    /// The job, exactly-once, checkpointing every `interval` next to it.
    fn manifest(&self, dir: &Path, interval: &str) -> std::path::PathBuf {
        write_manifest(
            dir,
            format!(
                r#"
metadata: {{name: {name}}}
spec:
  epochInterval: 50ms
  checkpointing: {{interval: {interval}, storage: "file://{checkpoints}"}}
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {pays}, startFrom: earliest}}
        schema: {{id: string, card_id: string, amount: long, ts: timestamp}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
      captures:
        kafka: {{brokers: "{b}", topic: {caps}, startFrom: earliest}}
        schema: {{id: string, card_id: string, ts: timestamp}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      captured:
        join: {{left: payments, right: captures, by: [id, card_id], after: 1m, type: left}}
    sinks:
      out: {{from: captured, kafka: {{brokers: "{b}", topic: {output}}}}}
"#,
                name = self.name,
                pays = self.pays,
                caps = self.caps,
                output = self.output,
                b = kafka_brokers(),
                checkpoints = dir.join("checkpoints").display(),
            ),
        )
    }

    /// Waits for the output and checks every pair and unmatched payment is in it once.
    fn check(&self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got: Vec<(String, bool)> = Vec::new();
        while Instant::now() < deadline {
            got = read_all(&self.output, PARTITIONS)
                .iter()
                .map(|(_, v)| (v["id"].as_str().unwrap().to_string(), !v["captures_ts"].is_null()))
                .collect();
            if got.len() >= self.want.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let distinct: BTreeSet<(String, bool)> = got.iter().cloned().collect();
        let missing: Vec<_> = self.want.difference(&distinct).take(10).collect();
        let extra: Vec<_> = distinct.difference(&self.want).take(10).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{} of {} missing, e.g. {missing:?}; {} extra, e.g. {extra:?} (worker log: {})",
            self.want.difference(&distinct).count(),
            self.want.len(),
            distinct.difference(&self.want).count(),
            log.display()
        );
        assert_eq!(got.len(), self.want.len(), "each exactly once");
    }
}

/// The join exactly-once through SIGKILLs at random moments while both topics are produced in
/// turns (every third kill also loses the state folder). A `read_committed` consumer sees
/// every pair and every unmatched payment exactly once: the replay after each kill processes
/// all committed input of both topics before new input, so no pair moves across a commit.
#[test]
fn a_join_is_exactly_once_through_repeated_random_kills() {
    require_port("Kafka", 9092);
    let case = JoinCase::new("join");
    let dir = tempfile::tempdir().unwrap();
    let manifest = case.manifest(dir.path(), "200ms");
    let (name, pays, caps, payments, captures) =
        (case.name.clone(), case.pays.clone(), case.caps.clone(), case.payments.clone(), case.captures.clone());
    let state = dir.path().join("state");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = {
        let (pays, caps, payments, captures) = (pays.clone(), caps.clone(), payments.clone(), captures.clone());
        std::thread::spawn(move || {
            let p = producer();
            let (n, m) = (payments.len() / 20 + 1, captures.len() / 20 + 1);
            for (a, b) in payments.chunks(n).zip(captures.chunks(m)) {
                produce(&p, &pays, a);
                produce(&p, &caps, b);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    kill_repeatedly(&manifest, &state, &log, 6, 0x2545_f491_4f6c_dd1d, 400);
    feeder.join().unwrap();
    let mut w = start_worker(&manifest, &state, &log);
    case.check(&log);
    w.kill().unwrap();
    w.wait().unwrap();
}

/// The join through a savepoint of 3 workers restored into 2: every pair and unmatched payment
/// exactly once, the kept rows of both inputs carried over in the savepoint.
#[test]
fn a_join_savepoint_of_3_workers_restores_into_2() {
    require_port("Kafka", 9092);
    let case = JoinCase::new("joinsp");
    let dir = tempfile::tempdir().unwrap();
    let manifest = case.manifest(dir.path(), "1h");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{}.log", case.name));
    let (p1, p2) = case.payments.split_at(case.payments.len() / 2);
    let (c1, c2) = case.captures.split_at(case.captures.len() / 2);
    let producer = producer();
    produce(&producer, &case.pays, p1);
    produce(&producer, &case.caps, c1);
    let then = || {
        produce(&producer, &case.pays, p2);
        produce(&producer, &case.caps, c2);
    };
    let first = (p1.len() + c1.len()) as u64;
    through_savepoint(&manifest, &log, PARTITIONS as usize, first, 2, then, || case.check(&log));
}

/// The enrichment job of these tests: `[payments, merchants, output]` topics, exactly-once,
/// checkpointing every `interval`, rows of unknown merchants handled as `missing` says.
fn write_enrich_job(dir: &Path, name: &str, topics: [&str; 3], interval: &str, missing: &str) -> std::path::PathBuf {
    let [payments, merchants, output] = topics;
    write_manifest(
        dir,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  epochInterval: 50ms
  checkpointing: {{interval: {interval}, storage: "file://{checkpoints}"}}
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {payments}, startFrom: earliest}}
        schema: {{id: string, merchant_id: string, ts: timestamp}}
        eventTime: {{field: ts}}
    tables:
      merchants:
        kafka: {{brokers: "{b}", topic: {merchants}}}
        key: merchant_id
        schema: {{merchant_id: string, category: string}}
    streams:
      enriched:
        from: payments
        enrich: {{table: merchants, by: merchant_id, missing: {missing}}}
    sinks:
      out: {{from: enriched, kafka: {{brokers: "{b}", topic: {output}}}}}
"#,
            b = kafka_brokers(),
            checkpoints = dir.join("checkpoints").display(),
        ),
    )
}

/// `(merchant, category)` rows of a merchants table topic.
fn produce_merchants(producer: &rdkafka::producer::BaseProducer, topic: &str, rows: &[(u32, &str)]) {
    for (m, category) in rows {
        let key = format!("m-{m:03}");
        let payload = serde_json::json!({"merchant_id": key, "category": category}).to_string();
        // Partitioned by key, as a compacted topic is.
        while producer.send(BaseRecord::to(topic).key(&key).payload(&payload)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Payments `from..to`, payment `i` at merchant `m-(i % 60)`.
fn produce_merchant_payments(producer: &rdkafka::producer::BaseProducer, topic: &str, from: u32, to: u32) {
    for i in from..to {
        let payload =
            serde_json::json!({"id": format!("p{i:04}"), "merchant_id": format!("m-{:03}", i % 60), "ts": 1_000 + i})
                .to_string();
        while producer.send(BaseRecord::<(), _>::to(topic).partition((i % 3) as i32).payload(&payload)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Waits until the worker behind admin `port` has applied `rows` rows of table `merchants`.
fn wait_for_table_rows(port: u16, rows: u64) {
    let applied = |metrics: String| {
        let line =
            metrics.lines().find(|l| l.starts_with(r#"weir_table_rows_total{outcome="applied",table="merchants""#));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    wait_until(&format!("{rows} table rows applied (port {port})"), Duration::from_secs(60), || {
        (applied(admin(port, "GET", "/metrics")) == Some(rows)).then_some(()).or_else(|| {
            std::thread::sleep(Duration::from_millis(200));
            None
        })
    });
}

#[test]
fn every_worker_enriches_from_the_whole_table_and_follows_its_updates() {
    require_port("Kafka", 9092);
    let (merchants, payments, output) = (unique("merchants"), unique("mpayments"), unique("enriched"));
    // The table's topic has more partitions than the job, and other keys than the stream's.
    create_topics(&[(&merchants, 4), (&payments, PARTITIONS), (&output, PARTITIONS)]);
    let producer = producer();
    let v1: Vec<(u32, &str)> = (0..50).map(|m| (m, "v1")).collect();
    produce_merchants(&producer, &merchants, &v1);
    let v2: Vec<(u32, &str)> = (0..10).map(|m| (m, "v2")).collect();
    produce_merchants(&producer, &merchants, &v2);
    produce_merchant_payments(&producer, &payments, 0, 120);
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_enrich_job(dir.path(), &unique("enrich"), [&payments, &merchants, &output], "1s", "null");
    let log = dir.path().join("worker.log");
    let ports = [free_port(), free_port()];
    let mut pods: Vec<Child> = (0..2)
        .map(|o| start_pod(&manifest, o, 2, &dir.path().join(format!("state-{o}")), ports[o as usize], None, &log))
        .collect();
    let categories = |rows: &[(Option<String>, serde_json::Value)]| -> BTreeMap<String, Option<String>> {
        rows.iter()
            .map(|(_, r)| (r["id"].as_str().unwrap().to_string(), r["category"].as_str().map(str::to_string)))
            .collect()
    };
    let first = wait_until("120 enriched payments", Duration::from_secs(90), || {
        let rows = read_all(&output, PARTITIONS);
        (rows.len() >= 120).then_some(rows).or_else(|| {
            std::thread::sleep(Duration::from_millis(300));
            None
        })
    });
    let expected = |i: u32, updated: &BTreeMap<u32, &str>| -> Option<String> {
        let m = i % 60;
        updated.get(&m).map(|c| c.to_string()).or(match m {
            0..10 => Some("v2".into()),
            10..50 => Some("v1".into()),
            _ => None, // not in the table: the row goes on with a null category
        })
    };
    let want: BTreeMap<String, Option<String>> =
        (0..120).map(|i| (format!("p{i:04}"), expected(i, &BTreeMap::new()))).collect();
    assert_eq!(first.len(), 120, "each payment once");
    assert_eq!(categories(&first), want, "every worker holds the whole table, with each key's latest row");
    // The table changes while the job runs (two rows, one deletion): each worker applies the
    // changes before the payments that come after them.
    produce_merchants(&producer, &merchants, &[(20, "v3"), (55, "new")]);
    // A tombstone deletes m-030: later payments there find no row.
    while producer.send(BaseRecord::<str, ()>::to(&merchants).key("m-030")).is_err() {
        producer.poll(Duration::from_millis(10));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    for port in ports {
        wait_for_table_rows(port, 63);
    }
    produce_merchant_payments(&producer, &payments, 120, 240);
    let all = wait_until("240 enriched payments", Duration::from_secs(90), || {
        let rows = read_all(&output, PARTITIONS);
        (rows.len() >= 240).then_some(rows).or_else(|| {
            std::thread::sleep(Duration::from_millis(300));
            None
        })
    });
    for p in pods.iter_mut() {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    let updated = BTreeMap::from([(20, "v3"), (55, "new")]);
    let mut want_all = want;
    want_all.extend((120..240).map(|i| (format!("p{i:04}"), expected(i, &updated).filter(|_| i % 60 != 30))));
    assert_eq!(all.len(), 240);
    assert_eq!(categories(&all), want_all, "payments after the change see it");
}

#[test]
fn an_enrichment_is_exactly_once_through_repeated_random_kills() {
    require_port("Kafka", 9092);
    let name = unique("enrich-kills");
    let (merchants, payments, output) = (format!("{name}-m"), format!("{name}-in"), format!("{name}-out"));
    create_topics(&[(&merchants, 4), (&payments, PARTITIONS), (&output, PARTITIONS)]);
    let rows: Vec<(u32, &str)> = (0..50).map(|m| (m, if m % 2 == 0 { "even" } else { "odd" })).collect();
    produce_merchants(&producer(), &merchants, &rows);
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_enrich_job(dir.path(), &name, [&payments, &merchants, &output], "200ms", "drop");
    let state = dir.path().join("state");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    // 3,000 payments in 20 bursts while the worker is killed again and again (and loses its
    // state folder every third time); merchants m-050 to m-059 are not in the table.
    let feeder = {
        let payments = payments.clone();
        std::thread::spawn(move || {
            let p = producer();
            for burst in 0..20 {
                produce_merchant_payments(&p, &payments, burst * 150, (burst + 1) * 150);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    kill_repeatedly(&manifest, &state, &log, 8, 0x2545_f491_4f6c_dd1d, 300);
    feeder.join().unwrap();
    let mut w = start_worker(&manifest, &state, &log);
    let want: BTreeMap<String, String> = (0..3_000u32)
        .filter(|i| i % 60 < 50)
        .map(|i| (format!("p{i:04}"), if (i % 60) % 2 == 0 { "even" } else { "odd" }.to_string()))
        .collect();
    wait_until("every enriched payment", Duration::from_secs(120), || {
        (read_all(&output, PARTITIONS).len() >= want.len()).then_some(()).or_else(|| {
            std::thread::sleep(Duration::from_millis(300));
            None
        })
    });
    // A moment more, for any duplicate to show.
    std::thread::sleep(Duration::from_secs(1));
    let got = read_all(&output, PARTITIONS);
    w.kill().unwrap();
    w.wait().unwrap();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (_, r) in &got {
        let id = r["id"].as_str().unwrap().to_string();
        let category = r["category"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone(), category).is_none(), "{id} written twice: exactly once");
    }
    assert_eq!(seen, want, "every payment at a known merchant once, with its category; the others dropped");
}

/// A join of topics with different partition counts is refused at start, naming both counts
/// and the fixes (the same partition count, each keyed by the join fields; a repartition step).
#[test]
fn a_join_of_inputs_not_co_partitioned_is_a_clear_error() {
    require_port("Kafka", 9092);
    let name = unique("copart");
    let (orders, payments) = (format!("{name}-orders"), format!("{name}-payments"));
    create_topics(&[(&orders, 2), (&payments, 3)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  pipeline:
    sources:
      orders: {{kafka: {{brokers: "{b}", topic: {orders}}}, schema: {{id: string, ts: timestamp}}, eventTime: {{field: ts}}}}
      payments: {{kafka: {{brokers: "{b}", topic: {payments}}}, schema: {{id: string, ts: timestamp}}, eventTime: {{field: ts}}}}
    streams:
      paid: {{join: {{left: orders, right: payments, by: [id], within: 1m}}}}
    sinks:
      out: {{from: paid, file: {{path: out.jsonl}}}}
"#,
            b = kafka_brokers()
        ),
    );
    let out = Command::new(worker_bin()).args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("step paid joins inputs that are not co-partitioned (orders has 2, payments has 3)")
            && err.contains("repartition: true"),
        "{err}"
    );
}

/// Kafka over TLS with SASL/PLAIN (the stack broker's SECURE listener, 127.0.0.1:9096): the
/// source and the exactly-once sink connect with `security.protocol: SASL_SSL`, the stack's CA,
/// and the password as `${env:KAFKA_PASSWORD}`, read from the worker's environment (on
/// Kubernetes, `spec.env` from a Secret), never written in the manifest nor logged. Every window
/// equals the reference; a wrong password stops the worker with an authentication error.
#[test]
fn a_job_uses_kafka_over_tls_with_sasl_and_its_password_from_the_environment() {
    require_port("Kafka's SASL_SSL listener", 9096);
    let name = unique("sasl");
    let (input, output, corrections) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-late"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1)]);
    let evs = events(PARTITIONS);
    produce(&producer(), &input, &evs);
    let ca = weir_e2e::run_dir().join("kafka-tls/ca.crt");
    let secure = format!(
        "brokers: \"127.0.0.1:9096\", properties: {{security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.username: weir, sasl.password: \"${{env:KAFKA_PASSWORD}}\", ssl.ca.location: \"{}\"}}",
        ca.display()
    );
    let plain = format!("brokers: \"{}\"", kafka_brokers());
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        "metadata: {{name: {name}}}\nspec:\n  epochInterval: 50ms\n  pipeline:\n{}    sinks:\n      results: {{from: per_card_minute, kafka: {{brokers: \"{b}\", topic: {output}}}}}\n      corrections: {{kafka: {{brokers: \"{b}\", topic: {corrections}}}}}\n",
        window_job_pipeline(&input),
        b = kafka_brokers()
    )
    .replace(&plain, &secure);
    assert_eq!(job.matches("SASL_SSL").count(), 3, "the source and both sinks: {job}");
    let manifest = write_manifest(dir.path(), job);
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    let state = dir.path().join("state");

    let wrong = weir_e2e::start_worker(&manifest, &state, &log, &[("KAFKA_PASSWORD", "not-it".to_string())]);
    let out = wrong.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Authentication failed") || text.contains("SASL authentication error"), "{text}");

    let mut w = weir_e2e::start_worker(&manifest, &state, &log, &[("KAFKA_PASSWORD", "weir-secret".to_string())]);
    let (want, _) = reference(&evs, PARTITIONS);
    let (got, emitted) = windows_of(&output, PARTITIONS, want.len());
    assert_eq!(got, want, "every window equals the reference");
    assert_eq!(emitted, want.len(), "each once");
    w.kill().unwrap();
    w.wait().unwrap();
    assert!(!std::fs::read_to_string(&log).unwrap().contains("weir-secret"), "the password is never logged");
}
