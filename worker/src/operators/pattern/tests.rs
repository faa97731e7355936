//! Pattern matches checked against a brute-force reference on randomized, out-of-order
//! inputs cut into random batches, with state committed, restarted and evicted along the way.

use std::sync::Arc;

use datafusion::arrow::array::{BinaryArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::expr::ExprCompiler;
use crate::state::{MemStore, RocksShared, RocksStore, StateStore, StateTx};

#[derive(Clone, Debug)]
struct In {
    card: String,
    id: i64,
    amount: i64,
    ts: i64,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("card", DataType::Utf8, true),
        Field::new("id", DataType::Int64, true),
        Field::new("amount", DataType::Int64, true),
    ]))
}

/// The shape of the tested pattern: `min` to `max` probes (events under 2; none at all when
/// `min` is 0: an optional step), then, unless a refund (200 to 299) comes between the probes
/// and it when `refunds` is set, a hit (over 500), all within `within`.
#[derive(Clone, Copy, Debug)]
struct Shape {
    min: u32,
    max: u32,
    refunds: bool,
    within: i64,
    /// Probes must follow each other directly; the hit must follow the last probe directly.
    strict_probes: bool,
    strict_hit: bool,
    /// Not followed by a refund: the match waits until `within` of its first probe has passed
    /// and is dropped if a refund comes after the hit before then.
    trailing_refunds: bool,
}

/// Emits the card, the last probe's id and the hit's id.
fn plan(sh: Shape) -> PatternPlan {
    let c = ExprCompiler::default();
    let s = schema();
    let cond = |text: &str| c.compile(text, &s).unwrap();
    let mut conditions = vec![cond("amount < 2"), cond("amount > 500")];
    if sh.refunds || sh.trailing_refunds {
        conditions.push(cond("amount >= 200 AND amount < 300"));
    }
    let forbid = if sh.refunds { 1 << 2 } else { 0 };
    PatternPlan {
        keys: vec![0],
        conditions,
        steps: vec![
            StepPlan { bit: 0, min: sh.min, max: sh.max, forbid: 0, strict: sh.strict_probes },
            StepPlan { bit: 1, min: 1, max: 1, forbid, strict: sh.strict_hit },
        ],
        keep_all: sh.strict_probes || sh.strict_hit,
        trailing_forbid: if sh.trailing_refunds { 1 << 2 } else { 0 },
        within: sh.within,
        kept: vec![0, 1],
        emit: vec![(None, 0), (Some(0), 1), (Some(1), 1)],
        out_schema: Arc::new(Schema::new(vec![
            Field::new("card", DataType::Utf8, true),
            Field::new("probe", DataType::Int64, true),
            Field::new("hit", DataType::Int64, true),
        ])),
    }
}

/// (card, last probe id (-1: none, the probes skipped), hit id, time of the hit)
type Match = (String, i64, i64, i64);

