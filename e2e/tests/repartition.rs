//! The `repartition` step on the local stack's Kafka: payments arrive spread over the input's
//! partitions without regard to their card, a repartition step moves each to the partition of
//! its card through the job's internal topic, and a per-card window counts them — while the
//! worker is killed with SIGKILL at random moments (every third kill also loses the state
//! folder). Each card's windows are then complete and exactly once in the output: rows split
//! across tasks would give several partial results per window, rows lost or written twice wrong
//! counts, and watermarks not carried through the topic windows fired too early or never.
//! The same job also moves from two workers to three through its checkpoints.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use weir_e2e::payments::{
    create_topics, events, feed, repartition_job_pipeline, windows_of, Ev, Windows, OOO_MS, WINDOW_MS,
};
use weir_e2e::{free_port, kafka_brokers, kill_repeatedly, require_port, start_pod, start_worker, unique};

const PARTITIONS: i32 = 3;

/// The payments of the fixture without its late ones (their lateness after the repartition
/// depends on when markers were written), each on partition `index % PARTITIONS`.
fn spread_events() -> Vec<(i32, Ev)> {
    let evs: Vec<Ev> = events(PARTITIONS).into_iter().map(|(_, e)| e).collect();
    let on_time: Vec<Ev> = evs.into_iter().enumerate().filter(|(i, _)| i % 50 != 49).map(|(_, e)| e).collect();
    on_time.into_iter().enumerate().map(|(i, e)| (i as i32 % PARTITIONS, e)).collect()
}

/// Per card, the 1-minute windows of every event, those that the least of the partitions'
/// final watermarks has reached.
fn reference(evs: &[(i32, Ev)]) -> Windows {
    let final_wm = (0..PARTITIONS)
        .map(|p| evs.iter().filter(|(q, _)| *q == p).map(|(_, e)| e.ts).max().unwrap() - OOO_MS - 1)
        .min()
        .unwrap();
    let mut all = Windows::new();
    for (_, e) in evs {
        let r = all.entry((e.card.clone(), e.ts - e.ts.rem_euclid(WINDOW_MS))).or_insert((0, 0));
        r.0 += 1;
        r.1 += e.amount;
    }
    all.retain(|(_, start), _| start + WINDOW_MS - 1 <= final_wm);
    all
}

/// The repartition job: `input` re-keyed by card, counted per card and minute into `output`
/// with `delivery`, checkpointing every 500 ms into `dir`; its manifest's path.
fn write_job(dir: &Path, name: &str, delivery: &str, input: &str, output: &str) -> PathBuf {
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  epochInterval: 100ms
  checkpointing: {{interval: 500ms, storage: "file://{checkpoints}"}}
  pipeline:
{pipeline}    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}}}}}
      corrections: {{file: {{path: late.jsonl}}}}
"#,
            b = kafka_brokers(),
            checkpoints = dir.join("checkpoints").display(),
            pipeline = repartition_job_pipeline(input),
        ),
    )
    .unwrap();
    manifest
}

/// Waits for every window of `want` in `output`, stops `workers`, and checks each result is
/// there once and no event was late.
fn check(want: &Windows, output: &str, dir: &Path, log: &Path, workers: &mut [Child]) {
    let (got, count) = windows_of(output, PARTITIONS, want.len());
    for w in workers.iter_mut() {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    let log = log.display();
    let missing: Vec<_> = want.iter().filter(|(k, _)| !got.contains_key(*k)).take(5).collect();
    let wrong: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).take(5).collect();
    assert!(missing.is_empty() && wrong.is_empty(), "missing {missing:?}; wrong or extra {wrong:?}; log {log}");
    assert_eq!(count, want.len(), "each window result once; log {log}");
    let late: String = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("late"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(late.is_empty(), "no event is late after the repartition: {late}");
}

/// A job's topics, reference and folders, with `delivery`.
fn setup(prefix: &str, delivery: &str) -> (String, String, Vec<(i32, Ev)>, Windows, tempfile::TempDir, PathBuf) {
    require_port("Kafka", 9092);
    let name = unique(prefix);
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS)]);
    let evs = spread_events();
    let want = reference(&evs);
    assert!(want.len() > 100, "the input spans many windows: {}", want.len());
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_job(dir.path(), &name, delivery, &input, &output);
    (input, output, evs, want, dir, manifest)
}

#[test]
fn rows_rekeyed_through_the_internal_topic_are_windowed_exactly_once_through_random_kills() {
    let (input, output, evs, want, dir, manifest) = setup("repart", "exactly-once");
    let state = dir.path().join("state");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{input}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = feed(&input, &evs, 40, Duration::from_millis(250));
    kill_repeatedly(&manifest, &state, &log, &[], (5, 0x7a3c_19e5_0b2d_44f1, 1500));
    feeder.join().unwrap();
    let w = start_worker(&manifest, &state, &log, &[]);
    check(&want, &output, dir.path(), &log, &mut [w]);
}

/// Two workers (each writing every partition of the topic and reading its own), killed while
/// the input arrives, then three with empty state folders, which restore the newest
/// checkpoints: the watermarks of every writer still meet, and each window is exact, once.
#[test]
fn a_repartition_job_moves_from_2_to_3_workers_through_checkpoints() {
    let (input, output, evs, want, dir, manifest) = setup("repart23", "exactly-once");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{input}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = feed(&input, &evs, 40, Duration::from_millis(250));
    let pod = |i: u32, n: u32, folder: &str| {
        start_pod(&manifest, i, n, &dir.path().join(format!("{folder}{i}")), free_port(), None, &log)
    };
    let mut two: Vec<Child> = (0..2).map(|i| pod(i, 2, "a")).collect();
    std::thread::sleep(Duration::from_secs(5));
    for w in two.iter_mut() {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    let mut three: Vec<Child> = (0..3).map(|i| pod(i, 3, "b")).collect();
    feeder.join().unwrap();
    check(&want, &output, dir.path(), &log, &mut three);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("restored state from checkpoint").count(), PARTITIONS as usize, "every partition moved");
}

/// At-least-once, a worker's tasks write the topic through one idempotent producer, markers
/// included, outside transactions: without failures every window is exact, once.
#[test]
fn at_least_once_the_topic_is_written_through_one_idempotent_producer() {
    let (input, output, evs, want, dir, manifest) = setup("repartalo", "at-least-once");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{input}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = feed(&input, &evs, 10, Duration::from_millis(100));
    let w = start_worker(&manifest, &dir.path().join("state"), &log, &[]);
    feeder.join().unwrap();
    check(&want, &output, dir.path(), &log, &mut [w]);
}
