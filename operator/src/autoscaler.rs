//! The built-in autoscaler's decision: how many workers a job needs, from what the operator
//! observes of it every period (each input partition's rate and lag from Kafka, the workers'
//! processed rate and capacity from their metrics).
//!
//! Capacity, not lag alone, decides (KEDA's rule scales by lag per replica and overshoots, then
//! flaps): a worker's capacity is the rate it would process if fully busy (its processed rate
//! over its busy ratio, as Flink's autoscaler takes the "true processing rate"), and the job
//! needs enough workers for the input rate plus its lag drained within `catchUpDuration`, each
//! at `targetUtilization`. Scaling up happens at once; scaling down only when every observation
//! of the last `scaleDownDelay` allowed it. A scale-up that did not raise the processed rate (a
//! hot partition, a slow sink) is reported and not repeated until the input changes.
//!
//! The reconciler's side (observing, recording, rescaling) is in [`crate::scaling`].

use std::collections::VecDeque;

pub use crate::kafka::PartitionOffsets;

/// The bounds and aims of a job's autoscaler, with their defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub min: u32,
    pub max: u32,
    /// Input partitions: more workers than this would own none.
    pub partitions: u32,
    /// The share of a worker's capacity a job is scaled to use (0 to 1).
    pub target_utilization: f64,
    pub catch_up_secs: f64,
    pub scale_down_delay_secs: f64,
}

/// Utilization beyond the target by which the current parallelism still counts as fine: a job
/// at 0.75 with a 0.7 target is not scaled.
const TOLERANCE: f64 = 0.1;
/// Observations at a parallelism before it is judged (rates right after a rescale mislead).
const SETTLE: usize = 3;
/// A scale-up that raised the processed rate by less than this share of what the added workers
/// should have added did not help.
const EFFECTIVE_SHARE: f64 = 0.5;
/// How much the input rate must change before a scale-up that did not help is tried again.
const INPUT_CHANGE: f64 = 0.25;

/// What the operator saw of a job at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Seconds, on any clock that only moves forward.
    pub at: f64,
    /// Workers running (all ready) when observed.
    pub parallelism: u32,
    /// Records per second arriving in each input partition (growth of its end offset).
    pub partition_rates: Vec<f64>,
    /// Records each input partition's committed offset is behind its end.
    pub partition_lag: Vec<i64>,
    /// Records per second all workers processed.
    pub processed_rate: f64,
    /// Records per second all workers would process if fully busy (sum of rate / busy ratio);
    /// `None` while a worker has not reported it.
    pub capacity: Option<f64>,
}

impl Observation {
    pub fn input_rate(&self) -> f64 {
        self.partition_rates.iter().sum()
    }

    pub fn lag(&self) -> i64 {
        self.partition_lag.iter().map(|l| (*l).max(0)).sum()
    }
}

/// Kafka's view of a job's inputs at one moment: for every input partition (of every input
/// topic, in one fixed order) its end offset and the group's committed offset.
#[derive(Clone, Debug, PartialEq)]
pub struct Offsets {
    pub at: f64,
    pub partitions: Vec<PartitionOffsets>,
}

/// One worker's figures, from its metrics (`weir_input_records_per_second`,
/// `weir_capacity_records_per_second`; the capacity is 0 while the worker has had no input).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkerFigures {
    pub input_rate: f64,
    pub capacity: f64,
}

