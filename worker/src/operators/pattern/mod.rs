//! Pattern detection per key (Flink CEP in event time): a sequence of named steps, each a
//! condition an event must meet `times` times (default once), all within `within` of the
//! first event; events that meet no current condition are skipped (relaxed contiguity).
//!
//! Events are buffered per key until the watermark passes them and then run through the
//! key's matcher in event-time order (ties in arrival order), so results do not depend on
//! the order events arrive in. Every event that meets the first step's condition starts a
//! partial match; each event advances every partial match whose current step it meets (the
//! step keeps the last such event). When a partial match completes, its row is emitted — the
//! `emit` fields, `step.field` from the step's event or `field` from the last event — with
//! the last event's time, and every partial match of the key is dropped (after a match, the
//! next one starts past its last event, Flink's `skipPastLastEvent`). A partial match whose
//! first event is more than `within` before an event, or before the watermark, is dropped.
//!
//! A step with `minTimes: 0` is optional: a match waiting for it may go on at the step after it
//! with an event that meets that step's condition (the optional step takes an event meeting
//! both), and an event meeting the step after an optional first step starts a match there;
//! `emit` fields of a skipped step are null.
//!
//! With negative steps at the end ("not followed by"), a match that has its steps waits until
//! `within` of its first event has passed and completes then, unless an event of a trailing
//! negative step came first; partial matches go on meanwhile, and a completed one drops those
//! that started at or before its last event.
//!
//! An event at or below its input's watermark is late and goes unchanged to the late output.
//! State: one entry per key with its buffered events and partial matches, cached as the
//! epoch's overlay and written back at commit; one timer per key (see [`Timers`]).

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::SchemaRef;

use super::keyed::{Keyed, KeyedEntry};
use super::timers::Key;
use super::{late_record, OpCtx, OpError, Operator, Output};
use crate::batch::Batch;
use crate::expr::CompiledExpr;
use crate::value::{Col, Value};

/// A compiled pattern step.
#[derive(Clone)]
pub struct PatternPlan {
    /// Key columns of the input.
    pub keys: Vec<usize>,
    /// Every condition, of the steps and of the negative steps: an event's mask has bit `i`
    /// when it meets condition `i`.
    pub conditions: Vec<CompiledExpr>,
    /// The (positive) steps in order.
    pub steps: Vec<StepPlan>,
    /// Some step is strict: events meeting no condition still matter (they break contiguity).
    pub keep_all: bool,
    /// The conditions of negative steps after the last step ("not followed by"): a match that
    /// has its steps waits until `within` of its first event has passed, and is dropped if an
    /// event meeting one comes first.
    pub trailing_forbid: u64,
    pub within: i64,
    /// Input columns kept with a buffered event (those `emit` reads).
    pub kept: Vec<usize>,
    /// Each output field: from the event of this step (`None`: the last event), at this place
    /// in `kept`.
    pub emit: Vec<(Option<usize>, usize)>,
    pub out_schema: SchemaRef,
}

/// A step of the sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// Its condition's bit in the events' masks.
    pub bit: u32,
    /// At least and at most this many events.
    pub min: u32,
    pub max: u32,
    /// The conditions of the negative steps just before it: an event meeting one between the
    /// previous step and this one ends the partial match.
    pub forbid: u64,
    /// Strict contiguity: while the match waits for this step, any other event ends it.
    pub strict: bool,
}

/// What an event does to a partial match.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Keep,
    Drop,
    Done,
}

/// An event waiting for the watermark.
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    ts: i64,
    /// Arrival order within the key, for events with equal times.
    seq: u64,
    /// Bit `i`: meets condition `i`.
    meets: u64,
    values: Vec<Value>,
}

/// A partial match.
#[derive(Clone, Debug, PartialEq)]
struct Partial {
    start: i64,
    step: usize,
    count: u32,
    /// The last event of each step reached so far.
    events: Vec<Option<Ev>>,
}

#[derive(Default)]
struct Entry {
    pending: Vec<Ev>,
    partials: Vec<Partial>,
    next_seq: u64,
    /// The key's one timer (`i64::MAX`: none); earlier ones set for it are stale.
    timer: i64,
}

