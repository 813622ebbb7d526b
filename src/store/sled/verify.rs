//! Index verification after a crash, in the background.
//!
//! A store opened without its clean-close marker may have lost index keys
//! (or kept a fixed part whose state never became durable). Checking every
//! run at open would read every fixed part, inputs included, before serving:
//! seconds at a million runs. So the open builds the due index from the
//! states alone and serves at once, and this thread walks both trees in
//! key order, checks each run's keys, and sends what it finds to the
//! applier ([`Op::VerifyIndex`]), which re-checks each one against the
//! records as they are then (the applier is the only writer). Until it has
//! walked everything, an admin listing may miss a run whose keys were lost
//! (the scheduler does not read the index), and a clean close leaves the
//! clean marker out, so the next open verifies again.

use super::fault::Shared;
use super::index::IndexMeta;
use super::open::FixedParts;
use super::{Job, Op};
use crate::run::RunId;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Run states examined per step; the database handle is taken per step,
/// so a reopen after a fault is never held up for long.
const STEP: usize = 4096;

/// Walks every run once and has the applier repair what is missing; marks
/// the index verified when done. Stops early on close, on a fault, or when
/// the database was reopened (a reopen verifies synchronously).
pub(super) fn verify_loop(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Job>) {
    let started = Instant::now();
    let Ok(first) = shared.inner() else { return };
    let opened: Weak<_> = Arc::downgrade(&first);
    drop(first);
    let mut cursor: Vec<u8> = Vec::new();
    let (mut runs, mut flagged) = (0usize, 0usize);
    loop {
        if shared.closed.load(Ordering::Acquire) || shared.fault.is_set() {
            return;
        }
        let Ok(inner) = shared.inner() else { return };
        if !Weak::ptr_eq(&Arc::downgrade(&inner), &opened) {
            // Reopened after a fault: that open verified synchronously.
            shared.index_verified.store(true, Ordering::Release);
            return;
        }
        let trees = &inner.trees;
        let mut ids = Vec::new();
        let mut orphans = Vec::new();
        let mut fixed_parts = FixedParts::new(trees.runs.range(cursor.as_slice()..));
        let mut last = None;
        let mut seen = 0;
        for item in trees.state.range(cursor.as_slice()..) {
            let Ok((k, v)) = item else { return };
            let Ok(fixed) = fixed_parts.of(&k, &mut orphans) else {
                return;
            };
            if let Some(m) = fixed.and_then(|f| IndexMeta::decode(&f, &v)) {
                let keys = m.keys();
                let missing = keys
                    .runs
                    .iter()
                    .map(|key| trees.idx_runs.contains_key(key))
                    .chain(
                        keys.deliveries
                            .iter()
                            .map(|key| trees.idx_deliveries.contains_key(key)),
                    )
                    .any(|present| !matches!(present, Ok(true)));
                if missing {
                    if let Ok(id) = <[u8; 16]>::try_from(k.as_ref()) {
                        ids.push(RunId::from_bytes(id));
                    }
                }
            }
            last = Some(k);
            seen += 1;
            if seen == STEP {
                break;
            }
        }
        let done = seen < STEP;
        if done && fixed_parts.rest(&mut orphans).is_err() {
            return;
        }
        drop(inner);
        runs += seen;
        flagged += ids.len() + orphans.len();
        if !ids.is_empty() || !orphans.is_empty() {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                op: Op::VerifyIndex { ids, orphans },
                reply,
            };
            if tx.send(job).is_err() || !matches!(answer.blocking_recv(), Ok(Ok(_))) {
                tracing::warn!("index verification after a crash stopped (store closing or faulted); the next open verifies again");
                return;
            }
        }
        if done {
            break;
        }
        // Continue just after the last state examined.
        if let Some(k) = last {
            cursor = k.to_vec();
            cursor.push(0);
        }
    }
    shared.index_verified.store(true, Ordering::Release);
    tracing::info!(
        runs,
        repaired = flagged,
        took_ms = started.elapsed().as_millis() as u64,
        "run index verified after an unclean stop"
    );
}
