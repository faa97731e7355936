//! Window results checked against an independent reference model on randomized, out-of-order
//! input cut into random batches, with state committed, reloaded and evicted along the way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{BinaryArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_crds::AggregateFn;

use self::acc::Extreme;
use super::*;
use crate::expr::ExprCompiler;
use crate::state::{MemStore, RocksShared, RocksStore, StateStore, StateTx};

#[derive(Clone, Debug)]
struct Ev {
    card: String,
    amount: i64,
    merchant: String,
    ts: i64,
}

type Results = BTreeMap<(String, i64), (i64, Vec<Value>)>;
/// Every emitted row in emission order: card, window start, window end, aggregates.
type Rows = Vec<(String, i64, i64, Vec<Value>)>;

/// Last result per key and window start, as an upserting consumer keeps them.
fn last_wins(rows: &Rows) -> Results {
    rows.iter().map(|(c, s, e, v)| ((c.clone(), *s), (*e, v.clone()))).collect()
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    rows
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("card", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
        Field::new("merchant", DataType::Utf8, true),
    ]))
}

fn make_op(kind: WindowKind, lateness: i64, max_cached_keys: usize) -> WindowOp {
    let s = schema();
    let c = ExprCompiler::default();
    let agg = |name: &str, func, arg: Option<&str>| AggSpec {
        name: name.into(),
        func,
        arg: arg.map(|a| c.compile(a, &s).unwrap()),
    };
    WindowOp::new(WindowConfig {
        name: "w".into(),
        state_prefix: vec![0, 1],
        kind,
        allowed_lateness: lateness,
        keys: vec![(0, "card".into(), DataType::Utf8)],
        aggs: vec![
            agg("n", AggregateFn::Count, None),
            agg("total", AggregateFn::Sum, Some("amount")),
            agg("biggest", AggregateFn::Max, Some("amount")),
            agg("merchants", AggregateFn::CountDistinct, Some("merchant")),
        ],
        max_cached_keys,
        session_state: true,
    })
}

/// The reference: a direct simulation of PIPELINE.md's rules, sharing no code with the engine.
/// Returns every window once with its final contents, and the late events.
fn reference(evs: &[Ev], kind: WindowKind, lateness: i64, ooo: i64) -> (Rows, BTreeSet<usize>) {
    let mut late = BTreeSet::new();
    let mut max_ts = i64::MIN;
    // window id -> (card, start, end, event indexes); sessions of a key may share a start
    // (a live session can grow back over an expired one), so windows are not keyed by start.
    let mut wins: BTreeMap<usize, (String, i64, i64, Vec<usize>)> = BTreeMap::new();
    let mut next_id = 0;
    // Fixed windows are unique per (card, start).
    let mut fixed: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for (i, e) in evs.iter().enumerate() {
        let wm = if max_ts == i64::MIN { i64::MIN } else { max_ts - ooo - 1 };
        let live = |end: i64| end - 1 + lateness > wm;
        match kind {
            WindowKind::Session { gap } => {
                let touching: Vec<usize> = wins
                    .iter()
                    .filter(|(_, (c, s, end, _))| *c == e.card && *s < e.ts + gap && e.ts < *end && live(*end))
                    .map(|(id, _)| *id)
                    .collect();
                let mut start = e.ts;
                let mut end = e.ts + gap;
                for id in &touching {
                    start = start.min(wins[id].1);
                    end = end.max(wins[id].2);
                }
                if !live(end) {
                    late.insert(i);
                } else {
                    let mut members = vec![i];
                    for id in touching {
                        members.extend(wins.remove(&id).unwrap().3);
                    }
                    wins.insert(next_id, (e.card.clone(), start, end, members));
                    next_id += 1;
                }
            }
            WindowKind::Tumbling { size } | WindowKind::Sliding { size, .. } => {
                let slide = match kind {
                    WindowKind::Sliding { slide, .. } => slide,
                    _ => size,
                };
                let mut any = false;
                let mut s = e.ts.div_euclid(slide) * slide;
                while s + size > e.ts {
                    if live(s + size) {
                        any = true;
                        let id = *fixed.entry((e.card.clone(), s)).or_insert_with(|| {
                            next_id += 1;
                            wins.insert(next_id, (e.card.clone(), s, s + size, vec![]));
                            next_id
                        });
                        wins.get_mut(&id).unwrap().3.push(i);
                    }
                    s -= slide;
                }
                if !any {
                    late.insert(i);
                }
            }
        }
        max_ts = max_ts.max(e.ts);
    }
    let rows = wins
        .into_values()
        .map(|(card, start, end, members)| {
            let amounts: Vec<i64> = members.iter().map(|&i| evs[i].amount).collect();
            let merchants: BTreeSet<&str> = members.iter().map(|&i| evs[i].merchant.as_str()).collect();
            let vals = vec![
                Value::I64(members.len() as i64),
                Value::I64(amounts.iter().sum()),
                Value::I64(*amounts.iter().max().unwrap()),
                Value::I64(merchants.len() as i64),
            ];
            (card, start, end, vals)
        })
        .collect();
    (rows, late)
}

