//! Test harness: the real `gstgate` binary as simulator and as gateway, on loopback ports.
//!
//! Each helper starts a process, waits for its ready line on stdout (the signal that it
//! listens), and kills it when dropped. The simulator's RSA key is generated once per target
//! directory so that tests don't pay for RSA key generation each time.
//!
//! One file per job: [`process`] captures a child's output and waits for its ready line,
//! [`sim`] and [`gateway`] start the two processes, [`config`] renders a gateway's TOML,
//! [`metrics`] reads its Prometheus text, [`raw_http`] speaks HTTP/1.1 by hand, and
//! [`fixtures`] holds the identities and documents both sides are set up with, and [`redis`]
//! runs a real Redis server for the shared-store tests, and [`pki`] a private CA for the TLS
//! tests, and [`spec_client`] the NIC and GSTN clients written from the published specs,
//! independent of gstgate's code. Everything is re-exported here, so tests name it `common::…`
//! (the spec clients' lower layers stay under `common::spec_client::`).

#![allow(dead_code)]

mod config;
mod dropin;
mod fixtures;
mod gateway;
mod metrics;
mod pki;
mod process;
mod raw_http;
mod redis;
mod sim;
pub mod spec_client;

// Each test binary compiles its own copy of this module and uses only part of it.
#[allow(unused_imports)]
pub use self::spec_client::{
    ApiFailure, ClientError, EinvoiceClient, EwaybillClient, GstnClient, SpecConfig,
};
#[allow(unused_imports)]
pub use self::{
    config::*, dropin::*, fixtures::*, gateway::*, metrics::*, pki::*, process::*, raw_http::*,
    redis::*, sim::*,
};
