//! Window assignment (Flink semantics): tumbling windows aligned to the epoch, sliding windows
//! starting at multiples of the slide, session windows opened per event and merged.

/// The kind of window and its sizes in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

impl WindowKind {
    /// Start times of the fixed windows that contain `ts` (not for sessions).
    pub fn assign(&self, ts: i64, out: &mut Vec<i64>) {
        match *self {
            WindowKind::Tumbling { size } => out.push(ts - ts.rem_euclid(size)),
            WindowKind::Sliding { size, slide } => {
                let last = ts - ts.rem_euclid(slide);
                let mut start = last;
                while start > ts - size {
                    out.push(start);
                    start -= slide;
                }
            }
            WindowKind::Session { .. } => out.push(ts),
        }
    }

    /// Length of a fixed window; a session's initial length.
    pub fn size(&self) -> i64 {
        match *self {
            WindowKind::Tumbling { size } | WindowKind::Sliding { size, .. } => size,
            WindowKind::Session { gap } => gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(k: WindowKind, ts: i64) -> Vec<i64> {
        let mut v = Vec::new();
        k.assign(ts, &mut v);
        v.sort();
        v
    }

    #[test]
    fn tumbling_is_epoch_aligned_also_before_1970() {
        let k = WindowKind::Tumbling { size: 60_000 };
        assert_eq!(starts(k, 125_000), vec![120_000]);
        assert_eq!(starts(k, 120_000), vec![120_000]);
        assert_eq!(starts(k, -1), vec![-60_000]);
    }

    #[test]
    fn sliding_gives_size_over_slide_windows() {
        let k = WindowKind::Sliding { size: 300_000, slide: 60_000 };
        assert_eq!(starts(k, 310_000), vec![60_000, 120_000, 180_000, 240_000, 300_000]);
        for s in starts(k, 310_000) {
            assert!(s <= 310_000 && 310_000 < s + 300_000);
        }
    }
}
