//! Interval join of two keyed inputs (Flink's interval join, with outer joins as Flink SQL
//! has them): a left row at `t` and a right row at `s` with equal `by` fields join when
//! `t - before <= s <= t + after`.
//!
//! Each input's rows are kept per key until no row of the other input can match them: a left
//! row until the watermark reaches `t + after`, a right row until it reaches `s + before`.
//! A row joins with the other input's kept rows when it arrives, so every pair is emitted
//! once, when its later row arrives, with event time `max(t, s)`. A row is late, and goes to
//! the late output unchanged, when its time is at or below its own input's watermark (the
//! watermark of the records before it); judging each row by its own input keeps the joined
//! pairs independent of how the two inputs interleave. Rows that never matched are emitted
//! with the other input's fields null when they expire, for the outer sides of `left`, `right`
//! and `full` joins.
//!
//! The join's watermark is the least of its inputs'; the watermark it passes on is held back
//! by `max(before, after)`, as Flink SQL's interval join does, so that the rows an outer side
//! emits when they expire are never late for a window downstream.
//!
//! State: one entry `prefix|k|key` per key holding both inputs' kept rows, decoded in a cache
//! that is the epoch's overlay (written back at commit, like windows); one timer per key, at
//! its earliest expiry, kept by [`Timers`].

use datafusion::arrow::array::ArrayRef;
use weir_crds::JoinKind;

use super::keyed::{Keyed, KeyedEntry};
use super::timers::Key;
use super::{late_record, OpCtx, OpError, Operator, Output};
use crate::batch::Batch;
use crate::plan::JoinPlan;
use crate::value::{Col, Value};

/// A kept row of one input.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    ts: i64,
    matched: bool,
    /// Every column of its input.
    values: Vec<Value>,
}

#[derive(Default)]
struct Entry {
    /// Kept rows of the left (0) and right (1) input.
    sides: [Vec<Row>; 2],
    /// The key's timer: its rows' earliest expiry (`i64::MAX`: no rows). Timers set earlier
    /// for the key are stale and do nothing when they fire.
    timer: i64,
}

impl KeyedEntry for Entry {
    /// `[timer i64]`, then `[rows u32]` per input, then per row `[ts i64][matched u8][values]`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.timer.to_le_bytes());
        for rows in &self.sides {
            out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
            for r in rows {
                out.extend_from_slice(&r.ts.to_le_bytes());
                out.push(r.matched as u8);
                out.extend_from_slice(&(r.values.len() as u32).to_le_bytes());
                for v in &r.values {
                    v.encode(&mut out);
                }
            }
        }
        out
    }

    fn decode(mut b: &[u8]) -> Option<Entry> {
        let mut e = Entry { sides: [Vec::new(), Vec::new()], timer: i64::from_le_bytes(b.get(..8)?.try_into().ok()?) };
        b = &b[8..];
        let u32_at = |b: &[u8]| -> Option<usize> { Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize) };
        for side in 0..2 {
            let n = u32_at(b)?;
            b = &b[4..];
            let mut rows = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let ts = i64::from_le_bytes(b.get(..8)?.try_into().ok()?);
                let matched = *b.get(8)? != 0;
                let nv = u32_at(b.get(9..)?)?;
                b = &b[13..];
                let mut values = Vec::with_capacity(nv.min(256));
                for _ in 0..nv {
                    let (v, rest) = Value::decode(b)?;
                    values.push(v);
                    b = rest;
                }
                rows.push(Row { ts, matched, values });
            }
            e.sides[side] = rows;
        }
        Some(e)
    }

    fn is_empty(&self) -> bool {
        self.sides.iter().all(Vec::is_empty)
    }

    fn timer(&self) -> i64 {
        self.timer
    }
}

pub struct JoinOp {
    name: String,
    plan: JoinPlan,
    state: Keyed<Entry>,
    /// The least of the inputs' watermarks, as last given.
    wm: i64,
}

impl JoinOp {
    pub fn new(name: &str, prefix: Vec<u8>, plan: JoinPlan, max_cached_keys: usize) -> JoinOp {
        JoinOp { name: name.to_string(), plan, state: Keyed::new(name, prefix, max_cached_keys), wm: i64::MIN }
    }

    /// How far the watermark passed on trails the inputs'.
    pub fn delay(plan: &JoinPlan) -> i64 {
        match plan.window {
            Some((size, _)) => size,
            None => plan.before.max(plan.after),
        }
    }

