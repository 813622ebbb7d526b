//! `[storage]`: where the store lives and how much memory it may cache.

use super::{bounded_size, Problems};
use bytesize::ByteSize;
use serde::Deserialize;
use std::path::PathBuf;

/// Largest `storage.cache_capacity` (16 GiB): sled's cache is memory.
pub const MAX_CACHE_CAPACITY: u64 = 16 << 30;

/// `[storage]`
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub path: PathBuf,
    pub cache_capacity: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
    path: PathBuf,
    cache_capacity: ByteSize,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            path: PathBuf::from("./data/runbridge"),
            cache_capacity: ByteSize::mib(64),
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
        StorageSettings {
            path: self.path,
            cache_capacity: self.cache_capacity.as_u64(),
        }
    }
}