impl Entry {
    /// When the key next needs the watermark: its earliest buffered event, or the time its
    /// oldest partial match can no longer complete.
    fn next_due(&self, within: i64) -> i64 {
        let pending = self.pending.iter().map(|e| e.ts);
        let partials = self.partials.iter().map(|p| p.start.saturating_add(within));
        pending.chain(partials).min().unwrap_or(i64::MAX)
    }
}

impl KeyedEntry for Entry {
    /// `[timer][next_seq][pending n][events][partials n]` then per partial `[start][step][count][events n]`
    /// and each event slot as `[0]` or `[1][event]`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.timer.to_le_bytes());
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        for ev in &self.pending {
            encode_ev(ev, &mut out);
        }
        out.extend_from_slice(&(self.partials.len() as u32).to_le_bytes());
        for p in &self.partials {
            out.extend_from_slice(&p.start.to_le_bytes());
            out.extend_from_slice(&(p.step as u32).to_le_bytes());
            out.extend_from_slice(&p.count.to_le_bytes());
            out.extend_from_slice(&(p.events.len() as u32).to_le_bytes());
            for slot in &p.events {
                match slot {
                    None => out.push(0),
                    Some(ev) => {
                        out.push(1);
                        encode_ev(ev, &mut out);
                    }
                }
            }
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Entry> {
        let u32_at = |b: &[u8]| -> Option<u32> { Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)) };
        let mut e = Entry {
            timer: i64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            next_seq: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            ..Entry::default()
        };
        let mut rest = b.get(16..)?;
        let n = u32_at(rest)?;
        rest = &rest[4..];
        for _ in 0..n {
            let (ev, r) = decode_ev(rest)?;
            e.pending.push(ev);
            rest = r;
        }
        let n = u32_at(rest)?;
        rest = &rest[4..];
        for _ in 0..n {
            let start = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            let step = u32_at(rest.get(8..)?)? as usize;
            let count = u32_at(rest.get(12..)?)?;
            let slots = u32_at(rest.get(16..)?)? as usize;
            rest = &rest[20..];
            let mut events = Vec::with_capacity(slots.min(64));
            for _ in 0..slots {
                let (&tag, r) = rest.split_first()?;
                rest = r;
                if tag == 0 {
                    events.push(None);
                } else {
                    let (ev, r) = decode_ev(rest)?;
                    events.push(Some(ev));
                    rest = r;
                }
            }
            e.partials.push(Partial { start, step, count, events });
        }
        Some(e)
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.partials.is_empty()
    }

    fn timer(&self) -> i64 {
        self.timer
    }
}

pub struct PatternOp {
    name: String,
    plan: PatternPlan,
    state: Keyed<Entry>,
}

impl PatternOp {
    pub fn new(name: &str, prefix: Vec<u8>, plan: PatternPlan, max_cached_keys: usize) -> PatternOp {
        PatternOp { name: name.to_string(), plan, state: Keyed::new(name, prefix, max_cached_keys) }
    }

    /// `ev` applied to partial match `p`: it may leave the current step for the next (once
    /// the current has its least count; a negative step's event in between ends the match),
    /// or count once more for the current step (up to its most).
    fn advance(plan: &PatternPlan, p: &mut Partial, ev: &Ev) -> Outcome {
        let meets = |bit: u32| ev.meets & (1 << bit) != 0;
        let (i, last) = (p.step, plan.steps.len() - 1);
        let cur = &plan.steps[i];
        if Self::closing(plan, p) {
            // Complete but for the trailing negative steps: waiting out `within`.
            if ev.meets & plan.trailing_forbid != 0 {
                return Outcome::Drop;
            }
            if meets(cur.bit) && p.count < cur.max {
                p.count += 1;
                p.events[i] = Some(ev.clone());
            }
            return Outcome::Keep;
        }
        // With trailing negative steps a match that has its steps is not done yet.
        let done = match plan.trailing_forbid {
            0 => Outcome::Done,
            _ => Outcome::Keep,
        };
        // The step the match waits for: the current one below its least count, else the next.
        let waiting = if p.count < cur.min || i == last { cur } else { &plan.steps[i + 1] };
        if p.count >= cur.min && i < last {
            if ev.meets & plan.steps[i + 1].forbid != 0 {
                return Outcome::Drop;
            }
            // The next step, or one after optional steps (`minTimes: 0`) the match skips; the
            // nearest the event meets takes it.
            if let Some(j) = Self::entered(plan, i + 1, ev) {
                p.step = j;
                p.count = 1;
                p.events[j] = Some(ev.clone());
                return match j == last && plan.steps[j].min <= 1 {
                    true => done,
                    false => Outcome::Keep,
                };
            }
        }
        if meets(cur.bit) && p.count < cur.max {
            p.count += 1;
            p.events[i] = Some(ev.clone());
            if i == last && p.count >= cur.min {
                return done;
            }
            return Outcome::Keep;
        }
        // The event does nothing for the match: skipped, unless the step waited for is strict.
        match waiting.strict {
            true => Outcome::Drop,
            false => Outcome::Keep,
        }
    }