    /// When a row of input `side` at `ts` can match nothing more: a window join's row once its
    /// last window has ended.
    fn expiry(&self, side: usize, ts: i64) -> i64 {
        match self.plan.window {
            Some((size, slide)) => (ts - ts.rem_euclid(slide)).saturating_add(size - 1),
            None => ts.saturating_add(if side == 0 { self.plan.after } else { self.plan.before }),
        }
    }

    /// The starts of the windows rows at `a` and `b` share, in order (a window join).
    fn shared_windows(size: i64, slide: i64, a: i64, b: i64) -> impl Iterator<Item = i64> {
        let (lo, hi) = (a.min(b), a.max(b));
        // Windows [s, s + size) with s <= lo and hi < s + size, s a multiple of slide.
        let last = lo - lo.rem_euclid(slide);
        let first = hi - size + 1;
        let first = first + (slide - first.rem_euclid(slide)) % slide;
        (0..).map(move |i| first + i * slide).take_while(move |&s| s <= last)
    }

    /// Whether unmatched rows of input `side` are emitted.
    fn outer(&self, side: usize) -> bool {
        matches!((self.plan.kind, side), (JoinKind::Full, _) | (JoinKind::Left, 0) | (JoinKind::Right, 1))
    }

    /// Appends the joined row of `left` and `right` (either absent for an outer row), of the
    /// window starting at `window` in a window join.
    fn push(&self, out: &mut Option<Output>, left: Option<&Row>, right: Option<&Row>, window: Option<i64>) {
        let out = out.get_or_insert_with(|| Output::new(&self.plan.out_schema));
        let mut builders = out.builders.iter_mut();
        // The columns first: `zip` stops on them without taking one more builder.
        for (&(from_right, i), b) in self.plan.columns.iter().zip(builders.by_ref()) {
            let row = if from_right { right } else { left };
            // An outer row's key fields come from whichever side it has.
            let v = match row {
                Some(r) => &r.values[i],
                None => match self.on_from_other(from_right, i) {
                    Some(j) => &right.or(left).expect("one side").values[j],
                    None => &Value::Null,
                },
            };
            b.push(v);
        }
        if let (Some((size, _)), Some(start)) = (self.plan.window, window) {
            for (b, v) in builders.zip([start, start + size]) {
                b.push(&Value::I64(v));
            }
        }
        out.event_time.push(left.map_or(i64::MIN, |r| r.ts).max(right.map_or(i64::MIN, |r| r.ts)));
    }

    /// The window an unmatched row is emitted in: its own (a tumbling window join's only one).
    fn own_window(&self, ts: i64) -> Option<i64> {
        self.plan.window.map(|(_, slide)| ts - ts.rem_euclid(slide))
    }

    /// For column `i` of one input, the column of the other input that holds the same `by`
    /// field, if it is one.
    fn on_from_other(&self, from_right: bool, i: usize) -> Option<usize> {
        self.plan.on.iter().find_map(|&(l, r, _)| match from_right {
            false if l == i => Some(r),
            true if r == i => Some(l),
            _ => None,
        })
    }

    fn build(&self, out: Option<Output>, wm: i64) -> Result<Option<Batch>, OpError> {
        out.map(|o| o.into_batch(&self.plan.out_schema, &self.name, wm)).transpose()
    }

    /// The watermark passed on: the inputs' least, held back by the join's bounds.
    fn out_wm(&self) -> i64 {
        match self.wm {
            i64::MIN | i64::MAX => self.wm,
            wm => wm.saturating_sub(Self::delay(&self.plan)),
        }
    }
}

impl Operator for JoinOp {
    fn on_batch(&mut self, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.on_input(0, batch, ctx)
    }

