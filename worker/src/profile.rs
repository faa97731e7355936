//! Where a worker's time goes, per operator: every source, step and sink of the pipeline.
//!
//! A worker runs its partition-tasks on one thread, each batch going through the chain of
//! steps to the sinks before the next is read, so the time of each operator is measured
//! exclusively around its own work (decoding for a source; `where`, projection and windows
//! for a step; encoding and producing for a sink) and the intervals never overlap.
//!
//! Backpressure is time an operator cannot go on because a sink downstream of it waits for its
//! external system: a full producer queue, a flush waiting for acknowledgements, or the epoch's
//! transaction commit. A sink's own backpressure is that waiting time; a source's or step's is
//! the sum over the sinks it feeds, directly or through steps (late output and dead letters
//! included). Figures are published every second as shares of wall time, like Flink's
//! `busyTimeMsPerSecond` and `backPressuredTimeMsPerSecond`, plus running totals in seconds.

use std::time::Duration;

use crate::metrics::Metrics;
use crate::plan::{JobPlan, Target};

/// An operator's place in the job: sources, then steps (in plan order), then sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Source(usize),
    Step(usize),
    Sink(usize),
}

impl Op {
    pub fn kind(self) -> &'static str {
        match self {
            Op::Source(_) => "source",
            Op::Step(_) => "step",
            Op::Sink(_) => "sink",
        }
    }
}

/// Time per operator, in the plan's operator order.
#[derive(Clone, Debug, Default)]
pub struct Times {
    pub busy: Vec<Duration>,
    pub blocked: Vec<Duration>,
}

impl Times {
    pub fn new(operators: usize) -> Times {
        Times { busy: vec![Duration::ZERO; operators], blocked: vec![Duration::ZERO; operators] }
    }

    /// Adds `other` into `self` from operator `at` on, and zeroes it.
    fn drain_from(&mut self, other: &mut Times, at: usize) {
        for (a, b) in self.busy[at..].iter_mut().zip(other.busy.iter_mut()) {
            *a += std::mem::take(b);
        }
        for (a, b) in self.blocked[at..].iter_mut().zip(other.blocked.iter_mut()) {
            *a += std::mem::take(b);
        }
    }
}

/// Every operator of `plan`, in the order of [`Times`].
pub fn operators(plan: &JobPlan) -> Vec<(Op, &str)> {
    let sources = plan.sources.iter().enumerate().map(|(i, s)| (Op::Source(i), s.name.as_str()));
    let steps = plan.nodes.iter().enumerate().map(|(i, n)| (Op::Step(i), n.name.as_str()));
    let sinks = plan.sinks.iter().enumerate().map(|(i, s)| (Op::Sink(i), s.name.as_str()));
    sources.chain(steps).chain(sinks).collect()
}

/// The index of `op` in [`operators`].
pub fn index(plan: &JobPlan, op: Op) -> usize {
    match op {
        Op::Source(i) => i,
        Op::Step(i) => plan.sources.len() + i,
        Op::Sink(i) => plan.sources.len() + plan.nodes.len() + i,
    }
}

/// The sinks `op` writes to, directly or through steps, each once, in order.
pub fn sinks_below(plan: &JobPlan, op: Op) -> Vec<usize> {
    let mut found = Vec::new();
    let mut stack: Vec<Target> = Vec::new();
    match op {
        Op::Source(i) => {
            stack.extend(&plan.sources[i].children);
            stack.extend(plan.dead_letter.map(Target::Sink));
        }
        Op::Step(i) => stack.push(Target::Node(i, 0)),
        Op::Sink(i) => stack.push(Target::Sink(i)),
    }
    let mut seen = vec![false; plan.nodes.len()];
    while let Some(t) = stack.pop() {
        match t {
            Target::Sink(s) if !found.contains(&s) => found.push(s),
            Target::Sink(_) => {}
            Target::Node(n, _) if !seen[n] => {
                seen[n] = true;
                stack.extend(&plan.nodes[n].children);
                stack.extend(plan.nodes[n].late_sink.map(Target::Sink));
            }
            Target::Node(..) => {}
        }
    }
    found.sort_unstable();
    found
}

/// The worker's operator times since the last report, published as metrics.
pub struct Profile {
    ops: Vec<(Op, String)>,
    /// For each operator, the sinks whose waiting backpressures it.
    below: Vec<Vec<usize>>,
    times: Times,
}

impl Profile {
    pub fn new(plan: &JobPlan) -> Profile {
        let ops: Vec<(Op, String)> = operators(plan).into_iter().map(|(op, n)| (op, n.to_string())).collect();
        let below = ops.iter().map(|(op, _)| sinks_below(plan, *op)).collect();
        let times = Times::new(ops.len());
        Profile { ops, below, times }
    }

    fn first_sink(&self) -> usize {
        self.ops.iter().position(|(op, _)| matches!(op, Op::Sink(_))).unwrap_or(self.ops.len())
    }

    /// Takes a task's times (every operator) into the current report.
    pub fn add(&mut self, times: &mut Times) {
        self.times.drain_from(times, 0);
    }

