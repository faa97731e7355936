//! The `repartition` step on the local stack's Kafka: payments arrive spread over the input's
//! partitions without regard to their card, a repartition step moves each to the partition of
//! its card through the job's internal topic, and a per-card window counts them — while the
//! worker is killed with SIGKILL at random moments (every third kill also loses the state
//! folder). Each card's windows are then complete and exactly once in the output: rows split
//! across tasks would give several partial results per window, rows lost or written twice wrong
//! counts, and watermarks not carried through the topic windows fired too early or never.

use std::time::Duration;

use weir_e2e::payments::{create_topics, events, feed, windows_of, Ev, Windows, OOO_MS, WINDOW_MS};
use weir_e2e::{kafka_brokers, kill_repeatedly, require_port, start_worker, unique};

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

#[test]
fn rows_rekeyed_through_the_internal_topic_are_windowed_exactly_once_through_random_kills() {
    require_port("Kafka", 9092);
    let name = unique("repart");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS)]);
    let evs = spread_events();
    let want = reference(&evs);
    assert!(want.len() > 100, "the input spans many windows: {}", want.len());
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  epochInterval: 100ms
  checkpointing: {{interval: 500ms, storage: "file://{checkpoints}"}}
  pipeline:
    sources:
      payments:
        kafka: {{brokers: "{b}", topic: {input}, startFrom: earliest}}
        schema: {{id: string, card_id: string, amount: long, ts: timestamp}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      by_card: {{from: payments, keyBy: [card_id], repartition: true}}
      per_card_minute:
        from: by_card
        keyBy: [card_id]
        window: {{tumbling: 1m}}
        aggregate: {{"n": "count(*)", total: "sum(amount)"}}
        lateOutput: corrections
    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}}}}}
      corrections: {{file: {{path: late.jsonl}}}}
"#,
            b = kafka_brokers(),
            checkpoints = dir.path().join("checkpoints").display(),
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = feed(&input, &evs, 40, Duration::from_millis(250));
    kill_repeatedly(&manifest, &state, &log, &[], (5, 0x7a3c_19e5_0b2d_44f1, 1500));
    feeder.join().unwrap();
    let mut w = start_worker(&manifest, &state, &log, &[]);
    let (got, count) = windows_of(&output, PARTITIONS, want.len());
    w.kill().unwrap();
    w.wait().unwrap();
    let log = log.display();
    let missing: Vec<_> = want.iter().filter(|(k, _)| !got.contains_key(*k)).take(5).collect();
    let wrong: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).take(5).collect();
    assert!(missing.is_empty() && wrong.is_empty(), "missing {missing:?}; wrong or extra {wrong:?}; log {log}");
    assert_eq!(count, want.len(), "each window result once; log {log}");
    let late = std::fs::read_to_string(dir.path().join("late.jsonl")).unwrap_or_default();
    assert!(late.is_empty(), "no event is late after the repartition: {late}");
}