    fn on_input(&mut self, port: u8, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.state.open(ctx.state)?;
        let side = port.min(1) as usize;
        let other = 1 - side;
        let key_cols: Vec<ArrayRef> =
            self.plan.on.iter().map(|&(l, r, _)| batch.rows.column(if side == 0 { l } else { r }).clone()).collect();
        let key_cols: Vec<Col> = key_cols.iter().map(|a| Col::new(a).expect("join keys have engine types")).collect();
        let arrays: Vec<ArrayRef> = batch.rows.columns().to_vec();
        let cols: Vec<Col> = arrays.iter().map(|a| Col::new(a).expect("inputs have engine types")).collect();
        // The other input's rows within reach of a row at `ts` (a window join's: less than a
        // window's size away, then sharing at least one window).
        let (lo_off, hi_off) = match (self.plan.window, side) {
            (Some((size, _)), _) => (1 - size, size - 1),
            (None, 0) => (-self.plan.before, self.plan.after),
            (None, _) => (-self.plan.after, self.plan.before),
        };
        let mut out: Option<Output> = None;
        let mut key = Vec::with_capacity(64);
        for row in 0..batch.num_rows() {
            let (ts, own_wm) = (batch.event_time.value(row), batch.watermark.value(row));
            if ts <= own_wm {
                ctx.late.push(late_record(&self.name, &batch, row)?);
                continue;
            }
            let values: Vec<Value> = cols.iter().map(|c| c.value(row)).collect();
            let mut r = Row { ts, matched: false, values };
            if key_cols.iter().any(|c| c.is_null(row)) {
                // A null key matches nothing.
                if self.outer(side) {
                    let (l, rr) = if side == 0 { (Some(&r), None) } else { (None, Some(&r)) };
                    self.push(&mut out, l, rr, self.own_window(ts));
                }
                continue;
            }
            key.clear();
            for c in &key_cols {
                c.encode_key(row, &mut key);
            }
            let (lo, hi) = (ts.saturating_add(lo_off), ts.saturating_add(hi_off));
            let expiry = self.expiry(side, ts);
            let e = self.state.get(ctx.state, &key)?;
            if e.is_empty() {
                e.timer = i64::MAX;
            }
            let window = self.plan.window;
            let shares = |o: &Row| match window {
                Some((size, slide)) => Self::shared_windows(size, slide, ts, o.ts).next().is_some(),
                None => true,
            };
            let mut pairs = Vec::new();
            for o in e.sides[other].iter_mut().filter(|o| o.ts >= lo && o.ts <= hi && shares(o)) {
                o.matched = true;
                r.matched = true;
                pairs.push(o.clone());
            }
            e.sides[side].push(r.clone());
            if expiry < e.timer {
                e.timer = expiry;
                self.state.timers.set(expiry, &Key::from_slice(&key), 0);
            }
            for o in &pairs {
                let (l, rr) = if side == 0 { (&r, o) } else { (o, &r) };
                match window {
                    Some((size, slide)) => {
                        for start in Self::shared_windows(size, slide, ts, o.ts) {
                            self.push(&mut out, Some(l), Some(rr), Some(start));
                        }
                    }
                    None => self.push(&mut out, Some(l), Some(rr), None),
                }
            }
        }
        let wm = self.out_wm();
        self.build(out, wm)
    }

    fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.state.open(ctx.state)?;
        if wm <= self.wm {
            return Ok(None);
        }
        // Rows expiring now are emitted against the watermark passed on so far, which is below
        // their times (see the module's notes).
        let before = self.out_wm();
        self.wm = wm;
        self.state.timers.read_due(ctx.state, wm).map_err(|e| self.state.err(e))?;
        let mut out: Option<Output> = None;
        while let Some((time, due)) = self.state.timers.pop_due(wm) {
            for (key, _) in due {
                let e = self.state.get(ctx.state, &key)?;
                if e.due() != time {
                    continue;
                }
                let mut expired = [Vec::new(), Vec::new()];
                let sides = std::mem::take(&mut e.sides);
                let mut kept_sides: [Vec<Row>; 2] = Default::default();
                for (side, rows) in sides.into_iter().enumerate() {
                    let (gone, kept) = rows.into_iter().partition(|r| self.expiry(side, r.ts) <= wm);
                    kept_sides[side] = kept;
                    expired[side] = gone;
                }
                let next = kept_sides
                    .iter()
                    .enumerate()
                    .flat_map(|(side, rows)| rows.iter().map(move |r| (side, r.ts)))
                    .map(|(side, ts)| self.expiry(side, ts))
                    .min()
                    .unwrap_or(i64::MAX);
                let e = self.state.get(ctx.state, &key)?;
                e.sides = kept_sides;
                e.timer = next;
                if next != i64::MAX {
                    self.state.timers.set(next, &key, 0);
                }
                for (side, rows) in expired.iter().enumerate() {
                    if !self.outer(side) {
                        continue;
                    }
                    for r in rows.iter().filter(|r| !r.matched) {
                        let (l, rr) = if side == 0 { (Some(r), None) } else { (None, Some(r)) };
                        self.push(&mut out, l, rr, self.own_window(r.ts));
                    }
                }
            }
        }
        self.build(out, before)
    }

    fn before_commit(&mut self, ctx: &mut OpCtx) -> Result<(), OpError> {
        self.state.write_back(ctx.state);
        Ok(())
    }

    fn wants_commit(&self) -> bool {
        self.state.wants_commit()
    }

    fn cached_keys(&self) -> usize {
        self.state.cached_keys()
    }
}

#[cfg(test)]
mod tests;
