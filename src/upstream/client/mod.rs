//! The HTTP/1.1 client an upstream is called with.
//!
//! Each exchange runs on the caller's own task: it takes an idle connection from the
//! upstream's pool (or opens one), writes the request and reads the whole reply while driving
//! the connection itself, then puts the connection back. hyper-util's pooled client ran every
//! connection as a task of its own, fed through a channel, which cost a pool checkout and two
//! task wake-ups per request on the hot path (BENCHMARKS.md). A connection is only ever used
//! by one exchange at a time, and one whose exchange is abandoned (a timeout, a caller gone)
//! is closed rather than left with half a reply in it.

mod connect;
mod pool;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1;
use tower::Service;

pub use connect::BoxError;
use connect::{Connector, Stream};
use pool::{Origin, Pool};

use crate::body::{read_whole, ReadError};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No connection could be opened (DNS, TCP, TLS or the connect timeout), or the one opened
    /// closed before any of the request was written: nothing was sent.
    #[error("cannot connect to the upstream")]
    Connect(#[source] BoxError),
    /// The exchange failed once the request may have been written.
    #[error("the exchange with the upstream failed")]
    Failed(#[source] BoxError),
    /// The reply's body is larger than the limit.
    #[error("response exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// The URL has no host; configuration validation makes this unreachable.
    #[error("the upstream URL has no host")]
    NoHost,
}

/// One upstream's client: its connector and its idle connections.
pub struct HttpClient {
    connector: Connector,
    http1: http1::Builder,
    pool: Pool,
}

/// A connection and the handle requests are written into it with.
pub(super) struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    /// Boxed: its buffers and state are ≈ 1.7 KB, which every future holding a `Conn` (the
    /// exchange, and so each request's) would otherwise carry and copy when moved.
    io: Box<http1::Connection<Stream, Full<Bytes>>>,
    /// The connection future has finished: the connection is closed.
    done: bool,
}

impl HttpClient {
    /// The client for one upstream.
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        Self {
            connector: connect::build(tls, connect_timeout),
            http1: http1::Builder::new(),
            pool: Pool::default(),
        }
    }

    /// Sends `req` (an absolute URL) and reads the whole reply, of at most `limit` bytes.
    pub async fn exchange(
        &self,
        mut req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(http::response::Parts, Bytes), ExchangeError> {
        let origin = origin_form(&mut req)?;
        let (mut conn, reused) = match self.idle(&origin).await {
            Some(conn) => (conn, true),
            // Boxed: connecting (TCP, TLS, the handshake) is rare and its future large.
            None => (Box::pin(self.connect(&origin)).await?, false),
        };
        let sent = conn.tx.try_send_request(req);
        let reply = match conn.drive(sent).await {
            Ok(reply) => reply,
            Err(mut refused) => match (reused, refused.take_message()) {
                // A pooled connection the upstream was closing as the request reached it:
                // none of the request was written, so it goes to a new connection.
                (true, Some(req)) => {
                    conn = Box::pin(self.connect(&origin)).await?;
                    let sent = conn.tx.try_send_request(req);
                    conn.drive(sent).await.map_err(unsent_or_failed)?
                }
                (false, Some(_)) => {
                    return Err(ExchangeError::Connect(refused.into_error().into()))
                }
                (_, None) => return Err(ExchangeError::Failed(refused.into_error().into())),
            },
        };
        let (parts, body) = reply.into_parts();
        let body = match conn.drive(read_whole(body, limit)).await {
            Ok(body) => body,
            Err(ReadError::TooLarge(limit)) => return Err(ExchangeError::TooLarge(limit)),
            Err(ReadError::Failed(e)) => return Err(ExchangeError::Failed(e.into())),
        };
        if conn.kept() {
            self.pool.put(&origin, conn);
        }
        Ok((parts, body))
    }

    /// An idle connection to `origin` that can take a request now.
    async fn idle(&self, origin: &Origin) -> Option<Conn> {
        loop {
            let mut conn = self.pool.take(origin)?;
            if std::future::poll_fn(|cx| Poll::Ready(conn.reusable(cx))).await {
                return Some(conn);
            }
        }
    }

    /// A new connection to `origin`.
    async fn connect(&self, origin: &Origin) -> Result<Conn, ExchangeError> {
        let scheme = if origin.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(origin.authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()
            .map_err(|e| ExchangeError::Connect(e.into()))?;
        let stream = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(ExchangeError::Connect)?;
        let (tx, io) = self
            .http1
            .handshake(stream)
            .await
            .map_err(|e| ExchangeError::Connect(e.into()))?;
        Ok(Conn {
            tx,
            io: Box::new(io),
            done: false,
        })
    }
}

impl Conn {
    /// Runs `work` (a request's reply, a body) while driving the connection that produces it.
    async fn drive<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            // The connection first: what it reads is what `work` is waiting for.
            if !self.done && std::pin::Pin::new(&mut self.io).poll(cx).is_ready() {
                self.done = true;
            }
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Whether the connection is open and ready for a request; polling it lets it notice a
    /// close or stray bytes from the upstream while it sat idle.
    fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        if self.done || std::pin::Pin::new(&mut self.io).poll(cx).is_ready() {
            self.done = true;
            return false;
        }
        matches!(self.tx.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// Whether the connection may go back to the pool after a whole reply.
    fn kept(&self) -> bool {
        !self.done && !self.tx.is_closed()
    }
}

/// What a failed send means for the caller: hyper hands the request back only when none of it
/// was written, which is as good as a connection that could not be opened.
fn unsent_or_failed(
    mut refused: hyper::client::conn::TrySendError<Request<Full<Bytes>>>,
) -> ExchangeError {
    let unsent = refused.take_message().is_some();
    let error = refused.into_error().into();
    if unsent {
        ExchangeError::Connect(error)
    } else {
        ExchangeError::Failed(error)
    }
}

/// Turns `req`'s absolute URL into the origin-form HTTP/1.1 sends, with a `Host` header
/// (unless the request has one), and returns the origin it goes to.
fn origin_form(req: &mut Request<Full<Bytes>>) -> Result<Origin, ExchangeError> {
    // Taken apart rather than cloned: the parts of a URI built for one request share one
    // buffer, which a clone would first have to make shareable.
    let uri = std::mem::take(req.uri_mut()).into_parts();
    let authority = uri.authority.ok_or(ExchangeError::NoHost)?;
    let https = uri.scheme == Some(Scheme::HTTPS);
    let path = uri
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !req.headers().contains_key(HOST) {
        let host = super::base::host_header(https, &authority).ok_or(ExchangeError::NoHost)?;
        req.headers_mut().insert(HOST, host);
    }
    *req.uri_mut() = Uri::from(path);
    Ok(Origin { https, authority })
}

#[cfg(test)]
mod tests;
