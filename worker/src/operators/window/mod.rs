//! Keyed event-time windows (tumbling, sliding, session) with allowed lateness, on task state.
//!
//! State per key: one entry `prefix|k|key` holding the key's open windows and their
//! accumulators. Keys are kept decoded in memory; the cache is also the epoch's overlay: a
//! changed key is written to the task's state once per commit, and only clean entries are
//! dropped (at a commit, when there are more than `max_cached_keys`), so a key missing from
//! memory is read from state at most once per commit interval, and windows that open and close
//! between two commits never touch RocksDB.
//!
//! Timers: every window has one, the watermark at which something happens to it (fire at
//! `end - 1`, cleanup at `end - 1 + allowedLateness`; pane-based sliding windows keep one per
//! key), kept in memory and in state by [`Timers`]: a restored operator reads nothing at open
//! and reads stored timers as its watermark reaches them, so recovery time does not grow with
//! the state. A key's stored timers are written at commit as the difference between its
//! windows' timers then and when it was last stored (windows that open and close between two
//! commits never touch RocksDB). State written before timers were stored is indexed once, by
//! a scan, when first opened.
//!
//! Lateness is judged per row against the watermark of the records before it; windows fire
//! when the task's watermark passes their end after a batch. A window that is already past its
//! lateness is never updated or merged into, so results do not depend on where batches are cut.

pub mod acc;
mod assign;
mod panes;

use std::hash::BuildHasher;
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hashbrown::hash_map::RawEntryMut;
use rustc_hash::{FxBuildHasher, FxHashSet};
use smallvec::SmallVec;
use weir_crds::AggregateFn;

pub use assign::WindowKind;

use self::acc::Acc;
use self::panes::Panes;
use super::timers::{Key, KeyTimers, Opened, Timers};
use super::{late_record, OpCtx, OpError, Operator, Output, SessionChanges};
use crate::batch::Batch;
use crate::expr::CompiledExpr;
use crate::state::{StateError, StateTx};
use crate::value::{Col, Value};

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
    /// Session windows: keep track of the keys whose open session changed, for
    /// [`Operator::drain_sessions`] (`sessionState`).
    pub session_state: bool,
}

impl WindowConfig {
    fn state_err(&self, source: StateError) -> OpError {
        OpError::state(&self.name, source)
    }

    fn corrupt(&self, what: &str) -> OpError {
        OpError::corrupt(&self.name, what)
    }

    fn entry_key(&self, key: &[u8]) -> Vec<u8> {
        super::entry_key(&self.state_prefix, key)
    }

    /// The key's stored entry.
    fn fetch(&self, tx: &StateTx, key: &[u8]) -> Result<Option<KeyEntry>, OpError> {
        match tx.get(&self.entry_key(key)).map_err(|e| self.state_err(e))? {
            None => Ok(None),
            Some(bytes) => self.decode(&bytes).map(Some),
        }
    }

    /// A stored entry, with the timers stored for it.
    fn decode(&self, bytes: &[u8]) -> Result<KeyEntry, OpError> {
        let mut e = decode_entry(bytes, self.aggs.len()).ok_or_else(|| self.corrupt("a window entry"))?;
        e.persisted = self.timers_of(&e);
        Ok(e)
    }

    /// Whether sliding windows are kept as panes (see [`panes`]).
    fn uses_panes(&self) -> bool {
        matches!(self.kind, WindowKind::Sliding { size, slide } if size > slide)
    }

    /// The timers an entry's windows need.
    fn timers_of(&self, e: &KeyEntry) -> KeyTimers {
        if self.uses_panes() {
            (e.timer != i64::MAX).then_some((e.timer, 0)).into_iter().collect()
        } else {
            e.wins.iter().map(|w| (due_at(self.allowed_lateness, w.end, w.fired), w.start)).collect()
        }
    }
}

#[derive(Clone, Debug)]
struct Win {
    start: i64,
    end: i64,
    fired: bool,
    /// Updated after firing (allowed lateness): emit again after this batch.
    refire: bool,
    accs: Accs,
}

