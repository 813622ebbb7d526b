//! Write faults and in-process recovery (see the module docs of `sled`).

use super::Inner;
use crate::store::{StoreError, StoreFault};
use crate::throttle::Throttle;
use crate::time::Timestamp;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// First and largest pause between recovery attempts: recovery lands within
/// about two seconds of space coming back, at little cost while it does not.
pub(super) const RECOVERY_FIRST: Duration = Duration::from_millis(250);
pub(super) const RECOVERY_MAX: Duration = Duration::from_secs(2);
/// A lasting fault is logged once per this interval, with a count.
pub(super) const FAULT_LOG_EVERY: Duration = Duration::from_secs(10);
/// The filesystem must take a file this large before sled is reopened.
pub(super) const PROBE_BYTES: usize = 1 << 20;
/// Name of that file, inside the storage directory (removed at once).
pub(super) const PROBE_FILE: &str = ".runbridge-space-probe";
/// Longest recovery waits for readers to let go of the old sled handles.
pub(super) const HANDLE_WAIT: Duration = Duration::from_secs(5);

/// The current fault, if any. `active` lets the write path check without a lock.
#[derive(Default)]
pub(super) struct FaultCell {
    pub(super) active: AtomicBool,
    pub(super) state: Mutex<Option<(StoreFault, Instant)>>,
}

impl FaultCell {
    pub(super) fn is_set(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(super) fn get(&self) -> Option<StoreFault> {
        if !self.is_set() {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.as_ref().map(|(f, _)| f.clone())
    }

    /// Records a failure; true when it starts a new fault.
    pub(super) fn set(&self, error: String) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.as_mut() {
            Some((f, _)) => {
                f.failures += 1;
                false
            }
            None => {
                let fault = StoreFault {
                    since: Timestamp::now(),
                    error,
                    failures: 1,
                };
                *state = Some((fault, Instant::now()));
                self.active.store(true, Ordering::Release);
                true
            }
        }
    }

    /// Counts one more failed write or recovery attempt.
    pub(super) fn bump(&self) -> Option<StoreFault> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.as_mut().map(|(f, _)| {
            f.failures += 1;
            f.clone()
        })
    }

    /// Ends the fault: what it was and how long it lasted.
    pub(super) fn clear(&self) -> Option<(StoreFault, Duration)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.active.store(false, Ordering::Release);
        state.take().map(|(f, began)| (f, began.elapsed()))
    }
}

/// What the store, its threads and its recovery share.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) cache_capacity: u64,
    /// Whether the run index is maintained (see [`super::SledStore::open_unindexed`]).
    pub(super) indexed: bool,
    /// The open database; `None` while recovery reopens it.
    pub(super) current: RwLock<Option<Arc<Inner>>>,
    pub(super) fault: FaultCell,
    pub(super) closed: AtomicBool,
    /// False while the index verification after a crash runs in the
    /// background: a close then leaves the clean marker out.
    pub(super) index_verified: AtomicBool,
    /// Wakes the recovery thread on a new fault or on close.
    pub(super) wake: (Mutex<()>, Condvar),
    /// Held while recovery swaps the database, so close never races a reopen.
    pub(super) swap: Mutex<()>,
}

impl Shared {
    /// The open database, for the length of one operation.
    pub(super) fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    /// The error of a write refused during a fault (counted, not logged:
    /// the recovery thread logs the fault once per interval).
    pub(super) fn fail_fast(&self) -> StoreError {
        self.fault.bump();
        self.unavailable()
    }

    pub(super) fn unavailable(&self) -> StoreError {
        match self.fault.get() {
            Some(f) => StoreError::Unavailable(format!("since {}: {}", f.since, f.error)),
            None => StoreError::Unavailable("the store is being reopened".into()),
        }
    }

    /// A write or flush failed: enter (or extend) the fault.
    pub(super) fn report(&self, error: String) {
        if self.fault.set(error.clone()) {
            tracing::error!(
                %error,
                "store fault: writes now fail fast (ingress answers 503) until the store recovers"
            );
            let _guard = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.1.notify_all();
        }
    }

    /// Sleeps `d` unless the store closes first; true if it closed.
    pub(super) fn pause(&self, d: Duration) -> bool {
        let guard = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .wake
            .1
            .wait_timeout_while(guard, d, |_| !self.closed.load(Ordering::Acquire));
        self.closed.load(Ordering::Acquire)
    }

    /// One recovery attempt (see the module docs).
    pub(super) fn try_recover(&self) -> Result<(), StoreError> {
        probe_filesystem(&self.path)?;
        let _swap = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let old = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(old) = old {
            let end = Instant::now() + HANDLE_WAIT;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= end {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(old);
                    return Err(StoreError::Unavailable(
                        "old sled handles are still in use; will retry".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        let inner = Inner::open(&self.path, self.cache_capacity, self.indexed, false)?;
        let probe = inner.probe();
        // Installed even when the probe fails, so reads keep working; the
        // next attempt drops it again.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(inner));
        probe
    }
}

/// Whether the filesystem takes a small file again (cheap, and leaves sled
/// alone while the disk is still full).
pub(super) fn probe_filesystem(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| StoreError::Unavailable(format!("the disk still refuses writes: {e}")))
}

/// The recovery thread: idle until a fault, then retries with backoff.
pub(super) fn recover_loop(shared: Arc<Shared>) {
    let log = Throttle::new(FAULT_LOG_EVERY);
    loop {
        {
            let mut guard = shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            while !shared.fault.is_set() && !shared.closed.load(Ordering::Acquire) {
                guard = shared.wake.1.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
        }
        let mut delay = RECOVERY_FIRST;
        while shared.fault.is_set() {
            if shared.pause(delay) {
                return;
            }
            match shared.try_recover() {
                Ok(()) => {
                    if let Some((fault, lasted)) = shared.fault.clear() {
                        tracing::warn!(
                            lasted_ms = lasted.as_millis() as u64,
                            failures = fault.failures,
                            since = %fault.since,
                            "store recovered: reopened in-process; writes accepted again"
                        );
                    }
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    let fault = shared.fault.bump();
                    if let (Some(suppressed), Some(f)) = (log.allow("store-fault"), fault) {
                        tracing::error!(
                            since = %f.since,
                            error = %f.error,
                            failures = f.failures,
                            recovery = %e,
                            suppressed,
                            "store still faulted; writes fail fast until it recovers"
                        );
                    }
                    delay = (delay * 2).min(RECOVERY_MAX);
                }
            }
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
    }
}
