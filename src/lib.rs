//! gstgate: an HTTP gateway for India's GST APIs.
//!
//! ASP backends send plain requests with a `gstin` header; gstgate authenticates the caller,
//! owns the taxpayer's API session (login, token refresh, payload crypto) and forwards the
//! request to the GSP. See `README.md` for use and `DESIGN` notes in each module.

pub mod crypto;
pub mod gstin;
pub mod cli;
pub mod sim;
