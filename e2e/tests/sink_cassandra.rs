//! The Cassandra sink on the local stack's Kafka and Cassandra: a window job upserts its results
//! into a table it creates (`PRIMARY KEY ((card_id), window_start)`, with a TTL) while it is
//! killed with SIGKILL at random moments (every third kill also loses the state folder). The
//! table then holds exactly the reference's window results, each once, with their TTL.

use std::time::{Duration, Instant};

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;
use weir_e2e::payments::{create_topics, events, feed, reference, write_window_job, Windows};
use weir_e2e::{kill_repeatedly, require_port, start_worker, unique};

const PARTITIONS: i32 = 3;

fn contact_point() -> String {
    format!("127.0.0.1:{}", std::env::var("CASSANDRA_PORT").unwrap_or_else(|_| "9042".into()))
}

/// Every row of `table` as window results, with how many rows there were.
async fn rows(session: &Session, table: &str) -> (Windows, usize) {
    let r = session.query_unpaged(format!("SELECT card_id, window_start, n, total FROM {table}"), &[]).await;
    let Ok(r) = r else { return (Windows::new(), 0) }; // not created yet
    let r = r.into_rows_result().unwrap();
    let mut got = Windows::new();
    let mut count = 0;
    for row in r.rows::<(String, CqlTimestamp, i64, i64)>().unwrap() {
        let (card, start, n, total) = row.unwrap();
        got.insert((card, start.0), (n, total));
        count += 1;
    }
    (got, count)
}

#[test]
fn window_results_are_upserted_exactly_once_through_random_kills() {
    require_port("Kafka", 9092);
    require_port("Cassandra", 9042);
    let name = unique("cass");
    let input = format!("{name}-in");
    let keyspace = format!("e2e_{}", name.replace('-', "_"));
    let table = format!("{keyspace}.per_card_minute");
    create_topics(&[(&input, PARTITIONS)]);
    let evs = events(PARTITIONS);
    let (want, _) = reference(&evs, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "      table:\n        from: per_card_minute\n        cassandra:\n          contactPoints: [\"{}\"]\n          \
         keyspace: {keyspace}\n          table: per_card_minute\n          ttl: 7d\n          createTable: true\n",
        contact_point()
    );
    let manifest = write_window_job(dir.path(), &name, &input, "100ms", &sink);
    let state = dir.path().join("state");
    let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let feeder = feed(&input, &evs, 40, Duration::from_millis(250));
    kill_repeatedly(&manifest, &state, &log, &[], (5, 0x1405_7b7e_f767_814f, 1500));
    feeder.join().unwrap();

    let mut w = start_worker(&manifest, &state, &log, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(SessionBuilder::new().known_node(contact_point()).build()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut got, mut count) = rt.block_on(rows(&session, &table));
    while got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        (got, count) = rt.block_on(rows(&session, &table));
    }
    w.kill().unwrap();
    w.wait().unwrap();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let wrong: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).take(5).collect();
    assert!(missing.is_empty() && wrong.is_empty(), "missing {missing:?}; wrong {wrong:?}; log {}", log.display());
    assert_eq!(count, want.len(), "one row per window result");
    let ttl = rt
        .block_on(session.query_unpaged(format!("SELECT TTL(n) FROM {table} LIMIT 1"), &[]))
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(Option<i32>,)>()
        .unwrap()
        .0
        .unwrap();
    assert!(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "rows expire after the TTL: {ttl} s");
    rt.block_on(session.query_unpaged(format!("DROP KEYSPACE {keyspace}"), &[])).unwrap();
}
