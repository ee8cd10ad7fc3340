//! Opening a connection to an upstream: TCP with the transport settings a long-lived gateway
//! needs, then TLS for `https` URLs, the whole set-up bounded by the connect timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

/// TCP keepalive probes on pooled connections, so that a NAT or firewall that silently drops
/// an idle connection is noticed before a request (an IRN generation, say) is written into it.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Unanswered keepalive probes before the connection is given up.
const KEEPALIVE_RETRIES: u32 = 3;
/// How long written data may stay unacknowledged before the kernel gives the connection up.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP, then TLS for `https` URLs, the whole set-up bounded by the connect timeout.
pub type Connector = ConnectTimeout<HttpsConnector<HttpConnector>>;

/// What a [`Connector`] opens: a TCP stream, wrapped in TLS for `https`.
pub type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Builds the connector for one upstream. TLS offers HTTP/1.1 only in ALPN: the client
/// speaks HTTP/1.1, which every GSP and NIC endpoint serves.
pub fn build(tls: rustls::ClientConfig, connect_timeout: Duration) -> Connector {
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
        .enable_http1()
        .wrap_connector(tcp);
    ConnectTimeout {
        inner: https,
        timeout: connect_timeout,
    }
}

/// The error type of a connection set-up.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
