//! The trees and their crash-safe write order, applied by the one applier thread.

use super::due::DueIndex;
use super::index::{IndexKeys, IndexMeta};
use super::{backend, corrupt, Op};
use crate::run::{Fixed, Phase, QuietState, Run, RunId, State};
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

/// The fields of a run's state the store itself needs at open (serde skips
/// the rest): whether it is unfinished, and its quiet fields (due time).
#[derive(Deserialize)]
pub(super) struct RunMeta {
    pub(super) phase: Phase,
    pub(super) due_at: Option<Timestamp>,
    #[serde(default)]
    pub(super) polls: u32,
    pub(super) updated_at: Timestamp,
    #[serde(default)]
    pub(super) poll_at: Option<Timestamp>,
}

impl RunMeta {
    pub(super) fn quiet(&self) -> QuietState {
        QuietState {
            polls: self.polls,
            updated_at: self.updated_at,
            due_at: self.due_at,
            poll_at: self.poll_at,
        }
    }
}

/// The state fields retention needs: whether a run is finished and when
/// it last changed.
#[derive(Deserialize)]
pub(super) struct RetentionMeta {
    pub(super) phase: Phase,
    pub(super) updated_at: Timestamp,
}

/// The fixed fields retention needs: the dedupe key the run may own.
#[derive(Deserialize)]
struct DedupeMeta {
    id: RunId,
    route: String,
    #[serde(default)]
    delivery_id: Option<String>,
}

