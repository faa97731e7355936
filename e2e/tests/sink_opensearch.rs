//! The OpenSearch sink on the local stack's Kafka and OpenSearch: a window job indexes its
//! results while it is killed with SIGKILL at random moments (every third kill also loses the
//! state folder). The index then holds every window result of the reference exactly once, under
//! the id `<card>:<window_start>`, with the mapping the sink created it with. OpenSearch
//! stopped for a while stalls the job, which then goes on; nothing is lost.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use weir_e2e::payments::{assert_exactly_once, create_topics, events, feed, reference, write_window_job, Windows};
use weir_e2e::{kill_repeatedly, repo_dir, require_port, start_worker, unique};

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

/// A window job indexing into a new index, its input in a new topic.
struct Job {
    index: String,
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
        require_port("OpenSearch", 9200);
        let name = unique(prefix);
        let (input, index) = (format!("{name}-in"), format!("e2e-{name}"));
        create_topics(&[(&input, PARTITIONS)]);
        let evs = events(PARTITIONS);
        let (want, _) = reference(&evs, PARTITIONS);
        assert!(want.len() < 10_000, "one search reads them all");
        let dir = tempfile::tempdir().unwrap();
        let sink = format!(
            "      search:\n        from: per_card_minute\n        opensearch:\n          url: \"{}\"\n          index: {index}\n          \
             mappings: {{card_id: keyword, window_start: date, window_end: date, n: long, total: long}}\n",
            opensearch_url()
        );
        let manifest = write_window_job(dir.path(), &name, &input, "100ms", &sink);
        let state = dir.path().join("state");
        let log = weir_e2e::run_dir().join("logs").join(format!("e2e-{name}.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        Job { index, input, evs, want, _dir: dir, manifest, state, log }
    }

    /// Waits for every window result in the index, stops `w`, and checks each is there once.
    fn finish(&self, mut w: Child) {
        let stop = || {
            w.kill().unwrap();
            w.wait().unwrap();
        };
        assert_exactly_once(&self.want, &self.log, stop, || indexed(&self.index));
        let mapping = call("GET", &format!("/{}/_mapping", self.index), None);
        let props = &mapping[&self.index]["mappings"]["properties"];
        let types = (props["card_id"]["type"].as_str(), props["window_start"]["type"].as_str());
        assert_eq!(types, (Some("keyword"), Some("date")));
        call("DELETE", &format!("/{}", self.index), None);
    }
}

#[test]
fn window_results_are_indexed_exactly_once_through_random_kills() {
    let job = Job::new("os");
    let feeder = feed(&job.input, &job.evs, 40, Duration::from_millis(250));
    kill_repeatedly(&job.manifest, &job.state, &job.log, &[], (5, 0x5851_f42d_4c95_7f2d, 1500));
    feeder.join().unwrap();
    job.finish(start_worker(&job.manifest, &job.state, &job.log, &[]));
}

/// The stack's OpenSearch stopped for a while as the job indexes: bulk requests are retried with
/// backoff while the task waits, and every result is indexed once it is back.
#[test]
fn an_opensearch_outage_stalls_the_job_and_loses_nothing() {
    let job = Job::new("osdown");
    let feeder = feed(&job.input, &job.evs, 40, Duration::from_millis(250));
    let w = start_worker(&job.manifest, &job.state, &job.log, &[]);
    weir_e2e::wait_until("the first documents", Duration::from_secs(60), || (indexed(&job.index).1 > 0).then_some(()));
    let stack = repo_dir().join("e2e/stack/opensearch.sh");
    let down = Command::new(&stack).arg("stop").output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    std::thread::sleep(Duration::from_secs(5));
    let up = Command::new(&stack).arg("start").output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    feeder.join().unwrap();
    job.finish(w);
    let log = std::fs::read_to_string(&job.log).unwrap_or_default();
    assert!(log.contains("sink call failed; retrying"), "the outage was met: {}", job.log.display());
}
