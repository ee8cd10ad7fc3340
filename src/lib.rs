//! gstgate: an HTTP gateway for India's GST APIs.
//!
//! ASP backends send plain requests with a `gstin` header; gstgate authenticates the caller,
//! owns the taxpayer's API session (login, token refresh, payload crypto) and forwards the
//! request to the GSP. The request path is in [`proxy`]; sessions in [`session`]; the
//! API-specific protocol in [`upstream`]; the simulator used as a sandbox and in tests in
//! [`sim`].

// Not `forbid`: `forbid` admits no exception, and glibc's `malloc_trim` (src/heap.rs) has no
// safe binding. That one call is allowed where it is; tests/architecture.rs fails on any other.
#![deny(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod classify;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod gstin;
pub mod heap;
pub mod metrics;
pub mod path;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod server;
pub mod session;
pub mod sim;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod timestamp;
pub mod tls;
pub mod upstream;