impl Observation {
    /// The observation between two offset snapshots of a job running `parallelism` workers:
    /// each partition's rate is its end offset's growth per second. `None` when no time passed
    /// or the partitions changed (a topic grew partitions: the next pair of snapshots counts).
    pub fn from_offsets(prev: &Offsets, now: &Offsets, workers: &[WorkerFigures], parallelism: u32) -> Option<Self> {
        let secs = now.at - prev.at;
        if secs <= 0.0 || prev.partitions.len() != now.partitions.len() {
            return None;
        }
        let partition_rates =
            prev.partitions.iter().zip(&now.partitions).map(|(a, b)| (b.end - a.end).max(0) as f64 / secs).collect();
        // Before the group committed anything in a partition its lag is unknown, taken as 0 (a
        // job starting from the latest offsets would otherwise seem to lag by all that is stored).
        let partition_lag = now.partitions.iter().map(|p| p.committed.map_or(0, |c| (p.end - c).max(0))).collect();
        // Capacity from the workers that measured one (an idle worker has none), as if every
        // worker had the same.
        let known: Vec<f64> = workers.iter().map(|w| w.capacity).filter(|c| c.is_finite() && *c > 0.0).collect();
        let capacity = (!known.is_empty()).then(|| mean(known.iter().copied()) * parallelism.max(1) as f64);
        Some(Observation {
            at: now.at,
            parallelism,
            partition_rates,
            partition_lag,
            processed_rate: workers.iter().map(|w| w.input_rate.max(0.0)).sum(),
            capacity,
        })
    }
}

/// What the autoscaler decided, with the figures behind it (for the job's status and Events).
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Stay at the current parallelism.
    Keep { reason: String },
    /// Rescale to `to` workers.
    Scale { to: u32, reason: String },
    /// The last scale-up did not help; the job stays where it is until its input changes.
    Ineffective { reason: String },
}

/// A scale-up, remembered until it is judged.
#[derive(Clone, Debug, PartialEq)]
struct ScaleUp {
    from: u32,
    to: u32,
    /// The processed and input rates before it.
    processed: f64,
    input: f64,
}

/// What the autoscaler keeps between periods: recent observations and the last scale-up.
#[derive(Clone, Debug, Default)]
pub struct Scaler {
    observations: VecDeque<Observation>,
    pending: Option<ScaleUp>,
    /// The input rate at which a scale-up did not help; none is tried again near it.
    blocked_at_input: Option<f64>,
    /// One worker's capacity as last measured, at any parallelism: idle workers measure none,
    /// and a job that went idle right after a rescale is still judged by it.
    capacity: Option<f64>,
}

impl Scaler {
    /// Records an observation; observations older than the scale-down window are dropped.
    pub fn observe(&mut self, o: Observation, settings: &Settings) {
        let horizon = o.at - settings.scale_down_delay_secs.max(settings.catch_up_secs) * 2.0;
        self.observations.push_back(o);
        while self.observations.front().is_some_and(|f| f.at < horizon) && self.observations.len() > SETTLE {
            self.observations.pop_front();
        }
    }

    /// The latest observation.
    /// Whether a scale-up judged ineffective holds the job where it is (until the input rate
    /// changes).
    pub fn limited(&self) -> bool {
        self.blocked_at_input.is_some()
    }

    pub fn latest(&self) -> Option<&Observation> {
        self.observations.back()
    }

    /// One worker's capacity (records per second when fully busy) at the latest parallelism.
    pub fn worker_capacity(&self) -> Option<f64> {
        per_worker_capacity(&settled(&self.observations)).or(self.capacity)
    }

