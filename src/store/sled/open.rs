//! What an open does before serving: migrate a store written by an older
//! version to split records, then one walk of the run states that builds
//! the due index, counts unfinished runs, and builds or verifies the index.

use super::backend;
use super::due::DueIndex;
use super::index::IndexMeta;
use super::trees::{IndexRepair, RunMeta, Trees};
use crate::run::{Phase, Run, RunId};
use crate::store::StoreError;
use crate::time::Timestamp;

/// Default-tree key holding the record format once every run is split into
/// fixed part and state (absent in stores written before: whole records).
pub(super) const FORMAT_MARKER: &str = "runbridge.format";
/// The current record format.
pub(super) const FORMAT: &[u8] = b"2";

/// Splits every whole record (the format before [`FORMAT`]) into its state
/// and its fixed part, then sets the marker. Each run gets its state first,
/// then its fixed part overwrites the whole record, so an interrupted
/// migration is completed by the next open: a record that no longer
/// decodes as a whole run is already split. Returns how many were split.
pub(super) fn migrate(db: &sled::Db, trees: &Trees) -> Result<usize, StoreError> {
    if db.get(FORMAT_MARKER).map_err(backend)?.as_deref() == Some(FORMAT) {
        return Ok(0);
    }
    let mut split = 0;
    for item in trees.runs.iter() {
        let (k, v) = item.map_err(backend)?;
        let Ok(run) = serde_json::from_slice::<Run>(&v) else {
            continue;
        };
        let state = super::encode_state(&run)?;
        let fixed = super::encode_fixed(&run)?;
        trees.state.insert(&k, state).map_err(backend)?;
        trees.runs.insert(&k, fixed).map_err(backend)?;
        split += 1;
    }
    db.insert(FORMAT_MARKER, FORMAT).map_err(backend)?;
    db.flush().map_err(backend)?;
    if split > 0 {
        tracing::info!(
            runs = split,
            "split whole run records into fixed part and state (once)"
        );
    }
    Ok(split)
}

/// The fixed parts (`runs`), walked in step with the states (`state`):
/// both trees share the key order, so one pass over each pairs every state
/// with its fixed part and finds the fixed parts without a state (a create
/// cut off by a crash). Used by the repair at open and by the background
/// verification after a crash (`verify.rs`).
pub(super) struct FixedParts<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> {
    parts: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> FixedParts<I> {
    pub(super) fn new(parts: I) -> Self {
        FixedParts {
            parts: parts.peekable(),
        }
    }

    /// The fixed part stored under `key` (a state's key); the fixed parts
    /// passed before it have no state and go to `orphans`.
    pub(super) fn of(
        &mut self,
        key: &[u8],
        orphans: &mut Vec<sled::IVec>,
    ) -> sled::Result<Option<sled::IVec>> {
        let mut fixed = None;
        let not_after = |r: &sled::Result<(sled::IVec, sled::IVec)>| {
            r.as_ref().map_or(true, |(fk, _)| fk.as_ref() <= key)
        };
        while let Some(next) = self.parts.next_if(not_after) {
            let (fk, fv) = next?;
            if fk.as_ref() == key {
                fixed = Some(fv);
            } else {
                orphans.push(fk);
            }
        }
        Ok(fixed)
    }

    /// After the last state: every fixed part left has no state.
    pub(super) fn rest(self, orphans: &mut Vec<sled::IVec>) -> sled::Result<()> {
        for item in self.parts {
            orphans.push(item?.0);
        }
        Ok(())
    }
}

impl Trees {
    /// Builds the due index from the run states (see `due.rs`), counts
    /// unfinished runs, and builds or verifies the index as `index` says.
    /// Without index work only the `state` tree (small records) is walked;
    /// with it, `runs` is walked in lockstep (same key order), and a fixed
    /// part without its state (a create cut off by a crash) is removed.
    /// Stale index keys are left to readers, which skip and queue them.
    pub(super) fn repair(&self, index: IndexRepair) -> Result<(usize, DueIndex), StoreError> {
        let now = Timestamp::now();
        let mut due = Vec::new();
        let mut overdue = Vec::new();
        let mut keys_added = 0;
        let mut orphans = Vec::new();
        let mut fixed_parts =
            (index != IndexRepair::None).then(|| FixedParts::new(self.runs.iter()));
        for item in self.state.iter() {
            let (k, v) = item.map_err(backend)?;
            let Some(id) = <[u8; 16]>::try_from(k.as_ref()).ok().map(RunId::from_bytes) else {
                tracing::error!(key = ?k, "run state under a malformed key left alone");
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<RunMeta>(&v) else {
                tracing::error!(run_id = %id, "undecodable run state left alone");
                continue;
            };
            if let Some(parts) = fixed_parts.as_mut() {
                let fixed = parts.of(&k, &mut orphans).map_err(backend)?;
                match (index, fixed.and_then(|f| IndexMeta::decode(&f, &v))) {
                    (IndexRepair::Verify, Some(m)) => {
                        keys_added += self.add_missing(&m.keys()).map_err(backend)?;
                    }
                    (IndexRepair::Build, Some(m)) => {
                        self.insert_keys(&m.keys()).map_err(backend)?;
                    }
                    _ => {}
                }
            }
            match (meta.phase, meta.due_at) {
                (Phase::Done, _) => {}
                // Accepted, starting and terminal runs resume at once.
                (Phase::Tracking, Some(at)) if at <= now => overdue.push((id, meta.quiet())),
                (_, at) => due.push((at.unwrap_or(now), id)),
            }
        }
        if let Some(parts) = fixed_parts {
            parts.rest(&mut orphans).map_err(backend)?;
        }
        for k in &orphans {
            self.runs.remove(k).map_err(backend)?;
        }
        if !orphans.is_empty() {
            tracing::warn!(
                removed = orphans.len(),
                "removed runs a crash cut off before their state"
            );
        }
        if keys_added > 0 {
            tracing::warn!(keys_added, "restored index keys of runs cut off by a crash");
        }
        let unfinished = due.len() + overdue.len();
        Ok((unfinished, DueIndex::build(due, overdue, now)))
    }
}
