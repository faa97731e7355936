//! `weir-worker` as a user runs it: the examples run as written, a bad manifest is rejected
//! with every error and its path, and bad records go to the dead letter.

use std::path::Path;
use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-worker"))
}

fn copy_example(dir: &Path, name: &str) -> std::path::PathBuf {
    // Cargo sets the package folder at run time too; the build-time value may name another
    // checkout that shared the target folder.
    let pkg = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let examples = Path::new(&pkg).join("../examples");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for data in ["payments.jsonl", "orders.jsonl", "order-payments.jsonl", "card-payments.jsonl"] {
        std::fs::copy(examples.join("data").join(data), dir.join("data").join(data)).unwrap();
    }
    let to = dir.join(name);
    std::fs::copy(examples.join(name), &to).unwrap();
    to
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn file_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-file.yaml");
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let windows = lines(&dir.path().join("out/file_per_card_minute.jsonl"));
    let first = windows.iter().find(|w| w["card_id"] == "card-1" && w["window_start"] == 1_795_600_800_000i64).unwrap();
    assert_eq!((first["n"].as_i64(), first["total"].as_f64()), (Some(2), Some(20.0)));
    assert_eq!(windows.len(), 6);
    let late: Vec<String> = lines(&dir.path().join("out/file_corrections.jsonl"))
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(late, ["p7", "p9"], "late events go unchanged to the lateOutput sink");
    let dead = lines(&dir.path().join("out/file_dead_letters.jsonl"));
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["position"], 3);
    assert!(dead[0]["error"].as_str().unwrap().contains("amount"), "{}", dead[0]);
    assert_eq!(dead[1]["record"], "not json at all");
}

#[test]
fn local_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-local.yaml");
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out_dir = dir.path().join("out");
    // Every generated payment is in exactly one tumbling window or in the late output.
    let minutes = lines(&out_dir.join("per_card_minute.jsonl"));
    let late = lines(&out_dir.join("late_payments.jsonl"));
    let counted: i64 = minutes.iter().map(|w| w["n"].as_i64().unwrap()).sum();
    assert!(!late.is_empty() && minutes.len() > 2000, "{} windows, {} late", minutes.len(), late.len());
    assert_eq!(counted + late.len() as i64, 200_000, "windows count {counted}, {} late", late.len());
    let large = lines(&out_dir.join("large.jsonl"));
    assert!(!large.is_empty());
    assert!(
        large.iter().all(|p| p["amount"].as_f64().unwrap() > 100.0 && p.get("status").is_none()),
        "the filter and projection"
    );
    for (file, key) in [("per_country_sliding.jsonl", "country"), ("card_sessions.jsonl", "card_id")] {
        let rows = lines(&out_dir.join(file));
        assert!(!rows.is_empty() && rows.iter().all(|r| r[key].is_string() && r["n"].as_i64().unwrap() > 0), "{file}");
    }
}

