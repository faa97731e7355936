//! The keyed state of an operator with one entry and one timer per key (joins, patterns): a
//! cache of decoded entries that is the epoch's overlay (a changed key is written once per
//! commit; clean entries are dropped when there are too many), backed by `prefix|k|key`
//! entries in the task's state, and the keys' timers (see [`Timers`]).

use rustc_hash::FxBuildHasher;

use super::timers::{Key, KeyTimers, Opened, Timers};
use super::{entry_key, OpError};
use crate::state::StateTx;

/// What an operator keeps per key.
pub trait KeyedEntry: Sized + Default {
    /// The stored form (with the key's timer in it).
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
    /// Nothing left to keep: the key's entry is deleted.
    fn is_empty(&self) -> bool;
    /// The key's one timer (`i64::MAX`: none; not read while the entry is empty).
    fn timer(&self) -> i64;

    /// The key's timer, `i64::MAX` when it keeps nothing.
    fn due(&self) -> i64 {
        if self.is_empty() {
            i64::MAX
        } else {
            self.timer()
        }
    }
}

struct Slot<E> {
    entry: E,
    /// Changed since the last commit (listed in `Keyed::dirty`).
    dirty: bool,
    /// Has an entry in state.
    stored: bool,
    /// The timer stored for it.
    persisted: KeyTimers,
}

pub struct Keyed<E> {
    name: String,
    prefix: Vec<u8>,
    cache: hashbrown::HashMap<Key, Slot<E>, FxBuildHasher>,
    dirty: Vec<Key>,
    /// Some key has a stored entry that is not in the cache (a miss must read state).
    uncached_in_state: bool,
    pub timers: Timers,
    opened: bool,
    max_cached_keys: usize,
}

impl<E: KeyedEntry> Keyed<E> {
    pub fn new(name: &str, prefix: Vec<u8>, max_cached_keys: usize) -> Keyed<E> {
        Keyed {
            name: name.to_string(),
            timers: Timers::new(&prefix),
            prefix,
            cache: Default::default(),
            dirty: Vec::new(),
            uncached_in_state: false,
            opened: false,
            max_cached_keys,
        }
    }

    pub fn err(&self, source: crate::state::StateError) -> OpError {
        OpError::state(&self.name, source)
    }

    /// Opens on the task's state, once.
    pub fn open(&mut self, tx: &mut StateTx) -> Result<(), OpError> {
        if self.opened {
            return Ok(());
        }
        self.opened = true;
        let lo = entry_key(&self.prefix, &[]);
        let mut hi = self.prefix.clone();
        hi.push(b'k' + 1);
        self.uncached_in_state = !tx.scan(&lo, &hi, 1).map_err(|e| self.err(e))?.is_empty();
        match self.timers.open(tx, self.uncached_in_state).map_err(|e| self.err(e))? {
            Opened::Ready => Ok(()),
            // These operators store their timers from their first version on.
            Opened::Unindexed => Err(OpError::corrupt(&self.name, "keyed state without timers")),
        }
    }

    /// The key's entry (read from state into the cache on a miss, else a new one), marked
    /// changed.
    pub fn get(&mut self, tx: &StateTx, key: &[u8]) -> Result<&mut E, OpError> {
        if !self.cache.contains_key(key) {
            let stored = match self.uncached_in_state {
                true => tx.get(&entry_key(&self.prefix, key)).map_err(|e| self.err(e))?,
                false => None,
            };
            let slot = match stored {
                Some(b) => {
                    let entry = E::decode(&b).ok_or_else(|| OpError::corrupt(&self.name, "a key's entry"))?;
                    let persisted = stored_timer(entry.due());
                    Slot { entry, dirty: false, stored: true, persisted }
                }
                None => Slot { entry: E::default(), dirty: false, stored: false, persisted: KeyTimers::new() },
            };
            self.cache.insert(Key::from_slice(key), slot);
        }
        let (k, slot) = self.cache.get_key_value_mut(key).expect("inserted");
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(k.clone());
        }
        Ok(&mut slot.entry)
    }

    /// Writes changed entries and their timers into the transaction; drops clean entries
    /// beyond the cache size.
    pub fn write_back(&mut self, tx: &mut StateTx) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.cache.get_mut(&key) else { continue };
            slot.dirty = false;
            let now = stored_timer(slot.entry.due());
            self.timers.store(tx, &key, &slot.persisted, &now);
            slot.persisted = now;
            if slot.entry.is_empty() {
                let stored = slot.stored;
                self.cache.remove(&key);
                if stored {
                    tx.delete(entry_key(&self.prefix, &key));
                }
            } else {
                slot.stored = true;
                let bytes = slot.entry.encode();
                tx.put(entry_key(&self.prefix, &key), bytes);
            }
        }
        if self.cache.len() > self.max_cached_keys {
            self.uncached_in_state |= self.cache.values().any(|s| s.stored);
            self.cache.clear();
        }
    }

    /// More keys in memory than the budget, some of them changed: a commit lets them go.
    pub fn wants_commit(&self) -> bool {
        self.cache.len() > self.max_cached_keys && !self.dirty.is_empty()
    }

    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }
}

/// The stored form of a key's one timer.
fn stored_timer(timer: i64) -> KeyTimers {
    (timer != i64::MAX).then_some((timer, 0)).into_iter().collect()
}
