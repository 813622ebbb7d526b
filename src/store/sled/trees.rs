//! The trees and their crash-safe write order, applied by the one applier thread.

use super::due::DueIndex;
use super::index::{IndexKeys, IndexMeta};
use super::{backend, decode, Op};
use crate::run::{Phase, QuietState, Run, RunId};
use crate::store::{Created, DedupeKey, StoreError};
use crate::time::Timestamp;
use serde::Deserialize;
use std::sync::Arc;

/// A dedupe record's value: the run id, then the expiry (ms, big-endian).
pub(super) fn dedupe_value(id: RunId, expires_at: Timestamp) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..16].copy_from_slice(&id.to_bytes());
    v[16..].copy_from_slice(&expires_at.0.to_be_bytes());
    v
}

/// Inverse of [`dedupe_value`].
pub(super) fn parse_dedupe_value(v: &[u8]) -> Option<(RunId, Timestamp)> {
    let id: [u8; 16] = v.get(..16)?.try_into().ok()?;
    let expires = u64::from_be_bytes(v.get(16..24)?.try_into().ok()?);
    Some((RunId::from_bytes(id), Timestamp(expires)))
}

pub(super) fn dedupe_key(d: &DedupeKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(d.route.len() + 1 + d.delivery_id.len());
    k.extend_from_slice(d.route.as_bytes());
    k.push(0);
    k.extend_from_slice(d.delivery_id.as_bytes());
    k
}

/// The fields of a stored run the store itself needs at open (serde skips
/// the rest): whether it is unfinished, and its quiet fields (due time).
#[derive(Deserialize)]
pub(super) struct RunMeta {
    pub(super) id: RunId,
    pub(super) phase: Phase,
    pub(super) due_at: Option<Timestamp>,
    #[serde(default)]
    pub(super) polls: u32,
    pub(super) updated_at: Timestamp,
    #[serde(default)]
    pub(super) poll_at: Option<Timestamp>,
}

impl RunMeta {
    fn quiet(&self) -> QuietState {
        QuietState {
            polls: self.polls,
            updated_at: self.updated_at,
            due_at: self.due_at,
            poll_at: self.poll_at,
        }
    }
}

/// The fields retention needs: when a finished run last changed, and the
/// dedupe key it may own.
#[derive(Deserialize)]
pub(super) struct RetentionMeta {
    pub(super) id: RunId,
    pub(super) route: String,
    pub(super) phase: Phase,
    pub(super) updated_at: Timestamp,
    #[serde(default)]
    pub(super) delivery_id: Option<String>,
}

/// The trees, written only by the applier thread.
///
/// No sled transactions or batches: in sled 0.34 using either once makes
/// every later read take a global lock, which stalls readers (the scheduler,
/// the admin API) behind each write. The single applier already serializes
/// writes; crash consistency comes from the write order instead:
/// - create: dedupe key, then index keys, then run. A dedupe key whose run
///   is missing is ignored; index keys whose run is missing are skipped by
///   readers (and queued for removal).
/// - save: new index keys, then run, then removal of the old index keys. A
///   durable run therefore always has its index keys; an index key that
///   disagrees with its run is stale: readers re-check every run against
///   the whole query, so it costs one lookup and is queued for removal
///   ([`Op::ForgetIndex`]).
/// - retention: dedupe key, run, then its index keys.
///
/// The due index and the quiet overlay (`due.rs`) are updated in memory
/// once a run's record is applied; they need no durable copy, since the
/// open rebuilds them from the records.
#[derive(Clone)]
pub(super) struct Trees {
    pub(super) runs: sled::Tree,
    pub(super) dedupe: sled::Tree,
    /// Operator settings ([`crate::store::Store::put_meta`]): key -> bytes.
    pub(super) meta: sled::Tree,
    /// Due index and quiet overlay, memory only (see `due.rs`).
    pub(super) due: Arc<DueIndex>,
    /// Secondary index of runs (see `index.rs`): key -> empty.
    pub(super) idx_runs: sled::Tree,
    /// Failing and dead deliveries (see `index.rs`): key -> empty.
    pub(super) idx_deliveries: sled::Tree,
    /// Whether the index is maintained (off only in the bench's baseline).
    pub(super) indexed: bool,
}

