//! Reading a whole body, the caller's or the upstream's, into one buffer.
//!
//! A GST request or reply is a JSON document of a few KB that nearly always arrives as one
//! piece: that piece is returned as it is, with no list of chunks (what `BodyExt::collect`
//! builds, two allocations a body) and no copy. A body in several pieces is joined once.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// It is longer than the limit.
    #[error("the body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// The connection failed while it was read.
    #[error("the body could not be read")]
    Failed(#[source] E),
}

/// The pieces read so far.
enum Pieces {
    None,
    One(Bytes),
    Joined(BytesMut),
}

/// Reads `body` to its end, refusing it as soon as it is longer than `limit` bytes (declared
/// or read). Trailers are ignored: no GST API sends any.
pub async fn read_whole<B: Body<Data = Bytes>>(
    body: B,
    limit: usize,
) -> Result<Bytes, ReadError<B::Error>> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge(limit));
    }
    let mut body = std::pin::pin!(body);
    let mut pieces = Pieces::None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::Failed)?.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(ReadError::TooLarge(limit));
        }
        pieces = match pieces {
            Pieces::None => Pieces::One(data),
            Pieces::One(first) => {
                // Room for what has arrived, not for what is announced: a caller (or an
                // upstream) announcing the limit and sending a byte at a time must not make
                // the gateway set the whole limit aside. Later pieces grow it by doubling.
                let mut joined = BytesMut::with_capacity(len);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Pieces::Joined(joined)
            }
            Pieces::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Pieces::Joined(joined)
            }
        };
    }
    Ok(match pieces {
        Pieces::None => Bytes::new(),
        Pieces::One(one) => one,
        Pieces::Joined(joined) => joined.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    use super::*;

    type Piece = Result<Frame<Bytes>, std::io::Error>;

    fn pieces(items: Vec<Piece>) -> impl Body<Data = Bytes, Error = std::io::Error> {
        StreamBody::new(futures_util::stream::iter(items))
    }

    fn data(text: &'static str) -> Piece {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    #[tokio::test]
    async fn one_piece_is_returned_as_it_came() {
        let sent = Bytes::from_static(b"{\"Status\":1}");
        let read = read_whole(Full::new(sent.clone()), 64).await.unwrap();
        assert_eq!(read, sent);
        // The very buffer, not a copy.
        assert_eq!(read.as_ptr(), sent.as_ptr());
    }

    #[tokio::test]
    async fn pieces_are_joined_in_order_and_trailers_ignored() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let body = pieces(vec![
            data("ab"),
            data(""),
            data("cd"),
            Ok(Frame::trailers(trailers)),
        ]);
        assert_eq!(read_whole(body, 4).await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn an_empty_body_reads_as_empty() {
        let read = read_whole(Full::<Bytes>::default(), 0).await.unwrap();
        assert!(read.is_empty());
        let read = read_whole(pieces(vec![]), 0).await.unwrap();
        assert!(read.is_empty());
    }

    #[tokio::test]
    async fn one_byte_over_the_limit_is_refused_whether_read_or_declared() {
        let body = pieces(vec![data("abc"), data("def")]);
        assert!(matches!(
            read_whole(body, 5).await,
            Err(ReadError::TooLarge(5))
        ));
        let declared = Full::new(Bytes::from_static(b"abcdef"));
        assert!(matches!(
            read_whole(declared, 5).await,
            Err(ReadError::TooLarge(5))
        ));
        let exact = pieces(vec![data("abc"), data("de")]);
        assert_eq!(read_whole(exact, 5).await.unwrap(), "abcde");
    }

    #[tokio::test]
    async fn a_failure_midway_is_the_connections() {
        let body = pieces(vec![data("ab"), Err(std::io::Error::other("reset"))]);
        assert!(matches!(
            read_whole(body, 64).await,
            Err(ReadError::Failed(_))
        ));
    }
}