    /// Decides for the latest observation; a `Scale` is remembered as done (the caller
    /// rescales).
    pub fn decide(&mut self, s: &Settings) -> Decision {
        let settled = settled(&self.observations);
        let Some(&last) = settled.last() else {
            return keep("no observation yet");
        };
        let current = last.parallelism.max(1);
        if settled.len() < SETTLE {
            return keep(&format!("waiting for {SETTLE} observations at {current} workers"));
        }
        if let Some(c) = per_worker_capacity(&settled) {
            self.capacity = Some(c);
        }
        let Some(per_worker) = self.capacity else {
            return keep("the workers have not reported their capacity yet");
        };
        let recent = &settled[settled.len() - SETTLE..];
        let processed = mean(recent.iter().map(|o| o.processed_rate));
        let input = mean(recent.iter().map(|o| o.input_rate()));

        // Judge the last scale-up once the new parallelism settled.
        if let Some(up) = self.pending.take() {
            if up.to == current {
                let expected = up.processed * (up.to as f64 / up.from.max(1) as f64 - 1.0) * EFFECTIVE_SHARE;
                let lag_falling = recent.first().map(|o| o.lag()) > recent.last().map(|o| o.lag());
                // Keeping up (less than a second of input behind) is what the scale-up was for,
                // however little is processed once the backlog is gone.
                let keeping_up = last.lag() as f64 <= input.max(1.0);
                if processed - up.processed < expected && !lag_falling && !keeping_up {
                    self.blocked_at_input = Some(up.input);
                    return Decision::Ineffective {
                        reason: format!(
                            "scaling from {} to {} workers raised the processed rate only from {:.0} to {:.0} records/s and the lag is not falling: something other than the worker count limits the job (a hot partition or a slow sink){}",
                            up.from,
                            up.to,
                            up.processed,
                            processed,
                            hot_partition_note(last, s, per_worker),
                        ),
                    };
                }
            }
        }
        if let Some(at) = self.blocked_at_input {
            if (input - at).abs() <= at * INPUT_CHANGE {
                return keep(&format!(
                    "a scale-up at this input rate ({input:.0} records/s) did not help; waiting for the input to change by {:.0} %",
                    INPUT_CHANGE * 100.0
                ));
            }
            self.blocked_at_input = None;
        }

        let now_wanted = needed_workers(last, s, per_worker);
        let need = needed_rate(last, s);
        let utilization = need / (per_worker * current as f64);
        if now_wanted > current && utilization > s.target_utilization + TOLERANCE {
            self.pending = Some(ScaleUp { from: current, to: now_wanted, processed, input });
            return Decision::Scale {
                to: now_wanted,
                reason: format!(
                    "input {:.0} records/s and lag {} (to drain in {:.0} s) need {:.0} records/s: {:.0} % of {current} workers' capacity ({:.0} records/s each); {now_wanted} workers keep it at or below {:.0} %{}",
                    last.input_rate(),
                    last.lag(),
                    s.catch_up_secs,
                    need,
                    utilization * 100.0,
                    per_worker,
                    s.target_utilization * 100.0,
                    hot_partition_note(last, s, per_worker),
                ),
            };
        }
        if now_wanted < current {
            // Every observation of the last scale-down delay must allow it (the largest need).
            let covered = settled.first().is_some_and(|f| last.at - f.at >= s.scale_down_delay_secs);
            let to = settled
                .iter()
                .filter(|o| o.at >= last.at - s.scale_down_delay_secs)
                .map(|o| needed_workers(o, s, per_worker))
                .max()
                .unwrap_or(current);
            if covered && to < current {
                return Decision::Scale {
                    to,
                    reason: format!(
                        "for {:.0} s the job needed at most {to} workers (now {need:.0} records/s, {:.0} % of {current} workers' capacity)",
                        s.scale_down_delay_secs,
                        utilization * 100.0
                    ),
                };
            }
            return keep(&format!(
                "{now_wanted} workers would do ({:.0} % utilization at {current}); scaling down once that holds for {:.0} s",
                utilization * 100.0,
                s.scale_down_delay_secs
            ));
        }
        keep(&format!("{:.0} % utilization at {current} workers", utilization * 100.0))
    }
}

/// The observations at the latest parallelism, since it last changed.
fn settled(observations: &VecDeque<Observation>) -> Vec<&Observation> {
    let Some(last) = observations.back() else { return Vec::new() };
    let mut out: Vec<&Observation> =
        observations.iter().rev().take_while(|o| o.parallelism == last.parallelism).collect();
    out.reverse();
    out
}