struct KeyEntry {
    /// The key's windows; with sliding windows, its panes (see [`panes`]).
    wins: Wins,
    /// Sliding windows: every window of the key ending at or before this has fired.
    fired_upto: i64,
    /// Sliding windows: the key's one timer (`i64::MAX`: none).
    timer: i64,
    /// Sliding windows: starts of fired windows updated within their lateness.
    refire: SmallVec<[i64; 2]>,
    /// Changed since the last commit (listed in `WindowOp::dirty`).
    dirty: bool,
    /// Has an entry in state.
    stored: bool,
    /// The timers (time, window start) stored in state for this key's stored windows.
    persisted: KeyTimers,
}

impl KeyEntry {
    fn new(stored: bool) -> KeyEntry {
        KeyEntry {
            wins: Wins::new(),
            fired_upto: i64::MIN,
            timer: i64::MAX,
            refire: SmallVec::new(),
            dirty: !stored,
            stored,
            persisted: KeyTimers::new(),
        }
    }
}

/// The window operator.
pub struct WindowOp {
    cfg: WindowConfig,
    out_schema: SchemaRef,
    /// Keys' windows, decoded. Every change since the last commit lives here (the cache is the
    /// epoch's overlay); clean entries are dropped at a commit when there are too many.
    cache: hashbrown::HashMap<Key, KeyEntry, FxBuildHasher>,
    /// Keys changed since the last commit.
    dirty: Vec<Key>,
    /// Whether some key has stored windows that are not in the cache (a miss must read state).
    uncached_in_state: bool,
    /// Every window's timer (see [`Timers`]): (key, window start) by time.
    timers: Timers,
    /// Opened on its state.
    opened: bool,
    refire: FxHashSet<Key>,
    key_buf: Vec<u8>,
    /// Sliding windows are kept as panes (see [`panes`]).
    panes: Option<Panes>,
    /// Results of windows fired while a batch is processed, returned with the next watermark.
    pending: Option<Output>,
    /// With `session_state`: keys whose open session changed (grew, merged, opened or closed)
    /// since the last drain.
    sessions_changed: Option<FxHashSet<Key>>,
}

/// Windows of a key and aggregates of a window, inline for the common sizes, so updating a
/// window touches the cache entry's memory only.
type Wins = SmallVec<[Win; 1]>;
type Accs = SmallVec<[Acc; 3]>;