struct Run {
    rows: Rows,
    late: BTreeSet<usize>,
}

/// Runs the engine over `evs` in random batches, committing and reloading state at random.
fn run_engine(
    evs: &[Ev],
    kind: WindowKind,
    lateness: i64,
    ooo: i64,
    rng: &mut StdRng,
    store: Box<dyn Fn() -> Box<dyn StateStore>>,
    max_cached: usize,
) -> Run {
    let mut tx = StateTx::new(store());
    let mut op = make_op(kind, lateness, max_cached);
    let mut results = Rows::new();
    let mut late_raw = Vec::new();
    let mut max_ts = i64::MIN;
    let collect = |b: Option<Batch>, results: &mut Rows| {
        let Some(b) = b else { return };
        let card = b.rows.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
        let cols: Vec<Int64Array> =
            (1..7).map(|i| b.rows.column(i).as_any().downcast_ref::<Int64Array>().unwrap().clone()).collect();
        for r in 0..b.num_rows() {
            let vals = cols[2..].iter().map(|c| Value::I64(c.value(r))).collect();
            results.push((card.value(r).to_string(), cols[0].value(r), cols[1].value(r), vals));
        }
    };
    let mut i = 0;
    while i < evs.len() {
        let n = rng.random_range(1..=300).min(evs.len() - i);
        let chunk = &evs[i..i + n];
        let mut wms = Vec::with_capacity(n);
        for e in chunk {
            wms.push(if max_ts == i64::MIN { i64::MIN } else { max_ts - ooo - 1 });
            max_ts = max_ts.max(e.ts);
        }
        let raw: Vec<Vec<u8>> = (i..i + n).map(|j| j.to_string().into_bytes()).collect();
        let rows = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|e| e.card.as_str()))),
                Arc::new(Int64Array::from_iter_values(chunk.iter().map(|e| e.amount))),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|e| e.merchant.as_str()))),
            ],
        )
        .unwrap();
        let batch = Batch {
            rows,
            event_time: Int64Array::from_iter_values(chunk.iter().map(|e| e.ts)),
            watermark: Int64Array::from(wms),
            raw: Some(BinaryArray::from_iter_values(raw.iter())),
        };
        let mut ctx = OpCtx { state: &mut tx, late: &mut late_raw };
        assert!(op.on_batch(batch, &mut ctx).unwrap().is_none());
        collect(op.on_watermark(max_ts - ooo - 1, &mut ctx).unwrap(), &mut results);
        if rng.random_bool(0.3) {
            op.before_commit(&mut ctx).unwrap();
            tx.commit([]).unwrap();
            if rng.random_bool(0.3) {
                // A restart: a fresh operator over the committed state.
                op = make_op(kind, lateness, max_cached);
            }
        }
        i += n;
    }
    let mut ctx = OpCtx { state: &mut tx, late: &mut late_raw };
    collect(op.on_watermark(i64::MAX, &mut ctx).unwrap(), &mut results);
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();
    // Windows and timers are cleaned up; what remains is the operator's generation.
    let remaining = tx.scan(&[0, 1], &[0, 2], 10).unwrap();
    let keys: Vec<&[u8]> = remaining.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [&[0, 1, b'g'][..]], "all window state is cleaned up at the end");
    let late = late_raw.iter().map(|r| String::from_utf8(r.clone()).unwrap().parse().unwrap()).collect();
    Run { rows: results, late }
}

