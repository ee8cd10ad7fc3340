//! Listeners and lifecycle: builds the gateway from its configuration (opening the session
//! store and resuming its sessions before anything listens), serves the proxy and admin ports,
//! and shuts down gracefully on SIGTERM/SIGINT, flushing the store last.
//!
//! Each listener's connections are served by `crate::listener`; on a shutdown signal the
//! listeners close at once and in-flight requests get `shutdown_grace` to finish.
//!
//! Every task the gateway spawns is on the [`Tasks`] the server owns, so shutdown goes in
//! order: the listeners drain, then the background loops (certificate watcher, store writer,
//! alert watcher) stop and work still under way gets [`TASKS_STOP`] to end, then the queued
//! alerts and the store's last changes are flushed, and only then does the process exit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::admin::{self, Admin};
use crate::alerts::{self, Alerts};
use crate::clients::Clients;
use crate::config::{Config, StoreBackend, StoreConfig};
use crate::dropin::Dropin;
use crate::idempotency::Idempotency;
use crate::listener::{serve, Limits};
use crate::metrics::Metrics;
use crate::problem::{problem_response, GatewayError};
use crate::proxy::{Limits as ProxyLimits, Proxy};
use crate::reload::Reloader;
use crate::session::{Group, Sessions};
use crate::store::{Loaded, Memory, RedisSettings, Store};
use crate::tasks::Tasks;
use crate::tls::{self, ServerTls};
use crate::upstream::Upstream;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An upstream could not be built.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// A credential could not be turned into a session slot.
    #[error(transparent)]
    Sessions(#[from] crate::session::SessionsError),
    /// The client table is invalid.
    #[error("clients: {0}")]
    Clients(String),
    /// A listener could not be bound.
    #[error("{setting}: cannot listen on {addr}: {source}{}", in_use_hint(source))]
    Bind {
        /// The setting that names the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// `[alerts]` is invalid or its sender could not start.
    #[error(transparent)]
    Alerts(#[from] crate::alerts::AlertsError),
    /// The in-process simulator could not start.
    #[error("simulator: {0}")]
    Simulator(String),
    /// The session store could not be opened.
    #[error(transparent)]
    Store(#[from] Box<crate::store::StoreError>),
    /// The listeners' certificate or key could not be loaded.
    #[error("server.tls_cert / tls_key: {0}")]
    Tls(Box<crate::tls::ServerTlsError>),
}

/// A running gateway.
pub struct Running {
    /// The proxy listener's address.
    pub proxy_addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    /// The in-process simulator's address, if the config runs one.
    pub simulator_addr: Option<SocketAddr>,
    /// `https` when the listeners serve TLS, else `http`.
    pub scheme: &'static str,
    /// Tells the listeners to stop accepting and drain.
    stop_listening: watch::Sender<bool>,
    /// The two listeners' tasks, which end once drained (within `shutdown_grace`).
    listeners: Vec<tokio::task::JoinHandle<()>>,
    tasks: Tasks,
    simulator: Option<crate::sim::SimHandle>,
    alerts: Arc<Alerts>,
    store: Arc<Store>,
    /// Reloads the configuration on `SIGHUP`.
    pub reloader: Arc<Reloader>,
}

/// After the listeners drained, how long work still under way (a login an admin call started,
/// an alert episode being recorded) may take before it is abandoned.
pub const TASKS_STOP: Duration = Duration::from_secs(5);

impl Running {
    /// Stops in order: the listeners stop accepting and drain (up to the grace period), the
    /// background loops stop and the gateway's other tasks get [`TASKS_STOP`] to end, queued
    /// alerts get their flush, and the store's last changes are written.
    pub async fn shutdown(self) {
        let _ = self.stop_listening.send(true);
        for listener in self.listeners {
            let _ = listener.await;
        }
        let abandoned = self.tasks.shutdown(TASKS_STOP).await;
        if abandoned > 0 {
            tracing::warn!(
                tasks = abandoned,
                "tasks still running at shutdown were abandoned"
            );
        }
        // Alerts raised while draining still get a short chance to go out; a stuck webhook
        // holds shutdown up for at most `alerts::SHUTDOWN_FLUSH`.
        self.alerts.shutdown().await;
        // Last: every task that could change a session has ended, so nothing queued after
        // this flush is lost.
        if self.store.flush().await {
            tracing::info!(store = %self.store.place(), "session store flushed");
        } else {
            tracing::error!(store = %self.store.place(),
                "the last session changes could not be written to the store");
        }
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
    }
}

/// Builds everything from `config` and starts serving; returns once both ports listen.
pub async fn start(
    mut config: Config,
    path: PathBuf,
    options: Options,
) -> Result<Running, StartError> {
    for warning in crate::upstream::config_warnings(&config) {
        tracing::warn!("{warning}");
    }
    let simulator = match &config.simulator {
        Some(sim) => Some(start_simulator(&config, sim).await?),
        None => None,
    };
    let (metrics, mut registry) = Metrics::new();
    if options.heap_metric {
        registry.register_collector(Box::new(crate::metrics::process::HeapMetric));
    }
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| Upstream::from_config(u, metrics.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let tasks = Tasks::default();
    let sessions = Sessions::new(&upstreams, &config.credentials, metrics.clone(), &tasks)?;
    // The slot table holds what a credential needs from here on; with 100,000 credentials the
    // parsed entries are tens of megabytes that the store's load would otherwise pile on.
    drop(std::mem::take(&mut config.credentials));
    let (store, loaded) = open_store(&config.store, &metrics, &tasks).await?;
    let resumed = sessions.resume(&store, loaded);
    tracing::info!(store = %store.place(), resumed, "sessions resumed from the store");
    if store.is_shared() {
        sessions.join_group(Group {
            lease: config.store.lease,
            replicas: config.store.replicas,
        });
    }
    let dropin = Arc::new(Dropin::new(metrics.clone()));
    dropin.attach(store.clone(), &tasks);
    store.spawn_writer();
    store.spawn_health(STORE_HEALTH_EVERY);
    registry.register_collector(Box::new(crate::session::gauges::SessionGauges::new(
        &sessions,
    )));
    let alerts = Alerts::new(&config.alerts, metrics.clone())?;
    alerts.attach_store(store.clone(), tasks.clone()).await;
    alerts::watcher::spawn(&tasks, &sessions, alerts.clone(), alerts.check_interval());
    let clients = Clients::from_config(&config.clients).map_err(StartError::Clients)?;
    let server = &config.server;
    let proxy = Arc::new(
        Proxy::new(
            clients,
            upstreams.clone(),
            sessions.clone(),
            metrics,
            ProxyLimits {
                max_header_bytes: server.max_header_bytes,
                max_body_bytes: server.max_body_bytes,
                request_timeout: server.request_timeout,
                replicas: config.store.replicas,
            },
            dropin.clone(),
        )
        .with_idempotency(Idempotency::new(
            store.clone(),
            tasks.clone(),
            &config.idempotency,
            config.store.replicas,
        )),
    );
    let reloader = Arc::new(Reloader::new(
        path,
        &config,
        sessions.clone(),
        proxy.clone(),
    ));
    let admin = Arc::new(Admin {
        sessions,
        dropin,
        registry,
        upstreams,
        token: server.admin_token.clone(),
        monitoring_token: server.monitoring_token.clone(),
        request_timeout: server.request_timeout,
        body_timeout: server.header_read_timeout,
        reloader: reloader.clone(),
        tasks: tasks.clone(),
    });

    let tls = match tls::Files::of(server) {
        Some(files) => Some(ServerTls::open(files).map_err(|e| StartError::Tls(Box::new(e)))?),
        None => None,
    };
    let bind = |setting: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                setting,
                addr,
                source,
            })
    };
    let proxy_listener = bind("server.listen", server.listen).await?;
    let admin_listener = bind("server.admin_listen", server.admin_listen).await?;
    let local = |l: &TcpListener, setting: &'static str, addr| {
        l.local_addr().map_err(|source| StartError::Bind {
            setting,
            addr,
            source,
        })
    };
    let proxy_addr = local(&proxy_listener, "server.listen", server.listen)?;
    let admin_addr = local(&admin_listener, "server.admin_listen", server.admin_listen)?;

    let (stop_listening, watch_rx) = watch::channel(false);
    let limits = Limits {
        max_header_bytes: server.max_header_bytes,
        header_read_timeout: server.header_read_timeout,
        grace: server.shutdown_grace,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let proxy_task = tasks.spawn(serve(
        proxy_listener,
        limits,
        tls.clone().map(|t| (t, tls::Listener::Proxy)),
        watch_rx.clone(),
        move |req, _peer| proxy.clone().serve(req),
    ));
    let router = admin::router(admin);
    let max_header_bytes = server.max_header_bytes;
    let admin_task = tasks.spawn(serve(
        admin_listener,
        limits,
        tls.clone().map(|t| (t, tls::Listener::Admin)),
        watch_rx,
        move |mut req: Request<Incoming>, peer| {
            let router = router.clone();
            async move {
                req.extensions_mut().insert(crate::request::Peer(peer));
                let id = crate::request::request_id(req.headers());
                // The router's problem bodies carry the same id as the header.
                req.extensions_mut().insert(admin::RequestId(id.clone()));
                let head = crate::request::head_len(req.method(), req.uri(), req.headers());
                let mut res = if head > max_header_bytes {
                    problem_response(&GatewayError::HeadersTooLarge(max_header_bytes), &id)
                } else {
                    match router.oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                };
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    res.headers_mut()
                        .insert(crate::request::REQUEST_ID.clone(), v);
                }
                Ok::<_, Infallible>(res)
            }
        },
    ));
    if let Some(tls) = &tls {
        tls.spawn_watcher(&tasks);
    }
    Ok(Running {
        proxy_addr,
        admin_addr,
        simulator_addr: simulator.as_ref().map(|s| s.local_addr()),
        scheme,
        stop_listening,
        listeners: vec![proxy_task, admin_task],
        tasks,
        simulator,
        alerts,
        store,
        reloader,
    })
}