#[test]
fn warehouse_example_writes_the_windows_as_parquet() {
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-warehouse.yaml");
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = dir.path().join("out/warehouse/per_card_minute");
    let day: Vec<_> = std::fs::read_dir(&table).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(day, ["date=2026-11-25"], "one folder per day");
    let mut rows = Vec::new();
    for f in std::fs::read_dir(table.join("date=2026-11-25")).unwrap() {
        let path = f.unwrap().path();
        assert_eq!(path.extension().unwrap(), "parquet", "{}", path.display());
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        for b in reader.build().unwrap() {
            let b: RecordBatch = b.unwrap();
            let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
            let (card, start, n, total) = (col("card_id"), col("window_start"), col("n"), col("total"));
            for i in 0..b.num_rows() {
                rows.push((
                    card.as_string::<i32>().value(i).to_string(),
                    start.as_primitive::<TimestampMillisecondType>().value(i),
                    n.as_primitive::<Int64Type>().value(i),
                    total.as_primitive::<Float64Type>().value(i),
                ));
            }
        }
    }
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // The same windows as the JSON example writes.
    let json = copy_example(dir.path(), "payments-file.yaml");
    let out = worker().args(["run", "-f", json.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut want: Vec<(String, i64, i64, f64)> = lines(&dir.path().join("out/file_per_card_minute.jsonl"))
        .iter()
        .map(|w| {
            let card = w["card_id"].as_str().unwrap().to_string();
            (card, w["window_start"].as_i64().unwrap(), w["n"].as_i64().unwrap(), w["total"].as_f64().unwrap())
        })
        .collect();
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(rows, want);
}

#[test]
fn join_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "orders-payments-join.yaml");
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pairs: Vec<(String, Option<String>)> = lines(&dir.path().join("out/order_payments.jsonl"))
        .iter()
        .map(|r| (r["order_id"].as_str().unwrap().to_string(), r["payment_id"].as_str().map(str::to_string)))
        .collect();
    pairs.sort();
    let want = [("o1", Some("p1")), ("o2", None), ("o3", Some("p3")), ("o3", Some("p3b")), ("o4", Some("p4"))];
    let want: Vec<(String, Option<String>)> =
        want.iter().map(|(o, p)| (o.to_string(), p.map(str::to_string))).collect();
    assert_eq!(pairs, want, "p2 came 19 minutes after o2: o2 comes out unpaid");
    let paid = lines(&dir.path().join("out/order_payments.jsonl"));
    let o1 = paid.iter().find(|r| r["order_id"] == "o1").unwrap();
    assert_eq!((o1["ts"].as_i64(), o1["payments_ts"].as_i64()), (Some(1_795_687_200_000), Some(1_795_687_500_000)));
    let unpaid = lines(&dir.path().join("out/order_payments_unpaid.jsonl"));
    assert_eq!(unpaid, [serde_json::json!({"order_id": "o2", "customer": "bob", "total": 19.0})]);
    let late = lines(&dir.path().join("out/order_payments_late.jsonl"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["order_id"], "o5", "an order behind its input's watermark is late, written unchanged");
}

#[test]
fn fraud_pattern_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "fraud-pattern.yaml");
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alerts = lines(&dir.path().join("out/fraud_alerts.jsonl"));
    assert_eq!(
        alerts,
        [
            serde_json::json!({"card_id": "card-1", "last_probe": "a4", "hit_id": "a5", "hit_amount": 640.0, "hit_ts": 1_795_687_320_000i64}),
            serde_json::json!({"card_id": "card-4", "last_probe": "d3", "hit_id": "d5", "hit_amount": 720.0, "hit_ts": 1_795_687_440_000i64}),
        ]
    );
    let late = lines(&dir.path().join("out/fraud_late.jsonl"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["id"], "a0");
}

#[test]
fn generated_orders_join_their_payments() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "orders-local.yaml");
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = lines(&dir.path().join("out/orders_paid.jsonl"));
    let paid = rows.iter().filter(|r| r["payment_id"].is_string()).count();
    assert_eq!((rows.len(), paid), (100_000, 96_000), "every order once; one in 25 unpaid");
    let unpaid: i64 =
        lines(&dir.path().join("out/orders_unpaid_per_merchant.jsonl")).iter().map(|w| w["n"].as_i64().unwrap()).sum();
    assert_eq!(unpaid, 4_000);
}

