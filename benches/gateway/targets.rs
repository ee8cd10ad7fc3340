//! What is measured: the upstream, the proxies in front of it (nginx; gstgate in passthrough and
//! in gateway mode, in gateway mode with a drop-in client, and in passthrough mode with a Redis
//! session store on a redis-server of its own) with the credentials they share, and the check
//! that each target answers a real IRN.

use std::fs;
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};
use gstgate::crypto::{b64_encode, AesKey, KeyPair, PublicKey};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::cli::{dedup, Layout, TargetKind, UpstreamKind};
use crate::client::Http;
use crate::procs::{after, free_port, pinned, which, Proc};
use crate::{upstream, Bench};

/// The taxpayer every request is for (valid checksum; also the seller in `bench/invoice.json`).
const GSTIN: &str = "27AAPFU0939F1ZV";
/// The GSP client credentials the upstream accepts.
pub(crate) const CLIENT_ID: &str = "bench-client-id";
pub(crate) const CLIENT_SECRET: &str = "bench-client-secret";
/// The API key the benchmark client presents to gstgate.
pub(crate) const API_KEY: &str = "bench-api-key-0123456789";
pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// The `dropin` target's client id and secret: gstgate's own `[[client]]`, not the upstream's,
/// as an ASP's unmodified client would be configured.
const DROPIN_CLIENT_ID: &str = "bench-dropin-client";
const DROPIN_CLIENT_SECRET: &str = "bench-dropin-secret-0123456789";
pub(crate) const AUTH_PATH: &str = "/eivital/v1.04/auth";
pub(crate) const INVOICE_PATH: &str = "/eicore/v1.03/Invoice";

/// One upstream user per consumer of a session, so that no target's login can disturb
/// another's token or SEK (a NIC re-login may hand out a new SEK).
pub(crate) const USER_DIRECT: (&str, &str) = ("bench_direct", "Direct#Pass1");
const USER_PASSTHROUGH: (&str, &str) = ("bench_passthrough", "Passthrough#Pass1");
const USER_GATEWAY: (&str, &str) = ("bench_gateway", "Gateway#Pass1");
const USER_REDIS: (&str, &str) = ("bench_redis", "Redis#Pass1");
const USER_DROPIN: (&str, &str) = ("bench_dropin", "Dropin#Pass1");
const USER_BASE_PASSTHROUGH: (&str, &str) = ("bench_base_passthrough", "BasePass#Pass1");
const USER_BASE_GATEWAY: (&str, &str) = ("bench_base_gateway", "BaseGate#Pass1");

/// The `redis` target's `[store] encryption_key` (base64 of 32 bytes; seals tokens and SEKs at
/// rest in Redis).
pub(crate) const STORE_KEY: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

/// One prepared target.
pub(crate) struct Target {
    pub(crate) kind: TargetKind,
    /// Full URL of the generate-IRN endpoint.
    pub(crate) url: String,
    /// Request body file.
    pub(crate) body: PathBuf,
    /// Headers the load generator sends besides `Content-Type: application/json`.
    pub(crate) headers: Vec<(String, String)>,
    /// Index into the proxy processes, if the target is a proxy.
    pub(crate) proc_index: Option<usize>,
    /// gstgate's admin listener.
    pub(crate) admin_url: Option<String>,
    /// The redis-server behind the target's session store (`redis` target), for its CPU time.
    pub(crate) store_pid: Option<u32>,
    /// The SEK the reply's `Data` is encrypted with (`dropin` target: the drop-in SEK).
    pub(crate) reply_sek: Option<AesKey>,
}

impl Target {
    pub(crate) fn headers_file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("headers-{}.txt", self.kind.name()))
    }

    fn headers_text(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    }
}

