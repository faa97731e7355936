//! The Cassandra sink on the local stack's Kafka and Cassandra: a window job upserts its results
//! into a table it creates (`PRIMARY KEY ((card_id), window_start)`, with a TTL) while it is
//! killed with SIGKILL at random moments (every third kill also loses the state folder), or while
//! Cassandra is stopped and started again. The table then holds exactly the reference's window
//! results, each once, with their TTL.

use std::process::Child;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;
use weir_e2e::payments::{assert_exactly_once, SinkJob, Windows};
use weir_e2e::require_port;

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

/// The window job, upserting into a fresh keyspace named after the job.
fn job(prefix: &str) -> SinkJob {
    require_port("Kafka", 9092);
    require_port("Cassandra", 9042);
    SinkJob::new(prefix, PARTITIONS, "100ms", Vec::new(), |name| {
        format!(
            "      table:\n        from: per_card_minute\n        cassandra:\n          contactPoints: [\"{}\"]\n          \
             keyspace: {}\n          table: per_card_minute\n          ttl: 7d\n          createTable: true\n",
            contact_point(),
            keyspace(name)
        )
    })
}

fn keyspace(job: &str) -> String {
    format!("e2e_{}", job.replace('-', "_"))
}

/// Waits for every window result in the table, stops `w`, checks each is there once with its
/// TTL, and drops the keyspace.
fn finish(job: &SinkJob, mut w: Child) {
    let keyspace = keyspace(&job.name);
    let table = format!("{keyspace}.per_card_minute");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(SessionBuilder::new().known_node(contact_point()).build()).unwrap();
    let stop = || {
        w.kill().unwrap();
        w.wait().unwrap();
    };
    assert_exactly_once(&job.want, &job.log, stop, || rt.block_on(rows(&session, &table)));
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

#[test]
fn window_results_are_upserted_exactly_once_through_random_kills() {
    let job = job("cass");
    finish(&job, job.through_kills(0x1405_7b7e_f767_814f));
}

/// The stack's Cassandra stopped and started again (about 30 s without it) as the job writes:
/// batches are retried with backoff while the task waits, the driver reconnects, and every
/// result is upserted once it is back.
#[test]
fn a_cassandra_outage_stalls_the_job_and_loses_nothing() {
    let job = job("cassdown");
    let table = format!("{}.per_card_minute", keyspace(&job.name));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(SessionBuilder::new().known_node(contact_point()).build()).unwrap();
    let w = job.through_outage("cassandra", Duration::from_secs(3), || rt.block_on(rows(&session, &table)).1 > 0);
    drop(session);
    finish(&job, w);
    let log = job.log_text();
    assert!(log.contains("sink call failed; retrying"), "the outage was met: {}", job.log.display());
}