fn keep(reason: &str) -> Decision {
    Decision::Keep { reason: reason.to_string() }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// A worker's capacity: the mean over the settled observations that have one.
fn per_worker_capacity(settled: &[&Observation]) -> Option<f64> {
    let caps: Vec<f64> = settled
        .iter()
        .filter_map(|o| o.capacity.map(|c| c / o.parallelism.max(1) as f64))
        .filter(|c| *c > 0.0)
        .collect();
    (!caps.is_empty()).then(|| mean(caps.into_iter()))
}

/// Records per second the job must process: its input plus its lag drained in time.
fn needed_rate(o: &Observation, s: &Settings) -> f64 {
    o.input_rate() + o.lag() as f64 / s.catch_up_secs.max(1.0)
}

/// Workers needed for `o`: the fewest that keep the busiest one at the target utilization
/// (the load spread evenly over the partitions, each worker owning `ceil(partitions /
/// workers)` at most), within the bounds and the partition count.
fn needed_workers(o: &Observation, s: &Settings, per_worker: f64) -> u32 {
    let parts = s.partitions.max(1);
    let need = needed_rate(o, s);
    let raw = match need > 0.0 {
        true => {
            // Partitions one worker can own and stay at the target.
            let per = ((parts as f64 * per_worker * s.target_utilization / need).floor() as u32).clamp(1, parts);
            parts.div_ceil(per)
        }
        false => 1,
    };
    let upper = s.max.min(parts).max(1);
    let lower = s.min.clamp(1, upper);
    even_spread(raw.clamp(lower, upper), parts).max(lower)
}

/// The fewest workers that own partitions as evenly as `workers` do: 12 partitions on 5
/// workers put 3 on some, so 4 workers do the same.
fn even_spread(workers: u32, partitions: u32) -> u32 {
    if partitions == 0 || workers == 0 {
        return workers.max(1);
    }
    let per_worker = partitions.div_ceil(workers);
    partitions.div_ceil(per_worker)
}

/// A note naming the partitions that one fully busy worker cannot keep up with.
fn hot_partition_note(o: &Observation, s: &Settings, per_worker: f64) -> String {
    let hot: Vec<String> = o
        .partition_rates
        .iter()
        .zip(o.partition_lag.iter().chain(std::iter::repeat(&0)))
        .enumerate()
        .filter(|(_, (rate, lag))| **rate + (**lag).max(0) as f64 / s.catch_up_secs.max(1.0) > per_worker)
        .map(|(p, (rate, _))| format!("partition {p} ({rate:.0} records/s)"))
        .collect();
    match hot.is_empty() {
        true => String::new(),
        false => format!(
            "; {} need(s) more than one worker's capacity ({per_worker:.0} records/s), which more workers cannot split",
            hot.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            min: 1,
            max: 12,
            partitions: 12,
            target_utilization: 0.7,
            catch_up_secs: 60.0,
            scale_down_delay_secs: 300.0,
        }
    }

    /// An observation at `at` s: `workers` workers with 10,000 records/s of capacity each,
    /// the input spread evenly over 12 partitions, processing what arrives (up to capacity).
    fn obs(at: f64, workers: u32, input: f64, lag: i64) -> Observation {
        let capacity = 10_000.0 * workers as f64;
        Observation {
            at,
            parallelism: workers,
            partition_rates: vec![input / 12.0; 12],
            partition_lag: vec![lag / 12; 12],
            processed_rate: input.min(capacity),
            capacity: Some(capacity),
        }
    }

    /// Runs the scaler over `n` periods of 10 s, observing `at(i, workers)`, and rescales as it
    /// decides (the next observation has the new worker count); every decision but `Keep`.
    fn run(sc: &mut Scaler, workers: u32, n: usize, at: impl Fn(usize, u32) -> Observation) -> Vec<Decision> {
        let s = settings();
        let (mut workers, mut out) = (workers, Vec::new());
        for i in 0..n {
            let o = Observation { at: i as f64 * 10.0, parallelism: workers, ..at(i, workers) };
            sc.observe(o, &s);
            let d = sc.decide(&s);
            if let Decision::Scale { to, .. } = &d {
                workers = *to;
            }
            if !matches!(d, Decision::Keep { .. }) {
                out.push(d);
            }
        }
        out
    }

    fn scaled_to(d: &[Decision]) -> Vec<u32> {
        d.iter().filter_map(|d| if let Decision::Scale { to, .. } = d { Some(*to) } else { None }).collect()
    }

    #[test]
    fn a_burst_scales_up_at_once_to_cover_input_and_lag() {
        let mut sc = Scaler::default();
        // 1 worker at 5,000/s; then 25,000/s arrive with 600,000 records of lag.
        let d = run(&mut sc, 1, 5, |i, w| if i < 3 { obs(0.0, w, 5_000.0, 0) } else { obs(0.0, w, 25_000.0, 600_000) });
        // 25,000 + 600,000 / 60 = 35,000/s; a worker takes 7,000/s at 70 %, so 2 of the 12
        // partitions (5 workers would leave 3 partitions, 8,750/s, on some): 6 workers.
        assert_eq!(scaled_to(&d), vec![6], "{d:?}");
        let Decision::Scale { reason, .. } = &d[0] else { unreachable!() };
        assert!(reason.contains("input 25000 records/s and lag 600000"), "{reason}");
    }

    #[test]
    fn noise_around_the_target_does_not_flap() {
        let mut sc = Scaler::default();
        // 2 workers at 60-75 % utilization for an hour.
        let d = run(&mut sc, 2, 360, |i, w| obs(0.0, w, 13_500.0 + 1_500.0 * ((i % 7) as f64 - 3.0) / 3.0, 0));
        assert_eq!(d, vec![]);
    }

    #[test]
    fn scales_down_only_after_the_delay_of_low_load() {
        // 35,000/s on 6 workers, then 5,000/s from 100 s, but for a spike at 250 s.
        let load = |i: usize, w: u32| match i {
            0..10 => obs(0.0, w, 35_000.0, 0),
            25 => obs(0.0, w, 30_000.0, 0),
            _ => obs(0.0, w, 5_000.0, 0),
        };
        let early = run(&mut Scaler::default(), 6, 56, load);
        assert_eq!(early, vec![], "not before 250 + 300 s");
        let d = run(&mut Scaler::default(), 6, 80, load);
        assert_eq!(scaled_to(&d), vec![1], "{d:?}");
    }

    #[test]
    fn a_scale_up_that_did_not_help_is_reported_and_not_repeated() {
        // A sink limits the job to 9,000 records/s whatever the worker count, so the lag of a
        // 20,000/s input grows; each worker measures 9,500/s of capacity.
        let limited = |i: usize, w: u32| Observation {
            processed_rate: 9_000.0,
            capacity: Some(9_500.0 * w as f64),
            ..obs(0.0, w, 20_000.0, 110_000 * i as i64)
        };
        let mut sc = Scaler::default();
        let d = run(&mut sc, 1, 40, limited);
        assert_eq!(scaled_to(&d).len(), 1, "one scale-up, not repeated: {d:?}");
        assert!(
            matches!(&d[1], Decision::Ineffective { reason } if reason.contains("only from 9000 to 9000")),
            "{d:?}"
        );
        assert!(sc.limited());
        // The input doubles: the autoscaler decides afresh.
        let workers = scaled_to(&d)[0];
        run(&mut sc, workers, 2, |i, w| Observation {
            partition_rates: vec![40_000.0 / 12.0; 12],
            ..limited(40 + i, w)
        });
        assert!(!sc.limited(), "no longer held once the input changed");
    }

    #[test]
    fn a_burst_drained_by_the_scale_up_is_not_taken_for_an_ineffective_one() {
        // 1 worker of 10,000/s; a burst of 25,000/s with 600,000 records behind, then no input:
        // at 6 workers the backlog is gone before the scale-up is judged, and little is processed.
        let burst = |i: usize, w: u32| match i {
            0..3 => obs(0.0, w, 1_000.0, 0),
            3 => obs(0.0, w, 25_000.0, 600_000),
            _ => Observation { processed_rate: 0.0, capacity: None, ..obs(0.0, w, 0.0, 0) },
        };
        let mut sc = Scaler::default();
        let d = run(&mut sc, 1, 60, burst);
        assert!(d.iter().all(|d| !matches!(d, Decision::Ineffective { .. })), "{d:?}");
        // Up once; down to 1 after the idle delay, judged by the capacity measured at 1 worker.
        assert_eq!(scaled_to(&d), vec![6, 1], "{d:?}");
    }

    #[test]
    fn a_hot_partition_is_named() {
        let hot = |_: usize, w: u32| {
            let mut o = obs(0.0, w, 0.0, 0);
            o.partition_rates = vec![500.0; 12];
            o.partition_rates[7] = 12_000.0;
            o.processed_rate = 10_000.0;
            o
        };
        let d = run(&mut Scaler::default(), 1, 4, hot);
        let Some(Decision::Scale { reason, .. }) = d.first() else { panic!("{d:?}") };
        assert!(reason.contains("partition 7 (12000 records/s)"), "{reason}");
    }

    #[test]
    fn bounds_partitions_and_even_spread() {
        assert_eq!(even_spread(5, 12), 4);
        assert_eq!(even_spread(7, 12), 6);
        assert_eq!(even_spread(12, 12), 12);
        assert_eq!(even_spread(3, 300), 3);
        assert_eq!(even_spread(51, 300), 50);
        let s = Settings { max: 4, ..settings() };
        assert_eq!(needed_workers(&obs(0.0, 1, 1_000_000.0, 0), &s, 10_000.0), 4, "at most max");
        let s = Settings { min: 3, ..settings() };
        assert_eq!(needed_workers(&obs(0.0, 1, 0.0, 0), &s, 10_000.0), 3, "at least min");
        let s = Settings { partitions: 2, ..settings() };
        assert_eq!(needed_workers(&obs(0.0, 1, 1_000_000.0, 0), &s, 10_000.0), 2, "no more than partitions");
    }

    #[test]
    fn idle_partitions_and_missing_capacity() {
        let unknown = |_: usize, w: u32| Observation { capacity: None, ..obs(0.0, w, 50_000.0, 0) };
        assert_eq!(run(&mut Scaler::default(), 2, 5, unknown), vec![], "no capacity, no decision");
        // Every partition idle for longer than the delay: down to the minimum, once.
        let d = run(&mut Scaler::default(), 4, 60, |_, w| obs(0.0, w, 0.0, 0));
        assert_eq!(scaled_to(&d), vec![1]);
    }

    #[test]
    fn observations_from_offset_snapshots_and_worker_figures() {
        let offsets = |at: f64, parts: &[(i64, Option<i64>)]| Offsets {
            at,
            partitions: parts
                .iter()
                .enumerate()
                .map(|(p, &(end, committed))| PartitionOffsets { partition: p as i32, low: 0, end, committed })
                .collect(),
        };
        let prev = offsets(100.0, &[(1_000, Some(900)), (5_000, None), (0, Some(0))]);
        let now = offsets(110.0, &[(3_000, Some(2_500)), (5_000, None), (100, Some(100))]);
        let workers = [
            WorkerFigures { input_rate: 180.0, capacity: 1_000.0 },
            WorkerFigures { input_rate: 0.0, capacity: 0.0 },
            WorkerFigures { input_rate: 30.0, capacity: 3_000.0 },
        ];
        let o = Observation::from_offsets(&prev, &now, &workers, 3).unwrap();
        assert_eq!(o.partition_rates, vec![200.0, 0.0, 10.0]);
        assert_eq!(o.partition_lag, vec![500, 0, 0], "nothing committed: no lag known");
        assert_eq!(o.processed_rate, 210.0);
        assert_eq!(o.capacity, Some(6_000.0), "the idle worker counted at the others' mean");
        assert_eq!((o.at, o.parallelism), (110.0, 3));
        let idle = [WorkerFigures { input_rate: 0.0, capacity: 0.0 }];
        assert_eq!(Observation::from_offsets(&prev, &now, &idle, 1).unwrap().capacity, None);
        let grown = offsets(120.0, &[(3_000, None); 4]);
        assert_eq!(Observation::from_offsets(&now, &grown, &workers, 3), None, "partitions changed");
        assert_eq!(Observation::from_offsets(&now, &now, &workers, 3), None, "no time passed");
    }
}
