//! Event-time timers of a keyed operator, kept twice (as Flink's RocksDB timer service):
//!
//! - in memory, an index by time of the timers set since the operator opened, so firing never
//!   scans state;
//! - in state, one entry `prefix|t|time|id|key` per stored timer, written at each commit as
//!   the difference between a key's timers then and when it was last stored.
//!
//! A restored operator reads nothing at open: as its watermark advances it reads the stored
//! timers up to the watermark, skipping those it wrote itself (each carries the generation of
//! the operator that wrote it), so recovery time does not grow with the state. `prefix|g`
//! holds the last generation and an upper bound of the stored timers' times.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::state::{StateError, StateTx};

/// A key's encoding, inline up to 30 bytes.
pub type Key = SmallVec<[u8; 30]>;

/// A key's timers: (time, id). The id tells timers of one key apart (a window's start), or 0.
pub type KeyTimers = SmallVec<[(i64, i64); 1]>;

/// An i64 as 8 bytes that sort like the number.
fn ordered(x: i64) -> [u8; 8] {
    ((x as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

pub struct Timers {
    prefix: Vec<u8>,
    /// Timers set since the operator opened, and stored ones read so far: time -> (key, id).
    pub mem: BTreeMap<i64, Vec<(Key, i64)>>,
    opened: bool,
    /// This operator's generation: one more than the last one opened on the state.
    generation: u64,
    /// No stored timer is later than this.
    bound: i64,
    /// Timers stored before this operator opened that are still to be read: those after the
    /// first time and up to the second (`None`: none are left).
    restored: Option<(i64, i64)>,
}

/// What [`Timers::open`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Opened before, or on state with its timers stored: nothing to do.
    Ready,
    /// State written before timers were stored: the operator indexes it once, setting each
    /// timer in memory ([`Timers::set`]) and in state ([`Timers::store_new`]).
    Unindexed,
}

impl Timers {
    /// The timers of the operator whose state is under `prefix`.
    pub fn new(prefix: &[u8]) -> Timers {
        Timers {
            prefix: prefix.to_vec(),
            mem: BTreeMap::new(),
            opened: false,
            generation: 0,
            bound: i64::MIN,
            restored: None,
        }
    }

    fn key(&self, kind: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 17 + 32);
        k.extend_from_slice(&self.prefix);
        k.push(kind);
        k
    }

    /// `prefix|t|time|id|key`: stored timers in time order.
    fn stored_key(&self, time: i64, id: i64, key: &[u8]) -> Vec<u8> {
        let mut k = self.from(time);
        k.extend_from_slice(&ordered(id));
        k.extend_from_slice(key);
        k
    }

    /// Where the stored timers at or after `time` begin.
    fn from(&self, time: i64) -> Vec<u8> {
        let mut k = self.key(b't');
        k.extend_from_slice(&ordered(time));
        k
    }

    /// Where the stored timers after `time` begin.
    fn after(&self, time: i64) -> Vec<u8> {
        match time.checked_add(1) {
            Some(next) => self.from(next),
            None => self.key(b't' + 1),
        }
    }

    /// Opens on the state, once: takes the next generation and notes whether stored timers
    /// are to be read as the watermark advances. `has_entries`: the operator has stored state.
    pub fn open(&mut self, tx: &mut StateTx, has_entries: bool) -> Result<Opened, StateError> {
        if self.opened {
            return Ok(Opened::Ready);
        }
        self.opened = true;
        let stored = tx.get(&self.key(b'g'))?;
        let (last, bound) = match stored.as_deref() {
            Some(b) => match (b.get(..8), b.get(8..16)) {
                (Some(g), Some(t)) => (
                    u64::from_le_bytes(g.try_into().expect("8 bytes")),
                    i64::from_le_bytes(t.try_into().expect("8 bytes")),
                ),
                _ => return Err(StateError::Corrupt("a timer generation".into())),
            },
            None => (0, i64::MIN),
        };
        self.generation = last + 1;
        self.bound = bound;
        self.put_generation(tx);
        if stored.is_none() && has_entries {
            return Ok(Opened::Unindexed);
        }
        if bound != i64::MIN {
            self.restored = Some((i64::MIN, bound));
        }
        Ok(Opened::Ready)
    }

    fn put_generation(&self, tx: &mut StateTx) {
        let mut v = self.generation.to_le_bytes().to_vec();
        v.extend_from_slice(&self.bound.to_le_bytes());
        tx.put(self.key(b'g'), v);
    }

    /// Sets a timer in memory.
    pub fn set(&mut self, time: i64, key: &Key, id: i64) {
        self.mem.entry(time).or_default().push((key.clone(), id));
    }

    /// Removes a timer set in memory (a stored one is removed by [`Timers::store`]).
    pub fn unset(&mut self, time: i64, key: &[u8], id: i64) {
        if let std::collections::btree_map::Entry::Occupied(mut bucket) = self.mem.entry(time) {
            if let Some(i) = bucket.get().iter().position(|(k, s)| *s == id && k.as_ref() == key) {
                bucket.get_mut().swap_remove(i);
            }
            if bucket.get().is_empty() {
                bucket.remove();
            }
        }
    }

    /// Writes the change of `key`'s stored timers from `old` to `new` into the transaction.
    pub fn store(&mut self, tx: &mut StateTx, key: &[u8], old: &[(i64, i64)], new: &[(i64, i64)]) {
        for &(time, id) in old.iter().filter(|t| !new.contains(t)) {
            tx.delete(self.stored_key(time, id, key));
        }
        self.store_new(tx, key, new.iter().filter(|t| !old.contains(t)).copied());
    }

    /// Stores timers of `key` that are not stored yet.
    pub fn store_new(&mut self, tx: &mut StateTx, key: &[u8], new: impl IntoIterator<Item = (i64, i64)>) {
        let bound = self.bound;
        for (time, id) in new {
            tx.put(self.stored_key(time, id, key), self.generation.to_le_bytes().to_vec());
            self.bound = self.bound.max(time);
        }
        if self.bound != bound {
            self.put_generation(tx);
        }
    }

    /// Reads into memory the stored timers due by `wm` that an earlier operator set (this
    /// one's own are in memory already).
    pub fn read_due(&mut self, tx: &StateTx, wm: i64) -> Result<(), StateError> {
        let Some((upto, bound)) = self.restored else { return Ok(()) };
        let until = wm.min(bound);
        if until <= upto {
            return Ok(());
        }
        let mut from = self.after(upto);
        let to = self.after(until);
        let at = self.prefix.len() + 1;
        let own = self.generation.to_le_bytes();
        loop {
            let page = tx.scan(&from, &to, 4096)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, v) in page {
                if v.as_slice() == own {
                    continue;
                }
                let time = k.get(at..at + 8).and_then(from_ordered);
                let id = k.get(at + 8..at + 16).and_then(from_ordered);
                let (Some(time), Some(id)) = (time, id) else {
                    return Err(StateError::Corrupt("a stored timer".into()));
                };
                self.mem.entry(time).or_default().push((Key::from_slice(&k[at + 16..]), id));
            }
        }
        self.restored = (wm < bound).then_some((until, bound));
        Ok(())
    }

    /// The earliest timers due by `wm`, removed: their time and (key, id) in the order set.
    pub fn pop_due(&mut self, wm: i64) -> Option<(i64, Vec<(Key, i64)>)> {
        let entry = self.mem.first_entry()?;
        (*entry.key() <= wm).then(|| entry.remove_entry())
    }

    /// Timers held in memory (set, or read and not yet fired).
    pub fn in_memory(&self) -> usize {
        self.mem.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStore;

    fn key(s: &str) -> Key {
        Key::from_slice(s.as_bytes())
    }

    #[test]
    fn stored_timers_are_read_by_the_next_operator_as_the_watermark_reaches_them() {
        let mut tx = StateTx::new(Box::new(MemStore::default()));
        let mut t = Timers::new(&[7]);
        assert_eq!(t.open(&mut tx, false).unwrap(), Opened::Ready);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            let time = (i as i64 + 1) * 100;
            t.set(time, &key(k), -5);
            t.store(&mut tx, k.as_bytes(), &[], &[(time, -5)]);
        }
        // `b` moves to 250: its stored timer too.
        t.store(&mut tx, b"b", &[(200, -5)], &[(250, -5)]);
        tx.commit([]).unwrap();

        let mut next = Timers::new(&[7]);
        assert_eq!(next.open(&mut tx, true).unwrap(), Opened::Ready);
        next.read_due(&tx, 50).unwrap();
        assert_eq!(next.in_memory(), 0, "nothing is due");
        // Its own timers are in memory already: not read again.
        next.set(120, &key("d"), 0);
        next.store(&mut tx, b"d", &[], &[(120, 0)]);
        next.read_due(&tx, 260).unwrap();
        let mut due = Vec::new();
        while let Some((time, keys)) = next.pop_due(260) {
            due.extend(keys.into_iter().map(|(k, id)| (time, String::from_utf8(k.to_vec()).unwrap(), id)));
        }
        assert_eq!(due, [(100, "a".into(), -5), (120, "d".into(), 0), (250, "b".into(), -5)]);
        next.read_due(&tx, i64::MAX).unwrap();
        assert_eq!(next.pop_due(i64::MAX), Some((300, vec![(key("c"), -5)])));
        assert_eq!(next.pop_due(i64::MAX), None);
        assert!(next.restored.is_none(), "everything stored before it opened was read");
    }

    #[test]
    fn state_without_stored_timers_is_reported_once() {
        let mut tx = StateTx::new(Box::new(MemStore::default()));
        let mut t = Timers::new(&[7]);
        assert_eq!(t.open(&mut tx, true).unwrap(), Opened::Unindexed);
        assert_eq!(t.open(&mut tx, true).unwrap(), Opened::Ready, "once");
        tx.commit([]).unwrap();
        assert_eq!(Timers::new(&[7]).open(&mut tx, true).unwrap(), Opened::Ready, "the generation is stored");
    }
}