/// The running upstream ("sim", whichever plays it).
pub(crate) struct Upstream {
    pub(crate) proc: Proc,
    /// `host:port`.
    pub(crate) addr: String,
    /// `http://host:port`.
    pub(crate) url: String,
    /// The PEM file of its public key, and the key.
    pub(crate) public_key_path: PathBuf,
    pub(crate) public_key: PublicKey,
}

/// Starts the `--upstream` with the benchmark's users and client, and waits until it listens.
pub(crate) fn start_upstream(b: &Bench) -> Result<Upstream> {
    let Bench {
        opts,
        layout,
        bin,
        dir,
        ..
    } = b;
    let sim_pub = dir.join("upstream-public.pem");
    let users = [
        USER_DIRECT,
        USER_PASSTHROUGH,
        USER_GATEWAY,
        USER_REDIS,
        USER_DROPIN,
        USER_BASE_PASSTHROUGH,
        USER_BASE_GATEWAY,
    ];
    let (mut sim, ready) = match opts.upstream {
        UpstreamKind::Sim => {
            let mut cmd = pinned(layout.sim.as_deref(), bin);
            cmd.args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--plain",
                "--allow-duplicate-irn",
            ]);
            cmd.arg("--key-file").arg(dir.join("sim-key.pem"));
            cmd.arg("--public-key-out").arg(&sim_pub);
            for (user, pass) in users {
                cmd.args(["--user", &format!("{GSTIN}:{user}:{pass}")]);
            }
            cmd.args(["--client", &format!("{CLIENT_ID}:{CLIENT_SECRET}")]);
            (
                Proc::spawn("sim", cmd, dir)?,
                "gstgate-sim listening on http://",
            )
        }
        UpstreamKind::Fast => {
            let cfg = upstream::UpstreamConfig {
                listen: "127.0.0.1:0".parse()?,
                public_key_out: sim_pub.clone(),
                users: users
                    .iter()
                    .map(|(u, p)| (GSTIN.into(), u.to_string(), p.to_string()))
                    .collect(),
                clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
                sessions: Vec::new(),
            };
            let cfg_path = dir.join("upstream.json");
            fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
            let mut cmd = pinned(layout.sim.as_deref(), &std::env::current_exe()?);
            cmd.arg("--serve-upstream").arg(&cfg_path);
            (
                Proc::spawn("upstream", cmd, dir)?,
                "bench-upstream listening on http://",
            )
        }
    };
    let line = sim.wait_for_line(ready, Duration::from_secs(120))?;
    let sim_addr = after(&line, ready)?;
    let sim_url = format!("http://{sim_addr}");
    eprintln!(
        "gateway-bench: upstream ({}) at {sim_url}",
        opts.upstream.name()
    );
    let public_key = PublicKey::from_pem_or_cert(
        &fs::read(&sim_pub).with_context(|| format!("reading {}", sim_pub.display()))?,
    )?;
    Ok(Upstream {
        proc: sim,
        addr: sim_addr.to_string(),
        url: sim_url,
        public_key_path: sim_pub,
        public_key,
    })
}

