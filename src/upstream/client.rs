//! The pooled HTTP client an upstream is called with: hyper-util's directly (reqwest's
//! redirect, retry and URL layers cost more CPU than the exchange itself; BENCHMARKS.md),
//! with the transport settings a long-lived gateway needs spelled out here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE: usize = 256;
/// TCP keepalive probes on pooled connections, so that a NAT or firewall that silently drops
/// an idle connection is noticed before a request (an IRN generation, say) is written into it.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Unanswered keepalive probes before the connection is given up.
const KEEPALIVE_RETRIES: u32 = 3;
/// How long written data may stay unacknowledged before the kernel gives the connection up.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The client type every upstream uses.
pub type HttpClient = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// TCP, then TLS for `https` URLs, the whole set-up bounded by the connect timeout.
pub type Connector = ConnectTimeout<HttpsConnector<HttpConnector>>;

/// Builds the client for one upstream.
pub fn build(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(KEEPALIVE));
    tcp.set_keepalive_interval(Some(KEEPALIVE));
    tcp.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    tcp.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(ConnectTimeout {
            inner: https,
            timeout: connect_timeout,
        })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bounds a whole connection set-up (DNS, TCP and TLS) by `connect_timeout`. hyper's TCP
/// connector bounds only the TCP part: a TLS handshake that stalled would otherwise run into
/// the request's total timeout and look like an upstream that had the request (504, a
/// counted login) rather than one that could not be reached.
#[derive(Clone)]
pub struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err("connection set-up (DNS, TCP, TLS) timed out".into()),
            }
        })
    }
}
