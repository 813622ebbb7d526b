//! runbridge: verified webhooks in, durable workflow runs, signed callbacks out.
//!
//! The modules follow the data path: [`ingress`] (verify, map), [`run`] (the
//! state machine), [`store`] (durable records and the due index),
//! [`scheduler`] (drives runs), [`providers`] (workflow APIs), [`delivery`]
//! (signed callbacks), [`http`] (the axum edge: hooks, health, admin API),
//! wired by [`app`]. [`health`] collects what `/readyz` reports.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod config;
pub mod delivery;
pub mod health;
pub mod http;
pub mod ingress;
pub mod limit;
pub mod providers;
pub mod read;
pub mod receiver;
pub mod reload;
pub mod run;
pub mod scheduler;
pub mod secret;
pub mod signal;
pub mod signing;
pub mod store;
pub mod template;
pub mod throttle;
pub mod time;
pub mod topology;