#[test]
fn enrichment_example_matches_a_lookup_in_the_generated_table() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-enriched-local.yaml");
    // Own state folders: a run finding an earlier run's positions would resume after them.
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let out = worker().args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", &state("st1")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same generated payments and merchants, written as they are by a second job.
    let raw = dir.path().join("raw.yaml");
    std::fs::write(
        &raw,
        r#"
metadata: {name: raw}
spec:
  pipeline:
    sources:
      payments: {datagen: {kind: payments, count: 50000, seed: 5, keys: 2000, eventRate: 500, startTime: 1795564800000}}
      merchants: {datagen: {kind: merchants, keys: 1500, seed: 5, startTime: 1795564800000}}
    sinks:
      p: {from: payments, file: {path: raw/payments.jsonl}}
      m: {from: merchants, file: {path: raw/merchants.jsonl}}
"#,
    )
    .unwrap();
    let out = worker().args(["run", "-f", raw.to_str().unwrap(), "--state-dir", &state("st2")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merchants: std::collections::HashMap<String, serde_json::Value> =
        lines(&dir.path().join("raw/merchants.jsonl"))
            .into_iter()
            .map(|m| (m["merchant_id"].as_str().unwrap().to_string(), m))
            .collect();
    assert_eq!(merchants.len(), 1_500);
    let (mut want_rows, mut want_dead) = (Vec::new(), Vec::new());
    for p in lines(&dir.path().join("raw/payments.jsonl")) {
        if p["status"] != "approved" {
            continue;
        }
        let id = p["id"].as_str().unwrap().to_string();
        match merchants.get(p["merchant_id"].as_str().unwrap()) {
            Some(m) => {
                want_rows.push((id, m["category"].to_string(), m["country"].to_string(), p["country"].to_string()))
            }
            None => want_dead.push(id),
        }
    }
    let mut rows: Vec<(String, String, String, String)> = lines(&dir.path().join("out/payments_enriched.jsonl"))
        .iter()
        .map(|r| {
            let s = |f: &str| r[f].to_string();
            (r["id"].as_str().unwrap().to_string(), s("category"), s("merchant_country"), s("country"))
        })
        .collect();
    let dead = lines(&dir.path().join("out/unknown_merchants.jsonl"));
    let mut dead_ids: Vec<String> = dead
        .iter()
        .map(|d| {
            assert!(d["error"].as_str().unwrap().starts_with("table merchants has no row for key \"m-01"), "{d}");
            let rec: serde_json::Value = serde_json::from_str(d["record"].as_str().unwrap()).unwrap();
            rec["id"].as_str().unwrap().to_string()
        })
        .collect();
    for v in [&mut want_rows, &mut rows] {
        v.sort();
    }
    want_dead.sort();
    dead_ids.sort();
    assert!(want_rows.len() > 40_000 && want_dead.len() > 5_000, "{} {}", want_rows.len(), want_dead.len());
    assert_eq!(rows, want_rows, "every approved payment at a known merchant, with the merchant's fields");
    assert_eq!(dead_ids, want_dead, "every approved payment at an unknown merchant, in the dead letter");
    let per_category: i64 =
        lines(&dir.path().join("out/spend_per_category.jsonl")).iter().map(|w| w["n"].as_i64().unwrap()).sum();
    assert!(per_category > 0 && per_category <= rows.len() as i64);
}

#[test]
fn invalid_manifest_lists_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bad.yaml");
    std::fs::write(
        &manifest,
        r#"
spec:
  pipeline:
    sources:
      payments: {file: {path: p.jsonl}, schema: {card_id: string, amount: double, ts: timestamp}, eventTime: {field: ts}}
    streams:
      per_card_minute:
        from: payments
        window: {sliding: {size: 5m, slide: 2m}}
        aggregate: {n: "count(*)", x: "median(amount)"}
      filtered:
        from: payments
        where: "amout > 10"
    sinks:
      out: {from: nowhere, file: {path: o.jsonl}}
"#,
    )
    .unwrap();
    let out = worker().args(["run", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "spec.pipeline.streams.per_card_minute.window: a window needs keyBy",
        "spec.pipeline.streams.per_card_minute.window.sliding.slide: slide 2m does not divide size 5m",
        "spec.pipeline.streams.per_card_minute.aggregate.x: unknown aggregate `median`",
        "spec.pipeline.sinks.out.from: `nowhere` is not a source or a step",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Expression errors come from the planner once the structure is valid.
    std::fs::write(
        &manifest,
        "spec:\n  pipeline:\n    sources: {p: {datagen: {kind: payments, count: 1}}}\n    streams: {f: {from: p, where: \"amout > 10\"}}\n    sinks: {o: {from: f, file: {path: o.jsonl}}}\n",
    )
    .unwrap();
    let out = worker().args(["validate", "-f", manifest.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.pipeline.streams.f.where") && err.contains("amout"), "{err}");
}

#[test]
fn pod_entry_point_takes_its_identity_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-file.yaml");
    let pod = |pod_name: &str, parallelism: &str| {
        worker()
            .arg("pod")
            .env("WEIR_CONFIG", &manifest)
            .env("POD_NAME", pod_name)
            .env("WEIR_PARALLELISM", parallelism)
            .env("WEIR_STATE_DIR", dir.path().join("state"))
            .env("WEIR_ADMIN_ADDR", "127.0.0.1:0")
            .env_remove("WEIR_ORDINAL")
            .output()
            .unwrap()
    };
    // As the StatefulSet's Pod `payments-file-0` of 1: the mounted manifest runs as with `run`.
    let out = pod("payments-file-0", "1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines(&dir.path().join("out/file_per_card_minute.jsonl")).len(), 6);
    // A name without an ordinal, an ordinal beyond the parallelism, and a file source spread
    // over two workers are refused with what to fix.
    for (name, parallelism, needle) in [
        ("payments-file", "1", "does not end in -<ordinal>; set WEIR_ORDINAL"),
        ("payments-file-3", "2", "ordinal 3 is not below parallelism 2"),
        ("payments-file-1", "2", "runs on one worker; set parallelism to 1"),
    ] {
        let out = pod(name, parallelism);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{name} of {parallelism}: {err}");
    }
}

#[test]
fn a_lost_state_folder_is_restored_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-file.yaml");
    let storage = dir.path().join("checkpoints");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "spec:\n  pipeline:",
        &format!("spec:\n  checkpointing: {{storage: \"file://{}\"}}\n  pipeline:", storage.display()),
    );
    std::fs::write(&manifest, text).unwrap();
    let state = dir.path().join("state");
    let run = || {
        worker()
            .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let results = std::fs::read_to_string(dir.path().join("out/file_per_card_minute.jsonl")).unwrap();
    assert!(storage.join("p0").is_dir(), "a last checkpoint is taken when the job ends");
    // The node is gone with its disk: the state comes back from the checkpoint, with the input
    // position, so nothing is processed or written twice.
    std::fs::remove_dir_all(&state).unwrap();
    let second = run();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success() && log.contains("restored state from checkpoint"), "{log}");
    assert!(log.contains("processed 0 records"), "{log}");
    let again = std::fs::read_to_string(dir.path().join("out/file_per_card_minute.jsonl")).unwrap();
    assert_eq!(again, results);
}

#[test]
fn a_savepoint_taken_through_the_admin_server_starts_a_new_run() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("job.yaml");
    let storage = dir.path().join("storage");
    std::fs::write(
        &manifest,
        format!(
            r#"
metadata: {{name: sp}}
spec:
  checkpointing: {{interval: 1h, storage: "file://{}"}}
  pipeline:
    sources:
      payments:
        datagen: {{kind: payments, seed: 3, keys: 50, eventRate: 1000, rate: 2000}}
        eventTime: {{field: ts, maxOutOfOrderness: 5s}}
    streams:
      w: {{from: payments, keyBy: [card_id], window: {{tumbling: 1m}}, aggregate: {{"n": "count(*)"}}}}
    sinks:
      out: {{from: w, file: {{path: out.jsonl}}}}
"#,
            storage.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let call = |method: &str, path: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let state = dir.path().join("state");
    let mut w = worker()
        .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .args(["--admin-addr", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |what: &str, mut ok: Box<dyn FnMut() -> bool + '_>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait(
        "the worker to be ready",
        Box::new(|| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && call("GET", "/readyz").contains("200 OK")
        }),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(call("POST", "/savepoints/before-upgrade").starts_with("HTTP/1.0 202"));
    wait("the savepoint", Box::new(|| call("GET", "/savepoints/before-upgrade").contains(r#""state":"completed""#)));
    w.kill().unwrap();
    w.wait().unwrap();
    assert!(storage.join("savepoints/before-upgrade/p0/_manifest.json").exists());

    // A new node: no local state; the savepoint, not a checkpoint (there is none), is restored.
    std::fs::remove_dir_all(&state).unwrap();
    let out = worker()
        .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .args(["--restore-savepoint", "before-upgrade"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id().to_string();
    std::thread::sleep(std::time::Duration::from_secs(2));
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = out.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("restored state from savepoint") && log.contains("before-upgrade"), "{log}");
}

#[test]
fn restored_state_must_fit_the_pipeline_step_by_step() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_example(dir.path(), "payments-file.yaml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let state = dir.path().join("state");
    let run = |text: &str| {
        std::fs::write(&manifest, text).unwrap();
        let out = worker()
            .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, log) = run(&original);
    assert!(ok, "{log}");
    // Renaming an aggregate's output keeps the state's layout.
    let (ok, log) = run(&original.replace("total: \"sum(amount)\"", "sum_amount: \"sum(amount)\""));
    assert!(ok, "{log}");
    // A changed aggregate cannot reuse the step's state.
    let (ok, log) = run(&original.replace("max(amount)", "min(amount)"));
    assert!(
        !ok && log.contains("step `per_card_minute` holds state for") && log.contains("cannot be carried over"),
        "{log}"
    );
    // A renamed step starts empty, and the old one's state is only dropped when allowed.
    let renamed = original.replace("per_card_minute", "per_card_minute_v2");
    let (ok, log) = run(&renamed);
    assert!(!ok && log.contains("step `per_card_minute` holds state but is no longer in the pipeline"), "{log}");
    let (ok, log) = run(&renamed.replace("spec:\n", "spec:\n  allowNonRestoredState: true\n"));
    assert!(ok && log.contains("dropped the state of a removed step"), "{log}");
    // The state now belongs to the new pipeline.
    let (ok, log) = run(&renamed);
    assert!(ok, "{log}");
}

#[test]
fn a_window_join_pairs_rows_of_the_same_window_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_795_564_800_000i64;
    let write = |name: &str, rows: &[(&str, &str, i64)]| {
        let text: String = rows
            .iter()
            .map(|(id, card, dt)| format!("{{\"id\": \"{id}\", \"card\": \"{card}\", \"ts\": {}}}\n", t0 + dt))
            .collect();
        std::fs::write(dir.path().join(name), text).unwrap();
    };
    write("views.jsonl", &[("v1", "c1", 5_000), ("v3", "c2", 10_000), ("v2", "c1", 65_000)]);
    write("buys.jsonl", &[("b1", "c1", 50_000), ("b2", "c1", 61_000), ("b3", "c3", 1_000)]);
    let job = r#"
spec:
  pipeline:
    sources:
      views: {file: {path: views.jsonl}, schema: {id: string, card: string, ts: timestamp}, eventTime: {field: ts}}
      buys: {file: {path: buys.jsonl}, schema: {id: string, card: string, ts: timestamp}, eventTime: {field: ts}}
    streams:
      same_minute:
        join: {left: views, right: buys, by: [card], window: {tumbling: 1m}, type: left}
    sinks:
      out: {from: same_minute, file: {path: out.jsonl}}
"#;
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    let out = worker().args(["run", "-f", dir.path().join("job.yaml").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<(String, Option<String>, i64, i64)> = lines(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            let buy = r["buys_id"].as_str().map(str::to_string);
            (id, buy, r["window_start"].as_i64().unwrap() - t0, r["window_end"].as_i64().unwrap() - t0)
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("v1".to_string(), Some("b1".to_string()), 0, 60_000),
            ("v2".to_string(), Some("b2".to_string()), 60_000, 120_000),
            ("v3".to_string(), None, 0, 60_000), // no buy of c2: a left join's row, in its window
        ]
    );
}