fn events(rng: &mut StdRng, n: usize) -> Vec<Ev> {
    let keys = rng.random_range(1..20);
    let jitter = rng.random_range(0..30_000);
    let step = rng.random_range(10..2_000);
    // Half the cases put every time on a whole second, so window ends and watermarks meet
    // exactly and the boundary rules (`<=` versus `<`) are exercised.
    let grain = if rng.random_bool(0.5) { 1_000 } else { 1 };
    (0..n)
        .map(|i| {
            let mut ts = i as i64 * step + rng.random_range(-jitter..=jitter) + 1_700_000_000_000;
            if rng.random_bool(0.03) {
                ts -= rng.random_range(0..600_000); // very late
            }
            ts -= ts.rem_euclid(grain);
            Ev {
                card: format!("c{}", (rng.random_range(0..keys * keys) as f64).sqrt() as u32),
                amount: rng.random_range(-50..1_000),
                merchant: format!("m{}", rng.random_range(0..5)),
                ts,
            }
        })
        .collect()
}

fn check(kind_of: impl Fn(&mut StdRng) -> WindowKind, lateness_of: impl Fn(&mut StdRng) -> i64, cases: u64) {
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let kind = kind_of(&mut rng);
        let lateness = lateness_of(&mut rng);
        let ooo = rng.random_range(0..20) * 1_000;
        let n = rng.random_range(1..1_500);
        let evs = events(&mut rng, n);
        let (want, want_late) = reference(&evs, kind, lateness, ooo);
        let cached = rng.random_range(1..50);
        let got = run_engine(&evs, kind, lateness, ooo, &mut rng, Box::new(|| Box::new(MemStore::default())), cached);
        assert_eq!(got.late, want_late, "late events differ: seed {seed} {kind:?} lateness {lateness} ooo {ooo}");
        if lateness == 0 {
            // Every window is emitted exactly once, when it fires.
            assert_eq!(sorted(got.rows), sorted(want), "results differ: seed {seed} {kind:?} ooo {ooo}");
        } else {
            // Updates within the lateness re-emit; an upserting consumer keeps the last.
            let (got, want) = (last_wins(&got.rows), last_wins(&want));
            let diff: Vec<_> = got
                .keys()
                .chain(want.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| got.get(k) != want.get(k))
                .map(|k| (k, got.get(k), want.get(k)))
                .collect();
            assert!(
                diff.is_empty(),
                "results differ (got, want): seed {seed} {kind:?} lateness {lateness} ooo {ooo}: {diff:?}"
            );
        }
    }
}

#[test]
fn tumbling_matches_reference() {
    check(|r| WindowKind::Tumbling { size: r.random_range(1..120) * 1_000 }, |r| r.random_range(0..3) * 10_000, 60);
}

/// Sliding windows run on panes, the most intricate state; 1,500 cases also pass (11 s).
const SLIDING_CASES: u64 = 150;

#[test]
fn sliding_matches_reference() {
    check(
        |r| {
            let slide = r.random_range(1..30) * 1_000;
            WindowKind::Sliding { size: slide * r.random_range(1..6), slide }
        },
        |r| r.random_range(0..3) * 10_000,
        SLIDING_CASES,
    );
}

#[test]
fn session_matches_reference() {
    check(|r| WindowKind::Session { gap: r.random_range(1..60) * 1_000 }, |_| 0, 80);
}