impl Output {
    /// Appends the row of window `w` of `key`: key fields, bounds, the aggregates' values.
    /// Returns `false` when the key bytes are corrupt.
    fn push(&mut self, nkeys: usize, key: &[u8], w: &Win) -> bool {
        let mut rest = key;
        for b in &mut self.builders[..nkeys] {
            match b.push_key(rest) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        self.builders[nkeys].push(&Value::I64(w.start));
        self.builders[nkeys + 1].push(&Value::I64(w.end));
        for (b, a) in self.builders[nkeys + 2..].iter_mut().zip(&w.accs) {
            b.push(&a.result());
        }
        self.event_time.push(w.end - 1);
        true
    }
}

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
        let prefix = cfg.state_prefix.clone();
        let cfg_session_state = cfg.session_state && matches!(cfg.kind, WindowKind::Session { .. });
        let panes = match cfg.kind {
            WindowKind::Sliding { size, slide } if cfg.uses_panes() => {
                Some(Panes { size, slide, lateness: cfg.allowed_lateness })
            }
            _ => None,
        };
        WindowOp {
            out_schema: Self::output_schema(&cfg.keys, &cfg.aggs),
            cfg,
            cache: hashbrown::HashMap::default(),
            dirty: Vec::new(),
            uncached_in_state: false,
            timers: Timers::new(&prefix),
            opened: false,
            refire: FxHashSet::default(),
            key_buf: Vec::with_capacity(64),
            panes,
            pending: None,
            sessions_changed: cfg_session_state.then(FxHashSet::default),
        }
    }

    fn state_err(&self, source: StateError) -> OpError {
        self.cfg.state_err(source)
    }

    fn entry_key(&self, key: &[u8]) -> Vec<u8> {
        self.cfg.entry_key(key)
    }

    /// When something next happens to `w`: it fires at `end - 1`, is dropped at
    /// `end - 1 + allowedLateness`.
    fn due(lateness: i64, w: &Win) -> i64 {
        due_at(lateness, w.end, w.fired)
    }

    /// Opens the operator on its state, once: reads no windows, except once to index state
    /// stored without timers.
    fn open(&mut self, tx: &mut StateTx) -> Result<(), OpError> {
        if self.opened {
            return Ok(());
        }
        self.opened = true;
        let lo = self.entry_key(&[]);
        let mut hi = self.cfg.state_prefix.clone();
        hi.push(b'k' + 1);
        self.uncached_in_state = !tx.scan(&lo, &hi, 1).map_err(|e| self.state_err(e))?.is_empty();
        match self.timers.open(tx, self.uncached_in_state).map_err(|e| self.state_err(e))? {
            Opened::Ready => Ok(()),
            Opened::Unindexed => self.index_unindexed_state(tx, &lo, &hi),
        }
    }

    /// State stored before timers were: builds the in-memory index from every stored window
    /// and stores the timers, once (O(state)); keeps the first keys decoded.
    fn index_unindexed_state(&mut self, tx: &mut StateTx, lo: &[u8], hi: &[u8]) -> Result<(), OpError> {
        let started = std::time::Instant::now();
        let mut keys = 0u64;
        let mut from = lo.to_vec();
        loop {
            let page = tx.scan(&from, hi, 4096).map_err(|e| self.state_err(e))?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            keys += page.len() as u64;
            let (naccs, lateness, panes) = (self.cfg.aggs.len(), self.cfg.allowed_lateness, self.panes.is_some());
            for (k, v) in page {
                let key = Key::from_slice(&k[lo.len()..]);
                // The timers come from the windows' bounds alone; the accumulators are decoded
                // only for the entries that go into the cache.
                let mut found = KeyTimers::new();
                let timer = visit_windows(&v, naccs, |start, end, fired| {
                    if !panes {
                        found.push((due_at(lateness, end, fired), start));
                    }
                });
                let timer = timer.ok_or_else(|| self.cfg.corrupt("a window entry"))?;
                if panes && timer != i64::MAX {
                    found.push((timer, 0));
                }
                for &(time, start) in &found {
                    self.timers.set(time, &key, start);
                }
                self.timers.store_new(tx, &key, found);
                if self.cache.len() < self.cfg.max_cached_keys {
                    self.cache.insert(key, self.cfg.decode(&v)?);
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(operator = %self.cfg.name, keys, secs, "stored the timers of state written without them (once)");
        Ok(())
    }

    fn mark_dirty(dirty: &mut Vec<Key>, key: &Key, e: &mut KeyEntry) {
        if !e.dirty {
            e.dirty = true;
            dirty.push(key.clone());
        }
    }

    /// Writes changed entries and their timers' changes into the transaction; drops clean
    /// entries beyond the cache size.
    fn write_back(&mut self, tx: &mut StateTx) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(e) = self.cache.get_mut(&key) else { continue };
            e.dirty = false;
            let now = self.cfg.timers_of(e);
            self.timers.store(tx, &key, &e.persisted, &now);
            e.persisted = now;
            if e.wins.is_empty() {
                if e.stored {
                    tx.delete(self.entry_key(&key));
                }
                self.cache.remove(&key);
            } else {
                let bytes = encode_entry(e);
                e.stored = true;
                tx.put(self.entry_key(&key), bytes);
            }
        }
        if self.cache.len() > self.cfg.max_cached_keys {
            self.uncached_in_state |= self.cache.values().any(|e| e.stored);
            self.cache.clear();
        }
    }
}

