//! The window job of the worker's Kafka tests and of the fault-injection suite: a manifest
//! (windows, a pattern, late events to a corrections topic, a dead letter, checkpoints to a
//! folder) over topics of 3 partitions, and the checks of its output against the reference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::kafka_brokers;
use crate::payments::{pattern_reference, pattern_step, read_all, reference, window_job_pipeline, Ev, Windows};

/// The partitions of the input and output topics.
pub const PARTITIONS: i32 = 3;

/// Writes `yaml` as `job.yaml` in `dir`; its path.
pub fn write_manifest(dir: &Path, yaml: String) -> std::path::PathBuf {
    let manifest = dir.join("job.yaml");
    std::fs::write(&manifest, yaml).unwrap();
    manifest
}

/// The window job of these tests, exactly-once or at-least-once, checkpointing every
/// `interval` to a folder next to it, with a dead-letter file.
pub fn write_job(
    dir: &Path,
    name: &str,
    delivery: &str,
    interval: &str,
    input: &str,
    output: &str,
    corrections: &str,
) -> std::path::PathBuf {
    write_manifest(
        dir,
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  epochInterval: 50ms
  checkpointing: {{interval: {interval}, storage: "file://{checkpoints}"}}
  pipeline:
{pipeline}{pattern}    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}}}}}
      fraud: {{from: alerts, kafka: {{brokers: "{b}", topic: {alerts}}}}}
      corrections: {{kafka: {{brokers: "{b}", topic: {corrections}}}}}
      dead: {{file: {{path: dead.jsonl}}}}
    deadLetter: dead
"#,
            b = kafka_brokers(),
            checkpoints = dir.join("checkpoints").display(),
            pipeline = window_job_pipeline(input),
            pattern = pattern_step(),
            alerts = alerts_of(output),
        ),
    )
}

/// The topic of the pattern's alerts next to results topic `output`.
pub fn alerts_of(output: &str) -> String {
    format!("{output}-alerts")
}

/// Every pattern alert of `evs` reaches `alerts` exactly once.
pub fn check_alerts(evs: &[(i32, Ev)], partitions: i32, alerts: &str) {
    let want = pattern_reference(evs, partitions);
    assert!(want.len() > 10, "the input has matches: {}", want.len());
    let read = || -> Vec<(String, String)> {
        read_all(alerts, 1)
            .iter()
            .map(|(_, v)| (v["card_id"].as_str().unwrap().to_string(), v["hit"].as_str().unwrap().to_string()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = read();
    while got.len() < want.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = read();
    }
    let distinct: BTreeSet<(String, String)> = got.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&distinct).take(5).collect();
    let extra: Vec<_> = distinct.difference(&want).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "alerts of {}: missing {missing:?}, extra {extra:?}", want.len());
    assert_eq!(got.len(), want.len(), "each alert once");
}

/// Waits until `output` holds every window of `evs`, then checks the results against the
/// reference and the late events; `exactly_once`: each result and late event once.
pub fn check_results(evs: &[(i32, Ev)], output: &str, corrections: &str, exactly_once: bool) {
    let (want, want_late) = reference(evs, PARTITIONS);
    let mut last = BTreeMap::new();
    let mut emitted = 0;
    let mut late_all: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // At-least-once, results and late events go through separate producers and can become
    // visible at different moments: wait for both.
    while Instant::now() < deadline {
        let mut got = Windows::new();
        let all = read_all(output, PARTITIONS);
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
        late_all = read_all(corrections, 1).iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
        if last == want && late_all.iter().cloned().collect::<BTreeSet<_>>() == want_late {
            break;
        }
    }
    assert_eq!(last.len(), want.len(), "every window the input fires is emitted, no other");
    assert_eq!(last, want, "every window equals the reference");
    let late: BTreeSet<String> = late_all.iter().cloned().collect();
    assert_eq!(late, want_late, "exactly the late events reach the corrections topic");
    if exactly_once {
        assert_eq!(emitted, want.len(), "each window result is committed exactly once");
        assert_eq!(late_all.len(), want_late.len(), "each late event is committed exactly once");
    }
}
