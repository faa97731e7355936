//! The OpenSearch sink on the local stack's Kafka and OpenSearch: a window job indexes its
//! results while it is killed with SIGKILL at random moments (every third kill also loses the
//! state folder). The index then holds every window result of the reference exactly once, under
//! the id `<card>:<window_start>`, with the mapping the sink created it with. OpenSearch
//! stopped for a while stalls the job, which then goes on; nothing is lost.

use std::process::{Child, Command};
use std::time::Duration;

use weir_e2e::payments::{assert_exactly_once, SinkJob, Windows};
use weir_e2e::require_port;

const PARTITIONS: i32 = 3;

fn opensearch_url() -> String {
    std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// `curl -s -X method url [body]` as JSON.
fn call(method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, &format!("{}{path}", opensearch_url()), "-H", "Content-Type: application/json"]);
    if let Some(b) = body {
        c.args(["-d", b]);
    }
    let out = c.output().expect("running curl");
    assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Every document of `index` as window results, and how many documents there are.
fn indexed(index: &str) -> (Windows, usize) {
    call("POST", &format!("/{index}/_refresh"), None);
    let count = call("GET", &format!("/{index}/_count"), None)["count"].as_u64().unwrap_or(0) as usize;
    let hits = call("POST", &format!("/{index}/_search"), Some(r#"{"size": 10000, "query": {"match_all": {}}}"#));
    let mut got = Windows::new();
    for h in hits["hits"]["hits"].as_array().into_iter().flatten() {
        let d = &h["_source"];
        let (card, start) = (d["card_id"].as_str().unwrap().to_string(), d["window_start"].as_i64().unwrap());
        assert_eq!(h["_id"].as_str().unwrap(), format!("{card}:{start}"), "the id is the key and window start");
        got.insert((card, start), (d["n"].as_i64().unwrap(), d["total"].as_i64().unwrap()));
    }
    (got, count)
}

/// The window job, indexing into a new index named after the job.
fn job(prefix: &str) -> SinkJob {
    require_port("Kafka", 9092);
    require_port("OpenSearch", 9200);
    let job = SinkJob::new(prefix, PARTITIONS, "100ms", Vec::new(), |name| {
        format!(
            "      search:\n        from: per_card_minute\n        opensearch:\n          url: \"{}\"\n          index: {}\n          \
             mappings: {{card_id: keyword, window_start: date, window_end: date, n: long, total: long}}\n",
            opensearch_url(),
            index(name)
        )
    });
    assert!(job.want.len() < 10_000, "one search reads them all");
    job
}

fn index(job: &str) -> String {
    format!("e2e-{job}")
}

/// Waits for every window result in the index, stops `w`, and checks each is there once.
fn finish(job: &SinkJob, mut w: Child) {
    let index = index(&job.name);
    let stop = || {
        w.kill().unwrap();
        w.wait().unwrap();
    };
    assert_exactly_once(&job.want, &job.log, stop, || indexed(&index));
    let mapping = call("GET", &format!("/{index}/_mapping"), None);
    let props = &mapping[&index]["mappings"]["properties"];
    let types = (props["card_id"]["type"].as_str(), props["window_start"]["type"].as_str());
    assert_eq!(types, (Some("keyword"), Some("date")));
    call("DELETE", &format!("/{index}"), None);
}

#[test]
fn window_results_are_indexed_exactly_once_through_random_kills() {
    let job = job("os");
    finish(&job, job.through_kills(0x5851_f42d_4c95_7f2d));
}

/// The stack's OpenSearch stopped for a while as the job indexes: bulk requests are retried with
/// backoff while the task waits, and every result is indexed once it is back.
#[test]
fn an_opensearch_outage_stalls_the_job_and_loses_nothing() {
    let job = job("osdown");
    let w = job.through_outage("opensearch", Duration::from_secs(5), || indexed(&index(&job.name)).1 > 0);
    finish(&job, w);
    let log = job.log_text();
    assert!(log.contains("sink call failed; retrying"), "the outage was met: {}", job.log.display());
}
