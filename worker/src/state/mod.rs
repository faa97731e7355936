//! Keyed state of a partition-task: an ordered key-value store (RocksDB, or memory in tests)
//! with a transaction overlay. Operators read and write through [`StateTx`]; the task commits
//! the overlay atomically with the input offsets and watermark at every epoch, so the stored
//! state always matches a stored input position.

mod rocks;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

pub use rocks::{RocksShared, RocksStore};

/// Errors of the state backend, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {source}")]
    Rocks { path: String, source: rocksdb::Error },
    #[error("corrupt state entry: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StateError>;

/// Puts (`Some`) and deletes (`None`) to apply together.
pub type Ops = FxHashMap<Vec<u8>, Option<Vec<u8>>>;

/// An ordered key-value store with atomic batch writes.
pub trait StateStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Applies puts (`Some`) and deletes (`None`) atomically.
    fn write(&self, ops: &Ops) -> Result<()>;
    /// Entries with `start <= key < end`, in key order, at most `limit`.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Approximate bytes of live data.
    fn size_bytes(&self) -> u64;
    /// A consistent copy of the committed state in the new folder `dir` (RocksDB: hard links).
    fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        Err(StateError::Corrupt(format!("this state store cannot checkpoint into {}", dir.display())))
    }
}

/// An in-memory store, for tests and stateless local runs.
#[derive(Default)]
pub struct MemStore(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

impl StateStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.lock().expect("state lock").get(key).cloned())
    }

    fn write(&self, ops: &Ops) -> Result<()> {
        let mut m = self.0.lock().expect("state lock");
        for (k, v) in ops {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let m = self.0.lock().expect("state lock");
        Ok(m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn size_bytes(&self) -> u64 {
        self.0.lock().expect("state lock").iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}

/// Uncommitted changes of the current epoch over a store. Operators write mostly at the end of
/// an epoch and scan rarely, so the overlay is a hash map, sorted only when scanned.
pub struct StateTx {
    store: Box<dyn StateStore>,
    pending: Ops,
}

impl StateTx {
    pub fn new(store: Box<dyn StateStore>) -> StateTx {
        StateTx { store, pending: Ops::default() }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(key),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Entries with `start <= key < end` as this epoch sees them, at most `limit`.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.pending.iter().filter(|(k, _)| k.as_slice() >= start && k.as_slice() < end).collect();
        overlay.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Deleted entries may hide stored ones, so read enough stored entries to fill `limit`.
        let deletes = overlay.iter().filter(|(_, v)| v.is_none()).count();
        let stored = self.store.scan(start, end, limit.saturating_add(deletes))?;
        let mut out = Vec::with_capacity(limit.min(stored.len() + overlay.len()));
        let (mut a, mut b) = (stored.into_iter().peekable(), overlay.into_iter().peekable());
        while out.len() < limit {
            let take_overlay = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((ka, _)), Some((kb, _))) => kb.as_slice() <= ka.as_slice(),
            };
            if take_overlay {
                let (k, v) = b.next().expect("peeked");
                if a.peek().is_some_and(|(ka, _)| ka == k) {
                    a.next();
                }
                if let Some(v) = v {
                    out.push((k.clone(), v.clone()));
                }
            } else {
                out.push(a.next().expect("peeked"));
            }
        }
        Ok(out)
    }

    /// Writes this epoch's changes plus `extra` entries (offsets, watermark) atomically.
    pub fn commit(&mut self, extra: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<()> {
        for (k, v) in extra {
            self.pending.insert(k, Some(v));
        }
        if !self.pending.is_empty() {
            self.store.write(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn size_bytes(&self) -> u64 {
        self.store.size_bytes()
    }

    /// A copy of the committed state (uncommitted changes are not in it).
    pub fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        self.store.checkpoint(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx_with(stored: &[(&str, &str)]) -> StateTx {
        let m = MemStore::default();
        let ops: Ops = stored.iter().map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))).collect();
        m.write(&ops).unwrap();
        StateTx::new(Box::new(m))
    }

    fn keys(v: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<String> {
        v.into_iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn overlay_scan_merges_puts_and_deletes() {
        let mut tx = tx_with(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        tx.delete(b"b".to_vec());
        tx.put(b"c".to_vec(), b"30".to_vec());
        tx.put(b"bb".to_vec(), b"22".to_vec());
        assert_eq!(keys(tx.scan(b"a", b"z", 10).unwrap()), ["a=1", "bb=22", "c=30", "d=4"]);
        assert_eq!(keys(tx.scan(b"b", b"d", 10).unwrap()), ["bb=22", "c=30"]);
        assert_eq!(keys(tx.scan(b"a", b"z", 2).unwrap()), ["a=1", "bb=22"]);
        assert_eq!(tx.get(b"b").unwrap(), None);
        assert_eq!(tx.get(b"c").unwrap(), Some(b"30".to_vec()));
    }

    #[test]
    fn deletes_do_not_starve_the_limit() {
        let mut tx = tx_with(&[("a", "1"), ("b", "2"), ("c", "3")]);
        tx.delete(b"a".to_vec());
        tx.delete(b"b".to_vec());
        assert_eq!(keys(tx.scan(b"a", b"z", 1).unwrap()), ["c=3"]);
    }

    #[test]
    fn commit_makes_changes_durable() {
        let mut tx = tx_with(&[("a", "1")]);
        tx.put(b"b".to_vec(), b"2".to_vec());
        tx.delete(b"a".to_vec());
        tx.commit([(b"offset".to_vec(), b"9".to_vec())]).unwrap();
        assert_eq!(tx.pending_len(), 0);
        assert_eq!(keys(tx.scan(b"", b"\xff", 10).unwrap()), ["b=2", "offset=9"]);
    }
}