/// How often a shared store is checked for `gstgate_store_up` and `/readyz`.
const STORE_HEALTH_EVERY: Duration = Duration::from_secs(2);

/// An opened store and the records read from it.
type Opened = (Arc<Store>, HashMap<String, Loaded>);

/// The store and the records it holds.
async fn open_store(
    config: &StoreConfig,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
) -> Result<Opened, StartError> {
    let path = match (config.backend, &config.path) {
        (StoreBackend::Embedded, Some(path)) => path,
        (StoreBackend::Embedded, None) => Path::new(crate::config::DEFAULT_STORE_FILE),
        (StoreBackend::Memory, _) => {
            tracing::info!("store.backend = \"memory\": sessions are lost when gstgate stops");
            let memory = Memory::default();
            let store = Store::in_memory(&memory, false, metrics.clone(), tasks.clone());
            return Ok((store, HashMap::new()));
        }
        (StoreBackend::Redis, _) => return open_redis(config, metrics, tasks).await,
    };
    let opened = Store::open(
        path,
        config.encryption_key.as_ref(),
        config.previous_encryption_key.as_ref(),
        metrics.clone(),
        tasks.clone(),
    )
    .map_err(Box::new)?;
    Ok(opened)
}

/// The shared Redis store (its settings were checked with the configuration).
async fn open_redis(
    config: &StoreConfig,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
) -> Result<Opened, StartError> {
    use secrecy::ExposeSecret as _;
    let invalid =
        |m: &str| StartError::Store(Box::new(crate::store::StoreError::RedisUrl(m.to_owned())));
    let (Some(url), Some(key)) = (&config.redis_url, &config.encryption_key) else {
        return Err(invalid(
            "the redis backend needs redis_url and encryption_key",
        ));
    };
    let ca_pem = match &config.redis_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| {
            StartError::Store(Box::new(crate::store::StoreError::Io {
                path: path.clone(),
                source,
            }))
        })?),
        None => None,
    };
    let settings = RedisSettings {
        url: url.expose_secret(),
        ca_pem,
        prefix: &config.key_prefix,
    };
    Store::open_redis(
        settings,
        key,
        config.previous_encryption_key.as_ref(),
        metrics.clone(),
        tasks.clone(),
    )
    .await
    .map_err(|e| StartError::Store(Box::new(e)))
}

