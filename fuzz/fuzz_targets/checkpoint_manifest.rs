//! A checkpoint's `_manifest.json` as storage may hand it back (worker/src/checkpoint/manifest.rs,
//! compiled here as it is in the worker): arbitrary bytes are a manifest or an error, never a
//! panic; an accepted manifest names only plain files, each once, so restoring it writes nowhere
//! but the state folder; and what it writes back reads back the same.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

#[path = "../../worker/src/checkpoint/manifest.rs"]
mod manifest;

use manifest::CheckpointManifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = CheckpointManifest::parse(data, 3, Some(7)) else { return };
    assert_eq!((m.partition, m.id), (3, 7));
    let mut names: Vec<&String> = m.sst.iter().chain(&m.files).collect();
    for name in &names {
        let mut parts = Path::new(name.as_str()).components();
        assert!(matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none(), "{name:?}");
        assert_eq!(Path::new("/state").join(name.as_str()).parent(), Some(Path::new("/state")), "{name:?}");
    }
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "a name listed twice");
    let again = CheckpointManifest::parse(&serde_json::to_vec(&m).unwrap(), 3, Some(7));
    assert_eq!(again.as_ref(), Ok(&m));
});
