//! The manifest of a checkpoint or savepoint (`_manifest.json`): what a completed snapshot of
//! one partition's state holds. It is read back from storage, which another process, a bad disk
//! or a hand may have changed, so [`CheckpointManifest::parse`] checks more than its JSON shape:
//! its names become local file paths when the state is restored.
//!
//! Also compiled on its own by the fuzz target `checkpoint_manifest` (serde and serde_json only).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// What a completed checkpoint holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointManifest {
    pub id: u64,
    pub partition: u32,
    /// Wall clock when the local snapshot was taken, epoch ms.
    pub created_ms: i64,
    /// SST files, under `p<partition>/sst/`.
    pub sst: Vec<String>,
    /// The database's other files, under `p<partition>/chk-<id>/`.
    pub files: Vec<String>,
    /// Bytes of every file the checkpoint references.
    pub bytes: u64,
    /// Hash of the pipeline the state belongs to.
    pub fingerprint: String,
    /// Each file's size, checked after a download (absent in checkpoints of earlier versions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, u64>,
}

/// True for a name that is one plain file name: joined to a folder, it stays in that folder.
pub fn is_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) && !name.contains(['/', '\\', '\0'])
}

impl CheckpointManifest {
    /// Reads a manifest written for `partition` (and, for a checkpoint, with id `id`; a savepoint
    /// has none). Refused, saying why: anything but the manifest's JSON; another partition or
    /// checkpoint; a name that is not a plain file name (it would be written outside the state
    /// folder), an SST file without the `.sst` suffix, a name listed twice; sizes that do not
    /// cover exactly the files listed or do not add up to `bytes`.
    pub fn parse(bytes: &[u8], partition: u32, id: Option<u64>) -> Result<CheckpointManifest, String> {
        let m: CheckpointManifest = serde_json::from_slice(bytes).map_err(|e| format!("unreadable manifest: {e}"))?;
        if m.partition != partition {
            return Err(format!("the manifest is of partition {}, not {partition}", m.partition));
        }
        if let Some(id) = id.filter(|&id| id != m.id) {
            return Err(format!("the manifest is of checkpoint {}, not {id}", m.id));
        }
        let mut seen = BTreeSet::new();
        for name in m.sst.iter().chain(&m.files) {
            if !is_file_name(name) {
                return Err(format!("the manifest names {name:?}, which is not a plain file name"));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("the manifest names {name:?} twice"));
            }
        }
        if let Some(name) = m.sst.iter().find(|n| !n.ends_with(".sst")) {
            return Err(format!("the manifest lists {name:?} as an SST file"));
        }
        if !m.sizes.is_empty() {
            if let Some(name) = seen.iter().find(|n| !m.sizes.contains_key(**n)) {
                return Err(format!("the manifest has no size for {name:?}"));
            }
            if let Some(name) = m.sizes.keys().find(|n| !seen.contains(n.as_str())) {
                return Err(format!("the manifest has a size for {name:?}, which it does not list"));
            }
            let total = m.sizes.values().try_fold(0u64, |sum, &n| sum.checked_add(n));
            if total != Some(m.bytes) {
                return Err(format!("the manifest's sizes do not add up to its {} bytes", m.bytes));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> CheckpointManifest {
        CheckpointManifest {
            id: 7,
            partition: 3,
            created_ms: 1,
            sst: vec!["000012.sst".into()],
            files: vec!["CURRENT".into(), "MANIFEST-000005".into()],
            bytes: 130,
            fingerprint: "f".into(),
            sizes: [("000012.sst", 100), ("CURRENT", 16), ("MANIFEST-000005", 14)]
                .map(|(n, s)| (n.to_string(), s))
                .into(),
        }
    }

    fn parse(m: &CheckpointManifest) -> Result<CheckpointManifest, String> {
        CheckpointManifest::parse(&serde_json::to_vec(m).unwrap(), 3, Some(7))
    }

    #[test]
    fn a_written_manifest_reads_back() {
        assert_eq!(parse(&manifest()), Ok(manifest()));
        let old = CheckpointManifest { sizes: BTreeMap::new(), ..manifest() };
        assert_eq!(parse(&old), Ok(old.clone()), "earlier versions wrote no sizes");
        let savepoint = CheckpointManifest { id: 0, ..manifest() };
        assert!(CheckpointManifest::parse(&serde_json::to_vec(&savepoint).unwrap(), 3, None).is_ok());
    }

    #[test]
    fn names_that_leave_the_state_folder_are_refused() {
        for bad in ["../../etc/cron.d/x", "/etc/passwd", "a/b", "..", ".", "", "a\\b", "x\0y"] {
            let mut m = manifest();
            m.files.push(bad.to_string());
            m.sizes.insert(bad.to_string(), 0);
            let e = parse(&m).unwrap_err();
            assert!(e.contains("not a plain file name"), "{bad:?}: {e}");
        }
        let mut m = manifest();
        m.sst = vec!["../000012.sst".into()];
        assert!(parse(&m).unwrap_err().contains("not a plain file name"));
    }

    #[test]
    fn inconsistent_manifests_are_refused_saying_why() {
        let e = |f: fn(&mut CheckpointManifest)| {
            let mut m = manifest();
            f(&mut m);
            parse(&m).unwrap_err()
        };
        assert!(e(|m| m.partition = 4).contains("of partition 4, not 3"));
        assert!(e(|m| m.id = 8).contains("of checkpoint 8, not 7"));
        assert!(e(|m| m.files.push("CURRENT".into())).contains("\"CURRENT\" twice"));
        assert!(e(|m| m.sst.push("CURRENT".into())).contains("twice"));
        assert!(e(|m| m.sst[0] = "OPTIONS-1".into()).contains("as an SST file"));
        assert!(e(|m| m.bytes = 131).contains("do not add up to its 131 bytes"));
        assert!(e(|m| {
            m.sizes.remove("CURRENT");
        })
        .contains("no size for \"CURRENT\""));
        assert!(e(|m| {
            m.sizes.insert("OPTIONS-9".into(), 0);
        })
        .contains("\"OPTIONS-9\", which it does not list"));
        assert!(e(|m| {
            m.sizes.insert("CURRENT".into(), u64::MAX);
        })
        .contains("do not add up"));
        assert!(CheckpointManifest::parse(b"{\"id\": 7", 3, Some(7)).unwrap_err().starts_with("unreadable manifest"));
    }
}
