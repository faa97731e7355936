//! Keyed event-time windows (tumbling, sliding, session) with allowed lateness, on task state.
//!
//! State per key: one entry `prefix|k|key` holding the key's open windows and their
//! accumulators, cached decoded in memory for hot keys; one timer `prefix|t|time|key|start` per
//! window, ordered by the watermark at which something happens to it (fire at `end - 1`,
//! cleanup at `end - 1 + allowedLateness`). Lateness is judged per row against the watermark of
//! the records before it; windows fire when the task's watermark passes their end after a
//! batch. A window that is already past its lateness is never updated or merged into, so
//! results do not depend on where batches are cut.

pub mod acc;
mod assign;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use rustc_hash::{FxHashMap, FxHashSet};
use weir_crds::AggregateFn;

pub use assign::WindowKind;

use self::acc::Acc;
use super::{OpCtx, OpError, Operator};
use crate::batch::Batch;
use crate::codec::encode_json_lines;
use crate::expr::CompiledExpr;
use crate::state::{StateError, StateTx};
use crate::value::{Col, ColumnBuilder, Value};

/// One aggregate output of a window step.
#[derive(Clone)]
pub struct AggSpec {
    pub name: String,
    pub func: AggregateFn,
    pub arg: Option<CompiledExpr>,
}

/// Configuration of a window operator.
pub struct WindowConfig {
    pub name: String,
    /// Distinguishes this operator's state from other operators of the task.
    pub state_prefix: Vec<u8>,
    pub kind: WindowKind,
    pub allowed_lateness: i64,
    /// Key fields as (column index in the input, name, type).
    pub keys: Vec<(usize, String, DataType)>,
    pub aggs: Vec<AggSpec>,
    /// Keys kept decoded in memory before the cache is written back and dropped.
    pub max_cached_keys: usize,
}

#[derive(Clone, Debug)]
struct Win {
    start: i64,
    end: i64,
    fired: bool,
    /// Updated after firing (allowed lateness): emit again after this batch.
    refire: bool,
    accs: Vec<Acc>,
}

#[derive(Default)]
struct KeyEntry {
    wins: Vec<Win>,
    dirty: bool,
    /// Timers as last written to state: (time, window start).
    stored_timers: Vec<(i64, i64)>,
}

/// The window operator.
pub struct WindowOp {
    cfg: WindowConfig,
    out_schema: SchemaRef,
    cache: FxHashMap<Vec<u8>, KeyEntry>,
    refire: FxHashSet<Vec<u8>>,
    /// Earliest timer in state or cache; `None` until read from state.
    next_timer: Option<i64>,
    key_buf: Vec<u8>,
}

type Emitted = (Vec<u8>, i64, i64, Vec<Value>);

impl WindowOp {
    /// The schema of the results: key fields, `window_start`, `window_end`, aggregates.
    pub fn output_schema(keys: &[(usize, String, DataType)], aggs: &[AggSpec]) -> SchemaRef {
        let mut fields: Vec<Field> = keys.iter().map(|(_, n, t)| Field::new(n, t.clone(), true)).collect();
        fields.push(Field::new("window_start", DataType::Int64, false));
        fields.push(Field::new("window_end", DataType::Int64, false));
        for a in aggs {
            let arg_t = a.arg.as_ref().map(|e| &e.data_type);
            fields.push(Field::new(&a.name, Acc::output_type(a.func, arg_t), true));
        }
        Arc::new(Schema::new(fields))
    }

    pub fn new(cfg: WindowConfig) -> WindowOp {
        WindowOp {
            out_schema: Self::output_schema(&cfg.keys, &cfg.aggs),
            cfg,
            cache: FxHashMap::default(),
            refire: FxHashSet::default(),
            next_timer: None,
            key_buf: Vec::with_capacity(64),
        }
    }

    fn state_err(&self, source: StateError) -> OpError {
        OpError::State { operator: self.cfg.name.clone(), source }
    }