    /// The step `ev` enters when a match may go on at step `from`: `from` if it meets that
    /// step's condition, else the first later one it meets with only optional steps between.
    fn entered(plan: &PatternPlan, from: usize, ev: &Ev) -> Option<usize> {
        for (j, st) in plan.steps.iter().enumerate().skip(from) {
            if ev.meets & (1 << st.bit) != 0 {
                return Some(j);
            }
            if st.min > 0 {
                return None;
            }
        }
        None
    }

    /// Whether `p` has all its steps and waits only for `within` to pass without an event of a
    /// trailing negative step.
    fn closing(plan: &PatternPlan, p: &Partial) -> bool {
        plan.trailing_forbid != 0 && p.step == plan.steps.len() - 1 && p.count >= plan.steps[p.step].min
    }

    /// Ends the partial matches that `expired` picks (those whose `within` has passed): the
    /// ones waiting out trailing negative steps complete, in the order they started, each
    /// dropping the partial matches that started at or before its last event (skip past the
    /// last event); the others are dropped. Partial matches are in start order, so the expired
    /// ones come first.
    fn expire(plan: &PatternPlan, partials: &mut Vec<Partial>, expired: impl Fn(&Partial) -> bool) -> Vec<Partial> {
        let mut done = Vec::new();
        let mut skip_upto = i64::MIN;
        partials.retain(|p| {
            if p.start <= skip_upto {
                return false;
            }
            if !expired(p) {
                return true;
            }
            if Self::closing(plan, p) {
                skip_upto = p.events.last().and_then(Option::as_ref).map_or(i64::MIN, |e| e.ts);
                done.push(p.clone());
            }
            false
        });
        done
    }

    /// Runs `ev` through the key's partial matches; the completed matches, if any.
    fn step(plan: &PatternPlan, partials: &mut Vec<Partial>, ev: Ev) -> Vec<Partial> {
        let mut completed = Self::expire(plan, partials, |p| ev.ts - p.start > plan.within);
        let mut done = None;
        let mut i = 0;
        while i < partials.len() {
            match Self::advance(plan, &mut partials[i], &ev) {
                Outcome::Keep => i += 1,
                Outcome::Drop => {
                    partials.remove(i);
                }
                Outcome::Done => {
                    done = Some(partials.remove(i));
                    break;
                }
            }
        }
        if let (None, Some(j)) = (&done, Self::entered(plan, 0, &ev)) {
            // A new partial match, at the first step or past optional ones.
            let mut p = Partial { start: ev.ts, step: j, count: 1, events: vec![None; plan.steps.len()] };
            p.events[j] = Some(ev);
            match j == plan.steps.len() - 1 && plan.steps[j].min <= 1 && plan.trailing_forbid == 0 {
                true => done = Some(p),
                false => partials.push(p),
            }
        }
        if let Some(d) = done {
            partials.clear();
            completed.push(d);
        }
        completed
    }

    fn emit(&self, out: &mut Option<Output>, m: &Partial) {
        let out = out.get_or_insert_with(|| Output::new(&self.plan.out_schema));
        let last = m.events.last().and_then(Option::as_ref).expect("a completed match has its last event");
        for (b, &(step, col)) in out.builders.iter_mut().zip(&self.plan.emit) {
            let ev = match step {
                Some(s) => m.events[s].as_ref(),
                None => Some(last),
            };
            // A skipped optional step has no event: null.
            b.push(ev.map_or(&Value::Null, |ev| &ev.values[col]));
        }
        out.event_time.push(last.ts);
    }
}