/// Which index tree a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexTree {
    Runs,
    Deliveries,
}

/// An index key a reader found disagreeing with its run (or without one).
#[derive(Debug, Clone)]
pub(super) struct StaleKey {
    pub(super) id: RunId,
    pub(super) tree: IndexTree,
    pub(super) key: Vec<u8>,
}

/// What [`Trees::repair`] does to the index at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexRepair {
    /// Closed cleanly with the index current: nothing.
    None,
    /// After a crash: add any key a run lacks.
    Verify,
    /// No index yet (a store written before it existed): build it.
    Build,
}

impl Trees {
    pub(super) fn apply(&self, op: &Op) -> sled::Result<Created> {
        match op {
            Op::Create {
                id,
                record,
                due: at,
                dedupe: dk,
                index,
            } => {
                if let Some(d) = dk {
                    let key = dedupe_key(d);
                    if let Some(existing) = self.live_duplicate(&key)? {
                        return Ok(Created::Duplicate(existing));
                    }
                    self.dedupe.insert(key, &dedupe_value(*id, d.expires_at))?;
                }
                self.insert_keys(index)?;
                self.runs.insert(id.to_bytes(), record.as_slice())?;
                self.due.saved(*id, *at);
                Ok(Created::New)
            }
            Op::Save {
                id,
                record,
                due: at,
                index,
            } => {
                let key = id.to_bytes();
                let old_keys = match self.indexed {
                    true => self
                        .runs
                        .get(key)?
                        .and_then(|old| IndexMeta::decode(&old))
                        .map(|m| m.keys())
                        .unwrap_or_default(),
                    false => IndexKeys::default(),
                };
                self.insert_keys(&index.minus(&old_keys))?;
                self.runs.insert(key, record.as_slice())?;
                self.remove_keys(&old_keys.minus(index))?;
                self.due.saved(*id, *at);
                Ok(Created::New)
            }
            Op::ForgetDedupe(expired) => {
                for (key, seen) in expired {
                    // Only if unchanged since the sweeper saw it expired: a
                    // create may have reused the key meanwhile.
                    if self.dedupe.get(key)?.as_ref() == Some(seen) {
                        self.dedupe.remove(key)?;
                    }
                }
                Ok(Created::New)
            }
            Op::ForgetRuns(seen) => {
                for (key, record) in seen {
                    // Only if unchanged since the sweeper saw it finished.
                    if self.runs.get(key)?.as_ref() != Some(record) {
                        continue;
                    }
                    let Ok(m) = serde_json::from_slice::<RetentionMeta>(record) else {
                        continue;
                    };
                    if let Some(d) = &m.delivery_id {
                        let dk = dedupe_key(&DedupeKey {
                            route: m.route.clone(),
                            delivery_id: d.clone(),
                            expires_at: Timestamp(0),
                        });
                        // The key may belong to a newer run by now.
                        let owner = self
                            .dedupe
                            .get(&dk)?
                            .and_then(|v| parse_dedupe_value(&v))
                            .map(|(id, _)| id);
                        if owner == Some(m.id) {
                            self.dedupe.remove(dk)?;
                        }
                    }
                    self.runs.remove(key)?;
                    self.due.removed(m.id);
                    if let Some(m) = IndexMeta::decode(record).filter(|_| self.indexed) {
                        self.remove_keys(&m.keys())?;
                    }
                }
                Ok(Created::New)
            }
            Op::ForgetIndex(stale) => {
                for s in stale {
                    // Only if still stale: the reader may have seen a write
                    // in progress (keys go in before their run).
                    let current = self
                        .runs
                        .get(s.id.to_bytes())?
                        .and_then(|r| IndexMeta::decode(&r))
                        .map(|m| m.keys());
                    let valid = current.is_some_and(|k| match s.tree {
                        IndexTree::Runs => k.runs.contains(&s.key),
                        IndexTree::Deliveries => k.deliveries.contains(&s.key),
                    });
                    if !valid {
                        self.tree(s.tree).remove(&s.key)?;
                    }
                }
                Ok(Created::New)
            }
            Op::PutMeta { key, value } => {
                match value {
                    Some(v) => self.meta.insert(key.as_bytes(), v.as_slice())?,
                    None => self.meta.remove(key.as_bytes())?,
                };
                Ok(Created::New)
            }
        }
    }