/// Starts the proxies of `--targets` and prepares every target; one that cannot start is
/// left out, with the reason in `skipped`. Returns the targets and the proxy processes.
pub(crate) fn start_targets(
    b: &Bench,
    sim: &Upstream,
    body_plain: PathBuf,
    body_envelope: PathBuf,
    token: String,
    skipped: &mut Vec<(TargetKind, String)>,
) -> (Vec<Target>, Vec<Proc>) {
    let Bench {
        opts,
        layout,
        manifest,
        bin,
        dir,
        ..
    } = b;
    let Upstream {
        addr: sim_addr,
        url: sim_url,
        ..
    } = sim;
    let serve_ok = bin_supports_serve(bin);
    let mut targets: Vec<Target> = Vec::new();
    let mut procs: Vec<Proc> = Vec::new();
    for &kind in dedup(&opts.targets).iter() {
        let prepared = match kind {
            TargetKind::Direct => Ok(Target {
                kind,
                url: format!("{sim_url}{INVOICE_PATH}"),
                body: body_envelope.clone(),
                headers: vec![
                    ("client_id".into(), CLIENT_ID.into()),
                    ("client_secret".into(), CLIENT_SECRET.into()),
                    ("Gstin".into(), GSTIN.into()),
                    ("user_name".into(), USER_DIRECT.0.into()),
                    ("AuthToken".into(), token.clone()),
                ],
                proc_index: None,
                admin_url: None,
                store_pid: None,
                reply_sek: None,
            }),
            // Proxies with the headers built in: the load generator sends none.
            TargetKind::Nginx | TargetKind::Floor | TargetKind::FloorTpc => {
                let started = match kind {
                    TargetKind::Nginx => start_nginx(manifest, dir, layout, sim_addr, &token),
                    _ => start_floor(dir, layout, sim_addr, &token, kind == TargetKind::FloorTpc),
                };
                started.map(|(p, url)| {
                    procs.push(p);
                    Target {
                        kind,
                        url,
                        body: body_envelope.clone(),
                        headers: vec![],
                        proc_index: Some(procs.len() - 1),
                        admin_url: None,
                        store_pid: None,
                        reply_sek: None,
                    }
                })
            }
            TargetKind::Passthrough
            | TargetKind::Gateway
            | TargetKind::Dropin
            | TargetKind::Redis
                if !serve_ok =>
            {
                Err(anyhow!("`gstgate serve` is not available in this build"))
            }
            TargetKind::BasePassthrough | TargetKind::BaseGateway if opts.baseline.is_none() => {
                Err(anyhow!("the base-* targets need --baseline PATH"))
            }
            TargetKind::Dropin => start_dropin(b, sim, &body_plain).map(|(p, t)| {
                procs.push(p);
                Target {
                    proc_index: Some(procs.len() - 1),
                    ..t
                }
            }),
            TargetKind::Passthrough
            | TargetKind::Gateway
            | TargetKind::Redis
            | TargetKind::BasePassthrough
            | TargetKind::BaseGateway => {
                let gateway = matches!(kind, TargetKind::Gateway | TargetKind::BaseGateway);
                // The `redis` target's own redis-server first; it is stopped (dropped) if
                // gstgate does not start.
                let redis = if kind == TargetKind::Redis {
                    start_redis(dir, layout).map(Some)
                } else {
                    Ok(None)
                };
                redis
                    .and_then(|redis| {
                        let url = redis.as_ref().map(|(_, url)| url.as_str());
                        start_gstgate(b, sim, kind, url, None).map(|g| (g, redis))
                    })
                    .map(|((p, proxy, admin), redis)| {
                        // gstgate before its redis-server, so that it is stopped first.
                        procs.push(p);
                        let proc_index = Some(procs.len() - 1);
                        let store_pid = redis.map(|(r, _)| {
                            let pid = r.pid();
                            procs.push(r);
                            pid
                        });
                        Target {
                            kind,
                            url: format!("{proxy}{INVOICE_PATH}"),
                            body: if gateway {
                                body_plain.clone()
                            } else {
                                body_envelope.clone()
                            },
                            headers: vec![
                                ("x-api-key".into(), API_KEY.into()),
                                ("gstin".into(), GSTIN.into()),
                            ],
                            proc_index,
                            admin_url: Some(admin),
                            store_pid,
                            reply_sek: None,
                        }
                    })
            }
        };
        match prepared {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("gateway-bench: skipping {}: {e:#}", kind.name());
                skipped.push((kind, format!("{e:#}")));
            }
        }
    }
    (targets, procs)
}

