//! Sliding windows on panes (window slicing, as Flink SQL does for HOP windows): a key keeps
//! one accumulator per slide-long pane instead of one per window, so an event updates one
//! pane, not `size / slide` windows; a window's result is its panes merged when it fires.
//!
//! Per key: its panes, `fired_upto` (every window ending at or before it has fired) and one
//! timer at the earlier of the next window to fire and the next pane to drop. Semantics equal
//! per-window state exactly: an event goes to its pane only if its last window is live; windows
//! already past their lateness when a row arrives are fired before the row touches the pane
//! (so they never contain it, whatever the batch cuts); fired windows still within their
//! lateness are emitted again.

use smallvec::SmallVec;

use super::{new_accs, AggSpec, KeyEntry, Win};

#[derive(Clone, Copy, Debug)]
pub(super) struct Panes {
    pub size: i64,
    pub slide: i64,
    pub lateness: i64,
}

impl Panes {
    pub fn pane_of(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.slide)
    }

    /// Whether every window containing pane `p` is past its lateness at `wm`.
    pub fn pane_expired(&self, p: i64, wm: i64) -> bool {
        (p.saturating_add(self.size) - 1).saturating_add(self.lateness) <= wm
    }

    fn window_expired(&self, end: i64, wm: i64) -> bool {
        (end - 1).saturating_add(self.lateness) <= wm
    }

    /// The end of the next window of the key to fire: the first window end after `fired_upto`
    /// whose window holds a pane.
    pub fn next_end(&self, e: &KeyEntry) -> Option<i64> {
        e.wins
            .iter()
            .filter_map(|w| {
                let end = w.start.saturating_add(self.slide).max(e.fired_upto.saturating_add(self.slide));
                (end <= w.start.saturating_add(self.size)).then_some(end)
            })
            .min()
    }

    /// When something next happens to the key: a window fires or a pane is dropped.
    pub fn next_timer(&self, e: &KeyEntry) -> i64 {
        let fire = self.next_end(e).map_or(i64::MAX, |end| end - 1);
        let drop = e
            .wins
            .iter()
            .map(|w| (w.start.saturating_add(self.size) - 1).saturating_add(self.lateness))
            .min()
            .unwrap_or(i64::MAX);
        fire.min(drop)
    }

    /// Window `[start, start + size)` of the key: its panes merged.
    pub fn window(&self, e: &KeyEntry, start: i64, aggs: &[AggSpec]) -> Win {
        let end = start.saturating_add(self.size);
        let mut accs = new_accs(aggs);
        for w in e.wins.iter().filter(|w| w.start >= start && w.start < end) {
            for (a, b) in accs.iter_mut().zip(&w.accs) {
                a.merge(b.clone());
            }
        }
        Win { start, end, fired: true, refire: false, accs }
    }

    /// Fires, in order, every window of the key that is due at `wm` (`expired_only`: only those
    /// already past their lateness), passing each to `emit`.
    pub fn fire_due(
        &self,
        e: &mut KeyEntry,
        wm: i64,
        expired_only: bool,
        aggs: &[AggSpec],
        emit: &mut impl FnMut(&Win),
    ) {
        while let Some(end) = self.next_end(e) {
            let due = if expired_only { self.window_expired(end, wm) } else { end - 1 <= wm };
            if !due {
                break;
            }
            emit(&self.window(e, end - self.size, aggs));
            e.fired_upto = end;
        }
    }

    /// The end of the last window that is past its lateness at `wm` (all windows are aligned).
    pub fn last_expired_end(&self, wm: i64) -> i64 {
        if wm == i64::MIN {
            return i64::MIN;
        }
        let x = wm.saturating_sub(self.lateness).saturating_add(1);
        x - x.rem_euclid(self.slide)
    }

    /// Emits now the windows waiting to be emitted again that are past their lateness at `wm`:
    /// a later row must not change what they show.
    pub fn flush_expired_refires(&self, e: &mut KeyEntry, wm: i64, aggs: &[AggSpec], emit: &mut impl FnMut(&Win)) {
        let mut i = 0;
        while i < e.refire.len() {
            let start = e.refire[i];
            if self.window_expired(start.saturating_add(self.size), wm) {
                emit(&self.window(e, start, aggs));
                e.refire.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Drops panes whose windows are all past their lateness.
    pub fn drop_expired(&self, e: &mut KeyEntry, wm: i64) {
        e.wins.retain(|w| !self.pane_expired(w.start, wm));
        e.refire.retain(|s| !self.window_expired(s.saturating_add(self.size), wm));
    }

    /// Starts of the fired windows containing pane `p` that are still within their lateness at
    /// `wm`: an update of `p` emits them again.
    pub fn refired(&self, e: &KeyEntry, p: i64, wm: i64) -> SmallVec<[i64; 8]> {
        let mut out = SmallVec::new();
        let mut start = p;
        while start > p - self.size {
            let end = start.saturating_add(self.size);
            if end <= e.fired_upto && !self.window_expired(end, wm) {
                out.push(start);
            }
            start -= self.slide;
        }
        out
    }
}