    fn entry_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.cfg.state_prefix.len() + 1 + key.len());
        k.extend_from_slice(&self.cfg.state_prefix);
        k.push(b'k');
        k.extend_from_slice(key);
        k
    }

    fn timer_key(&self, time: i64, key: &[u8], start: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.cfg.state_prefix.len() + 17 + key.len());
        k.extend_from_slice(&self.cfg.state_prefix);
        k.push(b't');
        k.extend_from_slice(&ordered(time));
        k.extend_from_slice(key);
        k.extend_from_slice(&ordered(start));
        k
    }

    fn timer_time(&self, w: &Win) -> i64 {
        if w.fired {
            (w.end - 1).saturating_add(self.cfg.allowed_lateness)
        } else {
            w.end - 1
        }
    }

    /// Loads the key's entry into the cache if needed.
    fn load(&mut self, key: &[u8], tx: &StateTx) -> Result<(), OpError> {
        if self.cache.contains_key(key) {
            return Ok(());
        }
        let entry = match tx.get(&self.entry_key(key)).map_err(|e| self.state_err(e))? {
            None => KeyEntry::default(),
            Some(bytes) => {
                let wins = decode_wins(&bytes, self.cfg.aggs.len())
                    .ok_or_else(|| self.state_err(StateError::Corrupt(format!("window entry of {}", self.cfg.name))))?;
                let stored_timers = wins.iter().map(|w| (self.timer_time(w), w.start)).collect();
                KeyEntry { wins, dirty: false, stored_timers }
            }
        };
        self.cache.insert(key.to_vec(), entry);
        Ok(())
    }

    /// Writes every dirty cached entry and its timer changes into the transaction.
    fn write_back(&mut self, tx: &mut StateTx) {
        let keys: Vec<Vec<u8>> = self.cache.iter().filter(|(_, e)| e.dirty).map(|(k, _)| k.clone()).collect();
        for key in keys {
            let (wins_bytes, desired) = {
                let e = &self.cache[&key];
                let desired: Vec<(i64, i64)> = e.wins.iter().map(|w| (self.timer_time(w), w.start)).collect();
                ((!e.wins.is_empty()).then(|| encode_wins(&e.wins)), desired)
            };
            let stored = std::mem::take(&mut self.cache.get_mut(&key).expect("listed above").stored_timers);
            for &(t, s) in stored.iter().filter(|t| !desired.contains(t)) {
                tx.delete(self.timer_key(t, &key, s));
            }
            for &(t, s) in desired.iter().filter(|t| !stored.contains(t)) {
                tx.put(self.timer_key(t, &key, s), Vec::new());
            }
            match wins_bytes {
                Some(b) => tx.put(self.entry_key(&key), b),
                None => tx.delete(self.entry_key(&key)),
            }
            let e = self.cache.get_mut(&key).expect("listed above");
            e.stored_timers = desired;
            e.dirty = false;
        }
    }

    fn note_timer(&mut self, t: i64) {
        if let Some(n) = self.next_timer.as_mut() {
            *n = (*n).min(t);
        }
    }

    /// Reads the earliest stored timer once, before the cache holds anything unwritten.
    fn init_next_timer(&mut self, tx: &StateTx) -> Result<(), OpError> {
        if self.next_timer.is_none() {
            self.next_timer = Some(self.first_timer(tx, i64::MIN)?.unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// The earliest timer at or after `from`. Scans start as late as possible: deleted timers
    /// below stay behind as RocksDB tombstones, and seeking over them is what costs.
    fn first_timer(&self, tx: &StateTx, from: i64) -> Result<Option<i64>, OpError> {
        let lo = self.timer_key(from, &[], i64::MIN);
        let mut hi = self.cfg.state_prefix.clone();
        hi.push(b't' + 1);
        let first = tx.scan(&lo, &hi, 1).map_err(|e| self.state_err(e))?;
        Ok(first.first().map(|(k, _)| self.parse_timer(k).0))
    }

    fn parse_timer<'k>(&self, k: &'k [u8]) -> (i64, &'k [u8], i64) {
        let p = self.cfg.state_prefix.len() + 1;
        let time = unordered(&k[p..p + 8]);
        let start = unordered(&k[k.len() - 8..]);
        (time, &k[p + 8..k.len() - 8], start)
    }

    fn build_output(&self, rows: Vec<Emitted>, wm: i64) -> Result<Option<Batch>, OpError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let mut builders: Vec<ColumnBuilder> =
            self.out_schema.fields().iter().map(|f| ColumnBuilder::new(f.data_type())).collect();
        let nkeys = self.cfg.keys.len();
        let mut event_time = Vec::with_capacity(rows.len());
        for (key, start, end, results) in &rows {
            let vals = Value::decode_all(key)
                .ok_or_else(|| self.state_err(StateError::Corrupt(format!("key of {}", self.cfg.name))))?;
            for (b, v) in builders.iter_mut().zip(vals.iter()) {
                b.push(v);
            }
            builders[nkeys].push(&Value::I64(*start));
            builders[nkeys + 1].push(&Value::I64(*end));
            for (b, v) in builders[nkeys + 2..].iter_mut().zip(results) {
                b.push(v);
            }
            event_time.push(end - 1);
        }
        let cols: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
        let rows_batch = RecordBatch::try_new(self.out_schema.clone(), cols)
            .map_err(|source| OpError::Arrow { operator: self.cfg.name.clone(), source })?;
        let n = rows_batch.num_rows();
        Ok(Some(Batch {
            rows: rows_batch,
            event_time: Int64Array::from(event_time),
            watermark: Int64Array::from(vec![wm; n]),
            raw: None,
        }))
    }

    fn late_record(batch: &Batch, row: usize) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
        if let Some(raw) = &batch.raw {
            return Ok(raw.value(row).to_vec());
        }
        let mut line = encode_json_lines(&batch.rows.slice(row, 1))?;
        while line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(line)
    }
}