impl Operator for WindowOp {
    fn on_batch(&mut self, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.open(ctx.state)?;
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
        let nkeys = self.cfg.keys.len();
        // Every row's key and hash first, so that each row can prefetch the cache entry of a
        // row a few places ahead while it works on its own.
        let mut keys = std::mem::take(&mut self.key_buf);
        keys.clear();
        let mut key_ends = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            for c in &key_cols {
                c.encode_key(row, &mut keys);
            }
            key_ends.push(keys.len());
        }
        let hashes: Vec<u64> = (0..batch.num_rows())
            .map(|row| self.cache.hasher().hash_one(&keys[if row == 0 { 0 } else { key_ends[row - 1] }..key_ends[row]]))
            .collect();
        let mut starts = Vec::with_capacity(8);
        for row in 0..batch.num_rows() {
            if let Some(&h) = hashes.get(row + PREFETCH_AHEAD) {
                prefetch_entry(&self.cache, h);
            }
            if let Some(&h) = hashes.get(row + PREFETCH_AHEAD / 2) {
                prefetch_windows(&self.cache, h);
            }
            let (ts, wm) = (batch.event_time.value(row), batch.watermark.value(row));
            let expired = |end: i64| (end - 1).saturating_add(lateness) <= wm;
            let key = &keys[if row == 0 { 0 } else { key_ends[row - 1] }..key_ends[row]];
            let kind = self.cfg.kind;
            if let Some(pn) = self.panes {
                if pn.pane_expired(pn.pane_of(ts), wm) {
                    ctx.late.push(late_record(&name, &batch, row)?);
                    continue;
                }
            } else if let WindowKind::Session { .. } = kind {
            } else {
                starts.clear();
                kind.assign(ts, &mut starts);
                starts.retain(|s| !expired(s.saturating_add(kind.size())));
                if starts.is_empty() {
                    ctx.late.push(late_record(&name, &batch, row)?);
                    continue;
                }
            }
            let WindowOp {
                cfg,
                cache,
                dirty,
                timers,
                refire,
                uncached_in_state,
                panes,
                pending,
                out_schema,
                sessions_changed,
                ..
            } = self;
            // One hash lookup per row when the key is cached.
            let (k, entry) = match cache.raw_entry_mut().from_key_hashed_nocheck(hashes[row], key) {
                RawEntryMut::Occupied(o) => o.into_key_value(),
                RawEntryMut::Vacant(v) => {
                    let stored = if *uncached_in_state { cfg.fetch(ctx.state, key)? } else { None };
                    // A new entry is dirty from the start, so the write-back drops it if it stays
                    // empty.
                    let e = stored.unwrap_or_else(|| KeyEntry::new(false));
                    let (k, e) = v.insert_hashed_nocheck(hashes[row], Key::from_slice(key), e);
                    if e.dirty {
                        dirty.push(k.clone());
                    }
                    (k, e)
                }
            };
            let k = &*k;
            if let Some(pn) = panes {
                // Windows past their lateness at this row fire before it touches its pane.
                let mut corrupt = false;
                let mut emit = |w: &Win| {
                    corrupt |= !pending.get_or_insert_with(|| Output::new(out_schema)).push(nkeys, k, w);
                };
                if !entry.refire.is_empty() {
                    pn.flush_expired_refires(entry, wm, &cfg.aggs, &mut emit);
                }
                // The key's timer is at or before its next window's end - 1, so no window can be
                // past its lateness while the timer is ahead of the watermark.
                if entry.timer <= wm {
                    pn.fire_due(entry, wm, true, &cfg.aggs, &mut emit);
                }
                if corrupt {
                    return Err(cfg.corrupt("a key"));
                }
                // Expired windows without data are done too: this row must not open them.
                entry.fired_upto = entry.fired_upto.max(pn.last_expired_end(wm));
                let p = pn.pane_of(ts);
                let (pane, created) = match entry.wins.iter().position(|w| w.start == p) {
                    Some(i) => (&mut entry.wins[i], false),
                    None => {
                        let w =
                            Win { start: p, end: p + pn.slide, fired: false, refire: false, accs: new_accs(&cfg.aggs) };
                        entry.wins.push(w);
                        (entry.wins.last_mut().expect("pushed"), true)
                    }
                };
                for (acc, col) in pane.accs.iter_mut().zip(&arg_cols) {
                    acc.update(col.as_ref(), row, ts);
                }
                if entry.fired_upto > p {
                    for s in pn.refired(entry, p, wm) {
                        if !entry.refire.contains(&s) {
                            entry.refire.push(s);
                        }
                    }
                    if !entry.refire.is_empty() {
                        refire.insert(k.clone());
                    }
                }
                // Only a new pane can bring the key's timer forward.
                let t = if created { pn.next_timer(entry) } else { i64::MAX };
                if t < entry.timer {
                    entry.timer = t;
                    timers.set(t, k, 0);
                }
                Self::mark_dirty(dirty, k, entry);
                continue;
            }
            let updated = match kind {
                WindowKind::Session { gap } => {
                    // Windows past their lateness are final: never merged into.
                    let touches = |w: &Win| w.start < ts.saturating_add(gap) && ts < w.end && !expired(w.end);
                    let (mut start, mut end) = (ts, ts.saturating_add(gap));
                    for w in entry.wins.iter().filter(|w| touches(w)) {
                        start = start.min(w.start);
                        end = end.max(w.end);
                    }
                    if expired(end) {
                        false
                    } else {
                        let mut merged: Option<Win> = None;
                        let mut i = 0;
                        while i < entry.wins.len() {
                            if touches(&entry.wins[i]) {
                                let w = entry.wins.swap_remove(i);
                                timers.unset(Self::due(lateness, &w), k, w.start);
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
                        let mut w = merged.unwrap_or_else(|| Win {
                            start,
                            end,
                            fired: false,
                            refire: false,
                            accs: new_accs(&cfg.aggs),
                        });
                        w.start = start;
                        w.end = end;
                        for (acc, col) in w.accs.iter_mut().zip(&arg_cols) {
                            acc.update(col.as_ref(), row, ts);
                        }
                        w.refire |= w.fired;
                        if w.fired {
                            refire.insert(k.clone());
                        }
                        timers.set(Self::due(lateness, &w), k, start);
                        entry.wins.push(w);
                        true
                    }
                }
                kind => {
                    let size = kind.size();
                    for &start in &starts {
                        let w = match entry.wins.iter_mut().position(|w| w.start == start) {
                            Some(i) => &mut entry.wins[i],
                            None => {
                                let end = start.saturating_add(size);
                                timers.set(end - 1, k, start);
                                entry.wins.push(Win {
                                    start,
                                    end,
                                    fired: false,
                                    refire: false,
                                    accs: new_accs(&cfg.aggs),
                                });
                                entry.wins.last_mut().expect("pushed")
                            }
                        };
                        for (acc, col) in w.accs.iter_mut().zip(&arg_cols) {
                            acc.update(col.as_ref(), row, ts);
                        }
                        if w.fired {
                            w.refire = true;
                            refire.insert(k.clone());
                        }
                    }
                    true
                }
            };
            if updated {
                Self::mark_dirty(dirty, k, entry);
                if let Some(changed) = sessions_changed {
                    changed.insert(k.clone());
                }
            } else {
                ctx.late.push(late_record(&name, &batch, row)?);
            }
        }
        self.key_buf = keys;
        Ok(None)
    }

    fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.open(ctx.state)?;
        self.timers.read_due(ctx.state, wm).map_err(|e| self.state_err(e))?;
        let nkeys = self.cfg.keys.len();
        let mut out: Option<Output> = self.pending.take();
        let mut corrupt = false;
        let mut emit = |out: &mut Option<Output>, key: &[u8], w: &Win| {
            corrupt |= !out.get_or_insert_with(|| Output::new(&self.out_schema)).push(nkeys, key, w);
        };
        for key in std::mem::take(&mut self.refire) {
            let WindowOp { cfg, cache, uncached_in_state, panes, .. } = self;
            let Some(e) = cached_entry(cache, cfg, *uncached_in_state, ctx.state, &key)? else { continue };
            if let Some(pn) = panes {
                for s in std::mem::take(&mut e.refire) {
                    emit(&mut out, &key, &pn.window(e, s, &cfg.aggs));
                }
                continue;
            }
            for w in e.wins.iter_mut().filter(|w| w.refire) {
                w.refire = false;
                emit(&mut out, &key, w);
            }
        }
        let lateness = self.cfg.allowed_lateness;
        // Windows due at the same time fire in the order their timers were set.
        while let Some((time, due)) = self.timers.pop_due(wm) {
            let hashes: Vec<u64> = due.iter().map(|(k, _)| self.cache.hasher().hash_one(k.as_slice())).collect();
            for (i, (key, start)) in due.into_iter().enumerate() {
                if let Some(&h) = hashes.get(i + PREFETCH_AHEAD) {
                    prefetch_entry(&self.cache, h);
                }
                if let Some(&h) = hashes.get(i + PREFETCH_AHEAD / 2) {
                    prefetch_windows(&self.cache, h);
                }
                let WindowOp { cfg, cache, uncached_in_state, dirty, timers, panes, sessions_changed, .. } = self;
                let Some(e) = cached_entry(cache, cfg, *uncached_in_state, ctx.state, &key)? else { continue };
                if let Some(pn) = panes {
                    // A key has one timer; earlier ones it replaced are stale.
                    if e.timer != time {
                        continue;
                    }
                    pn.fire_due(e, wm, false, &cfg.aggs, &mut |w| emit(&mut out, &key, w));
                    pn.drop_expired(e, wm);
                    e.timer = pn.next_timer(e);
                    if e.timer != i64::MAX {
                        timers.set(e.timer, &key, 0);
                    }
                    Self::mark_dirty(dirty, &key, e);
                    continue;
                }
                // Sessions of a key may share a start (a live one can grow back over an expired
                // one), so the timer's time names the window too.
                let Some(i) = e.wins.iter().position(|w| w.start == start && Self::due(lateness, w) == time) else {
                    continue;
                };
                let w = &mut e.wins[i];
                if !w.fired {
                    w.fired = true;
                    w.refire = false;
                    emit(&mut out, &key, w);
                    if let Some(changed) = sessions_changed {
                        changed.insert(key.clone());
                    }
                }
                if (w.end - 1).saturating_add(lateness) <= wm {
                    e.wins.swap_remove(i);
                } else {
                    timers.set(Self::due(lateness, w), &key, start);
                }
                Self::mark_dirty(dirty, &key, e);
            }
        }
        if corrupt {
            return Err(self.cfg.corrupt("a key"));
        }
        out.map(|o| o.into_batch(&self.out_schema, &self.cfg.name, wm)).transpose()
    }

