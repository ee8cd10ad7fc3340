//! A listener's connections: accepted, TLS-wrapped when configured, served by hyper with the
//! header size limit and the header-read timeout that are the slowloris defences, and drained
//! at shutdown.
//!
//! Connections are served by hyper directly (not `axum::serve`) so that those limits are ours
//! to set. On a shutdown signal the listener is closed at once (new connections are refused),
//! idle keep-alive connections are closed, and in-flight requests get the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::tls::{self, ServerTls};

/// What bounds a listener's connections.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// The largest request head.
    pub(crate) max_header_bytes: usize,
    /// How long a request head (and a TLS handshake) may take.
    pub(crate) header_read_timeout: Duration,
    /// How long requests under way get to finish at shutdown.
    pub(crate) grace: Duration,
}

/// A listener's TLS: the reloadable configuration and which listener it is for.
pub(crate) type ListenerTls = Option<(Arc<ServerTls>, tls::Listener)>;

/// hyper needs a read buffer of at least this many bytes.
const MIN_HYPER_BUFFER: usize = 8192;

/// hyper's read buffer, a hard bound on a request head: heads over `max_header_bytes` but
/// within this buffer reach the handler and get a problem document; only larger ones get
/// hyper's bare 431 and a closed connection. Twice the limit keeps the memory a slow or
/// hostile client can pin per connection bounded.
fn hyper_buffer(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).max(MIN_HYPER_BUFFER)
}

/// Whether a connection to an HTTPS listener opened with an HTTP request line instead of a
/// TLS handshake record (0x16): its first byte is an upper-case letter, as every HTTP method
/// starts with one. Only peeked, so a TLS client's bytes stay for the handshake.
async fn speaks_plain_http(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// The answer to plain HTTP on an HTTPS listener, as nginx gives it: without it the client
/// reads the TLS alert bytes as a garbled response, or nothing at all.
const PLAIN_HTTP_BODY: &str = concat!(
    r#"{"type":"https://gstgate.dev/problems/https_required","title":"HTTPS required","#,
    r#""status":400,"detail":"a plain HTTP request was sent to an HTTPS port","#,
    r#""code":"https_required","remedy":"Use https:// in the gateway's URL: this listener serves HTTPS only."}"#
);

/// Answers 400 `https_required` and closes. The request is read first (as much as has
/// arrived, up to a head's worth) so that closing with unread bytes does not reset the
/// connection before the client has read the answer.
async fn refuse_plain_http(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut scratch = [0u8; 8192];
    let _ = stream.read(&mut scratch).await;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        PLAIN_HTTP_BODY.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err()
        || stream.write_all(PLAIN_HTTP_BODY.as_bytes()).await.is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    // Whatever else the client sends before it sees the close is drained for the same reason,
    // within the caller's handshake bound.
    while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
}

/// Serves `listener` with `handler` until `stop` changes, then stops accepting, lets the
/// connections under way finish within `limits.grace`, and aborts the rest.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    tls: ListenerTls,
    mut stop: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<axum::body::Body>, Infallible>> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(hyper_buffer(limits.max_header_bytes))
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // The listener owns its connections' tasks: ended ones are reaped as they go, and the ones
    // still running when the grace period is over are aborted with the set.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                // The peer as an argument, not an extension: a request's extension map is an
                // allocation the proxy has no use for.
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| handler(req, peer));
                let watcher = graceful.watcher();
                let http = http.clone();
                let acceptor = tls.as_ref().map(|(t, which)| t.acceptor(*which));
                let handshake_timeout = limits.header_read_timeout;
                connections.spawn(async move {
                    let served = match acceptor {
                        None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                        Some(acceptor) => {
                            // The handshake runs in the connection's task, bounded like a
                            // request head, so a slow client holds up no one else.
                            let handshake = async move {
                                if speaks_plain_http(&stream).await {
                                    refuse_plain_http(stream).await;
                                    return Err(None);
                                }
                                acceptor.accept(stream).await.map_err(Some)
                            };
                            let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(Some(e))) => {
                                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Ok(Err(None)) => {
                                    tracing::debug!(peer = %peer, "plain HTTP on an HTTPS listener");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // Closing the listener is what makes new connections fail at once.
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => {
            tracing::warn!("shutdown grace period over; abandoning remaining connections");
        }
    }
    connections.shutdown().await;
}
