//! Sources: Kafka (per-partition tasks), `file` (JSON lines, bounded) and `datagen`. Each yields
//! batches of raw records per partition with their positions, so a task can record where it is.

pub mod datagen;
pub mod file;
pub mod kafka;

/// Raw records of one partition, back to back in one buffer.
#[derive(Default, Debug, Clone)]
pub struct Records {
    pub data: Vec<u8>,
    /// End offset in `data` of each record.
    pub ends: Vec<usize>,
    /// Source position of each record (Kafka offset, line number, sequence number).
    pub positions: Vec<i64>,
    /// Source timestamp of each record (Kafka timestamp or read time), epoch ms.
    pub timestamps: Vec<i64>,
    /// Kafka records without a value (tombstones: a compacted topic's deletes), by index, with
    /// their message key. They are in `data` too, as empty records.
    pub tombstones: Vec<(u32, Vec<u8>)>,
}

impl Records {
    /// Room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Records {
        Records {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
            positions: Vec::with_capacity(records),
            timestamps: Vec::with_capacity(records),
            tombstones: Vec::new(),
        }
    }

    /// A record without a value and with message key `key` (a tombstone).
    pub fn push_tombstone(&mut self, key: &[u8], position: i64, timestamp: i64) {
        self.tombstones.push((self.len() as u32, key.to_vec()));
        self.push(&[], position, timestamp);
    }

    pub fn push(&mut self, payload: &[u8], position: i64, timestamp: i64) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
        self.positions.push(position);
        self.timestamps.push(timestamp);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Splits off the records from index `at` on.
    pub fn split_off(&mut self, at: usize) -> Records {
        let from = if at == 0 { 0 } else { self.ends[at - 1] };
        let first_moved = self.tombstones.partition_point(|(i, _)| (*i as usize) < at);
        Records {
            data: self.data.split_off(from),
            ends: self.ends.split_off(at).into_iter().map(|e| e - from).collect(),
            positions: self.positions.split_off(at),
            timestamps: self.timestamps.split_off(at),
            tombstones: self.tombstones.split_off(first_moved).into_iter().map(|(i, k)| (i - at as u32, k)).collect(),
        }
    }

    pub fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// What a source returns from one poll.
#[derive(Default)]
pub struct Polled {
    pub batches: Vec<(u32, Records)>,
}

/// Errors of sources, with the source's name.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {message}")]
    Failed { source_name: String, message: String },
}

pub type Result<T> = std::result::Result<T, SourceError>;

/// A source of records, split into partitions.
pub trait Source: Send {
    /// The partitions this worker reads.
    fn partitions(&self) -> Vec<u32>;
    /// How many partitions the source has over all workers.
    fn partition_count(&self) -> u32 {
        1
    }
    /// Starts partition `p` at `position` (the next record to read), restored from state.
    fn seek(&mut self, partition: u32, position: i64) -> Result<()>;
    /// Reads up to `max` records in total, waiting at most `wait` when none are ready.
    fn poll(&mut self, max: usize, wait: std::time::Duration) -> Result<Polled>;
    /// True once a bounded source has returned its last record.
    fn finished(&self) -> bool;
    /// Records the positions a task has durably processed (a Kafka group commit).
    /// Connects and fixes the starting positions before the first poll.
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    /// Positions the consumer group committed, for partitions where they are ahead of the
    /// position restored from state (exactly-once: results up to there are already committed).
    fn committed_ahead(&self) -> Vec<(u32, i64)> {
        Vec::new()
    }
    /// Per partition, the last epoch committed with the group's offsets (exactly-once).
    fn committed_epochs(&self) -> Vec<(u32, u64)> {
        Vec::new()
    }
    /// The Kafka topic and consumer group, to commit offsets inside a producer transaction.
    fn transactional_offsets(&self) -> Option<(String, rdkafka::consumer::ConsumerGroupMetadata)> {
        None
    }
    fn commit(&mut self, _positions: &[(u32, i64)]) -> Result<()> {
        Ok(())
    }
    /// Records left to read per partition, where the source can tell.
    fn lag(&self) -> Vec<(u32, i64)> {
        Vec::new()
    }
    /// The position of the next record to read, per partition that has one.
    fn next_positions(&self) -> Vec<(u32, i64)> {
        Vec::new()
    }
}

/// The metadata committed with an epoch's input offsets.
pub fn epoch_metadata(epoch: u64) -> String {
    format!("weir:epoch={epoch}")
}

/// The epoch in offset metadata written by [`epoch_metadata`].
pub fn epoch_from_metadata(metadata: &str) -> Option<u64> {
    metadata.strip_prefix("weir:epoch=")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_through_offset_metadata() {
        assert_eq!(epoch_from_metadata(&epoch_metadata(42)), Some(42));
        assert_eq!(epoch_from_metadata(""), None);
        assert_eq!(epoch_from_metadata("weir:epoch=x"), None);
    }

    #[test]
    fn split_off_keeps_payloads_positions_and_times_together() {
        let mut r = Records::default();
        for (i, p) in ["a", "bb", "ccc", "dddd"].iter().enumerate() {
            r.push(p.as_bytes(), 10 + i as i64, 100 + i as i64);
        }
        r.push_tombstone(b"k4", 14, 104);
        r.push(b"e", 15, 105);
        r.push_tombstone(b"k6", 16, 106);
        let tail = r.split_off(2);
        assert_eq!((r.len(), r.payload(1), r.positions.clone()), (2, &b"bb"[..], vec![10, 11]));
        assert!(r.tombstones.is_empty());
        assert_eq!((tail.len(), tail.payload(0), tail.payload(1)), (5, &b"ccc"[..], &b"dddd"[..]));
        assert_eq!((tail.positions.clone(), tail.timestamps[..2].to_vec()), (vec![12, 13, 14, 15, 16], vec![102, 103]));
        assert_eq!(tail.tombstones, [(2, b"k4".to_vec()), (4, b"k6".to_vec())], "indexes follow the split");
        assert_eq!(tail.payload(2), b"", "a tombstone is an empty record");
        let mut whole = tail.clone();
        let end = whole.split_off(3);
        assert_eq!(
            (whole.tombstones.clone(), end.tombstones.clone()),
            (vec![(2, b"k4".to_vec())], vec![(1, b"k6".to_vec())])
        );
        assert!(end.clone().split_off(2).is_empty());
        let all = whole.split_off(0);
        assert!(whole.is_empty() && all.len() == 3 && all.payload(1) == b"dddd");
    }
}
