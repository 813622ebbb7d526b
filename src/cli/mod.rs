//! The operator's subcommands: `send` (sign and post a sample webhook from
//! the local config) and the admin commands over the HTTP API (`runs`,
//! `deliveries`, `recover`, `endpoints`, `requests`, `routes`,
//! `providers`). `main.rs` only flattens [`Ops`] into its command list and
//! calls [`run`].

mod admin;
mod http;
mod ops;
mod output;
pub mod send;

use std::process::ExitCode;

/// The subcommands this module implements.
#[derive(clap::Subcommand)]
pub enum Ops {
    /// Sign a sample (or --file) payload as the route's sender would and post it.
    Send(send::SendArgs),
    /// List, show, cancel or replay runs (admin API).
    Runs(admin::Runs),
    /// Failing and dead deliveries; redeliver one (admin API).
    Deliveries(admin::Deliveries),
    /// Redeliver every failing or dead delivery of a route since a time,
    /// showing progress (admin API).
    Recover(admin::RecoverArgs),
    /// Callback endpoints: list, pause, resume, send a test event (admin API).
    Endpoints(ops::Endpoints),
    /// Recent inbound requests that started nothing, and why (admin API).
    Requests(ops::RequestsArgs),
    /// The live routes: provider, verification kinds, callbacks (admin API).
    Routes(ops::RoutesArgs),
    /// The live providers (admin API).
    Providers(ops::ProvidersArgs),
}

/// Runs one subcommand on a small single-threaded runtime.
pub fn run(op: Ops) -> ExitCode {
    restore_sigpipe();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        match op {
            Ops::Send(a) => send::send(a).await,
            Ops::Runs(a) => a.run().await,
            Ops::Deliveries(a) => a.run().await,
            Ops::Recover(a) => a.run().await,
            Ops::Endpoints(a) => a.run().await,
            Ops::Requests(a) => a.run().await,
            Ops::Routes(a) => a.run().await,
            Ops::Providers(a) => a.run().await,
        }
    })
}

/// Rust ignores SIGPIPE, so `println!` into a closed pipe
/// (`runbridge runs list | head -3`) panics. A command-line tool should end
/// quietly instead, as Unix tools do, so the default action is restored for
/// the commands that only print (never for `serve` or `receive`). Their one
/// socket, the request to the daemon, is written by std with `MSG_NOSIGNAL`
/// and cannot raise the signal.
pub fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default at start, before
    // any thread of ours exists, has no memory-safety precondition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