#[test]
fn state_larger_than_the_cache_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let shared = RocksShared::new(64 << 10, 256 << 10);
    let path = dir.path().to_path_buf();
    let mut rng = StdRng::seed_from_u64(99);
    let evs: Vec<Ev> = (0..20_000)
        .map(|i| Ev {
            card: format!("card-{:05}", rng.random_range(0..5_000)),
            amount: rng.random_range(0..100),
            merchant: format!("m{}", i % 7),
            ts: 1_700_000_000_000 + i as i64 * 50 + rng.random_range(0..5_000),
        })
        .collect();
    let kind = WindowKind::Sliding { size: 300_000, slide: 60_000 };
    let (want, want_late) = reference(&evs, kind, 0, 5_000);
    let store = move || -> Box<dyn StateStore> { Box::new(RocksStore::open(&path, &shared).unwrap()) };
    // Only 100 keys of ~5,000 stay decoded in memory; the rest live in RocksDB.
    let got = run_engine(&evs, kind, 0, 5_000, &mut rng, Box::new(store), 100);
    assert_eq!(got.late, want_late);
    assert_eq!(got.rows.len(), want.len());
    assert_eq!(sorted(got.rows), sorted(want));
}

#[test]
fn allowed_lateness_updates_and_reemits() {
    let kind = WindowKind::Tumbling { size: 60_000 };
    let mut op = make_op(kind, 30_000, 1_000);
    let mut tx = StateTx::new(Box::new(MemStore::default()));
    let mut late = Vec::new();
    let mk = |evs: &[(i64, i64)], wm: &[i64]| Batch {
        rows: RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(evs.iter().map(|_| "c"))),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.1))),
                Arc::new(StringArray::from_iter_values(evs.iter().map(|_| "m"))),
            ],
        )
        .unwrap(),
        event_time: Int64Array::from_iter_values(evs.iter().map(|e| e.0)),
        watermark: Int64Array::from(wm.to_vec()),
        raw: Some(BinaryArray::from_iter_values(evs.iter().map(|e| e.1.to_string()))),
    };
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    op.on_batch(mk(&[(10_000, 1), (70_000, 2)], &[i64::MIN, 9_999]), &mut ctx).unwrap();
    let fired = op.on_watermark(69_999, &mut ctx).unwrap().expect("window [0, 60s) fires");
    assert_eq!(fired.num_rows(), 1);
    // Within lateness (59_999 + 30_000 > 69_999): updates and re-emits with the same start.
    op.on_batch(mk(&[(20_000, 5)], &[69_999]), &mut ctx).unwrap();
    let again = op.on_watermark(69_999, &mut ctx).unwrap().expect("re-emitted");
    let total = again.rows.column_by_name("total").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    let start =
        again.rows.column_by_name("window_start").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    assert_eq!((start, total), (0, 6));
    // Past lateness: the event goes to the late output unchanged and nothing is re-emitted.
    op.on_batch(mk(&[(30_000, 7)], &[90_000]), &mut ctx).unwrap();
    assert!(op.on_watermark(90_000, &mut ctx).unwrap().is_none(), "[0, 60s) was cleaned up, [60s, 120s) is open");
    assert_eq!(late, vec![b"7".to_vec()]);
}

#[test]
fn timers_are_read_from_stored_entries_without_decoding_accumulators() {
    let accs = || -> Accs {
        let mut a = Accs::new();
        a.push(Acc::Count(3));
        a.push(Acc::SumI(Some(-7)));
        a.push(Acc::SumF(None));
        a.push(Acc::Avg { sum: 2.5, n: 2 });
        a.push(Acc::Min(Extreme::from_value(Value::Str("abc".into()))));
        a.push(Acc::Max(Extreme::from_value(Value::F64(9.5))));
        a.push(Acc::First(Some(Box::new((5, Value::Str("m-00001".into()))))));
        a.push(Acc::Last(None));
        a.push(Acc::Distinct(Box::new(BTreeSet::from([b"x".to_vec(), b"yz".to_vec()]))));
        a
    };
    let mut e = KeyEntry::new(true);
    e.timer = 1234;
    for (start, fired) in [(0, true), (60_000, false), (120_000, false)] {
        e.wins.push(Win { start, end: start + 60_000, fired, refire: false, accs: accs() });
    }
    let bytes = encode_entry(&e);
    let mut seen = Vec::new();
    let timer = visit_windows(&bytes, accs().len(), |s, end, fired| seen.push((s, end, fired)));
    assert_eq!(timer, Some(1234));
    let decoded = decode_entry(&bytes, accs().len()).unwrap();
    let want: Vec<(i64, i64, bool)> = decoded.wins.iter().map(|w| (w.start, w.end, w.fired)).collect();
    assert_eq!(seen, want);
    assert_eq!(visit_windows(&bytes[..bytes.len() - 1], accs().len(), |_, _, _| {}), None, "a cut entry is corrupt");
}