impl Operator for PatternOp {
    fn on_batch(&mut self, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.state.open(ctx.state)?;
        let mut meets: Vec<BooleanArray> = Vec::with_capacity(self.plan.conditions.len());
        for cond in &self.plan.conditions {
            meets.push(cond.eval_predicate(&batch.rows).map_err(|source| OpError::Eval {
                operator: self.name.clone(),
                expr: cond.text.clone(),
                source,
            })?);
        }
        let arrays: Vec<ArrayRef> = batch.rows.columns().to_vec();
        let cols: Vec<Col> = arrays.iter().map(|a| Col::new(a).expect("inputs have engine types")).collect();
        let mut key = Vec::with_capacity(64);
        for row in 0..batch.num_rows() {
            let (ts, wm) = (batch.event_time.value(row), batch.watermark.value(row));
            if ts <= wm {
                ctx.late.push(late_record(&self.name, &batch, row)?);
                continue;
            }
            let mask = meets
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_valid(row) && m.value(row))
                .fold(0u64, |acc, (i, _)| acc | (1 << i));
            if mask == 0 && !self.plan.keep_all {
                continue; // meets no condition: a skipped event for every partial match
            }
            key.clear();
            for &k in &self.plan.keys {
                cols[k].encode_key(row, &mut key);
            }
            let values = self.plan.kept.iter().map(|&c| cols[c].value(row)).collect();
            let e = self.state.get(ctx.state, &key)?;
            if e.is_empty() {
                e.timer = i64::MAX;
            }
            let seq = e.next_seq;
            e.next_seq += 1;
            e.pending.push(Ev { ts, seq, meets: mask, values });
            if ts < e.timer {
                e.timer = ts;
                self.state.timers.set(ts, &Key::from_slice(&key), 0);
            }
        }
        Ok(None)
    }

    fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.state.open(ctx.state)?;
        self.state.timers.read_due(ctx.state, wm).map_err(|e| self.state.err(e))?;
        let mut out: Option<Output> = None;
        let within = self.plan.within;
        while let Some((time, due)) = self.state.timers.pop_due(wm) {
            for (key, _) in due {
                let e = self.state.get(ctx.state, &key)?;
                if e.due() != time {
                    continue;
                }
                let (mut ready, waiting): (Vec<Ev>, Vec<Ev>) =
                    std::mem::take(&mut e.pending).into_iter().partition(|ev| ev.ts <= wm);
                e.pending = waiting;
                ready.sort_by_key(|ev| (ev.ts, ev.seq));
                let mut partials = std::mem::take(&mut e.partials);
                let mut matches = Vec::new();
                for ev in ready {
                    matches.extend(Self::step(&self.plan, &mut partials, ev));
                }
                // Future events are after the watermark: partial matches that started `within`
                // or more before it can no longer complete, and those waiting out trailing
                // negative steps have waited long enough.
                matches.extend(Self::expire(&self.plan, &mut partials, |p| p.start.saturating_add(within) <= wm));
                let e = self.state.get(ctx.state, &key)?;
                e.partials = partials;
                e.timer = e.next_due(within);
                let timer = e.timer;
                if timer != i64::MAX {
                    self.state.timers.set(timer, &key, 0);
                }
                for m in &matches {
                    self.emit(&mut out, m);
                }
            }
        }
        out.map(|o| o.into_batch(&self.plan.out_schema, &self.name, wm)).transpose()
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

fn encode_ev(ev: &Ev, out: &mut Vec<u8>) {
    out.extend_from_slice(&ev.ts.to_le_bytes());
    out.extend_from_slice(&ev.seq.to_le_bytes());
    out.extend_from_slice(&ev.meets.to_le_bytes());
    out.extend_from_slice(&(ev.values.len() as u32).to_le_bytes());
    for v in &ev.values {
        v.encode(out);
    }
}

fn decode_ev(b: &[u8]) -> Option<(Ev, &[u8])> {
    let u64_at = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)) };
    let (ts, seq, meets) = (u64_at(0)? as i64, u64_at(8)?, u64_at(16)?);
    let n = u32::from_le_bytes(b.get(24..28)?.try_into().ok()?) as usize;
    let mut rest = &b[28..];
    let mut values = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let (v, r) = Value::decode(rest)?;
        values.push(v);
        rest = r;
    }
    Some((Ev { ts, seq, meets, values }, rest))
}

#[cfg(test)]
mod tests;