async fn start_simulator(
    config: &Config,
    sim: &crate::config::SimulatorConfig,
) -> Result<crate::sim::SimHandle, StartError> {
    use secrecy::ExposeSecret;
    let users = config
        .credentials
        .iter()
        .map(|c| crate::sim::SimUser {
            gstin: c.gstin.to_ascii_uppercase(),
            username: c.username.clone(),
            password: c.password.expose_secret().to_owned(),
        })
        .collect();
    let clients = config
        .upstreams
        .iter()
        .map(|u| crate::sim::SimClient {
            client_id: u.client_id.expose_secret().to_owned(),
            client_secret: u.client_secret.expose_secret().to_owned(),
        })
        .collect();
    let cfg = crate::sim::SimConfig {
        listen: sim.listen,
        key_file: Some(sim.key_file.clone()),
        public_key_out: Some(sim.public_key_out.clone()),
        token_ttl: sim.token_ttl,
        force_window: sim.force_window,
        fixed_otp: sim.fixed_otp.clone(),
        users,
        clients,
        ..crate::sim::SimConfig::default()
    };
    crate::sim::start(cfg)
        .await
        .map_err(|e| StartError::Simulator(e.to_string()))
}

/// What `serve`'s command line adds to the configuration file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Report `gstgate_heap_allocated_bytes` on /metrics (costly at scrape time).
    pub heap_metric: bool,
}