/// The reference, written from the definition: per card, the events that are not late (by the
/// watermark of the events before them) in time order; from the skip point on, the first event
/// `j` at which some start `s` (a probe) completes the sequence — walking on from `s` within
/// `within` of it: once there are `min` probes a hit completes it and a refund (if refunds
/// count) ends it; below `max` probes a probe counts — and of those the earliest start. Then
/// the skip point moves past `j`.
fn reference(evs: &[In], sh: Shape, ooo: i64) -> (Vec<Match>, Vec<i64>) {
    let mut max_ts = i64::MIN;
    let mut late = Vec::new();
    let mut per_card: std::collections::BTreeMap<&str, Vec<(i64, usize)>> = Default::default();
    for (i, e) in evs.iter().enumerate() {
        let wm = if max_ts == i64::MIN { i64::MIN } else { max_ts - ooo - 1 };
        if e.ts <= wm {
            late.push(e.id);
        } else {
            per_card.entry(&e.card).or_default().push((e.ts, i));
        }
        max_ts = max_ts.max(e.ts);
    }
    let probe = |e: &In| e.amount < 2;
    let hit = |e: &In| e.amount > 500;
    let refund = |e: &In| (200..300).contains(&e.amount);
    // A refund between the probes and the hit ends a match only when refunds count there.
    let between_refund = |e: &In| sh.refunds && refund(e);
    // Where a match may start: a probe, or a hit when the probes are optional.
    let starts = |e: &In| probe(e) || (sh.min == 0 && hit(e));
    // The event at which a match starting at `s` completes, with its last probe, if it does.
    let complete = |list: &[(i64, usize)], s: usize, upto: usize| -> Option<(usize, Option<usize>)> {
        if hit(&evs[list[s].1]) {
            return Some((s, None)); // the probes skipped
        }
        let (mut probes, mut last_probe) = (1, Some(s));
        for (k, &(ts, i)) in list.iter().enumerate().take(upto + 1).skip(s + 1) {
            if ts - list[s].0 > sh.within {
                return None;
            }
            let e = &evs[i];
            if probes >= sh.min && between_refund(e) {
                return None;
            }
            if probes >= sh.min && hit(e) {
                return Some((k, last_probe));
            }
            if probe(e) && probes < sh.max {
                probes += 1;
                last_probe = Some(k);
                continue;
            }
            // Skipped: fatal when the step waited for is strict.
            let strict = if probes < sh.min { sh.strict_probes } else { sh.strict_hit };
            if strict {
                return None;
            }
        }
        None
    };
    let mut out = Vec::new();
    if sh.trailing_refunds {
        // Each start on its own, in time order: it completes its steps at `j` and then needs no
        // refund after `j` up to `within` of its first probe; an emitted match puts every later
        // start at or before its hit's time out of play (skip past the last event).
        for (card, mut list) in per_card {
            list.sort_by_key(|&(ts, i)| (ts, i));
            let mut skip_upto = i64::MIN;
            for s in 0..list.len() {
                if list[s].0 <= skip_upto || !starts(&evs[list[s].1]) {
                    continue;
                }
                let Some((j, last_probe)) = complete(&list, s, list.len() - 1) else { continue };
                let deadline = list[s].0 + sh.within;
                if list[j + 1..].iter().any(|&(ts, i)| ts <= deadline && refund(&evs[i])) {
                    continue;
                }
                let (hit, probe) = (&evs[list[j].1], last_probe.map_or(-1, |p| evs[list[p].1].id));
                out.push((card.to_string(), probe, hit.id, hit.ts));
                skip_upto = hit.ts;
            }
        }
        out.sort();
        late.sort_unstable();
        return (out, late);
    }
    for (card, mut list) in per_card {
        list.sort_by_key(|&(ts, i)| (ts, i));
        let mut from = 0;
        for j in 0..list.len() {
            if j < from {
                continue;
            }
            let found = (from..=j)
                .filter(|&s| starts(&evs[list[s].1]))
                .find_map(|s| complete(&list, s, j).filter(|&(end, _)| end == j));
            if let Some((_, probe)) = found {
                let (hit, probe) = (&evs[list[j].1], probe.map_or(-1, |p| evs[list[p].1].id));
                out.push((card.to_string(), probe, hit.id, hit.ts));
                from = j + 1;
            }
        }
    }
    out.sort();
    late.sort_unstable();
    (out, late)
}