    fn before_commit(&mut self, ctx: &mut OpCtx) -> Result<(), OpError> {
        self.write_back(ctx.state);
        Ok(())
    }

    fn wants_commit(&self) -> bool {
        self.cache.len() > self.cfg.max_cached_keys && !self.dirty.is_empty()
    }

    fn cached_keys(&self) -> usize {
        self.cache.len()
    }

    fn drain_sessions(&mut self, ctx: &mut OpCtx) -> Result<Option<SessionChanges>, OpError> {
        let Some(changed) = self.sessions_changed.as_mut().filter(|c| !c.is_empty()) else { return Ok(None) };
        let changed = std::mem::take(changed);
        let nkeys = self.cfg.keys.len();
        let mut out = Output::new(&self.out_schema);
        let mut closed = Vec::with_capacity(changed.len());
        // A closed key's row carries only its key fields' values that matter.
        let none = Win { start: 0, end: 0, fired: true, refire: false, accs: new_accs(&self.cfg.aggs) };
        let WindowOp { cfg, cache, uncached_in_state, .. } = self;
        for key in changed {
            let entry = cached_entry(cache, cfg, *uncached_in_state, ctx.state, &key)?;
            // The latest open session (out-of-order input can keep two open for a while).
            let open = entry.and_then(|e| e.wins.iter().filter(|w| !w.fired).max_by_key(|w| w.end));
            if !out.push(nkeys, &key, open.unwrap_or(&none)) {
                return Err(cfg.corrupt("a key"));
            }
            closed.push(open.is_none());
        }
        let rows = out.into_batch(&self.out_schema, &self.cfg.name, i64::MIN)?;
        Ok(Some(SessionChanges { rows, closed }))
    }
}