/// Runs the gateway until SIGTERM or SIGINT: prints the ready line, then shuts down gracefully.
pub async fn run(config: Config, path: PathBuf, options: Options) -> Result<(), StartError> {
    // Taken before start-up, so that a `systemctl reload` during it does not end the process
    // (SIGHUP's default action); it is acted on once the gateway serves.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let demo_key = demo_key_hint(&config);
    let running = start(config, path, options).await?;
    crate::heap::release_free_memory();
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "gstgate ready: proxy {scheme}://{} admin {scheme}://{}",
            running.proxy_addr,
            running.admin_addr,
            scheme = running.scheme
        );
        if let (Some(sim), Some((key, gstin))) = (running.simulator_addr, demo_key) {
            let _ = writeln!(out, "simulator (GSP sandbox) on http://{sim}");
            let _ = writeln!(out, "try:\n{}", demo_curl(running.proxy_addr, &key, &gstin));
        }
        let _ = out.flush();
    }
    tracing::info!(proxy = %running.proxy_addr, admin = %running.admin_addr, "gstgate ready");
    let reloads = running
        .tasks
        .spawn_until_shutdown(reload_on_sighup(hangups, running.reloader.clone()));
    shutdown_signal().await;
    reloads.abort();
    tracing::info!("shutting down: refusing new connections, finishing in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Reloads the configuration on every `SIGHUP`; a refused file is logged with the reason and
/// the running configuration stays.
async fn reload_on_sighup(
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    reloader: Arc<Reloader>,
) {
    let mut hangups = match hangups {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; use POST /admin/reload");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let reloader = reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(_)) => crate::admin::log_signal_reload(false),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "configuration reload refused; the running configuration stays");
                crate::admin::log_signal_reload(true);
            }
            Err(e) => {
                tracing::error!(error = %e, "the reload task failed");
                crate::admin::log_signal_reload(true);
            }
        }
    }
}

/// The demo config may name its caller key in `GSTGATE_DEMO_KEY`-style comments; the ready
/// line needs the plain key, which only the demo knows, so the demo config sets it in
/// `[simulator] demo_api_key`.
fn demo_key_hint(config: &Config) -> Option<(String, String)> {
    let sim = config.simulator.as_ref()?;
    let key = sim.demo_api_key.clone()?;
    let gstin = config.credentials.first()?.gstin.to_ascii_uppercase();
    Some((key, gstin))
}

fn demo_curl(proxy: SocketAddr, key: &str, gstin: &str) -> String {
    let port = proxy.port();
    let host = if proxy.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        proxy.ip().to_string()
    };
    let doc = format!("DEMO/{}", rand::random::<u16>());
    let today = chrono::Utc::now().format("%d/%m/%Y");
    format!(
        "curl -s http://{host}:{port}/eicore/v1.03/Invoice -H 'x-api-key: {key}' -H 'gstin: {gstin}' -H 'content-type: application/json' -d '{{\"Version\":\"1.1\",\"TranDtls\":{{\"TaxSch\":\"GST\",\"SupTyp\":\"B2B\"}},\"DocDtls\":{{\"Typ\":\"INV\",\"No\":\"{doc}\",\"Dt\":\"{today}\"}},\"SellerDtls\":{{\"Gstin\":\"{gstin}\",\"LglNm\":\"Demo Seller\",\"Addr1\":\"1 Demo Road\",\"Loc\":\"Mumbai\",\"Pin\":400001,\"Stcd\":\"27\"}},\"BuyerDtls\":{{\"Gstin\":\"27AAACR5055K1Z7\",\"LglNm\":\"Demo Buyer\",\"Pos\":\"27\",\"Addr1\":\"2 Demo Road\",\"Loc\":\"Pune\",\"Pin\":411001,\"Stcd\":\"27\"}},\"ItemList\":[{{\"SlNo\":\"1\",\"IsServc\":\"N\",\"HsnCd\":\"1001\",\"Qty\":1,\"Unit\":\"NOS\",\"UnitPrice\":100,\"TotAmt\":100,\"AssAmt\":100,\"GstRt\":18,\"CgstAmt\":9,\"SgstAmt\":9,\"TotItemVal\":118}}],\"ValDtls\":{{\"AssVal\":100,\"CgstVal\":9,\"SgstVal\":9,\"TotInvVal\":118}}}}'"
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// What to do about an address another process holds: the most common start-up failure.
fn in_use_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (another process, perhaps an earlier gstgate, is listening there: stop it, or change the setting)"
    } else {
        ""
    }
}
