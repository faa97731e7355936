//! weir-latency: end-to-end latency of a running job, for `make bench`. Produces ~500-byte
//! payment events at a steady rate, each carrying its send time (`sent_ms`), to an input topic,
//! while a `read_committed` consumer reads the job's output topic; the latency of a result is
//! the time it became readable minus the `sent_ms` it carries. Prints the percentiles.
//! With `--wait-ready`, probe events are sent first, one a second, until one comes out (a JVM
//! system takes seconds to start); with `--warmup S`, results of events sent in the first S
//! seconds are not counted (JIT compilation, first checkpoints).

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    /// Partitions of the output topic.
    #[arg(long, default_value_t = 1)]
    output_partitions: i32,
    /// Events per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds sent at the rate before the measured ones.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Wait (up to this many seconds) until the job answers a probe event.
    #[arg(long)]
    wait_ready: Option<u64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "1")
        .set("acks", "all")
        .create()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("weir-latency-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    // Start at the output's current end, resolved now (Offset::End would be resolved at the
    // first fetch, possibly after some results of this run).
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.output_partitions {
        let (_, high) = consumer.fetch_watermarks(&args.output, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(&args.output, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let pad = "x".repeat(380);
    let event = |id: &str, n: u64, t: i64| {
        format!(
            r#"{{"id":"{id}","card_id":"card-{:04}","amount":{}.5,"status":"approved","ts":{t},"sent_ms":{t},"pad":"{pad}"}}"#,
            n % 1000,
            n % 500
        )
    };
    if let Some(limit) = args.wait_ready {
        let deadline = Instant::now() + Duration::from_secs(limit);
        let mut answered = false;
        for n in 0.. {
            anyhow::ensure!(Instant::now() < deadline, "the job did not answer a probe within {limit} s");
            let payload = event(&format!("probe-{n}"), n, now_ms());
            producer.send(BaseRecord::to(&args.input).key("probe").payload(&payload)).map_err(|(e, _)| e)?;
            producer.flush(Duration::from_secs(10))?;
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                answered |= consumer.poll(Duration::from_millis(50)).is_some_and(|m| m.is_ok());
            }
            if answered {
                break;
            }
        }
    }
    let start = Instant::now();
    let warmup = args.rate * args.warmup;
    let total = warmup + args.rate * args.seconds;
    let mut sent = 0u64;
    let mut latencies: Vec<i64> = Vec::with_capacity(total as usize);
    let drain = |consumer: &BaseConsumer, latencies: &mut Vec<i64>, wait: Duration| {
        while let Some(m) = consumer.poll(wait) {
            let Ok(m) = m else { continue };
            let Some(v) = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) else {
                continue;
            };
            // Events `e<n>`: the first `warmup` of them are not counted; probes never are.
            let measured =
                v["id"].as_str().and_then(|id| id.strip_prefix('e')?.parse::<u64>().ok()).is_some_and(|n| n >= warmup);
            if let (true, Some(sent)) = (measured, v["sent_ms"].as_i64()) {
                latencies.push(now_ms() - sent);
            }
        }
    };
    // The broker gone (its queue full for this long): give up rather than spin.
    const STUCK: Duration = Duration::from_secs(60);
    let mut last_sent = Instant::now();
    while sent < total {
        // Send what the rate allows by now, in small bursts.
        let due = (start.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while sent < due.min(total) {
            let payload = event(&format!("e{sent}"), sent, now_ms());
            let key = format!("card-{:04}", sent % 1000);
            if producer.send(BaseRecord::to(&args.input).key(&key).payload(&payload)).is_err() {
                anyhow::ensure!(last_sent.elapsed() < STUCK, "could not send to {} for {STUCK:?}", args.input);
                producer.poll(Duration::from_millis(1));
                continue;
            }
            sent += 1;
            last_sent = Instant::now();
        }
        producer.poll(Duration::ZERO);
        drain(&consumer, &mut latencies, Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (latencies.len() as u64) < total - warmup && Instant::now() < deadline {
        drain(&consumer, &mut latencies, Duration::from_millis(50));
    }
    anyhow::ensure!(!latencies.is_empty(), "no results arrived on {}", args.output);
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "latency  {} events at {}/s for {} s (after {} s of warm-up): {} results  p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
        sent - warmup,
        args.rate,
        args.seconds,
        args.warmup,
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
