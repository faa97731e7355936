//! `examples/payments-serving.yaml` as written, on the local stack's Cassandra, OpenSearch and
//! Redis: the worker runs it to the end, and each store holds exactly the results the job also
//! wrote to its files — every per-card minute as a Cassandra row and an OpenSearch document,
//! every closed session under its Redis key, and no open session left.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;

use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;
use weir_e2e::{repo_dir, require_port, worker_bin};

/// Each JSON line of `path`, by (card, window start).
fn results(path: &std::path::Path) -> BTreeMap<(String, i64), serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            ((v["card_id"].as_str().unwrap().to_string(), v["window_start"].as_i64().unwrap()), v)
        })
        .collect()
}

/// A Redis `GET`, in the protocol's own words.
fn redis_get(c: &mut BufReader<TcpStream>, key: &str) -> Option<String> {
    write!(c.get_mut(), "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).unwrap();
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    let len: i64 = line.trim_end().strip_prefix('$').unwrap_or_else(|| panic!("GET {key}: {line}")).parse().unwrap();
    if len < 0 {
        return None;
    }
    let mut value = vec![0; len as usize + 2];
    c.read_exact(&mut value).unwrap();
    value.truncate(len as usize);
    Some(String::from_utf8(value).unwrap())
}

fn opensearch(path: &str) -> serde_json::Value {
    let out = Command::new("curl").args(["-s", &format!("http://127.0.0.1:9200{path}")]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn the_serving_example_fills_cassandra_opensearch_and_redis_as_written() {
    for (what, port) in [("Cassandra", 9042), ("OpenSearch", 9200), ("Redis", 6379)] {
        require_port(what, port);
    }
    // From scratch, as a new user runs it: no table or index of an earlier run.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cql = rt.block_on(SessionBuilder::new().known_node("127.0.0.1:9042").build()).unwrap();
    rt.block_on(cql.query_unpaged("DROP KEYSPACE IF EXISTS weir_examples", &[])).unwrap();
    Command::new("curl")
        .args(["-s", "-X", "DELETE", "http://127.0.0.1:9200/payments-per-card-minute"])
        .output()
        .unwrap();
    let example = repo_dir().join("examples/payments-serving.yaml");
    let out = Command::new(worker_bin()).args(["run", "-f", example.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minutes = results(&repo_dir().join("examples/out/serving_per_card_minute.jsonl"));
    let sessions = results(&repo_dir().join("examples/out/serving_sessions.jsonl"));
    assert!(minutes.len() > 1_000 && sessions.len() > 1_000, "{} minutes, {} sessions", minutes.len(), sessions.len());

    let rows = rt
        .block_on(cql.query_unpaged("SELECT card_id, window_start, n, total FROM weir_examples.per_card_minute", &[]))
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut table = BTreeMap::new();
    for row in rows.rows::<(String, CqlTimestamp, i64, f64)>().unwrap() {
        let (card, start, n, total) = row.unwrap();
        table.insert((card, start.0), (n, total));
    }
    let want: BTreeMap<(String, i64), (i64, f64)> =
        minutes.iter().map(|(k, v)| (k.clone(), (v["n"].as_i64().unwrap(), v["total"].as_f64().unwrap()))).collect();
    assert_eq!(table, want, "Cassandra holds each per-card minute once");

    opensearch("/payments-per-card-minute/_refresh");
    let count = opensearch("/payments-per-card-minute/_count")["count"].as_u64().unwrap();
    assert_eq!(count as usize, minutes.len(), "one document per card and minute");
    for ((card, start), v) in minutes.iter().step_by(97) {
        let doc = opensearch(&format!("/payments-per-card-minute/_doc/{card}:{start}"));
        assert_eq!(doc["_source"]["n"], v["n"], "document {card}:{start}");
    }

    let stream = TcpStream::connect("127.0.0.1:6379").unwrap();
    stream.set_nodelay(true).unwrap(); // one request at a time: no waiting for delayed ACKs
    let mut redis = BufReader::new(stream);
    for ((card, start), v) in &sessions {
        let got = redis_get(&mut redis, &format!("card-session:{card}:{start}"))
            .unwrap_or_else(|| panic!("no session result for {card} at {start}"));
        let got: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!((&got["n"], &got["window_end"]), (&v["n"], &v["window_end"]), "session {card} {start}");
        assert_eq!(redis_get(&mut redis, &format!("open-session:{card}")), None, "every session closed at the end");
    }
}
