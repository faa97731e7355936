//! RocksDB state: one database per partition-task, with a block cache and a write-buffer
//! budget shared by every task of the worker, so memory stays bounded however many
//! partitions a worker owns and state beyond memory lives on local disk.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, IteratorMode, Options, ReadOptions, WriteBatch, WriteBufferManager, DB};

use super::{Ops, Result, StateError, StateStore};

/// Memory shared by all of a worker's state stores.
#[derive(Clone)]
pub struct RocksShared {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl RocksShared {
    /// A block cache of `cache_bytes` with memtables charged against `write_buffer_bytes`.
    pub fn new(cache_bytes: usize, write_buffer_bytes: usize) -> RocksShared {
        let cache = Cache::new_lru_cache(cache_bytes);
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager_with_cache(write_buffer_bytes, false, cache.clone());
        RocksShared { cache, write_buffers }
    }
}

/// A partition-task's RocksDB database.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl RocksStore {
    pub fn open(path: &Path, shared: &RocksShared) -> Result<RocksStore> {
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&shared.cache);
        block.set_bloom_filter(10.0, false);
        // Index and filter blocks live in the block cache, so the memory budget holds however
        // large the state grows; a lookup that missed had then to read (and checksum) a whole
        // table's filter again whenever data blocks had pushed it out. Partitioned, only the
        // small top level is pinned and a lookup reads one 4 KiB filter and index partition;
        // they go to the cache's high-priority pool, ahead of data blocks (as Flink's
        // `state.backend.rocksdb.memory.partitioned-index-filters`). With 8 MiB for 100,000
        // keys, sliding windows went from 55,000 to 76,000 events/s.
        block.set_cache_index_and_filter_blocks(true);
        block.set_cache_index_and_filter_blocks_with_high_priority(true);
        block.set_pin_l0_filter_and_index_blocks_in_cache(true);
        block.set_partition_filters(true);
        block.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        block.set_pin_top_level_index_and_filter(true);
        block.set_metadata_block_size(4096);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&block);
        opts.set_write_buffer_manager(&shared.write_buffers);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let db =
            DB::open(&opts, path).map_err(|source| StateError::Rocks { path: path.display().to_string(), source })?;
        Ok(RocksStore { db, path: path.to_path_buf() })
    }

    fn err(&self, source: rocksdb::Error) -> StateError {
        StateError::Rocks { path: self.path.display().to_string(), source }
    }
}

impl StateStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    fn write(&self, ops: &Ops) -> Result<()> {
        // Sorted, the memtable inserts each land next to the previous one (RocksDB's skip list
        // reuses its last position), several times faster than in hash order.
        let mut sorted: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = ops.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut batch = WriteBatch::default();
        for (k, v) in sorted {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator_opt(IteratorMode::From(start, rocksdb::Direction::Forward), ro) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| self.err(e))?;
        cp.create_checkpoint(dir).map_err(|e| self.err(e))
    }

    fn size_bytes(&self) -> u64 {
        let live = self.db.property_int_value("rocksdb.estimate-live-data-size").ok().flatten().unwrap_or(0);
        let mem = self.db.property_int_value("rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
        live + mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_scans_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let shared = RocksShared::new(1 << 20, 1 << 20);
        {
            let s = RocksStore::open(dir.path(), &shared).unwrap();
            let mut ops = Ops::default();
            for i in [3u8, 1, 2] {
                ops.insert(vec![i], Some(vec![i * 10]));
            }
            s.write(&ops).unwrap();
        }
        let s = RocksStore::open(dir.path(), &shared).unwrap();
        let all = s.scan(&[0], &[3], 10).unwrap();
        assert_eq!(all, vec![(vec![1], vec![10]), (vec![2], vec![20])]);
        assert_eq!(s.get(&[3]).unwrap(), Some(vec![30]));
    }
}
