//! The header names the configuration speaks of: the roles `header_names` may rename, and
//! the headers a caller may never have forwarded.

/// The header roles whose names an upstream's `header_names` may override.
pub const HEADER_ROLES: &[&str] = &[
    "client_id",
    "client_secret",
    "gstin",
    "user_name",
    "auth_token",
    "state_cd",
    "ip_usr",
    "txn",
];

/// `HEADER_ROLES.len()`: each profile's default names come as an array in that order.
pub const ROLE_COUNT: usize = HEADER_ROLES.len();

/// Headers `forward_headers` may not name: hop-by-hop and framing headers, the caller's own
/// credentials, the ones gstgate sets itself, and every spelling of a GST identity or
/// credential header, which only gstgate may send (the configured `header_names` and static
/// `headers` are refused too).
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "host",
    "content-length",
    "expect",
    "x-api-key",
    "authorization",
    "cookie",
    "x-request-id",
    "user-agent",
    "client_id",
    "client-id",
    "clientid",
    "client_secret",
    "client-secret",
    "clientsecret",
    "gstin",
    "user_name",
    "user-name",
    "username",
    "password",
    "authtoken",
    "auth-token",
    "auth_token",
    "sek",
    "appkey",
    "app_key",
    "app-key",
    "state-cd",
    "state_cd",
    "ip-usr",
    "ip_usr",
    "txn",
];