/// Verifies every target (see `verify`); one that fails is left out, with the reason in
/// `skipped`. Also writes each target's headers file for wrk.
pub(crate) fn verify_all(
    b: &Bench,
    targets: Vec<Target>,
    skipped: &mut Vec<(TargetKind, String)>,
) -> Result<Vec<Target>> {
    let Bench { dir, http, .. } = b;
    // A benchmark of errors is worthless: every target must produce a real IRN first.
    let mut verified: Vec<Target> = Vec::new();
    for t in targets {
        fs::write(t.headers_file(dir), t.headers_text())?;
        match verify(http, &t) {
            Ok(irn) => {
                eprintln!(
                    "gateway-bench: {} verified (Status 1, Irn {}…)",
                    t.kind.name(),
                    &irn[..irn.len().min(16)]
                );
                verified.push(t);
            }
            Err(e) => {
                eprintln!(
                    "gateway-bench: skipping {}: verification failed: {e:#}",
                    t.kind.name()
                );
                skipped.push((t.kind, format!("verification failed: {e:#}")));
            }
        }
    }
    Ok(verified)
}

fn start_nginx(
    manifest: &Path,
    dir: &Path,
    layout: &Layout,
    sim_addr: &str,
    token: &str,
) -> Result<(Proc, String)> {
    let ndir = dir.join("nginx");
    fs::create_dir_all(&ndir)?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let template = fs::read_to_string(manifest.join("bench/nginx.conf.in"))?;
    let conf = template
        .replace("@DIR@", &ndir.display().to_string())
        .replace("@LISTEN@", &listen)
        .replace("@UPSTREAM@", sim_addr)
        .replace("@CLIENT_ID@", CLIENT_ID)
        .replace("@CLIENT_SECRET@", CLIENT_SECRET)
        .replace("@GSTIN@", GSTIN)
        .replace("@USER@", USER_DIRECT.0)
        .replace("@TOKEN@", token);
    let conf_path = ndir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let mut cmd = pinned(layout.proxy.as_deref(), Path::new("nginx"));
    cmd.arg("-p").arg(&ndir).arg("-c").arg(&conf_path);
    let mut p = Proc::spawn("nginx", cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.check_alive()?;
        if TcpStream::connect(&listen).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "nginx did not open {listen}: {}",
            p.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, format!("http://{listen}{INVOICE_PATH}")))
}