impl Operator for WindowOp {
    fn on_batch(&mut self, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.init_next_timer(ctx.state)?;
        let name = self.cfg.name.clone();
        let key_arrays: Vec<ArrayRef> = self.cfg.keys.iter().map(|(i, _, _)| batch.rows.column(*i).clone()).collect();
        let arg_arrays: Vec<Option<ArrayRef>> = self
            .cfg
            .aggs
            .iter()
            .map(|a| {
                a.arg
                    .as_ref()
                    .map(|e| {
                        e.eval(&batch.rows).map_err(|source| OpError::Eval {
                            operator: name.clone(),
                            expr: e.text.clone(),
                            source,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let key_cols: Vec<Col> =
            key_arrays.iter().map(|a| Col::new(a).expect("key columns have engine types")).collect();
        let arg_cols: Vec<Option<Col>> =
            arg_arrays.iter().map(|a| a.as_ref().map(|a| Col::new(a).expect("arguments have engine types"))).collect();
        let lateness = self.cfg.allowed_lateness;
        let mut key = std::mem::take(&mut self.key_buf);
        let mut starts = Vec::with_capacity(8);
        for row in 0..batch.num_rows() {
            let (ts, wm) = (batch.event_time.value(row), batch.watermark.value(row));
            let expired = |end: i64| (end - 1).saturating_add(lateness) <= wm;
            key.clear();
            for c in &key_cols {
                c.encode_key(row, &mut key);
            }
            let updated = match self.cfg.kind {
                WindowKind::Session { gap } => {
                    self.load(&key, ctx.state)?;
                    let entry = self.cache.get_mut(key.as_slice()).expect("loaded");
                    // Windows past their lateness are final: never merged into.
                    let touches = |w: &Win| w.start < ts.saturating_add(gap) && ts < w.end && !expired(w.end);
                    let (mut start, mut end) = (ts, ts.saturating_add(gap));
                    for w in entry.wins.iter().filter(|w| touches(w)) {
                        start = start.min(w.start);
                        end = end.max(w.end);
                    }
                    if expired(end) {
                        None
                    } else {
                        let mut merged: Option<Win> = None;
                        let mut i = 0;
                        while i < entry.wins.len() {
                            if touches(&entry.wins[i]) {
                                let w = entry.wins.swap_remove(i);
                                match merged.as_mut() {
                                    None => merged = Some(w),
                                    Some(m) => {
                                        m.fired |= w.fired;
                                        for (a, b) in m.accs.iter_mut().zip(w.accs) {
                                            a.merge(b);
                                        }
                                    }
                                }
                            } else {
                                i += 1;
                            }
                        }
                        let aggs = &self.cfg.aggs;
                        let mut w = merged.unwrap_or_else(|| Win {
                            start,
                            end,
                            fired: false,
                            refire: false,
                            accs: new_accs(aggs),
                        });
                        w.start = start;
                        w.end = end;
                        for (acc, col) in w.accs.iter_mut().zip(&arg_cols) {
                            acc.update(col.as_ref(), row, ts);
                        }
                        w.refire |= w.fired;
                        let refire = w.fired;
                        let timer = if w.fired { (end - 1).saturating_add(lateness) } else { end - 1 };
                        entry.wins.push(w);
                        entry.dirty = true;
                        Some((refire, timer))
                    }
                }
                kind => {
                    starts.clear();
                    kind.assign(ts, &mut starts);
                    let size = kind.size();
                    starts.retain(|s| !expired(s.saturating_add(size)));
                    if starts.is_empty() {
                        None
                    } else {
                        self.load(&key, ctx.state)?;
                        let aggs = &self.cfg.aggs;
                        let entry = self.cache.get_mut(key.as_slice()).expect("loaded");
                        let (mut refire, mut timer) = (false, i64::MAX);
                        for &start in &starts {
                            let w = match entry.wins.iter_mut().position(|w| w.start == start) {
                                Some(i) => &mut entry.wins[i],
                                None => {
                                    entry.wins.push(Win {
                                        start,
                                        end: start.saturating_add(size),
                                        fired: false,
                                        refire: false,
                                        accs: new_accs(aggs),
                                    });
                                    entry.wins.last_mut().expect("pushed")
                                }
                            };
                            for (acc, col) in w.accs.iter_mut().zip(&arg_cols) {
                                acc.update(col.as_ref(), row, ts);
                            }
                            w.refire |= w.fired;
                            refire |= w.fired;
                            timer = timer.min(w.end - 1);
                        }
                        entry.dirty = true;
                        Some((refire, timer))
                    }
                }
            };
            match updated {
                None => ctx.late.push(
                    Self::late_record(&batch, row)
                        .map_err(|source| OpError::Arrow { operator: name.clone(), source })?,
                ),
                Some((refire, timer)) => {
                    if refire {
                        self.refire.insert(key.clone());
                    }
                    self.note_timer(timer);
                }
            }
        }
        self.key_buf = key;
        Ok(None)
    }

    fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        let mut out = Vec::new();
        for key in std::mem::take(&mut self.refire) {
            self.load(&key, ctx.state)?;
            let e = self.cache.get_mut(&key).expect("loaded");
            for w in e.wins.iter_mut().filter(|w| w.refire) {
                w.refire = false;
                out.push(emitted(&key, w));
            }
        }
        self.init_next_timer(ctx.state)?;
        if self.next_timer.is_some_and(|t| t <= wm) {
            self.write_back(ctx.state);
            // No timer lies below `next_timer` (it is the minimum), so the scan starts there.
            let lo = self.timer_key(self.next_timer.unwrap_or(i64::MIN), &[], i64::MIN);
            let hi = self.timer_key(wm.saturating_add(1), &[], i64::MIN);
            loop {
                let due = ctx.state.scan(&lo, &hi, 4096).map_err(|e| self.state_err(e))?;
                if due.is_empty() {
                    break;
                }
                for (tk, _) in &due {
                    let (time, key, start) = self.parse_timer(tk);
                    let key = key.to_vec();
                    self.load(&key, ctx.state)?;
                    let lateness = self.cfg.allowed_lateness;
                    let mut fired_row: Option<Emitted> = None;
                    // Sessions of a key may share a start (a live one can grow back over an
                    // expired one), so the timer's time names the window too.
                    let due_at = |w: &Win| if w.fired { (w.end - 1).saturating_add(lateness) } else { w.end - 1 };
                    let e = self.cache.get_mut(&key).expect("loaded");
                    e.dirty = true;
                    if let Some(i) = e.wins.iter().position(|w| w.start == start && due_at(w) == time) {
                        let w = &mut e.wins[i];
                        if !w.fired {
                            w.fired = true;
                            w.refire = false;
                            fired_row = Some(emitted(&key, w));
                        }
                        if (w.end - 1).saturating_add(lateness) <= wm {
                            e.wins.swap_remove(i);
                        }
                    } else {
                        // A timer without its window is stale; the write-back below drops it.
                        ctx.state.delete(tk.clone());
                    }
                    out.extend(fired_row);
                }
                self.write_back(ctx.state);
            }
            // Every timer up to `wm` was handled above.
            self.next_timer = Some(self.first_timer(ctx.state, wm.saturating_add(1))?.unwrap_or(i64::MAX));
        }
        if self.cache.len() > self.cfg.max_cached_keys {
            self.write_back(ctx.state);
            self.cache.clear();
        }
        self.build_output(out, wm)
    }

    fn before_commit(&mut self, ctx: &mut OpCtx) -> Result<(), OpError> {
        self.write_back(ctx.state);
        Ok(())
    }

    fn cached_keys(&self) -> usize {
        self.cache.len()
    }
}

/// A result row: key, window bounds and the aggregates' current values.
fn emitted(key: &[u8], w: &Win) -> Emitted {
    (key.to_vec(), w.start, w.end, w.accs.iter().map(Acc::result).collect())
}

fn new_accs(aggs: &[AggSpec]) -> Vec<Acc> {
    aggs.iter().map(|a| Acc::new(a.func, a.arg.as_ref().map(|e| &e.data_type))).collect()
}

/// Big-endian with the sign bit flipped, so byte order equals numeric order.
fn ordered(x: i64) -> [u8; 8] {
    ((x as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

fn encode_wins(wins: &[Win]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + wins.len() * 48);
    out.extend_from_slice(&(wins.len() as u32).to_le_bytes());
    for w in wins {
        out.extend_from_slice(&w.start.to_le_bytes());
        out.extend_from_slice(&w.end.to_le_bytes());
        out.push(w.fired as u8);
        for a in &w.accs {
            a.encode(&mut out);
        }
    }
    out
}

fn decode_wins(b: &[u8], naccs: usize) -> Option<Vec<Win>> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let mut r = &b[4..];
    let mut wins = Vec::with_capacity(n);
    for _ in 0..n {
        let start = i64::from_le_bytes(r.get(..8)?.try_into().ok()?);
        let end = i64::from_le_bytes(r.get(8..16)?.try_into().ok()?);
        let fired = *r.get(16)? != 0;
        r = &r[17..];
        let mut accs = Vec::with_capacity(naccs);
        for _ in 0..naccs {
            let (a, rest) = Acc::decode(r)?;
            accs.push(a);
            r = rest;
        }
        wins.push(Win { start, end, fired, refire: false, accs });
    }
    Some(wins)
}

#[cfg(test)]
mod tests;
