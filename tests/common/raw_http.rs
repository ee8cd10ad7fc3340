//! Raw HTTP/1.1 over TCP, for requests a well-behaved client would not send and for answers
//! read byte for byte.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `head` (and `body`) on a raw connection to `addr` and returns everything the server
/// writes until it closes, failing after `within`.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    within: Duration,
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete answer within {within:?}; got {:?}",
                String::from_utf8_lossy(&out)
            )
        })
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The status, lower-cased head and JSON body of a raw HTTP/1.1 response.
pub fn parse_raw(text: &str) -> (u16, String, Value) {
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, head.to_ascii_lowercase(), body)
}
