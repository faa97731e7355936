//! Checkpoints on the local stack's S3 server: a job's last checkpoint is uploaded to a bucket,
//! and a worker that lost its state folder restores it from there and goes on where it stopped.

use std::process::Command;

use weir_e2e::{
    repo_dir, require_port, s3_client, s3_endpoint, unique, worker_bin, S3_KEY as KEY, S3_SECRET as SECRET,
};

#[tokio::test]
async fn state_round_trips_through_s3() {
    require_port("S3", 7070);
    let dir = tempfile::tempdir().unwrap();
    let examples = repo_dir().join("examples");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(examples.join("data/payments.jsonl"), dir.path().join("data/payments.jsonl")).unwrap();
    let prefix = unique("e2e-checkpoints");
    let manifest = dir.path().join("job.yaml");
    let text = std::fs::read_to_string(examples.join("payments-file.yaml")).unwrap().replace(
        "spec:\n  pipeline:",
        &format!("spec:\n  checkpointing: {{storage: \"s3://weir/{prefix}\", retained: 2}}\n  pipeline:"),
    );
    std::fs::write(&manifest, text).unwrap();
    let state = dir.path().join("state");
    let run = || {
        Command::new(worker_bin())
            .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_ENDPOINT_URL", s3_endpoint())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let results = std::fs::read_to_string(dir.path().join("out/file_per_card_minute.jsonl")).unwrap();

    let s3 = s3_client();
    let listed = s3.list_objects_v2().bucket("weir").prefix(&prefix).send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    let manifest_key = format!("{prefix}/p0/chk-00000000000000000001/_manifest.json");
    assert!(keys.contains(&manifest_key.as_str()), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("/p0/sst/") && k.ends_with(".sst")), "{keys:?}");
    let body = s3.get_object().bucket("weir").key(&manifest_key).send().await.unwrap().body.collect().await.unwrap();
    let m: serde_json::Value = serde_json::from_slice(&body.into_bytes()).unwrap();
    assert_eq!((m["id"].as_u64(), m["partition"].as_u64()), (Some(1), Some(0)));

    std::fs::remove_dir_all(&state).unwrap();
    let second = run();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success() && log.contains("restored state from checkpoint"), "{log}");
    assert!(log.contains("processed 0 records"), "{log}");
    let again = std::fs::read_to_string(dir.path().join("out/file_per_card_minute.jsonl")).unwrap();
    assert_eq!(again, results, "nothing is processed or written twice");
}
