//! `[storage]`: where the store lives and how much memory it may cache.

use super::{bounded, bounded_size, positive, Problems};
use bytesize::ByteSize;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Largest `storage.cache_capacity` (16 GiB): sled's cache is memory.
pub const MAX_CACHE_CAPACITY: u64 = 16 << 30;

/// Largest `storage.retention` (10 years): keeps `now - retention` far
/// from the start of time.
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

/// `[storage]`
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub path: PathBuf,
    pub cache_capacity: u64,
    /// How long a finished run (phase `done`) is kept after its last
    /// change; then it, its due entry and its dedupe key are removed, so
    /// the store does not grow with the total number of runs.
    pub retention: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
    path: PathBuf,
    cache_capacity: ByteSize,
    #[serde(with = "humantime_serde")]
    retention: Duration,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            path: PathBuf::from("./data/runbridge"),
            cache_capacity: ByteSize::mib(64),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl RawStorage {
    pub(super) fn check(self, p: &mut Problems) -> StorageSettings {
        bounded_size(
            "storage.cache_capacity",
            self.cache_capacity.as_u64(),
            MAX_CACHE_CAPACITY,
            p,
        );
        positive("storage.retention", self.retention, p);
        bounded("storage.retention", self.retention, MAX_RETENTION, p);
        StorageSettings {
            path: self.path,
            cache_capacity: self.cache_capacity.as_u64(),
            retention: self.retention,
        }
    }
}
