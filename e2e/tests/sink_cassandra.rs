//! The Cassandra sink on the local stack's Kafka and Cassandra: a window job upserts its results
//! into a table it creates (`PRIMARY KEY ((card_id), window_start)`, with a TTL) while it is
//! killed with SIGKILL at random moments (every third kill also loses the state folder), or while
//! Cassandra is stopped and started again. The table then holds exactly the reference's window
//! results, each once, with their TTL.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;
use weir_e2e::payments::{assert_exactly_once, create_topics, events, feed, reference, write_window_job, Windows};
use weir_e2e::{kill_repeatedly, repo_dir, require_port, start_worker, unique};

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

/// A window job writing to a fresh keyspace.
struct Job {
    keyspace: String,
    input: String,
    evs: Vec<(i32, weir_e2e::payments::Ev)>,
    want: Windows,
    _dir: tempfile::TempDir,
    manifest: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Job {
    fn new(prefix: &str) -> Job {
        require_port("Kafka", 9092);
        require_port("Cassandra", 9042);
        let name = unique(prefix);
        let input = format!("{name}-in");
        let keyspace = format!("e2e_{}", name.replace('-', "_"));
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
        Job { keyspace, input, evs, want, _dir: dir, manifest, state, log }
    }

    fn start(&self) -> Child {
        start_worker(&self.manifest, &self.state, &self.log, &[])
    }

    /// Waits for every window result in the table, stops `w`, checks each is there once with
    /// its TTL, and drops the keyspace.
    fn finish(&self, mut w: Child) {
        let table = format!("{}.per_card_minute", self.keyspace);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let session = rt.block_on(SessionBuilder::new().known_node(contact_point()).build()).unwrap();
        let stop = || {
            w.kill().unwrap();
            w.wait().unwrap();
        };
        assert_exactly_once(&self.want, &self.log, stop, || rt.block_on(rows(&session, &table)));
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
        rt.block_on(session.query_unpaged(format!("DROP KEYSPACE {}", self.keyspace), &[])).unwrap();
    }
}

#[test]
fn window_results_are_upserted_exactly_once_through_random_kills() {
    let job = Job::new("cass");
    let feeder = feed(&job.input, &job.evs, 40, Duration::from_millis(250));
    kill_repeatedly(&job.manifest, &job.state, &job.log, &[], (5, 0x1405_7b7e_f767_814f, 1500));
    feeder.join().unwrap();
    job.finish(job.start());
}

/// The stack's Cassandra stopped and started again (about 30 s without it) as the job writes:
/// batches are retried with backoff while the task waits, the driver reconnects, and every
/// result is upserted once it is back.
#[test]
fn a_cassandra_outage_stalls_the_job_and_loses_nothing() {
    let job = Job::new("cassdown");
    let feeder = feed(&job.input, &job.evs, 40, Duration::from_millis(250));
    let w = job.start();
    let table = format!("{}.per_card_minute", job.keyspace);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(SessionBuilder::new().known_node(contact_point()).build()).unwrap();
    weir_e2e::wait_until("the first rows", Duration::from_secs(60), || {
        (rt.block_on(rows(&session, &table)).1 > 0).then_some(())
    });
    drop(session);
    let stack = repo_dir().join("e2e/stack/cassandra.sh");
    let down = Command::new(&stack).arg("stop").output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    std::thread::sleep(Duration::from_secs(3));
    let up = Command::new(&stack).arg("start").output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    feeder.join().unwrap();
    job.finish(w);
    let log = std::fs::read_to_string(&job.log).unwrap_or_default();
    assert!(log.contains("sink call failed; retrying"), "the outage was met: {}", job.log.display());
}