fn run(
    evs: &[In],
    p: &PatternPlan,
    ooo: i64,
    rng: &mut StdRng,
    store: Box<dyn StateStore>,
    cached: usize,
) -> (Vec<Match>, Vec<i64>) {
    let mut tx = StateTx::new(store);
    let new_op = || PatternOp::new("fraud", vec![0, 7], p.clone(), cached);
    let mut op = new_op();
    let (mut out, mut late) = (Vec::new(), Vec::new());
    let mut max_ts = i64::MIN;
    let collect = |b: Option<Batch>, out: &mut Vec<Match>| {
        let Some(b) = b else { return };
        let card = b.rows.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
        let probe = b.rows.column(1).as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let hit = b.rows.column(2).as_any().downcast_ref::<Int64Array>().unwrap().clone();
        for r in 0..b.num_rows() {
            let probe = if probe.is_null(r) { -1 } else { probe.value(r) };
            out.push((card.value(r).to_string(), probe, hit.value(r), b.event_time.value(r)));
        }
    };
    let mut i = 0;
    while i < evs.len() {
        let n = rng.random_range(1..=50).min(evs.len() - i);
        let chunk = &evs[i..i + n];
        let mut wms = Vec::with_capacity(n);
        for e in chunk {
            wms.push(if max_ts == i64::MIN { i64::MIN } else { max_ts - ooo - 1 });
            max_ts = max_ts.max(e.ts);
        }
        let batch = Batch {
            rows: RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(chunk.iter().map(|e| e.card.as_str()))),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|e| e.id))),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|e| e.amount))),
                ],
            )
            .unwrap(),
            event_time: Int64Array::from_iter_values(chunk.iter().map(|e| e.ts)),
            watermark: Int64Array::from(wms),
            raw: Some(BinaryArray::from_iter_values(chunk.iter().map(|e| e.id.to_string()))),
        };
        let mut ctx = OpCtx { state: &mut tx, late: &mut late };
        assert!(op.on_batch(batch, &mut ctx).unwrap().is_none());
        collect(op.on_watermark(max_ts - ooo - 1, &mut ctx).unwrap(), &mut out);
        if rng.random_bool(0.2) {
            op.before_commit(&mut ctx).unwrap();
            tx.commit([]).unwrap();
            if rng.random_bool(0.3) {
                op = new_op();
            }
        }
        i += n;
    }
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    collect(op.on_watermark(i64::MAX, &mut ctx).unwrap(), &mut out);
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();
    let left = tx.scan(&[0, 7, b'k'], &[0, 7, b'u'], 10).unwrap();
    assert!(left.is_empty(), "no buffered event, partial match or timer is left: {left:?}");
    out.sort();
    let mut late: Vec<i64> = late.iter().map(|r| String::from_utf8(r.clone()).unwrap().parse().unwrap()).collect();
    late.sort_unstable();
    (out, late)
}

/// `n` events over `cards` cards, `step` ms apart on average (random when `None`).
fn inputs(rng: &mut StdRng, n: usize, cards: u32, step: Option<i64>) -> Vec<In> {
    let jitter = rng.random_range(0..30_000);
    let step = step.unwrap_or_else(|| rng.random_range(100..5_000));
    // Half the cases put times on whole 15 s, so that event gaps equal `within` exactly.
    let grain = if rng.random_bool(0.5) { 15_000 } else { 1 };
    (0..n)
        .map(|i| {
            let mut ts = 1_700_000_000_000 + i as i64 * step + rng.random_range(-jitter..=jitter);
            if rng.random_bool(0.02) {
                ts -= rng.random_range(0..600_000);
            }
            ts -= ts.rem_euclid(grain);
            let amount = match rng.random_range(0..10) {
                0..=4 => rng.random_range(0..2),
                5..=6 => rng.random_range(501..2_000),
                _ => rng.random_range(2..500),
            };
            In { card: format!("c{}", rng.random_range(0..cards)), id: i as i64, amount, ts }
        })
        .collect()
}

#[test]
fn patterns_match_the_reference() {
    let (mut matches, mut skipped) = (0, 0);
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // A quarter of the cases make the probes optional (minTimes: 0), which cannot be next to
        // the negative step of the refunds.
        let min = if rng.random_bool(0.25) { 0 } else { rng.random_range(1..4) };
        let max = if rng.random_bool(0.5) { min.max(1) } else { min.max(1) + rng.random_range(0..3) };
        let refunds = rng.random_bool(0.5) && min > 0;
        let sh = Shape {
            min,
            max,
            refunds,
            within: rng.random_range(1..20) * 15_000,
            strict_probes: rng.random_bool(0.25),
            strict_hit: rng.random_bool(0.25),
            trailing_refunds: rng.random_bool(0.4),
        };
        let ooo = rng.random_range(0..10) * 1_000;
        let cards = rng.random_range(1..8);
        let n = rng.random_range(0..600);
        let evs = inputs(&mut rng, n, cards, None);
        let (want, want_late) = reference(&evs, sh, ooo);
        let cached = rng.random_range(1..10);
        let (got, late) = run(&evs, &plan(sh), ooo, &mut rng, Box::new(MemStore::default()), cached);
        assert_eq!(late, want_late, "late: seed {seed} {sh:?} ooo {ooo}");
        assert_eq!(got, want, "matches: seed {seed} {sh:?} ooo {ooo}");
        matches += want.len();
        skipped += want.iter().filter(|m| m.1 == -1).count();
    }
    assert!(matches > 500, "the cases have matches to compare: {matches}");
    assert!(skipped > 50, "the cases have matches that skip the optional probes: {skipped}");
}

