//! Drop-in mode's side of the harness: gstgate's own key pair (made once per target
//! directory), a gateway configuration with drop-in on (and a second drop-in client where a
//! test needs two), and a spec client's configuration pointed at that gateway instead of the
//! simulator.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::{Gateway, GwOpts, SpecConfig, GSTIN, PASSWORD, USER};

/// The client id the drop-in client sends (not the simulator's: gstgate has its own).
pub const DROPIN_CLIENT_ID: &str = "asp-erp";
/// The drop-in client's secret.
pub const DROPIN_CLIENT_SECRET: &str = "erp-drop-in-secret";
/// The drop-in client's name in gstgate's configuration (and metrics).
pub const DROPIN_CLIENT: &str = "erp";
/// A second drop-in client's id: another ERP of the same taxpayer, say.
pub const SECOND_CLIENT_ID: &str = "asp-tally";
/// The second drop-in client's secret.
pub const SECOND_CLIENT_SECRET: &str = "tally-drop-in-secret";
/// The second drop-in client's name in gstgate's configuration (and metrics).
pub const SECOND_CLIENT: &str = "tally";

/// gstgate's drop-in private key, shared by every test in this target directory.
pub fn dropin_key_file() -> PathBuf {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("dropin-test-key.pem");
        if !path.exists() {
            let pair = gstgate::crypto::KeyPair::generate().unwrap();
            let pem = pair.to_pkcs8_pem().unwrap();
            // Write then rename: test binaries may race to create it.
            let tmp = dir.join(format!("dropin-test-key.{}.tmp", std::process::id()));
            std::fs::write(&tmp, pem.as_bytes()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        // gstgate refuses a drop-in key other users can read.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    })
    .clone()
}

/// The public half of [`dropin_key_file`], the PEM an ASP configures in place of NIC's.
pub fn dropin_public_pem() -> String {
    let pem = std::fs::read_to_string(dropin_key_file()).unwrap();
    let pair = gstgate::crypto::KeyPair::from_pkcs8_pem(&pem).unwrap();
    pair.public_key().to_pem().unwrap()
}

/// `opts` with drop-in on for every upstream, and a drop-in client allowed `gstins`.
pub fn with_dropin(mut opts: GwOpts, gstins: &[&str]) -> GwOpts {
    opts.upstream_extra.push_str(&format!(
        "\ndropin_private_key = \"{}\"\n",
        dropin_key_file().display()
    ));
    push_client(
        &mut opts,
        DROPIN_CLIENT,
        DROPIN_CLIENT_ID,
        DROPIN_CLIENT_SECRET,
        gstins,
    );
    opts
}

/// `opts` with one more drop-in client ([`SECOND_CLIENT`]) allowed `gstins`.
pub fn with_second_dropin_client(mut opts: GwOpts, gstins: &[&str]) -> GwOpts {
    push_client(
        &mut opts,
        SECOND_CLIENT,
        SECOND_CLIENT_ID,
        SECOND_CLIENT_SECRET,
        gstins,
    );
    opts
}

fn push_client(opts: &mut GwOpts, name: &str, id: &str, secret: &str, gstins: &[&str]) {
    let list: Vec<String> = gstins.iter().map(|g| format!("\"{g}\"")).collect();
    opts.extra_toml.push_str(&format!(
        "\n[[client]]\nname = \"{name}\"\nclient_id = \"{id}\"\nclient_secret_sha256 = \"{}\"\ngstins = [{}]\n",
        gstgate::cli::hex_sha256(secret.as_bytes()),
        list.join(", ")
    ));
}

/// A spec client's configuration pointed at `gw`: its base URL, gstgate's public key, the
/// drop-in client id and secret; the taxpayer's GSTIN, user and password as before.
pub fn dropin_client_config(gw: &Gateway) -> SpecConfig {
    SpecConfig {
        base_url: format!("http://{}", gw.proxy),
        public_key_pem: dropin_public_pem(),
        client_id: DROPIN_CLIENT_ID.into(),
        client_secret: DROPIN_CLIENT_SECRET.into(),
        gstin: GSTIN.into(),
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

/// [`dropin_client_config`] for the second drop-in client: its own id and secret, the same
/// taxpayer and user.
pub fn second_client_config(gw: &Gateway) -> SpecConfig {
    SpecConfig {
        client_id: SECOND_CLIENT_ID.into(),
        client_secret: SECOND_CLIENT_SECRET.into(),
        ..dropin_client_config(gw)
    }
}
