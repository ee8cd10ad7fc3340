//! What the store keeps of an idempotency key, and its byte layout: a claim while the first
//! request is in flight, an open key after an attempt whose outcome is unknown, or the
//! answer to replay. Every state carries the request's fingerprint, so that the same key
//! with another request is refused whatever the state.

use crate::metrics::GenerateOutcome;
use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

/// The layout's version byte, so a later layout can be told apart.
const VERSION: u8 = 1;
/// The tag of [`State::Claimed`].
const CLAIMED: u8 = 1;
/// The tag of [`State::Open`].
const OPEN: u8 = 2;
/// The tag of [`State::Answered`].
const ANSWERED: u8 = 3;

/// A SHA-256 of the request a key stands for (method, path and query, body).
pub type Fingerprint = [u8; 32];

/// A claim holder's random identity, so that a takeover is seen by the old holder.
pub type Owner = [u8; 16];

/// The stored answer to a key's request, replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its HTTP status.
    pub status: u16,
    /// Its `Content-Type`, if it had one.
    pub content_type: Option<String>,
    /// Its whole body.
    pub body: Bytes,
}

impl Answer {
    /// The answer as a replay: the same status, content type and body, marked replayed.
    pub fn replay(&self) -> Response<Body> {
        let mut res = Response::new(Body::from(self.body.clone()));
        *res.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        if let Some(ct) = self
            .content_type
            .as_deref()
            .and_then(|ct| HeaderValue::from_str(ct).ok())
        {
            res.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        res.headers_mut().insert(
            HeaderName::from_static(crate::outcome::HEADER),
            HeaderValue::from_static(GenerateOutcome::Replayed.label()),
        );
        res
    }
}

/// A key's state in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The first request is in flight on the replica `owner`, which renews `lease_until`.
    Claimed {
        /// The request the key stands for.
        fingerprint: Fingerprint,
        /// The holder.
        owner: Owner,
        /// Unix milliseconds after which the claim is abandoned (its replica died).
        lease_until: u64,
    },
    /// An attempt ended without an answer and may have reached the upstream: the next one
    /// must be told.
    Open {
        /// The request the key stands for.
        fingerprint: Fingerprint,
    },
    /// The answer, replayed for the rest of the window.
    Answered {
        /// The request the key stands for.
        fingerprint: Fingerprint,
        /// What the caller got.
        answer: Answer,
    },
}

impl State {
    /// The request the key stands for.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            State::Claimed { fingerprint, .. }
            | State::Open { fingerprint }
            | State::Answered { fingerprint, .. } => fingerprint,
        }
    }

    /// The byte layout: version, tag, fingerprint, then the state's fields (big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            State::Claimed {
                fingerprint,
                owner,
                lease_until,
            } => {
                out.push(CLAIMED);
                out.extend_from_slice(fingerprint);
                out.extend_from_slice(owner);
                out.extend_from_slice(&lease_until.to_be_bytes());
            }
            State::Open { fingerprint } => {
                out.push(OPEN);
                out.extend_from_slice(fingerprint);
            }
            State::Answered {
                fingerprint,
                answer,
            } => {
                out.push(ANSWERED);
                out.extend_from_slice(fingerprint);
                out.extend_from_slice(&answer.status.to_be_bytes());
                let ct = answer.content_type.as_deref().unwrap_or("").as_bytes();
                let ct = &ct[..ct.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&u16::try_from(ct.len()).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(ct);
                out.extend_from_slice(&answer.body);
            }
        }
        out
    }

    /// Reads the byte layout; `None` for bytes it does not describe.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        let (&tag, rest) = rest.split_first()?;
        if version != VERSION || rest.len() < 32 {
            return None;
        }
        let (fp, rest) = rest.split_at(32);
        let fingerprint: Fingerprint = fp.try_into().ok()?;
        match tag {
            CLAIMED if rest.len() == 24 => {
                let (owner, until) = rest.split_at(16);
                Some(State::Claimed {
                    fingerprint,
                    owner: owner.try_into().ok()?,
                    lease_until: u64::from_be_bytes(until.try_into().ok()?),
                })
            }
            OPEN if rest.is_empty() => Some(State::Open { fingerprint }),
            ANSWERED if rest.len() >= 4 => {
                let status = u16::from_be_bytes([rest[0], rest[1]]);
                let ct_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
                let rest = &rest[4..];
                if rest.len() < ct_len {
                    return None;
                }
                let (ct, body) = rest.split_at(ct_len);
                let ct = std::str::from_utf8(ct).ok()?;
                Some(State::Answered {
                    fingerprint,
                    answer: Answer {
                        status,
                        content_type: (!ct.is_empty()).then(|| ct.to_owned()),
                        body: Bytes::copy_from_slice(body),
                    },
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_written() {
        let fingerprint = [7; 32];
        for state in [
            State::Claimed {
                fingerprint,
                owner: [3; 16],
                lease_until: 1_700_000_000_123,
            },
            State::Open { fingerprint },
            State::Answered {
                fingerprint,
                answer: Answer {
                    status: 200,
                    content_type: Some("application/json".into()),
                    body: Bytes::from_static(b"{\"Irn\":\"abc\"}"),
                },
            },
            State::Answered {
                fingerprint,
                answer: Answer {
                    status: 204,
                    content_type: None,
                    body: Bytes::new(),
                },
            },
        ] {
            assert_eq!(State::decode(&state.encode()), Some(state));
        }
    }

    #[test]
    fn bytes_of_another_layout_do_not_read() {
        assert_eq!(State::decode(b""), None);
        assert_eq!(State::decode(&[2, OPEN]), None);
        let mut claimed = State::Claimed {
            fingerprint: [0; 32],
            owner: [0; 16],
            lease_until: 0,
        }
        .encode();
        claimed.pop();
        assert_eq!(State::decode(&claimed), None);
    }
}