/// A batch of (card, event time) rows, each with watermark `wm`.
fn batch_of(evs: &[(&str, i64)], wm: i64) -> Batch {
    Batch {
        rows: RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(evs.iter().map(|e| e.0))),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|_| 1))),
                Arc::new(StringArray::from_iter_values(evs.iter().map(|_| "m"))),
            ],
        )
        .unwrap(),
        event_time: Int64Array::from_iter_values(evs.iter().map(|e| e.1)),
        watermark: Int64Array::from(vec![wm; evs.len()]),
        raw: None,
    }
}

fn fired_starts(b: Option<Batch>) -> Vec<(String, i64)> {
    let Some(b) = b else { return Vec::new() };
    let cards = b.rows.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
    let starts = b.rows.column(1).as_any().downcast_ref::<Int64Array>().unwrap().clone();
    let mut out: Vec<_> = (0..b.num_rows()).map(|r| (cards.value(r).to_string(), starts.value(r))).collect();
    out.sort();
    out
}

#[test]
fn a_restored_operator_reads_timers_only_as_the_watermark_reaches_them() {
    let kind = WindowKind::Tumbling { size: 60_000 };
    let mut tx = StateTx::new(Box::new(MemStore::default()));
    let mut late = Vec::new();
    let mut op = make_op(kind, 0, 1_000);
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    // 100 cards, each with a window in each of the first ten minutes.
    let evs: Vec<(String, i64)> =
        (0..10).flat_map(|m| (0..100).map(move |c| (format!("c{c:03}"), m * 60_000 + 1_000))).collect();
    let refs: Vec<(&str, i64)> = evs.iter().map(|(c, t)| (c.as_str(), *t)).collect();
    op.on_batch(batch_of(&refs, i64::MIN), &mut ctx).unwrap();
    assert!(op.on_watermark(i64::MIN + 1, &mut ctx).unwrap().is_none());
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();

    // A restart: nothing is read at open, neither windows nor timers.
    let mut op = make_op(kind, 0, 1_000);
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    assert!(op.on_watermark(30_000, &mut ctx).unwrap().is_none());
    assert_eq!((op.timers.in_memory(), op.cache.len()), (0, 0), "nothing is due yet, nothing is read");
    // The first three minutes fire; only their timers were read.
    let fired = fired_starts(op.on_watermark(3 * 60_000 - 1, &mut ctx).unwrap());
    assert_eq!(fired.len(), 300);
    assert!(fired.iter().all(|(_, s)| *s < 3 * 60_000), "{fired:?}");
    assert!(op.timers.in_memory() == 0 && op.cache.len() == 100, "the due timers were read and fired, the rest not");
    // A new window set after the restart, due before restored ones, fires once.
    op.on_batch(batch_of(&[("new", 3 * 60_000 + 5)], 3 * 60_000 - 1), &mut ctx).unwrap();
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    let fired = fired_starts(op.on_watermark(4 * 60_000 - 1, &mut ctx).unwrap());
    assert_eq!(fired.len(), 101, "minute 3 of every card and of `new`, each once");
    assert!(fired.contains(&("new".to_string(), 3 * 60_000)));
    let rest = fired_starts(op.on_watermark(i64::MAX, &mut ctx).unwrap());
    assert_eq!(rest.len(), 600);
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();
    let left = tx.scan(&[0, 1, b't'], &[0, 1, b'u'], 10).unwrap();
    assert!(left.is_empty(), "fired windows leave no stored timers: {left:?}");
}

