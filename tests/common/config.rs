//! Gateway configuration: the options a test varies, rendered as the TOML of a gateway in
//! front of a simulator.

use std::path::Path;

use super::{ADMIN_TOKEN, API_KEY, CLIENT_ID, GSTIN, PASSWORD, USER};

/// Options of a gateway process.
#[derive(Clone)]
pub struct GwOpts {
    /// `gateway` or `passthrough`.
    pub encryption: &'static str,
    /// Upstream base URL; defaults to the simulator's.
    pub base_url: Option<String>,
    /// Credentials: (GSTIN, user, password).
    pub credentials: Vec<(String, String, String)>,
    /// Clients: (name, key, gstins).
    pub clients: Vec<(String, String, Vec<String>)>,
    /// `refresh_before`.
    pub refresh_before: &'static str,
    /// Upstream `timeout`.
    pub timeout: &'static str,
    /// Upstream `connect_timeout`.
    pub connect_timeout: &'static str,
    /// `max_logins`.
    pub max_logins: u32,
    /// `max_body_bytes`.
    pub max_body_bytes: usize,
    /// `shutdown_grace`.
    pub shutdown_grace: &'static str,
    /// `RUST_LOG`.
    pub rust_log: &'static str,
    /// `--log-format`: `json` (what the tests read) or `pretty`.
    pub log_format: &'static str,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Extra TOML lines at the end of the `[[upstream]]` table (may open `[upstream.headers]`).
    pub upstream_extra: String,
    /// `gstin_checksum`.
    pub gstin_checksum: &'static str,
    /// The upstreams, by API kind; each is named after its kind and every credential logs
    /// in to all of them.
    pub apis: Vec<&'static str>,
    /// Extra TOML lines in each `[[credential]]` table.
    pub credential_extra: String,
    /// Extra TOML at the end of the file (e.g. an `[alerts]` table).
    pub extra_toml: String,
    /// Extra TOML lines at the end of the `[server]` table.
    pub server_extra: String,
    /// `[[upstream.targets]]` as (base URL, `irp`), replacing `base_url` when not empty.
    pub targets: Vec<(String, &'static str)>,
    /// The body of the `[store]` table. `memory` unless a test is about the store, so that
    /// no test writes a store file it does not own.
    pub store: String,
}

impl Default for GwOpts {
    fn default() -> Self {
        Self {
            encryption: "gateway",
            base_url: None,
            credentials: vec![(GSTIN.into(), USER.into(), PASSWORD.into())],
            clients: vec![("billing".into(), API_KEY.into(), vec!["*".into()])],
            refresh_before: "10m",
            timeout: "5s",
            connect_timeout: "2s",
            max_logins: gstgate::config::DEFAULT_MAX_LOGINS,
            max_body_bytes: 65536,
            shutdown_grace: "30s",
            rust_log: "info",
            log_format: "json",
            env: vec![],
            upstream_extra: String::new(),
            gstin_checksum: "enforce",
            apis: vec!["einvoice"],
            credential_extra: String::new(),
            extra_toml: String::new(),
            server_extra: String::new(),
            store: "backend = \"memory\"".into(),
            targets: vec![],
        }
    }
}

/// The path prefixes and auth path the simulator serves for an API kind.
pub fn api_paths(api: &str) -> (&'static str, &'static str) {
    match api {
        "einvoice" => (
            r#"["/eivital/", "/eicore/", "/eiewb/"]"#,
            "/eivital/v1.04/auth",
        ),
        "ewaybill" => (r#"["/ewaybillapi/"]"#, "/ewaybillapi/v1.03/auth"),
        "gstn" => (r#"["/taxpayerapi/"]"#, "/taxpayerapi/v1.0/authenticate"),
        other => panic!("unknown api {other}"),
    }
}

/// Renders a gateway config for a simulator.
pub fn gateway_config(public_key: &Path, base_url: &str, o: &GwOpts) -> String {
    let mut s = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
max_body_bytes = {max_body}
request_timeout = "60s"
shutdown_grace = "{grace}"
{server_extra}

[store]
{store}

"#,
        max_body = o.max_body_bytes,
        grace = o.shutdown_grace,
        server_extra = o.server_extra,
        store = o.store,
    );
    for api in &o.apis {
        let (routes, auth_path) = api_paths(api);
        let base = if o.targets.is_empty() {
            format!("base_url = \"{base_url}\"")
        } else {
            String::new()
        };
        s.push_str(&format!(
            r#"
[[upstream]]
name = "{api}"
api = "{api}"
{base}
routes = {routes}
auth_path = "{auth_path}"
public_key = "{key}"
encryption = "{enc}"
client_id = "{CLIENT_ID}"
client_secret = "${{TEST_CLIENT_SECRET}}"
refresh_before = "{refresh}"
gstin_checksum = "{checksum}"
timeout = "{timeout}"
connect_timeout = "{connect}"
max_logins = {max_logins}
{extra}
"#,
            key = public_key.display(),
            enc = o.encryption,
            refresh = o.refresh_before,
            timeout = o.timeout,
            connect = o.connect_timeout,
            max_logins = o.max_logins,
            checksum = o.gstin_checksum,
            extra = o.upstream_extra,
        ));
        for (url, irp) in &o.targets {
            s.push_str(&format!(
                "[[upstream.targets]]\nbase_url = \"{url}\"\nirp = \"{irp}\"\n"
            ));
        }
    }
    let upstreams: Vec<String> = o.apis.iter().map(|a| format!("\"{a}\"")).collect();
    for (g, u, p) in &o.credentials {
        s.push_str(&format!(
            "\n[[credential]]\ngstin = \"{g}\"\nusername = \"{u}\"\npassword = \"{p}\"\nupstreams = [{}]\n{}\n",
            upstreams.join(", "),
            o.credential_extra
        ));
    }
    for (name, key, gstins) in &o.clients {
        let list: Vec<String> = gstins.iter().map(|g| format!("\"{g}\"")).collect();
        s.push_str(&format!(
            "\n[[client]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\ngstins = [{}]\n",
            gstgate::cli::hex_sha256(key.as_bytes()),
            list.join(", ")
        ));
    }
    s.push_str(&o.extra_toml);
    s
}
