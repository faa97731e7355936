//! Crash points for the fault-injection suite (e2e/tests/faults.rs): with
//! `WEIR_CRASH_AT=<point>[:<n>]` the worker sends itself SIGKILL the `n`-th time (default the
//! first) any thread reaches `point`, so a test can kill it exactly where a crash is most
//! dangerous, which a kill from outside only hits by chance. Without the variable a point costs
//! one load of a set-once value.
//!
//! The points:
//! - `epoch-flushed`: a task's records of the epoch are in its open Kafka transaction, which
//!   is not committed yet.
//! - `epoch-committed`: every transaction of the epoch is committed (its output and input
//!   offsets visible) and the state of the epoch is not yet committed to RocksDB.
//! - `checkpoint-uploading`: a checkpoint's SST files are in storage and its manifest is not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const POINTS: &[&str] = &["epoch-flushed", "epoch-committed", "checkpoint-uploading"];

struct Armed {
    point: String,
    nth: u64,
    reached: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("WEIR_CRASH_AT").ok()?;
            match parse(&spec) {
                Ok((point, nth)) => Some(Armed { point, nth, reached: AtomicU64::new(0) }),
                Err(e) => {
                    tracing::error!("WEIR_CRASH_AT ignored: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn parse(spec: &str) -> Result<(String, u64), String> {
    let (point, nth) = match spec.split_once(':') {
        Some((point, n)) => (point, n.parse::<u64>().map_err(|_| format!("`{n}` in `{spec}` is not a count"))?),
        None => (spec, 1),
    };
    if !POINTS.contains(&point) {
        return Err(format!("`{point}` is not a crash point (one of {})", POINTS.join(", ")));
    }
    if nth == 0 {
        return Err(format!("`{spec}`: counts start at 1"));
    }
    Ok((point.to_string(), nth))
}

/// Kills the process here when `WEIR_CRASH_AT` names this point and this is its `n`-th time.
pub fn point(name: &'static str) {
    let Some(armed) = armed() else { return };
    if armed.point != name || armed.reached.fetch_add(1, Ordering::SeqCst) + 1 != armed.nth {
        return;
    }
    eprintln!("WEIR_CRASH_AT: SIGKILL at {name} (time {})", armed.nth);
    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn crash_points_parse_with_a_count_and_refuse_unknown_points() {
        assert_eq!(parse("epoch-committed"), Ok(("epoch-committed".to_string(), 1)));
        assert_eq!(parse("checkpoint-uploading:3"), Ok(("checkpoint-uploading".to_string(), 3)));
        assert!(parse("epoch-commited").unwrap_err().contains("not a crash point"));
        assert!(parse("epoch-flushed:x").unwrap_err().contains("not a count"));
        assert!(parse("epoch-flushed:0").unwrap_err().contains("start at 1"));
    }
}
