//! `[storage]`: where the store lives and how much memory it may cache.

use bytesize::ByteSize;
use serde::Deserialize;
use std::path::PathBuf;

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
    pub(super) fn check(self) -> StorageSettings {
        StorageSettings {
            path: self.path,
            cache_capacity: self.cache_capacity.as_u64(),
        }
    }
}