#[test]
fn three_probes_then_a_large_payment_within_five_minutes_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let shared = RocksShared::new(64 << 10, 256 << 10);
    let mut rng = StdRng::seed_from_u64(3);
    let evs = inputs(&mut rng, 20_000, 500, Some(100));
    let sh = Shape {
        min: 3,
        max: 3,
        refunds: false,
        within: 300_000,
        strict_probes: false,
        strict_hit: false,
        trailing_refunds: false,
    };
    let (want, want_late) = reference(&evs, sh, 5_000);
    assert!(want.len() > 10, "the data has matches: {}", want.len());
    let store = Box::new(RocksStore::open(dir.path(), &shared).unwrap());
    let (got, late) = run(&evs, &plan(sh), 5_000, &mut rng, store, 100);
    assert_eq!(late, want_late);
    assert_eq!(got, want);
}

#[test]
fn an_optional_middle_step_is_taken_when_it_comes_and_skipped_when_it_does_not() {
    // probe, then optionally a refund, then a hit; emits the three ids (null when skipped).
    let c = ExprCompiler::default();
    let s = schema();
    let cond = |text: &str| c.compile(text, &s).unwrap();
    let ids = |name: &str| Field::new(name, DataType::Int64, true);
    let p = PatternPlan {
        keys: vec![0],
        conditions: vec![cond("amount < 2"), cond("amount >= 200 AND amount < 300"), cond("amount > 500")],
        steps: vec![
            StepPlan { bit: 0, min: 1, max: 1, forbid: 0, strict: false },
            StepPlan { bit: 1, min: 0, max: 1, forbid: 0, strict: false },
            StepPlan { bit: 2, min: 1, max: 1, forbid: 0, strict: false },
        ],
        keep_all: false,
        trailing_forbid: 0,
        within: 60_000,
        kept: vec![1],
        emit: vec![(Some(0), 0), (Some(1), 0), (Some(2), 0)],
        out_schema: Arc::new(Schema::new(vec![ids("probe"), ids("refund"), ids("hit")])),
    };
    let evs = [
        (1, 1, 1_000),    // probe
        (2, 900, 2_000),  // hit: probe, -, hit
        (3, 0, 10_000),   // probe
        (4, 250, 11_000), // refund
        (5, 50, 12_000),  // neither
        (6, 700, 13_000), // hit: probe, refund, hit
        (7, 800, 14_000), // a hit alone matches nothing: the probe is required
    ];
    let batch = Batch {
        rows: RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(evs.iter().map(|_| "c1"))),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.0))),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.1))),
            ],
        )
        .unwrap(),
        event_time: Int64Array::from_iter_values(evs.iter().map(|e| e.2)),
        watermark: Int64Array::from(vec![i64::MIN; evs.len()]),
        raw: None,
    };
    let mut tx = StateTx::new(Box::new(MemStore::default()));
    let mut late = Vec::new();
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    let mut op = PatternOp::new("p", vec![0, 9], p, 10);
    assert!(op.on_batch(batch, &mut ctx).unwrap().is_none());
    let out = op.on_watermark(i64::MAX, &mut ctx).unwrap().expect("two matches");
    let col = |i: usize| -> Vec<Option<i64>> {
        let a = out.rows.column(i).as_any().downcast_ref::<Int64Array>().unwrap();
        (0..a.len()).map(|r| a.is_valid(r).then(|| a.value(r))).collect()
    };
    assert_eq!((col(0), col(1), col(2)), (vec![Some(1), Some(3)], vec![None, Some(4)], vec![Some(2), Some(6)]));
}