    /// Takes a task's sinks' times (the sinks only) into the current report.
    pub fn add_sinks(&mut self, times: &mut Times) {
        let at = self.first_sink();
        self.times.drain_from(times, at);
    }

    /// Each operator's (busy, backpressured) time since the last report.
    fn shares(&self) -> Vec<(Duration, Duration)> {
        let first_sink = self.first_sink();
        self.ops
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let blocked = self.below[i].iter().map(|&s| self.times.blocked[first_sink + s]).sum();
                (self.times.busy[i], blocked)
            })
            .collect()
    }

    /// Publishes the times since the last report as shares of `elapsed`, adds them to the
    /// running totals, and starts a new report.
    pub fn publish(&mut self, metrics: &Metrics, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        for ((op, name), (busy, blocked)) in self.ops.iter().zip(self.shares()) {
            let labels = [name.as_str(), op.kind()];
            metrics.operator_busy.with_label_values(&labels).set((busy.as_secs_f64() / secs).min(1.0));
            metrics.operator_backpressure.with_label_values(&labels).set((blocked.as_secs_f64() / secs).min(1.0));
            metrics.operator_busy_seconds.with_label_values(&labels).inc_by(busy.as_secs_f64());
            metrics.operator_backpressured_seconds.with_label_values(&labels).inc_by(blocked.as_secs_f64());
        }
        self.times = Times::new(self.ops.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> JobPlan {
        let m: weir_crds::Manifest = serde_yaml::from_str(yaml).expect("manifest parses");
        JobPlan::new(&m, std::path::Path::new(".")).expect("plans")
    }

    const JOB: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: p}
spec:
  pipeline:
    sources:
      pay: {file: {path: in.jsonl}, schema: {card: string, amount: double, ts: timestamp},
            eventTime: {field: ts, maxOutOfOrderness: 1s}}
    streams:
      big: {from: pay, where: "amount > 10"}
      sums:
        from: big
        keyBy: [card]
        window: {tumbling: 1m}
        aggregate: {total: "sum(amount)"}
        lateOutput: late
    sinks:
      out: {from: sums, file: {path: out.jsonl}}
      late: {file: {path: late.jsonl}}
      raw: {from: pay, file: {path: raw.jsonl}}
      bad: {file: {path: bad.jsonl}}
    deadLetter: bad
"#;

    #[test]
    fn each_operator_is_backpressured_by_the_sinks_it_feeds() {
        let p = plan(JOB);
        let names: Vec<_> = operators(&p).iter().map(|(op, n)| format!("{}:{n}", op.kind())).collect();
        assert_eq!(names, ["source:pay", "step:big", "step:sums", "sink:bad", "sink:late", "sink:out", "sink:raw"]);
        let sink = |n: &str| p.sinks.iter().position(|s| s.name == n).expect("sink");
        let mut want = vec![sink("bad"), sink("late"), sink("out"), sink("raw")];
        want.sort_unstable();
        assert_eq!(sinks_below(&p, Op::Source(0)), want);
        let mut step = vec![sink("late"), sink("out")];
        step.sort_unstable();
        assert_eq!(sinks_below(&p, Op::Step(0)), step);
        assert_eq!(sinks_below(&p, Op::Sink(sink("raw"))), [sink("raw")]);

        // Half a second blocked in `out`, a quarter in `raw`: the source feeds both, the steps
        // only `out`.
        let mut prof = Profile::new(&p);
        let mut t = Times::new(7);
        t.busy[index(&p, Op::Step(1))] = Duration::from_millis(200);
        t.blocked[index(&p, Op::Sink(sink("out")))] = Duration::from_millis(500);
        let mut sinks = Times::new(4);
        sinks.blocked[sink("raw")] = Duration::from_millis(250);
        prof.add(&mut t);
        prof.add_sinks(&mut sinks);
        assert_eq!(t.blocked.iter().sum::<Duration>(), Duration::ZERO, "taken from the task");
        assert_eq!(sinks.blocked.iter().sum::<Duration>(), Duration::ZERO, "taken from the sinks");
        let shares = prof.shares();
        assert_eq!(shares[index(&p, Op::Source(0))].1, Duration::from_millis(750));
        assert_eq!(shares[index(&p, Op::Step(0))].1, Duration::from_millis(500));
        assert_eq!(shares[index(&p, Op::Step(1))], (Duration::from_millis(200), Duration::from_millis(500)));
        assert_eq!(shares[index(&p, Op::Sink(sink("raw")))].1, Duration::from_millis(250));
        assert_eq!(shares[index(&p, Op::Sink(sink("bad")))].1, Duration::ZERO);

        let m = Metrics::new("p");
        prof.publish(&m, Duration::from_secs(1));
        let text = m.render();
        assert!(
            text.contains(r#"weir_operator_backpressure_ratio{kind="source",operator="pay",streamjob="p"} 0.75"#),
            "{text}"
        );
        assert!(text.contains(r#"weir_operator_busy_ratio{kind="step",operator="sums",streamjob="p"} 0.2"#), "{text}");
        assert_eq!(prof.shares()[0], (Duration::ZERO, Duration::ZERO), "a new report starts empty");
    }
}