/// How many rows (or due keys) ahead the window operator prefetches cache entries.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading the cache entry of the key with `hash`, so that its lookup a
/// few rows later finds it in the CPU cache: over many keys, the operator is otherwise bound by
/// memory latency. Takes the first bucket whose hash tag matches without comparing keys (that
/// would wait for the load): the key's own in all but rare cases, where a wasted prefetch is
/// the only cost.
fn prefetch_entry(cache: &hashbrown::HashMap<Key, KeyEntry, FxBuildHasher>, hash: u64) {
    if let Some((k, _)) = cache.raw_entry().from_hash(hash, |_| true) {
        let at = k as *const Key as *const u8;
        for line in (0..std::mem::size_of::<(Key, KeyEntry)>()).step_by(64) {
            prefetch_line(at.wrapping_add(line));
        }
    }
}

/// The second step for an entry prefetched earlier: its windows when they are on the heap
/// (a key with several windows or panes).
fn prefetch_windows(cache: &hashbrown::HashMap<Key, KeyEntry, FxBuildHasher>, hash: u64) {
    if let Some((_, e)) = cache.raw_entry().from_hash(hash, |_| true) {
        if e.wins.spilled() {
            let at = e.wins.as_ptr() as *const u8;
            for line in (0..std::mem::size_of_val(e.wins.as_slice()).min(256)).step_by(64) {
                prefetch_line(at.wrapping_add(line));
            }
        }
    }
}

