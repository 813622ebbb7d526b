//! runbridge: verified webhooks in, durable workflow runs, signed callbacks out.
//!
//! The modules follow the data path: [`ingress`] (verify, map), [`run`] (the
//! state machine), [`store`] (durable records and the due index),
//! [`scheduler`] (drives runs), [`providers`] (workflow APIs), [`delivery`]
//! (signed callbacks), [`admin`] (operator API), wired by [`app`].

pub mod admin;
pub mod app;
pub mod backoff;
pub mod config;
pub mod delivery;
pub mod error;
pub mod ingress;
pub mod providers;
pub mod receiver;
pub mod run;
pub mod scheduler;
pub mod secret;
pub mod signing;
pub mod store;
pub mod time;
pub mod topology;
