//! The `floor` target: the least a proxy built on gstgate's own stack can do per request.
//!
//! Why it exists: gstgate spends more CPU per request than nginx, and the question behind
//! every optimisation is how much of that is gstgate's own work (admission, the session, the
//! verdict, the log line) and how much is the stack it is built on (Tokio's work-stealing
//! runtime, hyper's HTTP/1 server and client). This proxy has the same stack and the same shape
//! as gstgate's passthrough — hyper's server connection with the same header timeout, the body
//! read whole, the upstream exchange on the request's own task over a kept connection, the
//! reply read whole and sent back — and none of the work: it adds the five e-invoice headers
//! nginx adds (built once), copies everything else through, and logs nothing. What gstgate
//! costs above it is gstgate's; what it costs above nginx is the stack's.
//!
//! Run by the orchestrator as `<bench binary> --serve-floor CONFIG.json`; prints
//! `bench-floor listening on http://ADDR` once ready.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Largest body read, either way (gstgate's default request limit).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// What the orchestrator starts the floor proxy with.
#[derive(Serialize, Deserialize)]
pub struct FloorConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Headers set on every forwarded request, as nginx's `proxy_set_header`.
    pub headers: Vec<(String, String)>,
    /// Thread-per-core (one current-thread runtime per CPU the process may run on) instead of
    /// Tokio's work-stealing runtime, which gstgate runs on.
    pub per_core: bool,
}

/// One upstream connection, driven by whichever request is using it.
struct Upstream {
    tx: SendRequest<Full<Bytes>>,
    io: Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

/// Runs the proxy until the process is killed.
pub fn main(config: &Path) -> Result<()> {
    let cfg: FloorConfig = serde_json::from_slice(
        &std::fs::read(config).with_context(|| format!("reading {}", config.display()))?,
    )?;
    let mut set = HeaderMap::new();
    for (name, value) in &cfg.headers {
        set.insert(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    set.insert(HOST, HeaderValue::from_str(&cfg.upstream.to_string())?);
    let set = Arc::new(set);
    if !cfg.per_core {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
            ready(listener.local_addr()?)?;
            serve(listener, set, cfg.upstream).await
        });
    }
    // Thread-per-core: a thread per CPU this process may run on (its affinity mask and CPU
    // quota, as nginx's `worker_processes auto`), each with its own current-thread runtime and
    // its own listener on the same port (`SO_REUSEPORT`: the kernel spreads connections), so
    // a connection, its task and its upstream connection never leave the thread that
    // accepted it.
    let threads = std::thread::available_parallelism()?.get();
    let mut listen = cfg.listen;
    let mut workers = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (set, upstream) = (set.clone(), cfg.upstream);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        workers.push(std::thread::spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async move {
                        let socket = if listen.is_ipv6() {
                            tokio::net::TcpSocket::new_v6()?
                        } else {
                            tokio::net::TcpSocket::new_v4()?
                        };
                        socket.set_reuseport(true)?;
                        socket.bind(listen)?;
                        let listener = socket.listen(1024)?;
                        bound_tx.send(listener.local_addr()?)?;
                        serve(listener, set, upstream).await
                    })
                });
            // A thread that stops would leave the run on fewer threads, its figures skewed
            // and nothing said: the whole proxy stops instead, as the single runtime does.
            if let Err(e) = served {
                eprintln!("bench-floor: error: {e:#}");
                std::process::exit(1);
            }
        }));
        // The first thread picks the port (the config may say 0); the others share it.
        listen = bound_rx
            .recv()
            .context("a floor thread failed before listening")?;
    }
    ready(listen)?;
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a floor thread panicked"))?;
    }
    Ok(())
}

/// Tells the orchestrator where the proxy listens.
fn ready(addr: SocketAddr) -> Result<()> {
    println!("bench-floor listening on http://{addr}");
    std::io::stdout().flush()?;
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    set: Arc<HeaderMap>,
    upstream: SocketAddr,
) -> Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (http, set) = (http.clone(), set.clone());
        // One upstream connection per caller connection: no pool to look into, the
        // cheapest way there is to keep connections.
        let kept: Arc<Mutex<Option<Upstream>>> = Arc::default();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                forward(req, upstream, set.clone(), kept.clone())
            });
            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    set: Arc<HeaderMap>,
    kept: Arc<Mutex<Option<Upstream>>>,
) -> Result<Reply, Infallible> {
    Ok(exchange(req, upstream, &set, &kept)
        .await
        .unwrap_or_else(|_| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }))
}

async fn exchange(
    req: Request<Incoming>,
    upstream: SocketAddr,
    set: &HeaderMap,
    kept: &Mutex<Option<Upstream>>,
) -> Result<Reply> {
    let (mut parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .to_bytes();
    parts.headers.remove(CONNECTION);
    for (name, value) in set {
        parts.headers.insert(name, value.clone());
    }
    let mut slot = kept.lock().await;
    let mut conn = match slot.take() {
        Some(conn) if !conn.tx.is_closed() => conn,
        _ => {
            let tcp = TcpStream::connect(upstream).await?;
            tcp.set_nodelay(true)?;
            let (tx, io) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            Upstream { tx, io }
        }
    };
    let sent = conn
        .tx
        .send_request(Request::from_parts(parts, Full::new(body)));
    let reply = drive(&mut conn.io, sent).await??;
    let (parts, body) = reply.into_parts();
    let body = drive(&mut conn.io, Limited::new(body, MAX_BODY).collect())
        .await?
        .map_err(|e| anyhow::anyhow!(e))?
        .to_bytes();
    *slot = Some(conn);
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Runs `work` while driving the connection that produces it (as gstgate's client does).
async fn drive<F: Future>(
    io: &mut Connection<TokioIo<TcpStream>, Full<Bytes>>,
    work: F,
) -> Result<F::Output> {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = std::pin::Pin::new(&mut *io).poll(cx) {
            // The connection ended; whatever `work` was waiting for will not come.
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            return Poll::Ready(Err(match done {
                Ok(()) => anyhow::anyhow!("upstream closed the connection"),
                Err(e) => e.into(),
            }));
        }
        work.as_mut().poll(cx).map(Ok)
    })
    .await
}