/// The trees, written only by the applier thread.
///
/// A run is two records under its id: its fixed part in `runs` (written
/// once, at create) and its state in `state` (rewritten by each durable
/// transition). A run exists when its state does; every state has its
/// fixed part, by the write order below.
///
/// No sled transactions or batches: in sled 0.34 using either once makes
/// every later read take a global lock, which stalls readers (the scheduler,
/// the admin API) behind each write. The single applier already serializes
/// writes, and sled recovers a prefix of them after a crash, so crash
/// consistency comes from the write order:
/// - create: dedupe key, index keys, fixed part, then state. A dedupe key
///   whose run has no state is ignored; index keys whose run has no state
///   are skipped by readers (and queued for removal); a fixed part without
///   its state is invisible and removed by the next repair.
/// - save: new index keys, then state, then removal of the old index keys
///   (the old ones come from the old state, read first: the fixed fields
///   they also hold cannot change). A durable run therefore always has its
///   index keys; an index key that disagrees with its run is stale: readers
///   re-check every run against the whole query, so it costs one lookup
///   and is queued for removal ([`Op::ForgetIndex`]). A save of a run with
///   no state (removed by retention, or never durable) writes nothing.
/// - retention: dedupe key, state, fixed part, then its index keys.
///
/// The due index and the quiet overlay (`due.rs`) are updated in memory
/// once a run's state is applied; they need no durable copy, since the
/// open rebuilds them from the states.
#[derive(Clone)]
pub(super) struct Trees {
    /// Run id -> fixed part ([`crate::run::FixedRef`], JSON).
    pub(super) runs: sled::Tree,
    /// Run id -> state ([`crate::run::StateRef`], JSON).
    pub(super) state: sled::Tree,
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
                fixed,
                state,
                due: _,
                dedupe: dk,
                index,
            } => {
                if let Some(d) = dk {
                    let key = dedupe_key(d);
                    let value = dedupe_value(*id, d.expires_at);
                    // One sled call for a new delivery id (the common
                    // case): the key is taken only if absent.
                    let absent: Option<&[u8]> = None;
                    let swap = self
                        .dedupe
                        .compare_and_swap(&key, absent, Some(&value[..]))?;
                    if let Err(taken) = swap {
                        let owner = match taken.current {
                            Some(v) => self.live_owner(&v)?,
                            None => None,
                        };
                        if let Some(existing) = owner {
                            return Ok(Created::Duplicate(existing));
                        }
                        // Expired, or its run was never durable: reuse it.
                        self.dedupe.insert(key, &value)?;
                    }
                }
                self.insert_keys(index)?;
                self.runs.insert(id.to_bytes(), fixed.as_slice())?;
                self.state.insert(id.to_bytes(), state.as_slice())?;
                // Its due entry comes once the create is durable (the
                // flusher adds it, see `writer.rs`): the scheduler must not
                // start a run a crash could still take back.
                Ok(Created::New)
            }
            Op::Save {
                id,
                state,
                due: at,
                meta,
                index,
            } => {
                let key = id.to_bytes();
                let old_keys = match meta {
                    Some(meta) => match self.state.get(key)? {
                        Some(old) => meta.keys_in_state(&old).unwrap_or_default(),
                        None => return Ok(self.gone(*id)),
                    },
                    None if !self.state.contains_key(key)? => return Ok(self.gone(*id)),
                    None => IndexKeys::default(),
                };
                self.insert_keys(&index.minus(&old_keys))?;
                self.state.insert(key, state.as_slice())?;
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
                for (key, state) in seen {
                    // Only if unchanged since the sweeper saw it finished.
                    if self.state.get(key)?.as_ref() != Some(state) {
                        continue;
                    }
                    let Some(fixed) = self.runs.get(key)? else {
                        continue;
                    };
                    let Ok(m) = serde_json::from_slice::<DedupeMeta>(&fixed) else {
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
                    self.state.remove(key)?;
                    self.runs.remove(key)?;
                    self.due.removed(m.id);
                    if let Some(m) = IndexMeta::decode(&fixed, state).filter(|_| self.indexed) {
                        self.remove_keys(&m.keys())?;
                    }
                }
                Ok(Created::New)
            }
            Op::ForgetIndex(stale) => {
                for s in stale {
                    // Only if still stale: the reader may have seen a write
                    // in progress (keys go in before their run).
                    let valid = self.current_keys(s.id)?.is_some_and(|k| match s.tree {
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
            Op::VerifyIndex { ids, orphans } => {
                let mut added = 0;
                for id in ids {
                    if let Some(keys) = self.current_keys(*id)? {
                        added += self.add_missing(&keys)?;
                    }
                }
                let mut removed = 0;
                for k in orphans {
                    // A create writes both parts in one op of this thread,
                    // so a fixed part still without its state is a leftover.
                    if !self.state.contains_key(k)? {
                        self.runs.remove(k)?;
                        removed += 1;
                    }
                }
                if added > 0 || removed > 0 {
                    tracing::warn!(
                        keys_added = added,
                        fixed_parts_removed = removed,
                        "repaired what a crash cut off (index keys, runs without state)"
                    );
                }
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

    pub(super) fn insert_keys(&self, keys: &IndexKeys) -> sled::Result<()> {
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
    pub(super) fn add_missing(&self, keys: &IndexKeys) -> sled::Result<usize> {
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

    /// The index keys run `id` has now, from its stored records (`None` if
    /// it has no state or they cannot be read).
    fn current_keys(&self, id: RunId) -> sled::Result<Option<IndexKeys>> {
        let key = id.to_bytes();
        Ok(match (self.runs.get(key)?, self.state.get(key)?) {
            (Some(fixed), Some(state)) => IndexMeta::decode(&fixed, &state).map(|m| m.keys()),
            _ => None,
        })
    }

    /// The run a live, unexpired dedupe value points at, if that run exists.
    fn live_owner(&self, value: &[u8]) -> sled::Result<Option<RunId>> {
        match parse_dedupe_value(value) {
            Some((id, expires)) if expires > Timestamp::now() => {
                Ok(self.state.contains_key(id.to_bytes())?.then_some(id))
            }
            _ => Ok(None),
        }
    }

    /// A save of a run that has no state: removed by retention meanwhile
    /// (an operator's save of a finished run), or never durable (lost with
    /// an in-process reopen). Nothing is written: writing the state alone
    /// would leave a run without its fixed part.
    fn gone(&self, id: RunId) -> Created {
        tracing::debug!(run_id = %id, "save of a run that is gone: nothing written");
        self.due.removed(id);
        Created::New
    }

    /// The run `id` as reads see it, if it exists.
    pub(super) fn load(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        let key = id.to_bytes();
        let Some(state) = self.state.get(key).map_err(backend)? else {
            return Ok(None);
        };
        match self.runs.get(key).map_err(backend)? {
            Some(fixed) => self.join(&fixed, &state).map(Some),
            None => Ok(None),
        }
    }

    /// The run whose fixed part is `fixed`, if it exists (for walks of the
    /// `runs` tree).
    pub(super) fn with_state(&self, key: &[u8], fixed: &[u8]) -> Result<Option<Run>, StoreError> {
        match self.state.get(key).map_err(backend)? {
            Some(state) => self.join(fixed, &state).map(Some),
            None => Ok(None),
        }
    }

    /// A stored run as reads see it: its two parts joined, with its
    /// overlay if the run's last transition was quiet.
    fn join(&self, fixed: &[u8], state: &[u8]) -> Result<Run, StoreError> {
        let fixed: Fixed = serde_json::from_slice(fixed).map_err(corrupt)?;
        let state: State = serde_json::from_slice(state).map_err(corrupt)?;
        let run = Run::join(fixed, state);
        Ok(match self.due.overlay(run.id()) {
            Some(q) => run.with_quiet(q),
            None => run,
        })
    }
}
