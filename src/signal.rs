//! Process signals and the systemd notify protocol: SIGTERM/SIGINT become a
//! shutdown, SIGHUP a reload, and the service manager hears `READY=1`,
//! `RELOADING=1`, `STOPPING=1` and `WATCHDOG=1` at the right moments.
//!
//! Every notify call is a no-op without `NOTIFY_SOCKET`, so the daemon runs
//! the same outside systemd. Socket activation (`LISTEN_FDS`) is read here
//! too, because it is part of the same protocol.

use crate::health::Health;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Loops whose heartbeats the watchdog requires: if one stalls, `WATCHDOG=1`
/// stops and systemd restarts the service after `WatchdogSec`.
pub const WATCHED_LOOPS: [&str; 2] = ["scheduler", "sweeper"];

/// Tells the service manager the daemon serves (after start or a reload).
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells the service manager a reload started (`RELOADING=1` with the
/// `MONOTONIC_USEC` systemd uses to match it); [`ready`] ends it.
pub fn reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells the service manager the drain started (`STOPPING=1`).
pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
}

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The listening socket systemd passed (`LISTEN_FDS`, `LISTEN_PID`), if
/// any: fd 3 as a std listener. `Err` when the variables are malformed or
/// the descriptor is not a TCP listener.
pub fn activated_listener() -> std::io::Result<Option<std::net::TcpListener>> {
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!(
            passed = fds.len() + 1,
            "systemd passed several sockets; serving the first only"
        );
    }
    // SAFETY: systemd hands this descriptor to us alone (LISTEN_PID is our
    // pid, checked by listen_fds); nothing else in the process owns it.
    let listener = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // A descriptor that is not a listening TCP socket fails here.
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Sends `WATCHDOG=1` at half of `WATCHDOG_USEC` while every loop in
/// [`WATCHED_LOOPS`] counts as alive (as `/readyz` judges it), until `stop`
/// fires. Returns at
/// once when the watchdog is not enabled.
pub async fn watchdog(health: Arc<Health>, stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    tracing::info!(
        watchdog = %humantime::format_duration(period),
        "systemd watchdog enabled"
    );
    let mut logged = false;
    loop {
        let loops = health.loops();
        // The same test as `/readyz`: a loop is stuck after LOOP_STALL
        // without a beat.
        let alive = WATCHED_LOOPS
            .iter()
            .all(|name| loops.get(name).is_some_and(|l| l.ok));
        if alive {
            send(&[sd_notify::NotifyState::Watchdog]);
            logged = false;
        } else if !logged {
            tracing::error!(?loops, "a loop stalled: withholding WATCHDOG=1");
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Turns SIGTERM/SIGINT into `shutdown` (after `STOPPING=1`) and SIGHUP into
/// a message on `reload`. Runs until the shutdown.
pub async fn listen(shutdown: CancellationToken, reload: mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            stopping();
            shutdown.cancel();
            return;
        }
    };
    let (mut term, mut hup) = (term, hup);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload.send(());
            }
            _ = shutdown.cancelled() => return,
        }
    }
    tracing::info!("signal received");
    stopping();
    shutdown.cancel();
}