#[inline(always)]
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The entry of `key`, read from state into the cache on a miss; `None` when it has no windows.
fn cached_entry<'c>(
    cache: &'c mut hashbrown::HashMap<Key, KeyEntry, FxBuildHasher>,
    cfg: &WindowConfig,
    uncached_in_state: bool,
    tx: &StateTx,
    key: &Key,
) -> Result<Option<&'c mut KeyEntry>, OpError> {
    Ok(match cache.raw_entry_mut().from_key(key.as_ref()) {
        RawEntryMut::Occupied(o) => Some(o.into_mut()),
        RawEntryMut::Vacant(v) => {
            let stored = if uncached_in_state { cfg.fetch(tx, key)? } else { None };
            stored.map(|e| v.insert(key.clone(), e).1)
        }
    })
}

fn new_accs(aggs: &[AggSpec]) -> Accs {
    aggs.iter().map(|a| Acc::new(a.func, a.arg.as_ref().map(|e| &e.data_type))).collect()
}

/// `[windows u32][fired_upto i64][timer i64]` then per window `[start][end][fired u8][accs]`.
fn encode_entry(e: &KeyEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + e.wins.len() * 48);
    out.extend_from_slice(&(e.wins.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.fired_upto.to_le_bytes());
    out.extend_from_slice(&e.timer.to_le_bytes());
    for w in &e.wins {
        out.extend_from_slice(&w.start.to_le_bytes());
        out.extend_from_slice(&w.end.to_le_bytes());
        out.push(w.fired as u8);
        for a in &w.accs {
            a.encode(&mut out);
        }
    }
    out
}

/// [`WindowOp::due`] of a window ending at `end`.
fn due_at(lateness: i64, end: i64, fired: bool) -> i64 {
    if fired {
        (end - 1).saturating_add(lateness)
    } else {
        end - 1
    }
}

/// The bounds of an encoded entry's windows without decoding their accumulators (no
/// allocation): `f(start, end, fired)` per window; returns the entry's own timer (pane-based
/// operators keep one per entry).
fn visit_windows(b: &[u8], naccs: usize, mut f: impl FnMut(i64, i64, bool)) -> Option<i64> {
    let i64_at = |r: &[u8], at: usize| -> Option<i64> { Some(i64::from_le_bytes(r.get(at..at + 8)?.try_into().ok()?)) };
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let timer = i64_at(b, 12)?;
    let mut r = b.get(20..)?;
    for _ in 0..n {
        let (start, end) = (i64_at(r, 0)?, i64_at(r, 8)?);
        let fired = *r.get(16)? != 0;
        r = r.get(17..)?;
        for _ in 0..naccs {
            r = Acc::skip(r)?;
        }
        f(start, end, fired);
    }
    Some(timer)
}

fn decode_entry(b: &[u8], naccs: usize) -> Option<KeyEntry> {
    let i64_at = |r: &[u8], at: usize| -> Option<i64> { Some(i64::from_le_bytes(r.get(at..at + 8)?.try_into().ok()?)) };
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let mut e = KeyEntry::new(true);
    e.fired_upto = i64_at(b, 4)?;
    e.timer = i64_at(b, 12)?;
    let mut r = &b[20..];
    e.wins = Wins::with_capacity(n.min(1024));
    for _ in 0..n {
        let (start, end) = (i64_at(r, 0)?, i64_at(r, 8)?);
        let fired = *r.get(16)? != 0;
        r = &r[17..];
        let mut accs = Accs::with_capacity(naccs);
        for _ in 0..naccs {
            let (a, rest) = Acc::decode(r)?;
            accs.push(a);
            r = rest;
        }
        e.wins.push(Win { start, end, fired, refire: false, accs });
    }
    Some(e)
}

#[cfg(test)]
mod tests;
