//! What the store keeps of a slot, and its byte encoding (sealed before it reaches the file).
//!
//! A small fixed binary layout rather than JSON: every byte is the store's own, so nothing
//! about a token's text needs escaping, and the plaintext buffer is zeroed when dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use zeroize::Zeroizing;

use crate::crypto::AesKey;

/// The layout version, first byte of every encoded record.
const VERSION: u8 = 1;

/// One upstream session as stored.
#[derive(Clone)]
pub struct StoredSession {
    /// The token (a header value marked sensitive).
    pub token: HeaderValue,
    /// The session encryption key.
    pub sek: AesKey,
    /// When the token expires, wall clock.
    pub expires_at: SystemTime,
    /// When the login that produced it was sent, wall clock.
    pub issued_at: SystemTime,
    /// Its generation in the slot.
    pub generation: u64,
}

/// A slot's durable state: what a restart needs to carry on without a login or an OTP.
#[derive(Clone, Default)]
pub struct Record {
    /// The session callers use, if any.
    pub session: Option<StoredSession>,
    /// The upstream's latest session, kept after a rejection (a GSTN refresh proves it).
    pub latest: Option<StoredSession>,
    /// When the GSTN portal session opened with an OTP ends.
    pub portal_ends_at: Option<SystemTime>,
    /// The generation the slot's next new token gets.
    pub next_generation: u64,
}

/// Why stored bytes are not a record.
#[derive(Debug, thiserror::Error)]
#[error("malformed record ({0})")]
pub struct DecodeError(&'static str);

impl Record {
    /// The plaintext bytes of the record.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        out.push(VERSION);
        out.extend_from_slice(&self.next_generation.to_be_bytes());
        put_time(&mut out, self.portal_ends_at);
        put_session(&mut out, self.session.as_ref());
        let same = matches!((&self.session, &self.latest),
            (Some(s), Some(l)) if s.generation == l.generation && s.token == l.token);
        if same {
            out.push(2);
        } else {
            put_session(&mut out, self.latest.as_ref());
        }
        out
    }

    /// A record from its plaintext bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let next_generation = r.u64()?;
        let portal_ends_at = r.time()?;
        let session = r.session()?;
        let latest = if r.peek() == Some(2) {
            r.u8()?;
            session.clone()
        } else {
            r.session()?
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            session,
            latest,
            portal_ends_at,
            next_generation,
        })
    }
}

fn millis(t: SystemTime) -> u64 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn put_time(out: &mut Vec<u8>, t: Option<SystemTime>) {
    match t {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&millis(t).to_be_bytes());
        }
        None => out.push(0),
    }
}

fn put_session(out: &mut Vec<u8>, s: Option<&StoredSession>) {
    let Some(s) = s else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&s.generation.to_be_bytes());
    out.extend_from_slice(&millis(s.expires_at).to_be_bytes());
    out.extend_from_slice(&millis(s.issued_at).to_be_bytes());
    out.extend_from_slice(s.sek.as_bytes());
    let token = s.token.as_bytes();
    out.extend_from_slice(&u32::try_from(token.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(token);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn instant(&mut self) -> Result<SystemTime, DecodeError> {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(self.u64()?))
            .ok_or(DecodeError("time out of range"))
    }

    fn time(&mut self) -> Result<Option<SystemTime>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.instant().map(Some),
            _ => Err(DecodeError("bad flag")),
        }
    }

    fn session(&mut self) -> Result<Option<StoredSession>, DecodeError> {
        match self.u8()? {
            0 => return Ok(None),
            1 => {}
            _ => return Err(DecodeError("bad flag")),
        }
        let generation = self.u64()?;
        let expires_at = self.instant()?;
        let issued_at = self.instant()?;
        let sek = AesKey::from_slice(self.take(32)?).map_err(|_| DecodeError("bad key"))?;
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).map_err(|_| DecodeError("bad length"))?;
        let mut token =
            HeaderValue::from_bytes(self.take(len)?).map_err(|_| DecodeError("bad token"))?;
        token.set_sensitive(true);
        Ok(Some(StoredSession {
            token,
            sek,
            expires_at,
            issued_at,
            generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(generation: u64, token: &'static str) -> StoredSession {
        StoredSession {
            token: HeaderValue::from_static(token),
            sek: AesKey::random(),
            expires_at: UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
            issued_at: UNIX_EPOCH + Duration::from_millis(1_799_990_000_000),
            generation,
        }
    }

    #[test]
    fn a_record_round_trips_and_garbage_does_not_decode() {
        let s = stored(4, "tok-4");
        let records = [
            Record::default(),
            Record {
                session: Some(s.clone()),
                latest: Some(s.clone()),
                portal_ends_at: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
                next_generation: 5,
            },
            Record {
                session: None,
                latest: Some(stored(7, "tok-7")),
                portal_ends_at: None,
                next_generation: 8,
            },
        ];
        for r in &records {
            let back = Record::decode(&r.encode()).unwrap();
            assert_eq!(back.next_generation, r.next_generation);
            assert_eq!(back.portal_ends_at, r.portal_ends_at);
            for (a, b) in [(&back.session, &r.session), (&back.latest, &r.latest)] {
                assert_eq!(a.is_some(), b.is_some());
                if let (Some(a), Some(b)) = (a, b) {
                    assert_eq!(a.token, b.token);
                    assert!(a.token.is_sensitive());
                    assert_eq!(a.sek.as_bytes(), b.sek.as_bytes());
                    assert_eq!((a.expires_at, a.issued_at), (b.expires_at, b.issued_at));
                    assert_eq!(a.generation, b.generation);
                }
            }
        }
        let full = records[1].encode();
        for cut in 0..full.len() {
            assert!(Record::decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Record::decode(&[9, 0, 0]).is_err());
    }
}
