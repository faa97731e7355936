//! The Cassandra sink against the local stack's Cassandra (`make stack-up`): a result written
//! again before it is sent replaces the pending row (the latest wins, whichever batch or order
//! Cassandra applies), and a table that does not fit the rows is refused at start with the
//! reason.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use weir_crds::CassandraSinkSpec;
use weir_worker::metrics::Metrics;
use weir_worker::sink::cassandra::CassandraSink;
use weir_worker::sink::Sink;

fn contact_point() -> String {
    format!("127.0.0.1:{}", std::env::var("CASSANDRA_PORT").unwrap_or_else(|_| "9042".into()))
}

fn spec(keyspace: &str, create_table: bool) -> CassandraSinkSpec {
    CassandraSinkSpec {
        contact_points: vec![contact_point()],
        keyspace: keyspace.into(),
        table: "results".into(),
        create_table,
        ..Default::default()
    }
}

fn keyspace() -> String {
    format!("weir_test_{}_{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos())
}

/// Window results: (card, window_start, n).
fn rows(results: &[(&str, i64, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("card_id", DataType::Utf8, false),
        Field::new("window_start", DataType::Int64, false),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(results.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(results.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(results.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

struct Cql {
    rt: tokio::runtime::Runtime,
    session: Session,
}

impl Cql {
    fn connect() -> Cql {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let session = rt
            .block_on(SessionBuilder::new().known_node(contact_point()).build())
            .unwrap_or_else(|e| panic!("Cassandra is not reachable ({e}); start the local stack with `make stack-up`"));
        Cql { rt, session }
    }

    fn run(&self, cql: &str) {
        self.rt.block_on(self.session.query_unpaged(cql, &[])).unwrap_or_else(|e| panic!("{cql}: {e}"));
    }

    fn counts(&self, keyspace: &str) -> Vec<(String, i64, i64)> {
        let r = self
            .rt
            .block_on(
                self.session.query_unpaged(format!("SELECT card_id, window_start, n FROM {keyspace}.results"), &[]),
            )
            .unwrap()
            .into_rows_result()
            .unwrap();
        let mut out: Vec<(String, i64, i64)> =
            r.rows::<(String, i64, i64)>().unwrap().map(|row| row.unwrap()).collect();
        out.sort();
        out
    }
}

#[test]
fn a_result_written_again_before_it_is_sent_keeps_the_latest_value() {
    let cql = Cql::connect();
    let ks = keyspace();
    let mut sink = CassandraSink::new("results", &spec(&ks, true), vec![], Arc::new(Metrics::new("t"))).unwrap();
    // 250 windows of one card (three batches of one partition), then each updated to a smaller
    // count before the flush: in one batch both writes get one timestamp and Cassandra keeps the
    // larger value, so only replacing the pending row gives the latest.
    let first: Vec<(&str, i64, i64)> = (0..250).map(|i| ("c1", i * 60_000, 100 + i)).collect();
    let again: Vec<(&str, i64, i64)> = (0..250).map(|i| ("c1", i * 60_000, i)).collect();
    sink.write_rows(&rows(&first), &[0], None).unwrap();
    sink.write_rows(&rows(&again), &[0], None).unwrap();
    sink.write_rows(&rows(&[("c2", 0, 7)]), &[0], None).unwrap();
    sink.flush().unwrap();
    let mut want: Vec<(String, i64, i64)> = again.iter().map(|(c, w, n)| (c.to_string(), *w, *n)).collect();
    want.push(("c2".into(), 0, 7));
    want.sort();
    assert_eq!(cql.counts(&ks), want);
    cql.run(&format!("DROP KEYSPACE {ks}"));
}

#[test]
fn a_table_that_does_not_fit_the_rows_is_refused_with_the_reason() {
    let cql = Cql::connect();
    let ks = keyspace();
    let metrics = Arc::new(Metrics::new("t"));
    let mut missing = CassandraSink::new("results", &spec(&ks, false), vec![], metrics.clone()).unwrap();
    let err = missing.write_rows(&rows(&[("c1", 0, 1)]), &[0], None).unwrap_err().to_string();
    assert!(err.contains("does not exist; set createTable"), "{err}");

    cql.run(&format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"));
    cql.run(&format!("CREATE TABLE {ks}.results (card_id text, window_start bigint, n bigint, PRIMARY KEY (card_id))"));
    let mut wrong = CassandraSink::new("results", &spec(&ks, true), vec![], metrics).unwrap();
    let err = wrong.write_rows(&rows(&[("c1", 0, 1)]), &[0], None).unwrap_err().to_string();
    assert!(
        err.contains("has PRIMARY KEY ((card_id)), but the rows need PRIMARY KEY ((card_id), window_start)"),
        "{err}"
    );
    cql.run(&format!("DROP KEYSPACE {ks}"));
}

#[test]
fn an_unreachable_cassandra_is_a_clear_error_at_start() {
    let spec = CassandraSinkSpec { contact_points: vec!["127.0.0.1:1".into()], ..spec("ks", true) };
    let err = CassandraSink::new("results", &spec, vec![], Arc::new(Metrics::new("t"))).err().unwrap().to_string();
    assert!(err.starts_with("sink results: connecting to Cassandra at 127.0.0.1:1: "), "{err}");
}
