//! What a setting is when the file leaves it out: the public defaults, and the functions
//! serde calls for them.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::{ChecksumPolicy, Duplicate, Encryption};

/// NIC allows a forced refresh only in the last 10 minutes of a token's life.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(10 * 60);
/// NIC and GSTN tokens live 360 minutes.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(6 * 60 * 60);
/// GSP help pages report a block after 5 logins in 15 minutes; stay one under it.
pub const DEFAULT_MAX_LOGINS: u32 = 4;
/// Logins in flight toward one upstream at once: enough to hide a login's round trip at
/// `DEFAULT_LOGINS_PER_SECOND`, few enough that a restart storm is not a connection flood.
pub const DEFAULT_MAX_CONCURRENT_LOGINS: u32 = 8;
/// Logins started per second toward one upstream (a Redis group's total). NIC publishes no
/// figure; 10 a second is well under what one GSP's ordinary traffic sends, and still
/// renews 6,000 sessions inside NIC's 10-minute force window.
pub const DEFAULT_LOGINS_PER_SECOND: u32 = 10;
/// The window of the reported login limit.
pub const DEFAULT_LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// GSTN's `ip-usr` when none is configured: the gateway stands in for the end user.
pub const DEFAULT_IP_USR: &str = "127.0.0.1";
/// A caller request body above this is refused with 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Request headers above this (all of them together) are refused.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Upstream responses above this are refused with 502: e-invoice replies are kilobytes, a
/// GSTN return summary at most a few megabytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The login lease: longer than a login takes (the upstream timeout bounds one), short enough
/// that a replica killed mid-login holds the others up only briefly.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

pub(super) fn default_key_prefix() -> String {
    "gstgate".into()
}
pub(super) fn default_lease() -> Duration {
    DEFAULT_LEASE
}
pub(super) fn default_replicas() -> u32 {
    1
}
pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
pub(super) fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
pub(super) fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
pub(super) fn default_max_header() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
pub(super) fn default_max_response() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}
pub(super) fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_encryption() -> Encryption {
    Encryption::Gateway
}
pub(super) fn default_duplicate() -> Duplicate {
    Duplicate::Pass
}
pub(super) fn default_refresh_before() -> Duration {
    DEFAULT_REFRESH_BEFORE
}
pub(super) fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

pub(super) fn default_ip_usr() -> String {
    DEFAULT_IP_USR.to_owned()
}

pub(super) fn default_token_lifetime() -> Duration {
    DEFAULT_TOKEN_LIFETIME
}
pub(super) fn default_checksum() -> ChecksumPolicy {
    ChecksumPolicy::Enforce
}
pub(super) fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_max_logins() -> u32 {
    DEFAULT_MAX_LOGINS
}
pub(super) fn default_max_concurrent_logins() -> u32 {
    DEFAULT_MAX_CONCURRENT_LOGINS
}
pub(super) fn default_logins_per_second() -> u32 {
    DEFAULT_LOGINS_PER_SECOND
}
pub(super) fn default_login_window() -> Duration {
    DEFAULT_LOGIN_WINDOW
}
pub(super) fn default_idle_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 60 * 60)
}

pub(super) fn default_max_dropin_sessions() -> usize {
    1000
}

pub(super) fn default_breaker_failures() -> u32 {
    DEFAULT_BREAKER_FAILURES
}
pub(super) fn default_breaker_cool_down() -> Duration {
    DEFAULT_BREAKER_COOL_DOWN
}

/// Consecutive failures that open a circuit, unless `breaker_failures` says otherwise: few
/// enough that callers stop waiting on a dead IRP within seconds, enough that one slow reply
/// does not move traffic.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;

/// How long an open circuit stays open before a probe, unless `breaker_cool_down` says
/// otherwise: an IRP outage lasts minutes to hours, and one probe per half minute costs
/// nothing.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(30);