#[test]
fn state_stored_without_timers_is_indexed_once() {
    // Entries as an earlier version stored them: windows only, no timers, no generation.
    let kind = WindowKind::Tumbling { size: 60_000 };
    let op = make_op(kind, 0, 1_000);
    let mut tx = StateTx::new(Box::new(MemStore::default()));
    for (card, start) in [("a", 0), ("b", 60_000), ("c", 120_000)] {
        let mut e = KeyEntry::new(false);
        e.wins.push(Win { start, end: start + 60_000, fired: false, refire: false, accs: new_accs(&op.cfg.aggs) });
        let mut key = Vec::new();
        Col::new(&(Arc::new(StringArray::from(vec![card])) as ArrayRef)).unwrap().encode_key(0, &mut key);
        tx.put(op.entry_key(&key), encode_entry(&e));
    }
    tx.commit([]).unwrap();
    let mut op = make_op(kind, 0, 1_000);
    let mut late = Vec::new();
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    let fired = fired_starts(op.on_watermark(60_000 - 1, &mut ctx).unwrap());
    assert_eq!(fired, [("a".to_string(), 0)]);
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();
    assert_eq!(tx.scan(&[0, 1, b't'], &[0, 1, b'u'], 10).unwrap().len(), 2, "the open windows' timers are stored");
    // The next operator finds them stored and reads them lazily.
    let mut op = make_op(kind, 0, 1_000);
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    assert!(op.on_watermark(0, &mut ctx).unwrap().is_none());
    assert_eq!(op.timers.in_memory(), 0);
    let fired = fired_starts(op.on_watermark(i64::MAX, &mut ctx).unwrap());
    assert_eq!(fired, [("b".to_string(), 60_000), ("c".to_string(), 120_000)]);
}

/// The open sessions that changed since the last drain: (card, start, end, count, closed).
fn drained(op: &mut WindowOp, ctx: &mut OpCtx) -> Vec<(String, i64, i64, i64, bool)> {
    let Some(ch) = op.drain_sessions(ctx).unwrap() else { return Vec::new() };
    let b = &ch.rows.rows;
    let cards = b.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
    let cols: Vec<Int64Array> =
        (1..4).map(|i| b.column(i).as_any().downcast_ref::<Int64Array>().unwrap().clone()).collect();
    let mut out: Vec<_> = (0..b.num_rows())
        .map(|r| (cards.value(r).to_string(), cols[0].value(r), cols[1].value(r), cols[2].value(r), ch.closed[r]))
        .collect();
    out.sort();
    out
}

#[test]
fn sessions_drain_as_they_open_grow_merge_and_close() {
    let mut tx = StateTx::new(Box::new(MemStore::default()));
    let mut late = Vec::new();
    let mut op = make_op(WindowKind::Session { gap: 10_000 }, 0, 1_000);
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    op.on_batch(batch_of(&[("a", 1_000), ("b", 2_000), ("a", 4_000)], i64::MIN), &mut ctx).unwrap();
    assert_eq!(
        drained(&mut op, &mut ctx),
        [("a".into(), 1_000, 14_000, 2, false), ("b".into(), 2_000, 12_000, 1, false)]
    );
    assert!(drained(&mut op, &mut ctx).is_empty(), "nothing changed since");
    // A second session of `a`, then an event joining both into one.
    op.on_batch(batch_of(&[("a", 20_000)], 5_000), &mut ctx).unwrap();
    assert_eq!(drained(&mut op, &mut ctx), [("a".into(), 20_000, 30_000, 1, false)], "the later open session");
    op.on_batch(batch_of(&[("a", 12_000)], 5_000), &mut ctx).unwrap();
    assert_eq!(drained(&mut op, &mut ctx), [("a".into(), 1_000, 30_000, 4, false)]);
    // The watermark closes `b` (its result is emitted), then `a`.
    assert_eq!(fired_starts(op.on_watermark(12_000, &mut ctx).unwrap()), [("b".to_string(), 2_000)]);
    assert_eq!(drained(&mut op, &mut ctx), [("b".into(), 0, 0, 0, true)]);
    op.before_commit(&mut ctx).unwrap(); // the cache written back: the drain reads state
    assert_eq!(fired_starts(op.on_watermark(40_000, &mut ctx).unwrap()), [("a".to_string(), 1_000)]);
    assert_eq!(drained(&mut op, &mut ctx), [("a".into(), 0, 0, 0, true)]);
}
