//! The two writer threads of the group commit (see the module docs of
//! `sled`): the applier applies each batch of queued writes in order, the
//! flusher makes them durable with one flush and answers their callers.
//!
//! Both record how long they are busy (`runbridge_store_apply_seconds` per
//! batch, `runbridge_store_flush_seconds` per flush, and the running totals
//! `runbridge_store_apply_busy_seconds_total` and
//! `runbridge_store_flush_busy_seconds_total`): since they overlap, the one
//! busy nearly all the time under load is the bound on durable writes.

use super::fault::Shared;
use super::{backend, Answers, Inner, Job, Op, MAX_BATCH};
use crate::store::StoreError;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc;

pub(super) fn apply_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
    flush_tx: std_mpsc::Sender<(Arc<Inner>, Answers)>,
) {
    while let Some(first) = rx.blocking_recv() {
        let started = std::time::Instant::now();
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // During a fault, queued writes fail fast without a sled call.
        let inner = match shared.inner() {
            Ok(inner) if !shared.fault.is_set() => inner,
            _ => {
                for job in jobs {
                    let _ = job.reply.send(Err(shared.fail_fast()));
                }
                continue;
            }
        };
        let mut failed = false;
        // Write operations applied, by kind: counted per batch, not per op,
        // so counting costs one registry lookup per kind and batch.
        let mut applied = [0u64; Op::KINDS.len()];
        let answers: Answers = jobs
            .into_iter()
            .map(|job| {
                if failed {
                    return (job.reply, Err(shared.fail_fast()));
                }
                let result = inner.trees.apply(&job.op).map_err(|e| {
                    failed = true;
                    shared.report(format!("write failed: {e}"));
                    backend(e)
                });
                if let Ok(created) = &result {
                    applied[job.op.kind(created)] += 1;
                }
                (job.reply, result)
            })
            .collect();
        for (op, n) in Op::KINDS.iter().zip(applied) {
            if n > 0 {
                metrics::counter!("runbridge_store_writes_total", "op" => *op).increment(n);
            }
        }
        let took = started.elapsed().as_secs_f64();
        metrics::histogram!("runbridge_store_apply_seconds").record(took);
        // A gauge, since metrics' counters are integers; it only grows.
        metrics::gauge!("runbridge_store_apply_busy_seconds_total").increment(took);
        tracing::trace!(
            writes = answers.len(),
            apply_us = (took * 1e6) as u64,
            "batch applied"
        );
        if flush_tx.send((inner, answers)).is_err() {
            break;
        }
    }
}

pub(super) fn flush_loop(rx: std_mpsc::Receiver<(Arc<Inner>, Answers)>, shared: Arc<Shared>) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(g) = rx.try_recv() {
            groups.push(g);
        }
        let Some(flushed_inner) = groups.last().map(|(inner, _)| inner.clone()) else {
            continue;
        };
        let started = std::time::Instant::now();
        let flushed = if shared.fault.is_set() {
            // sled would only repeat its sticky error.
            Err(shared.unavailable())
        } else {
            flushed_inner.db.flush().map_err(|e| {
                shared.report(format!("flush failed: {e}"));
                StoreError::Backend(format!("flush failed: {e}"))
            })
        };
        if flushed.is_ok() {
            metrics::counter!("runbridge_store_flushes_total").increment(1);
        }
        let took = started.elapsed().as_secs_f64();
        metrics::histogram!("runbridge_store_flush_seconds").record(took);
        metrics::gauge!("runbridge_store_flush_busy_seconds_total").increment(took);
        metrics::histogram!("runbridge_store_batch_writes")
            .record(groups.iter().map(|(_, a)| a.len()).sum::<usize>() as f64);
        tracing::trace!(
            groups = groups.len(),
            bytes = flushed.as_ref().copied().unwrap_or(0),
            flush_us = started.elapsed().as_micros() as u64,
            "flushed"
        );
        for (inner, answers) in groups {
            // A batch applied to a database that has since been replaced
            // was never made durable by this flush.
            let same = Arc::ptr_eq(&inner, &flushed_inner);
            for (reply, result) in answers {
                let answer = match &flushed {
                    Ok(_) if same => result,
                    Ok(_) => Err(StoreError::Unavailable("the store was reopened".into())),
                    Err(e) => Err(e.clone()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}