/// Starts the floor proxy (floor.rs: this binary with `--serve-floor`), injecting the headers
/// nginx injects; `per_core` runs it thread-per-core.
fn start_floor(
    dir: &Path,
    layout: &Layout,
    sim_addr: &str,
    token: &str,
    per_core: bool,
) -> Result<(Proc, String)> {
    let cfg = crate::floor::FloorConfig {
        listen: "127.0.0.1:0".parse()?,
        upstream: sim_addr.parse()?,
        headers: [
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("Gstin", GSTIN),
            ("user_name", USER_DIRECT.0),
            ("AuthToken", token),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        per_core,
    };
    let cfg_path = dir.join(if per_core {
        "floor-tpc.json"
    } else {
        "floor.json"
    });
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let mut cmd = pinned(layout.proxy.as_deref(), &std::env::current_exe()?);
    cmd.arg("--serve-floor").arg(&cfg_path);
    let mut p = Proc::spawn(if per_core { "floor-tpc" } else { "floor" }, cmd, dir)?;
    let ready = "bench-floor listening on http://";
    let line = p.wait_for_line(ready, Duration::from_secs(20))?;
    let addr = after(&line, ready)?.to_string();
    Ok((p, format!("http://{addr}{INVOICE_PATH}")))
}

/// Starts the `redis` target's redis-server: on a free loopback port, without persistence
/// (`--save "" --appendonly no`), its working directory in the scratch directory, logging to
/// stdout; returns it, and its URL, once it says "Ready to accept connections".
fn start_redis(dir: &Path, layout: &Layout) -> Result<(Proc, String)> {
    let bin = which("redis-server").ok_or_else(|| {
        anyhow!("`redis-server` not found on PATH (bench/run.sh installs Debian's redis-server)")
    })?;
    let rdir = dir.join("redis");
    fs::create_dir_all(&rdir)?;
    let port = free_port()?;
    // Pinned to the upstream's CPU set (`layout.sim`), not the proxy's: like the upstream,
    // redis-server is a back end gstgate calls, and it must not take CPUs the layout gives the
    // proxy alone. With `split` that is the CPUs the proxy shares with the upstream anyway;
    // with `proxy-alone` it is CPU 0, with wrk and the upstream. In steady state it serves no
    // request (see "store ops/request" in the report).
    let mut cmd = pinned(layout.sim.as_deref(), &bin);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--logfile", ""])
        .arg("--dir")
        .arg(&rdir);
    let (p, _) = Proc::spawn_until(
        "redis-server",
        cmd,
        dir,
        "Ready to accept connections",
        Duration::from_secs(30),
    )?;
    let url = format!("redis://127.0.0.1:{port}");
    eprintln!("gateway-bench: redis-server at {url}");
    Ok((p, url))
}

/// Starts the `dropin` target: gstgate in gateway mode with drop-in on, then a drop-in login
/// over HTTP as an unmodified NIC client makes it; the body is the invoice under the drop-in
/// SEK and the headers are the client's own. Returns the process and the target (its
/// `proc_index` left for the caller to set).
fn start_dropin(b: &Bench, sim: &Upstream, body_plain: &Path) -> Result<(Proc, Target)> {
    let key_path = b.dir.join("dropin-key.pem");
    let pair = KeyPair::generate()?;
    let pem = pair.to_pkcs8_pem()?;
    // gstgate refuses a drop-in key that others can read; created 0600, it never is.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .with_context(|| format!("writing {}", key_path.display()))?;
    let (p, proxy, admin) = start_gstgate(b, sim, TargetKind::Dropin, None, Some(&key_path))?;
    let (token, sek) = nic_login(
        &b.http,
        &proxy,
        &pair.public_key(),
        (DROPIN_CLIENT_ID, DROPIN_CLIENT_SECRET),
        USER_DROPIN,
    )
    .context("drop-in login to gstgate")?;
    let body = b.dir.join("body-dropin.json");
    fs::write(
        &body,
        serde_json::to_vec(&json!({ "Data": sek.encrypt_b64(&fs::read(body_plain)?) }))?,
    )?;
    let target = Target {
        kind: TargetKind::Dropin,
        url: format!("{proxy}{INVOICE_PATH}"),
        body,
        headers: vec![
            ("client_id".into(), DROPIN_CLIENT_ID.into()),
            ("client_secret".into(), DROPIN_CLIENT_SECRET.into()),
            ("Gstin".into(), GSTIN.into()),
            ("user_name".into(), USER_DROPIN.0.into()),
            ("AuthToken".into(), token),
        ],
        proc_index: None,
        admin_url: Some(admin),
        store_pid: None,
        reply_sek: Some(sek),
    };
    Ok((p, target))
}

/// Starts `gstgate serve` for a gstgate target (`passthrough`, `gateway`, `dropin`, `redis`):
/// the same configuration for all but the encryption mode, the upstream user, for `redis` the
/// session store at `redis_url`, and for `dropin` the drop-in key at `dropin_key` and a
/// drop-in client.
fn start_gstgate(
    b: &Bench,
    sim: &Upstream,
    kind: TargetKind,
    redis_url: Option<&str>,
    dropin_key: Option<&Path>,
) -> Result<(Proc, String, String)> {
    let Bench {
        opts,
        layout,
        bin,
        dir,
        ..
    } = b;
    let Upstream {
        url: sim_url,
        public_key_path: sim_pub,
        ..
    } = sim;
    let (mode, (user, pass)) = match kind {
        TargetKind::Gateway => ("gateway", USER_GATEWAY),
        TargetKind::Dropin => ("gateway", USER_DROPIN),
        TargetKind::Redis => ("passthrough", USER_REDIS),
        TargetKind::BasePassthrough => ("passthrough", USER_BASE_PASSTHROUGH),
        TargetKind::BaseGateway => ("gateway", USER_BASE_GATEWAY),
        _ => ("passthrough", USER_PASSTHROUGH),
    };
    let bin = match (kind, &opts.baseline) {
        (TargetKind::BasePassthrough | TargetKind::BaseGateway, Some(base)) => base,
        _ => bin,
    };
    let store = match redis_url {
        Some(url) => format!(
            "backend = \"redis\"\nredis_url = \"{url}\"\nencryption_key = \"{STORE_KEY}\"\nreplicas = 1"
        ),
        None => "backend = \"memory\"".to_string(),
    };
    let (dropin_upstream, dropin_client) = match dropin_key {
        Some(key) => (
            format!("dropin_private_key = \"{}\"\n", key.display()),
            format!(
                "\n[[client]]\nname = \"bench-dropin\"\nclient_id = \"{DROPIN_CLIENT_ID}\"\nclient_secret_sha256 = \"{}\"\ngstins = [\"{GSTIN}\"]\n",
                hex_sha256(DROPIN_CLIENT_SECRET.as_bytes())
            ),
        ),
        None => (String::new(), String::new()),
    };
    let name = kind.name();
    let config = format!(
        r#"# gstgate benchmark config ({name}: {mode}); written by benches/gateway/main.rs
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"

[store]
{store}

[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "{sim_url}"
routes = ["/eivital/", "/eicore/", "/eiewb/"]
auth_path = "{AUTH_PATH}"
public_key = "{pubkey}"
encryption = "{mode}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
gstin_checksum = "enforce"
{dropin_upstream}
[[credential]]
gstin = "{GSTIN}"
username = "{user}"
password = "{pass}"
upstreams = ["einvoice"]

{other_clients}[[client]]
name = "bench"
api_key_sha256 = "{key_hash}"
gstins = ["*"]
{dropin_client}"#,
        pubkey = sim_pub.display(),
        key_hash = hex_sha256(API_KEY.as_bytes()),
        other_clients = other_clients(opts.clients),
    );
    let path = dir.join(format!("gstgate-{name}.toml"));
    fs::write(&path, config)?;
    let mut cmd = pinned(layout.proxy.as_deref(), bin);
    cmd.arg("serve").arg("--config").arg(&path);
    for kv in &opts.gstgate_env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--gstgate-env wants KEY=VALUE, not {kv:?}"))?;
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(&format!("gstgate-{name}"), cmd, dir)?;
    let line = p.wait_for_line("gstgate ready: proxy http://", Duration::from_secs(60))?;
    // "gstgate ready: proxy http://ADDR admin http://ADDR"
    let proxy = after(&line, "proxy ")?.to_string();
    let admin = after(&line, "admin ")?.to_string();
    Ok((p, proxy, admin))
}

/// Sends the target's request once and insists on a real IRN in the reply.
pub(crate) fn verify(http: &Http, t: &Target) -> Result<String> {
    let mut headers = t.headers.clone();
    headers.push(("content-type".into(), "application/json".into()));
    let body = fs::read(&t.body)?;
    let (status, reply) = http.post(&t.url, &headers, body)?;
    let text = String::from_utf8_lossy(&reply);
    ensure!(status == 200, "HTTP {status}: {}", clip(&text, 400));
    let mut v: Value = serde_json::from_slice(&reply)
        .with_context(|| format!("reply is not JSON: {}", clip(&text, 400)))?;
    ensure!(
        status_is_one(&v["Status"]),
        "Status is not 1: {}",
        clip(&text, 400)
    );
    let data = match &t.reply_sek {
        Some(sek) => {
            let sealed = v["Data"]
                .as_str()
                .ok_or_else(|| anyhow!("Data is not a string: {}", clip(&text, 400)))?;
            let plain = sek
                .decrypt_b64(sealed)
                .context("Data does not decrypt with the drop-in SEK")?;
            serde_json::from_slice(&plain).context("the decrypted Data is not JSON")?
        }
        None => v["Data"].take(),
    };
    let irn = data["Irn"]
        .as_str()
        .ok_or_else(|| anyhow!("no Data.Irn in the reply: {}", clip(&text, 400)))?;
    ensure!(!irn.is_empty(), "empty Irn");
    Ok(irn.to_string())
}

fn status_is_one(v: &Value) -> bool {
    v.as_i64() == Some(1) || v.as_str() == Some("1")
}

/// NIC e-invoice login to the upstream with the GSP client credentials; returns the token
/// after checking that the SEK unwraps under the AppKey.
pub(crate) fn login(
    http: &Http,
    sim_url: &str,
    key: &PublicKey,
    user: (&str, &str),
) -> Result<String> {
    nic_login(http, sim_url, key, (CLIENT_ID, CLIENT_SECRET), user).map(|(token, _)| token)
}

/// NIC e-invoice login at `base_url` (the upstream, or gstgate for a drop-in client):
/// RSA(B64(json)) with a fresh AppKey; returns the token and the SEK unwrapped with it.
fn nic_login(
    http: &Http,
    base_url: &str,
    key: &PublicKey,
    (client_id, client_secret): (&str, &str),
    (user, pass): (&str, &str),
) -> Result<(String, AesKey)> {
    let app_key = AesKey::random();
    let inner = json!({
        "UserName": user,
        "Password": pass,
        "AppKey": app_key.to_base64().as_str(),
        "ForceRefreshAccessToken": false,
    });
    let cipher = key.encrypt(b64_encode(&serde_json::to_vec(&inner)?).as_bytes())?;
    let body = serde_json::to_vec(&json!({ "Data": b64_encode(&cipher) }))?;
    let headers = vec![
        ("client_id".to_string(), client_id.to_string()),
        ("client_secret".to_string(), client_secret.to_string()),
        ("Gstin".to_string(), GSTIN.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let (status, reply) = http.post(&format!("{base_url}{AUTH_PATH}"), &headers, body)?;
    let v: Value = serde_json::from_slice(&reply).with_context(|| {
        format!(
            "HTTP {status}, not JSON: {}",
            clip(&String::from_utf8_lossy(&reply), 300)
        )
    })?;
    ensure!(status_is_one(&v["Status"]), "login failed: {v}");
    let token = v["Data"]["AuthToken"]
        .as_str()
        .ok_or_else(|| anyhow!("no AuthToken: {v}"))?;
    let sek = v["Data"]["Sek"]
        .as_str()
        .ok_or_else(|| anyhow!("no Sek: {v}"))?;
    let sek = app_key
        .unwrap_key(sek)
        .context("the SEK does not unwrap under our AppKey")?;
    Ok((token.to_string(), sek))
}

/// `bench/invoice.json`, compacted, dated today (IST) so that no date rule can reject it.
pub(crate) fn invoice_json(manifest: &Path) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(&fs::read(manifest.join("bench/invoice.json"))?)?;
    let ist = chrono::Utc::now() + chrono::Duration::minutes(330);
    let today = ist.format("%d/%m/%Y").to_string();
    v["DocDtls"]["Dt"] = json!(today);
    v["RefDtls"]["DocPerdDtls"]["InvStDt"] = json!(today);
    v["RefDtls"]["DocPerdDtls"]["InvEndDt"] = json!(today);
    Ok(v)
}

fn bin_supports_serve(bin: &Path) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `count − 1` callers besides the benchmark's, each with a key of its own (`--clients`).
fn other_clients(count: u32) -> String {
    (1..count)
        .map(|i| {
            format!(
                "[[client]]\nname = \"asp-{i}\"\napi_key_sha256 = \"{}\"\ngstins = [\"*\"]\n\n",
                hex_sha256(format!("bench-other-key-{i}").as_bytes())
            )
        })
        .collect()
}
