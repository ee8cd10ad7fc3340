//! gstgate: an HTTP gateway for India's GST APIs.
//!
//! ASP backends send plain requests with a `gstin` header; gstgate authenticates the caller,
//! owns the taxpayer's API session (login, token refresh, payload crypto) and forwards the
//! request to the GSP. The request path is in [`proxy`]; sessions in [`session`]; the
//! API-specific protocol in [`upstream`]; the simulator used as a sandbox and in tests in
//! [`sim`].

// Not `forbid`: `forbid` admits no exception, and glibc's `malloc_trim` and `mallinfo2`
// (src/heap.rs) have no safe binding. Those two calls are allowed where they are;
// tests/architecture.rs fails on any other.
#![deny(unsafe_code)]

pub mod admin;
pub mod alerts;
pub(crate) mod body;
pub(crate) mod breaker;
pub(crate) mod classify;
pub mod cli;
pub(crate) mod clients;
pub(crate) mod clock;
pub mod config;
pub mod crypto;
pub(crate) mod dropin;
pub(crate) mod gstin;
pub(crate) mod heap;
pub(crate) mod idempotency;
pub mod json;
pub(crate) mod listener;
pub mod metrics;
pub(crate) mod outcome;
pub mod path;
pub mod problem;
pub(crate) mod proxy;
pub(crate) mod reload;
pub(crate) mod request;
pub(crate) mod server;
pub(crate) mod session;
pub mod sim;
pub(crate) mod store;
/// Seeding a Redis store with sessions, for the scale benchmark; not a supported API.
#[doc(hidden)]
pub use store::seed as store_seed;
pub(crate) mod tasks;
pub(crate) mod telemetry;
pub(crate) mod timestamp;
pub(crate) mod tls;
pub mod upstream;
pub(crate) mod window;
