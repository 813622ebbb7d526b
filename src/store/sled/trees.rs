//! The trees and their crash-safe write order, applied by the one applier thread.

use super::{backend, Op};
use crate::run::{Phase, RunId};
use crate::store::{Created, DedupeKey, StoreError};
use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

pub(super) fn due_key(at: Timestamp, id: RunId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&at.0.to_be_bytes());
    k[8..].copy_from_slice(&id.to_bytes());
    k
}

pub(super) fn parse_due_key(k: &[u8]) -> Option<(Timestamp, RunId)> {
    let ms = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let id: [u8; 16] = k.get(8..24)?.try_into().ok()?;
    Some((Timestamp(ms), RunId::from_bytes(id)))
}

/// The due index: the sled tree is the durable copy; an in-memory ordered
/// mirror answers the scheduler's frequent scans without walking sled pages
/// (about 40 bytes per unfinished run). Only the applier thread writes it.
#[derive(Clone)]
pub(super) struct DueIndex {
    pub(super) tree: sled::Tree,
    pub(super) mirror: Arc<Mutex<BTreeSet<(Timestamp, RunId)>>>,
}

impl DueIndex {
    pub(super) fn load(tree: sled::Tree) -> Result<Self, StoreError> {
        let mut mirror = BTreeSet::new();
        for item in tree.iter().keys() {
            if let Some(entry) = parse_due_key(&item.map_err(backend)?) {
                mirror.insert(entry);
            }
        }
        Ok(DueIndex {
            tree,
            mirror: Arc::new(Mutex::new(mirror)),
        })
    }

    pub(super) fn entries(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Timestamp, RunId)>> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn insert(&self, at: Timestamp, id: RunId) -> sled::Result<()> {
        self.tree.insert(due_key(at, id), &[])?;
        self.entries().insert((at, id));
        Ok(())
    }

    pub(super) fn remove(&self, at: Timestamp, id: RunId) -> sled::Result<()> {
        self.tree.remove(due_key(at, id))?;
        self.entries().remove(&(at, id));
        Ok(())
    }

    pub(super) fn contains(&self, at: Timestamp, id: RunId) -> bool {
        self.entries().contains(&(at, id))
    }
}

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

/// The fields of a stored run the store itself needs (serde skips the rest).
#[derive(Deserialize)]
pub(super) struct RunMeta {
    pub(super) id: RunId,
    pub(super) phase: Phase,
    pub(super) due_at: Option<Timestamp>,
}

/// The fields retention needs: when a finished run last changed, and the
/// dedupe key it may own.
#[derive(Deserialize)]
pub(super) struct RetentionMeta {
    pub(super) id: RunId,
    pub(super) route: String,
    pub(super) phase: Phase,
    pub(super) updated_at: Timestamp,
    pub(super) due_at: Option<Timestamp>,
    #[serde(default)]
    pub(super) delivery_id: Option<String>,
}

/// The three trees, written only by the applier thread.
///
/// No sled transactions or batches: in sled 0.34 using either once makes
/// every later read take a global lock, which stalls readers (the scheduler,
/// the admin API) behind each write. The single applier already serializes
/// writes; crash consistency comes from the write order instead:
/// - create: dedupe key, then run, then due entry. A dedupe key whose run is
///   missing is ignored; a run without its due entry is repaired at open.
/// - save: new due entry, then run, then removal of the old due entry. A due
///   entry that disagrees with its run's `due_at` is stale and is dropped
///   when it comes due ([`Store::forget_due`]).
#[derive(Clone)]
pub(super) struct Trees {
    pub(super) runs: sled::Tree,
    pub(super) dedupe: sled::Tree,
    /// Operator settings ([`Store::put_meta`]): key -> bytes.
    pub(super) meta: sled::Tree,
    pub(super) due: DueIndex,
}

impl Trees {
    pub(super) fn apply(&self, op: &Op) -> sled::Result<Created> {
        match op {
            Op::Create {
                id,
                record,
                due: at,
                dedupe: dk,
            } => {
                if let Some(d) = dk {
                    let key = dedupe_key(d);
                    if let Some(existing) = self.live_duplicate(&key)? {
                        return Ok(Created::Duplicate(existing));
                    }
                    self.dedupe.insert(key, &dedupe_value(*id, d.expires_at))?;
                }
                self.runs.insert(id.to_bytes(), record.as_slice())?;
                if let Some(at) = at {
                    self.due.insert(*at, *id)?;
                }
                Ok(Created::New)
            }
            Op::Save {
                id,
                record,
                due: at,
            } => {
                let key = id.to_bytes();
                let old_at = self
                    .runs
                    .get(key)?
                    .and_then(|old| serde_json::from_slice::<RunMeta>(&old).ok())
                    .and_then(|m| m.due_at);
                if let Some(at) = at {
                    self.due.insert(*at, *id)?;
                }
                self.runs.insert(key, record.as_slice())?;
                if let Some(old_at) = old_at.filter(|o| Some(*o) != *at) {
                    self.due.remove(old_at, *id)?;
                }
                Ok(Created::New)
            }
            Op::ForgetDue { at, id } => {
                self.due.remove(*at, *id)?;
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
                    if let Some(at) = m.due_at {
                        self.due.remove(at, m.id)?;
                    }
                    self.runs.remove(key)?;
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

    /// Re-creates the due entry of every unfinished run that lacks one (a
    /// crash between the writes of one operation) and counts unfinished runs.
    pub(super) fn repair(&self) -> Result<usize, StoreError> {
        let mut unfinished = 0;
        let mut repaired = 0;
        for item in self.runs.iter() {
            let (k, v) = item.map_err(backend)?;
            let Ok(meta) = serde_json::from_slice::<RunMeta>(&v) else {
                tracing::error!(key = ?k, "undecodable run record left alone");
                continue;
            };
            if meta.phase == Phase::Done {
                continue;
            }
            unfinished += 1;
            let at = meta.due_at.unwrap_or_else(Timestamp::now);
            if !self.due.contains(at, meta.id) {
                self.due.insert(at, meta.id).map_err(backend)?;
                repaired += 1;
            }
        }
        if repaired > 0 {
            tracing::warn!(repaired, "restored due entries of runs cut off by a crash");
        }
        Ok(unfinished)
    }
}
