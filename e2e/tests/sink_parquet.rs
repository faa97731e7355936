//! The Parquet sink on the local stack's Kafka and S3 server: a window job writes its results
//! as a warehouse table (`date=…/hour=…/` folders) in a bucket, exactly-once, while it is
//! killed with SIGKILL at random moments (every third kill also loses the state folder). Read
//! back with the Arrow Parquet reader, the published files hold every window result of the
//! reference exactly once; nothing but finished `.parquet` files is visible outside the
//! staging folder, and after a clean stop that folder is empty. The S3 server stopped for a
//! while stalls the job, which then goes on; nothing is lost.

use std::process::{Child, Command};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_e2e::payments::{assert_exactly_once, SinkJob, Windows};
use weir_e2e::{require_port, s3_client, s3_endpoint, S3_KEY, S3_SECRET};

const PARTITIONS: i32 = 3;
const BUCKET: &str = "weir";

/// Every key under `prefix`.
async fn list(s3: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page =
            s3.list_objects_v2().bucket(BUCKET).prefix(prefix).set_continuation_token(token).send().await.unwrap();
        keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return keys,
        }
    }
}

/// The window results in the published files of the table at `prefix`, each checked to be in
/// the folder of its hour, with how many rows there were in all.
async fn published(s3: &aws_sdk_s3::Client, prefix: &str) -> (Windows, usize) {
    let (mut got, mut rows) = (Windows::new(), 0);
    for key in list(s3, prefix).await {
        let rel = key.strip_prefix(prefix).unwrap();
        if rel.starts_with("_staging/") {
            assert!(rel.ends_with(".parquet.pending"), "only pending files are staged: {rel}");
            continue;
        }
        assert!(rel.ends_with(".parquet") && rel.contains("/part-"), "a finished Parquet file: {rel}");
        let body = s3.get_object().bucket(BUCKET).key(&key).send().await.unwrap().body.collect().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(body.into_bytes()).unwrap().build().unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
            let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
            assert_eq!(col("window_start").data_type(), &ts, "window_start is a timestamp");
            let (cards, starts) = (col("card_id"), col("window_start"));
            let (n, total) = (col("n"), col("total"));
            let (cards, starts) = (cards.as_string::<i32>(), starts.as_primitive::<TimestampMillisecondType>());
            let (n, total) = (n.as_primitive::<Int64Type>(), total.as_primitive::<Int64Type>());
            for i in 0..b.num_rows() {
                let start = starts.value(i);
                let hour = chrono::DateTime::from_timestamp_millis(start).unwrap().format("date=%Y-%m-%d/hour=%H/");
                assert!(rel.starts_with(&hour.to_string()), "window {start} is in its hour's folder: {rel}");
                assert!(!cards.is_null(i));
                got.insert((cards.value(i).to_string(), start), (n.value(i), total.value(i)));
                rows += 1;
            }
        }
    }
    (got, rows)
}

/// The window job, writing its table under a folder named after the job.
fn job(prefix: &str) -> SinkJob {
    require_port("Kafka", 9092);
    require_port("S3", 7070);
    let env = vec![
        ("AWS_ACCESS_KEY_ID", S3_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_string()),
        ("AWS_ENDPOINT_URL", s3_endpoint()),
    ];
    SinkJob::new(prefix, PARTITIONS, "250ms", env, |name| {
        format!(
            "      warehouse:\n        from: per_card_minute\n        parquet:\n          path: s3://{BUCKET}/{}\n          \
             partitionBy: {{field: window_start, format: \"date=%Y-%m-%d/hour=%H\"}}\n          compression: zstd\n",
            table(name)
        )
    })
}

/// The table's folder in the bucket.
fn table(job: &str) -> String {
    format!("e2e-parquet/{job}/per_card_minute/")
}

/// Waits for every window result in the table, stops `w` with SIGTERM (the last epoch commits
/// and publishes; it exits 0), then checks each result is published exactly once and nothing is
/// left staged. The worker's log.
fn finish(job: &SinkJob, mut w: Child) -> String {
    let table = table(&job.name);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = rt.block_on(async { s3_client() });
    let mut log_text = String::new();
    let stop = || {
        Command::new("kill").args(["-TERM", &w.id().to_string()]).status().unwrap();
        let status = w.wait().unwrap();
        log_text = job.log_text();
        assert!(status.success(), "SIGTERM exits 0; log: {log_text}");
    };
    assert_exactly_once(&job.want, &job.log, stop, || rt.block_on(published(&s3, &table)));
    let staged = rt.block_on(list(&s3, &format!("{table}_staging/")));
    assert!(staged.is_empty(), "a clean stop leaves nothing staged: {staged:?}");
    log_text
}

#[test]
fn window_results_land_in_s3_exactly_once_through_random_kills() {
    let job = job("pq");
    finish(&job, job.through_kills(0x2545_f491_4f6c_dd1d));
}

/// The stack's S3 server stopped for 8 s while the job writes: the task retries with backoff
/// and waits (reading no input), then goes on when the server is back; nothing is lost or
/// written twice.
#[test]
fn an_s3_outage_stalls_the_job_and_loses_nothing() {
    let job = job("pqdown");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = rt.block_on(async { s3_client() });
    let published_one = || rt.block_on(list(&s3, &table(&job.name))).iter().any(|k| k.ends_with(".parquet"));
    let w = job.through_outage("s3", Duration::from_secs(8), published_one);
    let log = finish(&job, w);
    assert!(log.contains("sink call failed; retrying"), "the outage was met and retried: {}", job.log.display());
    assert!(log.contains("sink call succeeded again"), "{}", job.log.display());
}