    pub(super) fn tree(&self, t: IndexTree) -> &sled::Tree {
        match t {
            IndexTree::Runs => &self.idx_runs,
            IndexTree::Deliveries => &self.idx_deliveries,
        }
    }

    fn insert_keys(&self, keys: &IndexKeys) -> sled::Result<()> {
        for k in &keys.runs {
            self.idx_runs.insert(k.as_slice(), &[])?;
        }
        for k in &keys.deliveries {
            self.idx_deliveries.insert(k.as_slice(), &[])?;
        }
        Ok(())
    }

    fn remove_keys(&self, keys: &IndexKeys) -> sled::Result<()> {
        for k in &keys.runs {
            self.idx_runs.remove(k.as_slice())?;
        }
        for k in &keys.deliveries {
            self.idx_deliveries.remove(k.as_slice())?;
        }
        Ok(())
    }

    /// Adds the keys of `keys` missing from the index; how many were.
    fn add_missing(&self, keys: &IndexKeys) -> sled::Result<usize> {
        let mut added = 0;
        for (tree, ks) in [
            (&self.idx_runs, &keys.runs),
            (&self.idx_deliveries, &keys.deliveries),
        ] {
            for k in ks {
                if !tree.contains_key(k.as_slice())? {
                    tree.insert(k.as_slice(), &[])?;
                    added += 1;
                }
            }
        }
        Ok(added)
    }

    /// The run a live, unexpired dedupe key points at, if that run exists.
    pub(super) fn live_duplicate(&self, key: &[u8]) -> sled::Result<Option<RunId>> {
        let Some(v) = self.dedupe.get(key)? else {
            return Ok(None);
        };
        match parse_dedupe_value(&v) {
            Some((id, expires)) if expires > Timestamp::now() => {
                Ok(self.runs.contains_key(id.to_bytes())?.then_some(id))
            }
            _ => Ok(None),
        }
    }

    /// Builds the due index from the runs' own records (see `due.rs`),
    /// counts unfinished runs, and builds or verifies the index as `index`
    /// says (in the same pass, so a store without an index pays one extra
    /// walk of its runs, once). Stale index keys are left to readers, which
    /// skip and queue them.
    pub(super) fn repair(&self, index: IndexRepair) -> Result<(usize, DueIndex), StoreError> {
        let now = Timestamp::now();
        let mut due = Vec::new();
        let mut overdue = Vec::new();
        let mut keys_added = 0;
        for item in self.runs.iter() {
            let (k, v) = item.map_err(backend)?;
            let Ok(meta) = serde_json::from_slice::<RunMeta>(&v) else {
                tracing::error!(key = ?k, "undecodable run record left alone");
                continue;
            };
            match (index, IndexMeta::decode(&v)) {
                (IndexRepair::None, _) | (_, None) => {}
                (IndexRepair::Verify, Some(m)) => {
                    keys_added += self.add_missing(&m.keys()).map_err(backend)?;
                }
                (IndexRepair::Build, Some(m)) => {
                    self.insert_keys(&m.keys()).map_err(backend)?;
                }
            }
            match (meta.phase, meta.due_at) {
                (Phase::Done, _) => {}
                // Accepted, starting and terminal runs resume at once.
                (Phase::Tracking, Some(at)) if at <= now => overdue.push((meta.id, meta.quiet())),
                (_, at) => due.push((at.unwrap_or(now), meta.id)),
            }
        }
        if keys_added > 0 {
            tracing::warn!(keys_added, "restored index keys of runs cut off by a crash");
        }
        let unfinished = due.len() + overdue.len();
        Ok((unfinished, DueIndex::build(due, overdue, now)))
    }

    /// A stored record as reads see it: with its overlay, if the run's last
    /// transition was quiet.
    pub(super) fn read(&self, record: &[u8]) -> Result<Run, StoreError> {
        let run = decode(record)?;
        Ok(match self.due.overlay(run.id()) {
            Some(q) => run.with_quiet(q),
            None => run,
        })
    }
}
