//! The operator's subcommands: `send` (sign and post a sample webhook from
//! the local config) and the admin commands over the HTTP API (`runs`,
//! `deliveries`, `recover`, `endpoints`, `requests`). `main.rs` only
//! flattens [`Ops`] into its command list and calls [`run`].

#[allow(dead_code)] // the admin commands use the rest (next commit)
mod http;
pub mod send;

use std::process::ExitCode;

/// The subcommands this module implements.
#[derive(clap::Subcommand)]
pub enum Ops {
    /// Sign a sample (or --file) payload as the route's sender would and post it.
    Send(send::SendArgs),
}

/// Runs one subcommand on a small single-threaded runtime.
pub fn run(op: Ops) -> ExitCode {
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
        }
    })
}
